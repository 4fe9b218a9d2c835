"""floor: Cog's own floor by vector width: a no-op predictor returning a list, a numpy array or this project's
JsonArray, next to this project serving a checkpoint that does next to no work."""

from __future__ import annotations

import sys
from pathlib import Path

from harness import REPO_ROOT, Server, median, print_table, send_load


FLOOR_OUTPUTS = ("list", "numpy", "json-array")
ZERO_WORK = "e5, zero-work checkpoint"


def _zero_work_checkpoint(dims: int, root: Path) -> Path:
    """A BERT with no layers, `dims` wide: this project's whole path with next to no model work."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from tiny_checkpoints import build_bert
    from transformers import BertConfig, BertModel

    path = build_bert(root / f"zero-work-{dims}")
    config = BertConfig.from_pretrained(path)
    config.update({"hidden_size": dims, "num_hidden_layers": 0, "num_attention_heads": 1, "intermediate_size": 4})
    BertModel(config).save_pretrained(path, safe_serialization=True)
    return path


def bench_floor(args) -> dict:
    """Cog's own floor per vector width: a no-op predictor returning a list, a numpy array or this project's
    JsonArray, next to this project serving a checkpoint that does next to no work, at --floor-clients clients."""
    import tempfile

    clients, results, rows = args.floor_clients, {}, []
    count = max(args.min_requests, args.floor_requests)
    with tempfile.TemporaryDirectory() as root:
        for dims in args.floor_dims:
            servers = {f"no-op, {kind}": Server(kind, {"NOOP_DIMS": str(dims), "NOOP_OUTPUT": kind}, noop=True)
                       for kind in FLOOR_OUTPUTS}
            # In torch float32: ONNX Runtime's fused BERT graph fails on some inputs of a model without layers.
            servers[ZERO_WORK] = Server("zero-work", {"E5_MODEL": "e5-small-v2", "E5_CPU_RUNTIME": "torch",
                                                      "E5_DTYPE": "float32",
                                                      "E5_WEIGHTS_DIR": str(_zero_work_checkpoint(dims, Path(root)))},
                                        serve_args=(), startup_seconds=300)
            runs: dict[str, list[dict]] = {name: [] for name in servers}
            try:
                for server in servers.values():
                    send_load(server.base, ["warm up"], 4, 40)
                for _ in range(args.rounds):
                    for name, server in servers.items():
                        runs[name].append(send_load(server.base, ["hello world"], clients, count))
            finally:
                for server in servers.values():
                    server.stop()
            level = results[str(dims)] = {}
            for name, level_runs in runs.items():
                for run in level_runs:
                    for reason, failed in run["failure_reasons"].items():
                        print(f"FAILED {failed}x at {dims} dims, {name}: {reason}")
                ratios = [r["requests_per_second"] / floor["requests_per_second"]
                          for r, floor in zip(level_runs, runs["no-op, list"])]
                med = {key: median([r[key] for r in level_runs]) for key in ("requests_per_second", "p50_ms",
                                                                               "p95_ms", "failures")}
                level[name] = {**med, "vs_list": median(ratios), "rounds": level_runs}
                rows.append([dims, name, f"{med['requests_per_second']:,.1f}", f"{med['p50_ms']:.1f}",
                             f"{med['p95_ms']:.1f}", f"{median(ratios):.2f}x", int(med["failures"])])
    print_table(f"floor: Cog's server (coglet) with {clients} clients, one vector per response, by width and by how "
                f"it reaches coglet; median of {args.rounds}", ["dims", "predictor", "req/s", "p50 ms", "p95 ms",
                                                               "vs list no-op", "failed"], rows)
    return {"clients": clients, "dims": results}
