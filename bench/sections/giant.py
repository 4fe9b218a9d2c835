"""giant: one request of huge texts against the same request cut to what the model reads: seconds, the server's
peak RSS growth, and a short query's latency meanwhile."""

from __future__ import annotations

import random
import threading
import time

from harness import BEFORE, REPO_ROOT, Server, print_table
from server_process import ServerProcess
from e5.weights import demo_weights_dir


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
