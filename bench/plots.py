"""The performance page's plots, drawn from a benchmark run's JSON (bench/bench.py --out, by default
bench/last-run.json) into PNG files under docs/img/.

- `served.png` (from the `served` section): tokens/s, and p50 / p95 latency, against concurrent clients,
  for this project, the peers' servers and the baseline if one ran, with sentence-transformers in process
  as a line;
- `library.png` (from `library-e5`, else `library`): each runner's tokens/s as a multiple of
  sentence-transformers on the same texts.

    .venv/bin/pip install -r bench/requirements.txt     # matplotlib (tests/install already has it)
    .venv/bin/python bench/plots.py                     # bench/last-run.json -> docs/img/*.png
    .venv/bin/python bench/plots.py --run other.json --out /tmp/plots
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_served(section: dict, path: Path, machine: str) -> Path:
    """Throughput and latency percentiles against clients, one line per server."""
    plt = _pyplot()
    fig, (rate, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, levels in section["servers"].items():
        clients = sorted(levels, key=int)
        x = [int(c) for c in clients]
        line = rate.plot(x, [levels[c]["tokens_per_second"] for c in clients], marker="o", label=name)[0]
        latency.plot(x, [levels[c]["p50_ms"] for c in clients], marker="o", color=line.get_color(), label=f"{name} p50")
        latency.plot(x, [levels[c]["p95_ms"] for c in clients], marker="^", linestyle="--", color=line.get_color(),
                     label=f"{name} p95")
    rate.axhline(section["peer_tokens_per_second"], color="grey", linestyle=":",
                 label="sentence-transformers in process")
    for axis in (rate, latency):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.set_xticks(sorted({int(c) for levels in section["servers"].values() for c in levels}))
        axis.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        axis.grid(alpha=0.3)
    rate.set_ylabel("tokens / s")
    rate.set_ylim(bottom=0)
    rate.set_title("throughput")
    latency.set_yscale("log")
    latency.set_ylabel("latency, ms")
    latency.set_title("p50 and p95 latency")
    rate.legend(fontsize=8)
    latency.legend(fontsize=7)
    fig.suptitle(f"{section['model']} served over HTTP, one 16-128-token passage per request ({machine})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_library(section: dict, path: Path, machine: str, model: str) -> Path:
    """Each runner's tokens/s as a multiple of the peer's, as horizontal bars."""
    plt = _pyplot()
    names = list(section["runners"])
    ratios = [section["runners"][name]["ratio_to_peer"] for name in names]
    fig, axis = plt.subplots(figsize=(8, 0.45 * len(names) + 1.4))
    bars = axis.barh(names, ratios, color=["tab:blue" if r >= 1 else "tab:orange" for r in ratios])
    axis.axvline(1.0, color="grey", linestyle=":")
    for bar, ratio, name in zip(bars, ratios, names):
        axis.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                  f" {ratio:.2f}x ({section['runners'][name]['tokens_per_second']:,.0f} tok/s)", va="center", fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel(f"tokens/s as a multiple of {section['peer']}")
    axis.set_xlim(0, max(ratios) * 1.45)
    fig.suptitle(f"{model} in process, {section['texts']} texts\n({machine})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw(run: dict, out: Path) -> list[Path]:
    """Every plot the run has the sections for."""
    out.mkdir(parents=True, exist_ok=True)
    info = run.get("machine", {})
    machine = f"{run.get('started', '')[:10]}, {info.get('cpus', '?')} x {info.get('cpu') or info.get('processor') or 'CPU'}"
    drawn = []
    if "served" in run:
        drawn.append(plot_served(run["served"], out / "served.png", machine))
    library = run.get("library-e5") or run.get("library")
    if library:
        model = library.get("model", "all-MiniLM-L6-v2")
        drawn.append(plot_library(library, out / "library.png", machine, model))
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=str(REPO_ROOT / "bench" / "last-run.json"))
    parser.add_argument("--out", default=str(REPO_ROOT / "docs" / "img"))
    args = parser.parse_args(argv)
    drawn = draw(json.loads(Path(args.run).read_text()), Path(args.out))
    if not drawn:
        print(f"{args.run} has neither a served nor a library section: nothing to draw", file=sys.stderr)
        return 2
    for path in drawn:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
