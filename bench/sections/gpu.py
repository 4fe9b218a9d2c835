"""gpu: full-size random-initialised e5-small, e5-large and e5-mistral-7b configs against the FLOP limit from the
card's measured matmul rate."""

from __future__ import annotations

import time
from functools import partial

import torch
from harness import median, print_table, timed

from e5.encoder import Encoder
from e5.registry import get_spec


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


def _flops_per_token(model, config, length: int) -> float:
    """2 x the encoder layers' matmul weights, plus attention's two length x hidden products per layer."""
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and "pooler" not in name)
    return 2 * linear + 4 * length * config.hidden_size * config.num_hidden_layers


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


def _word_level_tokenizer():
    """A minimal tokenizer with pad and EOS: the GPU section feeds random ids, not text."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1, "</s>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


def _pass_cpu_and_wall(encoder: Encoder, device: torch.device, vocab: int, rows: int, length: int,
                       calls: int) -> tuple[float, float]:
    """Median CPU seconds the calling thread spends issuing one forward pass and pooling (kernel launches:
    the GPU runs them asynchronously), and median wall seconds to the pass's end."""
    from e5.pooling import pool

    input_ids = torch.randint(3, vocab, (rows, length), device=device)
    mask = torch.ones_like(input_ids)
    cpu, wall = [], []
    with torch.inference_mode():
        for call in range(calls + 3):
            started, cpu_started = time.perf_counter(), time.thread_time()
            pool(encoder.backbone(input_ids, mask), mask, encoder.spec.pooling)
            issued = time.thread_time() - cpu_started
            _sync(device)
            if call >= 3:  # after warm-up
                cpu.append(issued)
                wall.append(time.perf_counter() - started)
    return median(cpu), median(wall)


def bench_gpu(args) -> dict:
    from transformers import AutoModel

    from e5.devices import Placement, cuda_dtype
    from e5.runtimes import TorchBackbone
    from e5.tokenizer import CheckpointTokenizer

    device = torch.device(args.gpu_device or "cuda")
    dtype = cuda_dtype(torch.cuda.get_device_capability(device)) if device.type == "cuda" else torch.float32
    peak = _matmul_rate(device, dtype, 8192 if device.type == "cuda" else 512)
    tiny = device.type != "cuda" or args.quick
    rows, results, launches, passes = [], {}, [], {}
    for name, config in _full_size_configs(tiny).items():
        with torch.device(device):
            model = AutoModel.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
        encoder = Encoder(get_spec(name), CheckpointTokenizer.from_hugging_face(_word_level_tokenizer()),
                          TorchBackbone(model), Placement(device, dtype))
        for length in (128, 512):
            rows_per_call = max(1, args.gpu_tokens // length)
            ids = torch.randint(3, config.vocab_size, (rows_per_call, length)).tolist()
            encoder.embed_ids(ids)  # warm-up
            seconds = [timed(partial(encoder.embed_ids, ids)) for _ in range(args.rounds)]
            rate = rows_per_call * length / median(seconds)
            flops = _flops_per_token(model, config, length)
            share = rate * flops / peak
            results[f"{name}@{length}"] = {"tokens_per_second": rate, "flops_per_token": flops,
                                           "share_of_matmul_peak": share}
            rows.append([name, length, f"{rate:,.0f}", f"{rate * flops / 1e12:,.1f}", f"{100 * share:.0f}%"])
        for rows_per_pass in (1, 64):
            cpu, wall = _pass_cpu_and_wall(encoder, device, config.vocab_size, rows_per_pass, 128,
                                           calls=5 if tiny else 30)
            passes[f"{name}@{rows_per_pass}x128"] = {"cpu_seconds": cpu, "wall_seconds": wall}
            launches.append([name, f"{rows_per_pass} x 128", f"{1000 * cpu:.2f}", f"{1000 * wall:.2f}",
                             f"{100 * cpu / wall:.0f}%"])
        del model, encoder
        if device.type == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke test, tiny config)"
    print_table(f"gpu: {name}, {dtype}, random-initialised configs, measured {dtype} matmul peak "
                f"{peak / 1e12:,.1f} TFLOP/s, median of {args.rounds}",
                ["model", "length", "tok/s", "TFLOP/s", "of peak"], rows)
    print_table("gpu: one forward pass and its pooling, the host CPU time that issues it (kernel launches) "
                "against its wall time to the end of the pass; a share near 100% is a pass the host, not the GPU, "
                f"paces; median of {5 if tiny else 30}", ["model", "pass", "host CPU ms", "wall ms", "CPU/wall"],
                launches)
    return {"device": name, "dtype": str(dtype), "matmul_peak_flops": peak, "models": results, "passes": passes}
