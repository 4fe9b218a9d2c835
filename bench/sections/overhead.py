"""overhead: one short query: what `handle_async` (the predictor's path) adds over `handle` in process, and its
HTTP p50 over Cog's no-op floor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness import BENCH_DIR, BEFORE, REPO_ROOT, SHORT_QUERY, Server, median, print_table, send_load


def _probe(repo: Path, calls: int) -> dict:
    out = subprocess.run([sys.executable, str(BENCH_DIR / "overhead_probe.py"), str(repo), str(calls)],
                         capture_output=True, text=True, check=True, timeout=600, env={**os.environ, "PYTHONPATH": ""})
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_overhead(args) -> dict:
    """One short query: what `handle_async` adds over `handle` in process, and its HTTP p50 over Cog's no-op floor."""
    trees = {"now": REPO_ROOT, **({BEFORE: args.baseline_tree} if args.baseline else {})}
    in_process = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            in_process[name].append(_probe(tree, args.overhead_calls))
    servers = {name: Server(name, {}, repo=tree) for name, tree in trees.items()}
    servers["no-op"] = Server("no-op", {"NOOP_OUTPUT": "json-array"}, noop=True)
    http: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for server in servers.values():
            send_load(server.base, [SHORT_QUERY], 1, 20)  # warm-up
        for _ in range(args.rounds):
            for name, server in servers.items():
                http[name].append(send_load(server.base, [SHORT_QUERY], 1, args.overhead_calls)["p50_ms"])
    finally:
        for server in servers.values():
            server.stop()
    rows, results = [], {}
    for name in trees:
        probe = {key: median([r[key] for r in in_process[name]]) for key in in_process[name][0]}
        over_floor = median([ours - floor for ours, floor in zip(http[name], http["no-op"])])
        results[name] = {**probe, "http_p50_ms": median(http[name]), "http_p50_over_noop_ms": over_floor}
        rows.append([name if name != "now" else "this tree", f"{probe['handle_p50_ms']:.2f}",
                     f"{probe['handle_async_p50_ms']:.2f}", f"{probe['added_p50_ms']:+.2f}",
                     f"{median(http[name]):.1f}", f"{over_floor:+.1f}"])
    rows.append(["no-op predictor", "-", "-", "-", f"{median(http['no-op']):.1f}", "+0.0"])
    label = f" against {args.baseline} ('before')" if args.baseline else ""
    print_table(f"overhead: one short query, demo MiniLM, p50 of {args.overhead_calls} calls, median of "
                f"{args.rounds} rounds{label}",
                ["code", "handle ms", "handle_async ms", "async adds ms", "HTTP p50 ms", "over no-op ms"], rows)
    return {"baseline": args.baseline, "noop_http_p50_ms": median(http["no-op"]), **results}
