"""The last table of `bench/gpu_check.sh run`: what the GPU check measured against the GPU issues' targets.

Usage: python bench/gpu_summary.py GPU_JSON FEED_JSON [BASELINE]; a missing or unfinished report is said so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MIXED, FULL = "64 x 16-512", "512 x 128"
LARGE = "1024x24"  # the feed section's e5-large shape
BATCH_BASE64 = "8 clients x 64 passages, base64"
SINGLE = "32 clients x 1 passage"


def _read(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def rows(gpu: dict, feed: dict) -> list[list[str]]:
    out = []
    models = gpu.get("models", {})
    for name, value in sorted(gpu.get("loader_parity", {}).items()):
        ok = isinstance(value, float) and value >= 0.9999
        out.append([f"parity through the loader, {name}", ">= 0.9999", f"{value:.6f}" if ok else str(value)[:60],
                    "holds" if ok else "FAILS"])
    for model in ("e5-small-v2", "e5-large-v2"):
        check = models.get(f"{model} parity")
        if check:
            ok = check["min_cosine"] >= 0.9999 and check["finite"]
            out.append([f"{model} packed parity, {MIXED}", ">= 0.9999", f"{check['min_cosine']:.6f}",
                        "holds" if ok else "FAILS"])
        padded, packed = models.get(f"{model}@{MIXED}/padded"), models.get(f"{model}@{MIXED}/packed")
        if padded and packed:
            ratio = packed["tokens_per_second"] / padded["tokens_per_second"]
            out.append([f"{model} {MIXED}, packed over padded tok/s", ">= 1.5x", f"{ratio:.2f}x",
                        "holds" if ratio >= 1.5 else "misses"])
        graphs, graphed_check = models.get(f"{model} graphs"), models.get(f"{model} graphed parity")
        if graphs:
            memory = graphs["memory_bytes"]
            out.append([f"{model} CUDA graphs: record seconds, memory", "reported",
                        f"{graphs['record_seconds']:.1f} s" + (f", {memory / 2**20:,.0f} MiB" if memory else ""), ""])
        if graphed_check:
            ok = graphed_check["min_cosine"] >= 0.9999 and graphed_check["finite"]
            out.append([f"{model} graphed parity, {MIXED}", ">= 0.9999", f"{graphed_check['min_cosine']:.6f}",
                        "holds" if ok else "FAILS"])
        for shape in ("1 x 128", "64 x 128"):
            if (level := models.get(f"{model}@{shape}/graphed")) is not None:
                cpu = 1000 * level["cpu_seconds"]
                out.append([f"{model} {shape} graphed: host CPU ms to issue", "<= 0.5", f"{cpu:.2f}",
                            "holds" if cpu <= 0.5 else "misses"])
        if (level := models.get(f"{model}@64 x 128/graphed")) is not None:
            target = 0.70 if model == "e5-large-v2" else 0.50
            share = level["share_of_matmul_peak"]
            out.append([f"{model} 64 x 128 graphed: share of peak", f">= {100 * target:.0f}%", f"{100 * share:.0f}%",
                        "holds" if share >= target else "misses"])
        for shape in (FULL, "1 x 128"):
            for layout in ("padded", "packed"):
                if (level := models.get(f"{model}@{shape}/{layout}")) is not None:
                    target = ">= 65%" if model == "e5-large-v2" and shape == FULL and layout == "packed" else "reported"
                    share = level["share_of_matmul_peak"]
                    verdict = ("holds" if share >= 0.65 else "misses") if target != "reported" else ""
                    out.append([f"{model} {shape} {layout}: share of peak, host CPU ms / wall ms", target,
                                f"{100 * share:.0f}%, {1000 * level['cpu_seconds']:.2f} / {1000 * level['wall_seconds']:.2f}",
                                verdict])
    loads = feed.get("configs", {}).get(LARGE, {}).get("loads", {})
    for load, target in ((BATCH_BASE64, 1.2 * 275_548), (SINGLE, None)):
        now, before = loads.get(load, {}).get("now"), loads.get(load, {}).get("before")
        if now:
            told = f"{now['tokens_per_second']:,.0f} tok/s" + (
                f" (before {before['tokens_per_second']:,.0f})" if before else "")
            verdict = ("holds" if now["tokens_per_second"] >= target else "misses") if target else ""
            out.append([f"served e5-large shape, {load} ({', '.join(feed.get('env', [])) or 'defaults'})",
                        f">= {target:,.0f} tok/s" if target else "reported", told, verdict])
    if not feed:
        out.append(["feed section", "", "no report (did not finish)", ""])
    return out


def main(argv: list[str]) -> int:
    gpu, feed = _read(argv[1]), _read(argv[2])
    baseline = argv[3] if len(argv) > 3 else ""
    table = rows(gpu.get("gpu", gpu), feed.get("feed", feed))
    header = ["check", "target", "measured", ""]
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    print(f"\nGPU check on {gpu.get('gpu', {}).get('device', 'an unknown device')}"
          + (f", against {baseline}" if baseline else ""))
    for row in [header, *table]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
