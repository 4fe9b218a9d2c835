"""feed: how many tokens a second the server's own CPU can feed a model, per token and per request.

On the GPUs this predictor exists for, the model's time is small next to everything around it (coglet,
validation, prompts, tokenising, batching, pooling, encoding, JSON), which runs on the host's CPU. This
section serves checkpoints that do next to no model work (a BERT with no layers: multilingual-e5-small's real
XLM-R tokenizer and 250k vocabulary, 384 and 1,024 dimensions wide) with `python -m e5 serve`, sends three
loads, and reads the server's own CPU time (user + system of coglet and its worker, from /proc) around each:
32 clients of one passage, and 8 clients of 64-passage requests with float and with base64 vectors. Beside
them: Cog's own floor (a no-op predictor returning one vector as this project hands vectors over), the
library in process (`EmbeddingService.handle`, 256 passages), and, where py-spy is installed, where the
worker's time goes by phase at 32 clients of one passage.

With --feed-configs 384:12,1024:24 (full-size layer counts, random weights) the same loads measure a real
model's serving on a GPU: what fraction of the GPU's limit the host keeps fed.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from harness import (BEFORE, Server, converted_e5_small, measured_load, median, median_by_thread, print_table,
                     send_load, texts_for)

# The server CPU that the feed figures are scaled to: the two cores of the machines this project is tested on.
FEED_CORES = 2
# e5-large-v2 at its bf16 limit on an A40 (149.7 TFLOP/s dense bf16 / 0.62 GFLOP per token at 128 tokens).
A40_E5_LARGE_TOKENS_PER_SECOND = 243_000
BATCH_TEXTS = 64
NOW, FLOOR = "now", "cog floor"
SINGLE_CLIENTS, BATCH_CLIENTS = 32, 8

# Where a sample of the worker's Python stack is counted, by the innermost frame that matches a rule:
# (phase, path fragments, function names or None for any). Checked in order for each frame, leaf first.
PHASE_RULES = [
    ("pool", ("e5/pooling.py",), None),
    ("model", ("transformers/", "torch/nn/", "e5/runtimes.py", "e5/onnx_runtime.py", "onnxruntime/"), None),
    ("tokenise", ("e5/tokenizer.py", "e5/encoder.py", "tokenizers/"),
     {"tokenize", "encode", "encode_batch", "_head", "_with_specials", "windows"}),
    ("respond", ("e5/service.py", "e5/collapse.py", "e5/encoding.py", "e5/cog_output.py", "e5/chunking.py",
                 "e5/finite.py", "predict.py"),
     {"respond", "returned", "vectors_to_text", "as_float32", "matrix_to_npy", "for_cog", "tolist",
      "short_float32_values", "collapse", "check_finite", "per_input", "vectors", "row_vectors", "row_scores",
      "scores", "_returned", "rows_of", "weighted_means", "best_per_group",
      "group_rows", "_npy_file", "model_dump"}),
    ("output encoding", ("json/", "dataclasses.py", "copy.py"), None),
    ("prepare", ("e5/service.py", "e5/prepare.py", "e5/limits.py", "e5/prompts.py", "predict.py"), None),
    ("engine hand-off", ("e5/engine.py", "e5/encoder.py", "e5/batching.py", "asyncio/", "threading.py",
                         "selectors.py", "concurrent/"), None),
]
OTHER_PHASE = "HTTP/coglet and the rest"
# A thread whose innermost frame is one of these is waiting, not working: its samples are left out.
WAITING = {"wait", "select", "result", "acquire", "sleep", "_wait_idle", "_wait_for_arrivals"}


def _zero_work_checkpoint(dims: int, layers: int, root: Path, source: Path) -> Path:
    """multilingual-e5-small's tokenizer and 250k vocabulary (from `source`) under a random BERT `dims` wide with
    `layers` layers (none: next to no model work; 12 or 24 with dims / 64 heads: a real e5-small's or e5-large's
    shape)."""
    from transformers import BertConfig, BertModel

    path = root / f"feed-{dims}x{layers}"
    path.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, path / name)
    config = BertConfig.from_pretrained(source)
    config.update({"hidden_size": dims, "num_hidden_layers": layers, "num_attention_heads": max(1, dims // 64),
                   "intermediate_size": 4 * dims if layers else 4})
    BertModel(config, add_pooling_layer=False).save_pretrained(path, safe_serialization=True)
    return path


def _worker_pid(server) -> int | None:
    """The Python worker of a coglet server: the newest process of its group other than coglet itself."""
    pids = [pid for pid in server.group_pids() if pid != server.proc.pid]
    return pids[-1] if pids else None


def _measured(server, inputs: list, clients: int, count: int) -> dict:
    """One load run with the server's CPU time around it, per token and per FEED_CORES cores too."""
    run = measured_load(server, inputs, clients, count)
    cpu = run["server_cpu_seconds"]
    tokens = run["tokens_per_second"] * run["wall_seconds"]
    return {**run, "tokens": tokens, "cpu_us_per_token": 1e6 * cpu / tokens if tokens else None,
            "feed_tokens_per_second": FEED_CORES * tokens / cpu if cpu else None}


def _phase(frames: list[str]) -> str:
    for frame in reversed(frames):  # leaf first
        function, _, where = frame.partition(" (")
        function = function.rpartition(".")[2]  # py-spy names methods Class.method
        for phase, paths, functions in PHASE_RULES:
            if any(p in where for p in paths) and (functions is None or function in functions):
                return phase
    return OTHER_PHASE


def phases_of_raw_profile(text: str) -> dict[str, float]:
    """Each phase's share of the samples in a py-spy raw profile (`frame;frame;... count` a line)."""
    counts: Counter = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame for frame in stack.split(";") if frame.strip()]
        if not count.isdigit() or not frames or frames[-1].split(" (")[0].rpartition(".")[2] in WAITING:
            continue  # no Python frame (coglet's own threads), or a thread waiting
        counts[_phase(frames)] += int(count)
    total = sum(counts.values()) or 1
    return {phase: n / total for phase, n in counts.most_common()} | {"samples": float(sum(counts.values()))}


def _py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _profiled(server, inputs: list, clients: int, count: int, keep: Path, gil: bool = False) -> dict | None:
    """Where the worker's Python time goes by phase during one load run (None without py-spy); the raw
    profile is kept at `keep`."""
    py_spy, pid = _py_spy(), _worker_pid(server)
    if py_spy is None or pid is None:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "profile.txt"
        spy = subprocess.Popen([py_spy, "record", "-p", str(pid), "-f", "raw", "-o", str(out), "-r", "200",
                                "--nonblocking", *(["--gil"] if gil else [])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # py-spy attaches
        send_load(server.base, inputs, clients, count)
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            return None
        if not out.exists():
            print(f"feed: py-spy wrote no profile ({err.decode(errors='replace')[-300:].strip()})")
            return None
        shutil.copy(out, keep)
        return phases_of_raw_profile(out.read_text())


def _in_process(path: Path, texts: list[str], rounds: int) -> float:
    """Tokens a second of `EmbeddingService.handle` on `texts` in one request, in this process."""
    from e5.service import EmbeddingRequest, load_service
    from e5.settings import Settings

    service = load_service(settings=Settings.from_env({"E5_MODEL": "multilingual-e5-small",
                                                       "E5_WEIGHTS_DIR": str(path), "E5_CPU_RUNTIME": "torch",
                                                       "E5_CACHE_DIR": str(path.parent / "cache")}))
    request = EmbeddingRequest(texts=texts)
    tokens = service.handle(request).token_count  # warm-up
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        service.handle(request)
        seconds.append(time.perf_counter() - started)
    return tokens / median(seconds)


def _configs(spec: str) -> list[tuple[int, int]]:
    return [(int(dims), int(layers)) for dims, _, layers in (item.partition(":") for item in spec.split(","))]


def bench_feed(args) -> dict:
    """The server's CPU per token and per request at 384 and 1,024 dimensions, next to Cog's floor."""
    from transformers import AutoTokenizer

    configs = _configs(args.feed_configs)
    single_count = max(args.min_requests, args.feed_single_requests)
    batch_count = max(2 * BATCH_CLIENTS, args.feed_batch_requests)
    source = Path(args.feed_tokenizer) if args.feed_tokenizer else converted_e5_small()
    tokenizer = AutoTokenizer.from_pretrained(source)
    passages = texts_for(tokenizer, 16, 128, seed=11, count=512)
    batches = [passages[i: i + BATCH_TEXTS] for i in range(0, len(passages), BATCH_TEXTS)]
    loads = {f"{SINGLE_CLIENTS} clients x 1 passage": ([{"texts": [t]} for t in passages], SINGLE_CLIENTS,
                                                       single_count),
             f"{BATCH_CLIENTS} clients x {BATCH_TEXTS} passages, float": ([{"texts": b} for b in batches],
                                                                          BATCH_CLIENTS, batch_count),
             f"{BATCH_CLIENTS} clients x {BATCH_TEXTS} passages, base64": (
                 [{"texts": b, "encoding_format": "base64"} for b in batches], BATCH_CLIENTS, batch_count)}
    results: dict = {"configs": {}, "cores": FEED_CORES, "a40_e5_large_tokens_per_second": A40_E5_LARGE_TOKENS_PER_SECOND,
                     "env": args.feed_env}
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for dims, layers in configs:
            path = _zero_work_checkpoint(dims, layers, Path(root), source)
            env = {"E5_MODEL": "multilingual-e5-small", "E5_WEIGHTS_DIR": str(path), "E5_CPU_RUNTIME": "torch",
                   "E5_CACHE_DIR": str(Path(root) / "cache"),
                   **dict(setting.split("=", 1) for setting in args.feed_env)}
            servers = {NOW: Server("feed", env, serve_args=(), startup_seconds=300)}
            if args.baseline:
                servers[BEFORE] = Server(BEFORE, env, serve_args=(), startup_seconds=300, repo=args.baseline_tree)
            servers[FLOOR] = Server("no-op", {"NOOP_DIMS": str(dims), "NOOP_OUTPUT": "json-array"}, noop=True)
            runs: dict[tuple[str, str], list[dict]] = {}
            profile = None
            single = next(iter(loads))
            try:
                for server in servers.values():
                    send_load(server.base, loads[single][0], 4, 40)  # warm-up
                for _ in range(args.rounds):  # the servers take turns within each round
                    for load, (inputs, clients, count) in loads.items():
                        for name, server in servers.items():
                            if name != FLOOR or load == single:
                                runs.setdefault((load, name), []).append(_measured(server, inputs, clients, count))
                if not args.quick or args.feed_profile:
                    keep = Path(args.out).with_suffix(f".feed-{dims}x{layers}.profile.txt")
                    profile = _profiled(servers[NOW], *loads[single], keep, args.feed_profile_gil)
            finally:
                for server in servers.values():
                    server.stop()
            in_process = _in_process(path, passages[:256], args.rounds)
            level = results["configs"][f"{dims}x{layers}"] = {"dims": dims, "layers": layers, "loads": {},
                                                               "in_process_tokens_per_second": in_process,
                                                               "profile": profile}
            for (load, name), level_runs in runs.items():
                for run in level_runs:
                    for reason, failed in run["failure_reasons"].items():
                        print(f"FAILED {failed}x at {dims} dims, {load}, {name}: {reason}")
                keys = ("tokens_per_second", "requests_per_second", "cpu_us_per_token", "cpu_ms_per_request",
                        "feed_tokens_per_second", "failures", "p50_ms")
                med = {key: median([r[key] for r in level_runs if r[key] is not None] or [0]) for key in keys}
                if name == BEFORE:  # CPU per request before over now, round by round (the same round's drift)
                    med["before_over_now"] = median([b["cpu_ms_per_request"] / n["cpu_ms_per_request"]
                                                     for b, n in zip(level_runs, runs[(load, NOW)])])
                level["loads"].setdefault(load, {})[name] = {**med, "rounds": level_runs}
                work = name != FLOOR
                rows.append([dims, layers, load, name, f"{med['tokens_per_second']:,.0f}" if work else "",
                             f"{med['cpu_us_per_token']:.1f}" if work else "",
                             f"{med['cpu_ms_per_request']:.2f}",
                             f"{med['feed_tokens_per_second']:,.0f}" if work else "",
                             f"{100 * med['feed_tokens_per_second'] / A40_E5_LARGE_TOKENS_PER_SECOND:.0f}%"
                             if work else "", f"{med['before_over_now']:.2f}x" if name == BEFORE else "",
                             int(med["failures"])])
            rows.append([dims, layers, "256 passages in process", "EmbeddingService.handle", f"{in_process:,.0f}",
                         "", "", "", "", "", 0])
    print_table(f"feed: the server's own CPU (coglet + worker, /proc) under load, checkpoints with the real "
                f"multilingual tokenizer (layers 0: next to no model work); 'feed' is tokens per {FEED_CORES} cores "
                f"of server CPU, 'of A40' its share of e5-large's {A40_E5_LARGE_TOKENS_PER_SECOND:,} tok/s on an A40; "
                f"'{FLOOR}' a no-op predictor returning one vector as a JsonArray; 'before/now' the CPU per request "
                f"of --baseline over this tree's, from the same rounds; median of {args.rounds}",
                ["dims", "layers", "load", "server", "served tok/s", "CPU us/token", "CPU ms/request",
                 f"feed ({FEED_CORES} cores)", "of A40", "before/now", "failed"], rows)
    for key, level in results["configs"].items():
        for name, run in level["loads"].get(f"{SINGLE_CLIENTS} clients x 1 passage", {}).items():
            by_thread = median_by_thread(run["rounds"])
            print(f"feed CPU per request by thread at {key}, {SINGLE_CLIENTS} clients x 1 passage, {name}: "
                  + ", ".join(f"{thread} {ms:.2f} ms" for thread, ms in by_thread.items()))
        if level["profile"]:
            shares = {k: v for k, v in level["profile"].items() if k != "samples"}
            print(f"feed profile at {key}, {SINGLE_CLIENTS} clients x 1 passage, the worker's busy Python samples "
                  f"({level['profile']['samples']:,.0f}) by phase: "
                  + ", ".join(f"{phase} {100 * share:.0f}%" for phase, share in shares.items()))
    return results

