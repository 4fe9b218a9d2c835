"""http: the Cog server on the demo MiniLM with N clients sending single texts, dynamic batching on against off,
and Cog's server with a no-op predictor as the floor of its HTTP path."""

from __future__ import annotations

from harness import BEFORE, Server, median, print_table, send_load, texts_for, timed

from e5.registry import DEMO_MODEL


def bench_http(args) -> dict:
    from e5.service import EmbeddingRequest, load_service

    service = load_service(DEMO_MODEL)
    low, high = args.http_tokens
    texts = texts_for(service.encoder.tokenizer, low, high, seed=1)
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
            send_load(server.base, texts, 4, 40)  # warm-up
        runs: dict[tuple[str, int], list[dict]] = {}
        for _ in range(args.rounds):
            for clients in args.clients:
                for mode, server in servers.items():
                    count = max(args.min_requests, args.requests_per_client * clients)
                    runs.setdefault((mode, clients), []).append(send_load(server.base, texts, clients, count))
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
