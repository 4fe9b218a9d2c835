"""gpu: full-size random-initialised e5-small, e5-large and e5-mistral-7b configs, padded, packed (e5.packed) and
packed replayed from CUDA graphs (e5.graphs, the service's bucket ladder) in the same rounds, against the FLOP limit
from the card's measured matmul rate; the host CPU that issues a pass. On the CPU (a smoke test) the "graphed"
layout replays by running the recorded function again, as tests/test_graphs.py does."""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import torch
from harness import median, print_table

from e5.registry import get_spec

# The passes timed: rows of random ids, and the mixed-length pass the padding costs most on.
MIXED = "64 x 16-512"
SHAPES = {"1 x 16": [16], "1 x 128": [128], "64 x 128": [128] * 64, "512 x 128": [128] * 512,
          MIXED: [random.Random(0).randint(16, 512) for _ in range(64)]}
# Seconds of calls per pass shape, layout and round (at least 2 calls, at most 10).
SECONDS_PER_ROUND = 0.3
TINY_SHAPES = {"1 x 16": [16], "1 x 128": [128], "8 x 128": [128] * 8,
               "8 x 16-128": [random.Random(0).randint(16, 128) for _ in range(8)]}


def _full_size_configs(tiny: bool):
    from transformers import BertConfig, MistralConfig

    if tiny:  # a smoke test of this section on any device
        return {"e5-small-v2": BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=256, vocab_size=1000)}
    return {
        "e5-small-v2": BertConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                                  intermediate_size=1536, vocab_size=30522),
        "e5-large-v2": BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                  intermediate_size=4096, vocab_size=30522),
        "e5-mistral-7b-instruct": MistralConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                                num_key_value_heads=8, intermediate_size=14336, vocab_size=32000,
                                                max_position_embeddings=32768),
    }


def pass_flops(model, config, lengths: list[int]) -> float:
    """The useful work of a pass over texts of `lengths` (padding not counted): 2 x the encoder layers' matmul
    weights a token, plus attention's two length x hidden products a token and layer."""
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and "pooler" not in name)
    return sum(n * (2 * linear + 4 * n * config.hidden_size * config.num_hidden_layers) for n in lengths)


def _matmul_rate(device: torch.device, dtype: torch.dtype, size: int) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps = 20 if device.type == "cuda" else 2
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _backends(name: str, model, device: torch.device, dtype: torch.dtype) -> tuple[dict, float | None]:
    """The padded backend and, for the families that pack, the packed one over the same model and the packed one
    recorded for the service's bucket ladder; with the seconds the recording took."""
    from e5.backend import PaddedBackend, Padding
    from e5.batching import DEFAULT_MAX_BATCH, GPU_TOKEN_BUDGET
    from e5.graphs import CudaGraphRecorder, GraphedBackend, bucket_ladder
    from e5.packed import PackedBackend, attention_for, spec_refusal
    from e5.runtimes import TorchBackbone

    spec = get_spec(name)
    backends = {"padded": PaddedBackend(TorchBackbone(model), Padding(0, device), spec.pooling)}
    if spec_refusal(spec) is not None:
        return backends, None
    backends["packed"] = PackedBackend(model, attention_for(device, dtype)[0])
    recorder = CudaGraphRecorder() if device.type == "cuda" else (lambda run: run)
    with torch.inference_mode():
        backends["graphed"] = GraphedBackend(backends["packed"], bucket_ladder(GPU_TOKEN_BUDGET, DEFAULT_MAX_BATCH,
                                                                               spec.max_tokens), recorder)
    return backends, backends["graphed"].record_seconds


def _one_pass(backend, rows, device) -> tuple[float, float]:
    """Host CPU seconds of the thread that issues one pass (the kernel launches: the GPU runs them
    asynchronously), and wall seconds to the pass's end."""
    started, cpu_started = time.perf_counter(), time.thread_time()
    backend.embed(rows)
    issued = time.thread_time() - cpu_started
    _sync(device)
    return issued, time.perf_counter() - started


def parity(backends: dict, rows: list[list[int]], layout: str = "packed") -> dict | None:
    """The `layout` vectors against the padded ones on `rows`: least cosine and largest difference."""
    if layout not in backends:
        return None
    with torch.inference_mode():
        padded, packed = (backends[name].embed(rows).float().cpu() for name in ("padded", layout))
    cosine = torch.nn.functional.cosine_similarity(padded, packed, dim=1)
    return {"min_cosine": float(cosine.min()), "max_abs_diff": float((padded - packed).abs().max()),
            "finite": bool(torch.isfinite(packed).all())}


# Each packing family's tiny checkpoint (tests/tiny_checkpoints.py) as the registry entry it stands in for.
LOADER_FAMILIES = (("bert", "e5-small-v2"), ("xlm-roberta", "multilingual-e5-small"),
                   ("xlm-roberta", "multilingual-e5-large-instruct"))
PARITY_TEXTS = ["query: how much protein should a female eat", "ok",
                "passage: " + "As a general guideline, the CDC's average requirement of protein for women is 46 grams. " * 6,
                "passage: 南瓜的家常做法 清炒南瓜丝 Größe café naïve"]


def loader_parity(device: torch.device, root) -> tuple[list[list], dict]:
    """Each family's tiny checkpoint loaded as the service loads it on `device`, padded and with E5_PACKING=on (the
    load's own check included), in each precision a GPU serves (bfloat16; float16 as on a T4, also with attention
    padded per text, the T4's kernel): the least cosine of the packed vectors to the padded ones. e5-mistral
    must be refused with E5_PACKING=on."""
    from dataclasses import replace

    from tiny_checkpoints import BUILDERS

    from e5.backend import PaddedBackend
    from e5.devices import Placement
    from e5.loader import load_encoder
    from e5.packed import PackedBackend
    from e5.runtimes import PackingError
    from e5.settings import Settings

    settings = replace(Settings.from_env(), cache_dir=root / "cache")
    dtypes = (torch.bfloat16, torch.float16) if device.type == "cuda" else (torch.float32,)
    rows, results = [], {}
    paths = {family: BUILDERS[family](root / family) for family in ("bert", "xlm-roberta", "mistral")}
    for family, name in LOADER_FAMILIES:
        spec = get_spec(name)
        for dtype in dtypes:
            placement = Placement(device, dtype)
            try:
                padded = load_encoder(spec, paths[family], settings, placement, runtime="torch", packing="off")
                packed = load_encoder(spec, paths[family], settings, placement, runtime="torch", packing="on")
                variants = {packed.backend.attention: packed.backend}
                if packed.backend.attention != "padded":  # the T4's kernel too, on the same weights
                    variants["padded"] = PackedBackend(packed.backend.model, "padded")
                with torch.inference_mode():
                    ids = padded.text_tokenizer.encode(PARITY_TEXTS)
                    reference = padded.backend.embed(ids).float().cpu()
                    for attention, backend in variants.items():
                        vectors = backend.embed(ids).float().cpu()
                        cosine = float(torch.nn.functional.cosine_similarity(vectors, reference, dim=1).min())
                        results[f"{name} {str(dtype)[6:]} {attention}"] = cosine
                        rows.append([name, str(dtype)[6:], attention, f"{cosine:.6f}"])
                assert isinstance(padded.backend, PaddedBackend)
            except Exception as exc:  # a kernel this GPU or torch lacks: the row says so, the check goes on
                results[f"{name} {str(dtype)[6:]}"] = f"{type(exc).__name__}: {exc}"
                rows.append([name, str(dtype)[6:], "-", f"FAILED {type(exc).__name__}: {str(exc)[:80]}"])
    try:
        load_encoder(get_spec("e5-mistral-7b-instruct"), paths["mistral"], settings, Placement(device, dtypes[0]),
                     runtime="torch", packing="on")
        rows.append(["e5-mistral-7b-instruct", str(dtypes[0])[6:], "-", "FAILED: E5_PACKING=on was not refused"])
    except PackingError:
        rows.append(["e5-mistral-7b-instruct", str(dtypes[0])[6:], "-", "refused with E5_PACKING=on, as it must"])
    return rows, results


def bench_gpu(args) -> dict:
    from transformers import AutoModel

    from e5.devices import cuda_dtype

    device = torch.device(args.gpu_device or "cuda")
    dtype = cuda_dtype(torch.cuda.get_device_capability(device)) if device.type == "cuda" else torch.float32
    with tempfile.TemporaryDirectory() as root:
        loaded, loaded_results = loader_parity(device, Path(root))
    print_table(f"gpu parity through the loader: each family's tiny checkpoint, E5_PACKING=on against off on {device}, "
                "min cosine over the texts", ["model", "dtype", "attention", "min cosine"], loaded)
    peak = _matmul_rate(device, dtype, 8192 if device.type == "cuda" else 512)
    tiny = device.type != "cuda" or args.quick
    shapes = TINY_SHAPES if tiny else SHAPES
    table, parities, results, passes = [], [], {}, {}
    for name, config in _full_size_configs(tiny).items():
        with torch.device(device):
            model = AutoModel.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # as the loader serves it (E5 pools the token states itself)
        backends, recorded = _backends(name, model, device, dtype)
        generator = random.Random(1)
        rows_of = {shape: [[generator.randrange(3, config.vocab_size) for _ in range(n)] for n in lengths]
                   for shape, lengths in shapes.items()}
        for layout, key in (("packed", f"{name} parity"), ("graphed", f"{name} graphed parity")):
            checked = parity(backends, rows_of[list(shapes)[-1]], layout)
            if checked is not None:
                parities.append([name, layout, list(shapes)[-1], f"{checked['min_cosine']:.6f}",
                                 f"{checked['max_abs_diff']:.1e}", "yes" if checked["finite"] else "NO"])
                results[key] = checked
        if recorded is not None:
            results[f"{name} graphs"] = {"record_seconds": recorded,
                                         "memory_bytes": backends["graphed"].memory_bytes}
            print(f"{name}: {backends['graphed'].describe()}")
        seconds: dict = {}
        calls: dict = {}
        with torch.inference_mode():
            for layout, backend in backends.items():  # warm-up: first calls allocate and pick kernels
                for shape, rows in rows_of.items():
                    _one_pass(backend, rows, device)
                    wall = _one_pass(backend, rows, device)[1]
                    calls[(shape, layout)] = 2 if tiny else int(min(max(SECONDS_PER_ROUND / wall, 2), 10))
            for _ in range(args.rounds):  # the layouts take turns in every round
                for shape, rows in rows_of.items():
                    for layout, backend in backends.items():
                        for _ in range(calls[(shape, layout)]):
                            seconds.setdefault((shape, layout), []).append(_one_pass(backend, rows, device))
        for shape, lengths in shapes.items():
            flops = pass_flops(model, config, lengths)
            walls = {layout: median([wall for _, wall in seconds[(shape, layout)]]) for layout in backends}
            for layout in backends:
                cpu = median([issued for issued, _ in seconds[(shape, layout)]])
                wall = walls[layout]
                rate, share = sum(lengths) / wall, flops / wall / peak
                key = f"{name}@{shape}/{layout}"
                results[key] = {"tokens_per_second": rate, "share_of_matmul_peak": share, "cpu_seconds": cpu,
                                "wall_seconds": wall, "tokens": sum(lengths)}
                passes[key] = {"cpu_seconds": cpu, "wall_seconds": wall}
                speedup = walls["padded"] / wall if layout != "padded" else None
                table.append([name, shape, layout, f"{rate:,.0f}", f"{100 * share:.0f}%", f"{1000 * cpu:.2f}",
                              f"{1000 * wall:.2f}", f"{speedup:.2f}x" if speedup else ""])
        del model, backends
        if device.type == "cuda":
            torch.cuda.empty_cache()
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke test, tiny config)"
    if parities:
        print_table(f"gpu parity: packed and graphed against padded vectors, {dtype}, on the {list(shapes)[-1]} pass",
                    ["model", "layout", "pass", "min cosine", "max |diff|", "finite"], parities)
    print_table(f"gpu: {card}, {dtype}, random-initialised configs, measured {dtype} matmul peak "
                f"{peak / 1e12:,.1f} TFLOP/s; real tokens a second and the share of peak their work is (padding "
                f"not counted), host CPU to issue a pass and its wall time; median of {args.rounds} rounds of "
                f"2-10 calls (about {SECONDS_PER_ROUND} s), the layouts alternating", ["model", "pass", "layout", "tok/s", "of peak",
                                                           "host CPU ms", "wall ms", "vs padded"], table)
    return {"device": card, "dtype": str(dtype), "matmul_peak_flops": peak, "models": results, "passes": passes,
            "loader_parity": loaded_results}
