"""bulk: `python -m e5 embed-file` against the library's own `Encoder.embed` on the same texts, the command and
Ray end to end, and optionally the command's peak RSS over many texts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness import REPO_ROOT, alternating_rounds, median, mixed_texts, print_table

from e5.loader import load_encoder
from e5.registry import DEMO_MODEL, get_spec
from e5.weights import demo_weights_dir


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")
    return path


def _run_embed_file(source: Path, out: Path, *extra: str) -> tuple[float, int]:
    """`python -m e5 embed-file` as a user runs it: wall seconds, and the child's peak RSS in bytes."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "e5", "embed-file", str(source), "--out", str(out),
                             "--model", DEMO_MODEL, "--no-progress", *extra], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    error = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"embed-file {' '.join(extra)} failed: {error[-2000:]}")
    return wall, usage.ru_maxrss * 1024  # Linux reports kilobytes


def bench_bulk(args) -> dict:
    import shutil
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from e5.bulk import embed_file
    from e5.service import EmbeddingService

    spec = get_spec(DEMO_MODEL)
    engine = load_encoder(spec, demo_weights_dir(), quantize="none")
    texts = [t.removeprefix("passage: ") for t in mixed_texts(engine.tokenizer, args.bulk_texts, 16, 128, seed=2)]
    formatted = ["passage: " + t for t in texts]  # what embed-file's default input type makes of them
    tokens = engine.text_tokenizer.tokenize(formatted).token_count
    scratch = Path(tempfile.mkdtemp(prefix="e5-bench-bulk-"))
    source = _write_jsonl(scratch / "corpus.jsonl", texts)

    def bulk_run() -> None:
        out = scratch / "out.parquet"
        out.unlink(missing_ok=True)
        embed_file(EmbeddingService(engine), source, out, chunk_rows=args.bulk_chunk_rows, progress=True)

    runners = {"library Encoder.embed": lambda: engine.embed(formatted), "embed-file (in process)": bulk_run}
    seconds = alternating_rounds(runners, args.rounds)
    ratios = [lib / bulk for lib, bulk in zip(*seconds.values())]
    results = {name: {"tokens_per_second": tokens / median(v), "texts_per_second": len(texts) / median(v),
                      "rounds_seconds": v} for name, v in seconds.items()}
    results["embed-file (in process)"]["ratio_to_library"] = median(ratios)
    results["embed-file (in process)"]["rounds_ratio_to_library"] = ratios

    # End to end, start-up included: the single-process command next to Ray on a local cluster.
    parquet = scratch / "corpus.parquet"
    pq.write_table(pa.table({"id": [f"doc-{i}" for i in range(len(texts))], "text": texts}), parquet)
    command, _ = _run_embed_file(parquet, scratch / "cli.parquet", "--chunk-rows", str(args.bulk_chunk_rows))
    ray, _ = _run_embed_file(parquet, scratch / "ray-out", "--ray", "--ray-num-cpus", "2", "--ray-concurrency", "2",
                             "--ray-cpus-per-actor", "0.5", "--chunk-rows", str(args.bulk_chunk_rows))
    for name, wall in (("embed-file command (start-up included)", command),
                       ("embed-file --ray, local cluster, 2 CPUs, 2 actors (start-up included)", ray)):
        results[name] = {"tokens_per_second": tokens / wall, "texts_per_second": len(texts) / wall,
                         "rounds_seconds": [wall]}

    rows = [[name, f"{r['texts_per_second']:,.1f}", f"{r['tokens_per_second']:,.0f}",
             f"{r['ratio_to_library']:.3f}x" if "ratio_to_library" in r else "",
             " / ".join(f"{x:.3f}" for x in r.get("rounds_ratio_to_library", []))] for name, r in results.items()]
    print_table(f"bulk: real all-MiniLM-L6-v2, {len(texts)} texts of 16-128 tokens ({tokens:,} tokens), chunks of "
                f"{args.bulk_chunk_rows}, median of {args.rounds} (the last two rows: one run each)",
                ["runner", "texts/s", "tok/s", "vs library", "rounds vs library"], rows)
    report = {"texts": len(texts), "tokens": tokens, "chunk_rows": args.bulk_chunk_rows, "runners": results}
    if args.bulk_rss_texts:
        many = mixed_texts(engine.tokenizer, args.bulk_rss_texts, 8, 32, seed=3)
        big = _write_jsonl(scratch / "rss.jsonl", [t.removeprefix("passage: ") for t in many])
        wall, rss = _run_embed_file(big, scratch / "rss.parquet")
        report["peak_rss"] = {"texts": len(many), "bytes": rss, "seconds": wall}
        print(f"peak RSS of `python -m e5 embed-file` over {len(many):,} texts of 8-32 tokens: "
              f"{rss / 2**20:,.0f} MiB ({wall:,.0f} s)")
    shutil.rmtree(scratch)
    return report
