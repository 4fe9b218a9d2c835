"""A server that runs for weeks, compressed: thousands of predictions of every encoding_format from 64 clients,
a few with inputs and outputs over coglet's 6 MiB spill size, then idle. Nothing a prediction leaves behind
accumulates: coglet's folder of each prediction (removed E5_PREDICTION_FOLDER_SECONDS after it ends,
e5/cog_tools/folders.py), open file descriptors, threads, the worker's temporary files; and /health-check
answers within a second throughout. `E5_LONG_RUN_PREDICTIONS` sets the size (default 3,000).
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from cog_server import CogServer, until_accepted

from e5.cog_tools.folders import COGLET_PREDICTIONS

# Starts servers, runs the benchmark or loads real weights: not in the fast subset.
pytestmark = pytest.mark.slow

PREDICTIONS = int(os.environ.get("E5_LONG_RUN_PREDICTIONS", "3000"))
CLIENTS = 64
KEEP_SECONDS = 2.0
# coglet's tokio runtime (in the worker) grows its blocking threads to about one per prediction in flight,
# keeps them while requests keep coming (the health checks included), and lets each go after 10 s without one.
SETTLE_SECONDS = 30
# The worker's asyncio default executor (the service's `asyncio.to_thread`) grows to this many threads on first
# use and keeps them.
EXECUTOR_THREADS = min(32, (os.cpu_count() or 1) + 4)
DEADLINE_SECONDS = 240
REQUEST_SECONDS = 120
HEALTH_SECONDS = 1.0
FORMATS = ("float", "base64", "ubinary", "npy")
# Over coglet's 6 MiB inline size, which it spills into the prediction's folder: 20,000 vectors of the tiny model
# as JSON numbers (about 7.5 MB out), and 2,048 texts of 3,500 characters (about 7 MB in).
SPILL_BYTES = 6 * 2**20
LARGE_OUTPUT = {"texts": [f"text {i}" for i in range(20_000)]}
LARGE_INPUT = {"texts": ["x" * 3_500 + str(i) for i in range(2_048)], "encoding_format": "ubinary"}


def _payload(rng: random.Random, i: int) -> dict:
    words = " ".join(rng.choice(("protein", "summit", "oven", "ticket", "mountain")) for _ in range(rng.randint(1, 40)))
    shape = rng.choice(({"query": words}, {"passage": words}, {"query": "q", "passage": words},
                        {"texts": [words] * rng.randint(1, 8), "input_type": rng.choice(["query", "passage"])}))
    return {**shape, "encoding_format": FORMATS[i % len(FORMATS)]}


def _files(directory: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(directory))


class Health(threading.Thread):
    """Polls the server's /health-check every 0.2 s until stopped; the slowest answer and every one that was not
    READY/BUSY (None: no answer)."""

    def __init__(self, server: CogServer):
        super().__init__(daemon=True)
        self.server, self.slowest, self.bad, self.stopped = server, 0.0, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            start = time.monotonic()
            status = self.server.health().get("status")
            self.slowest = max(self.slowest, time.monotonic() - start)
            if status not in ("READY", "BUSY"):
                self.bad.append(status)


def test_nothing_a_prediction_leaves_behind_accumulates(checkpoints, tmp_path):
    worker_tmp = tmp_path / "tmp"
    worker_tmp.mkdir()
    server = CogServer.serve(tmp_path / "server.log", E5_MODEL="e5-small-v2", E5_WEIGHTS_DIR=str(checkpoints["bert"]),
                             E5_PREDICTION_FOLDER_SECONDS=str(KEEP_SECONDS), E5_MAX_TEXTS="20000",
                             TMPDIR=str(worker_tmp))
    try:
        server.wait_for("READY")
        rng = random.Random(0)
        payloads = [_payload(rng, i) for i in range(PREDICTIONS)]
        for at in (PREDICTIONS // 3, PREDICTIONS // 2, 2 * PREDICTIONS // 3):
            payloads[at], payloads[at + 1] = LARGE_OUTPUT, LARGE_INPUT
        deadline = time.monotonic() + DEADLINE_SECONDS
        local = threading.local()
        ids: list[str] = []
        failures: list[str] = []
        longest = [0.0]
        largest = [0]

        def send(payload: dict) -> None:
            if not hasattr(local, "session"):
                local.session = requests.Session()
            sent = time.monotonic()
            response, _ = until_accepted(lambda: local.session.post(
                f"{server.base}/predictions", json={"input": payload}, timeout=REQUEST_SECONDS))
            longest[0] = max(longest[0], time.monotonic() - sent)
            largest[0] = max(largest[0], len(response.content))
            body = response.json()
            if body.get("status") != "succeeded":
                failures.append(f"{response.status_code} {str(body)[:300]}")
            if body.get("id"):
                ids.append(body["id"])
            assert time.monotonic() < deadline, "the long run ran past its deadline"

        before = {**server.fds_and_threads(), "tmp files": _files(worker_tmp)}
        warm = 200
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(send, payloads[:warm]))
        health = Health(server)
        health.start()
        peak = {"folders": 0, "fds": 0, "threads": 0}
        start = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            running = [pool.submit(send, payload) for payload in payloads[warm:]]
            while not all(future.done() for future in running):
                time.sleep(0.25)
                folders = sum((COGLET_PREDICTIONS / i).exists() for i in list(ids))
                now = {**server.fds_and_threads(), "folders": folders}
                peak = {name: max(peak[name], now[name]) for name in peak}
            for future in running:
                future.result()
        rate = (PREDICTIONS - warm) / (time.monotonic() - start)
        # Idle: every folder of a finished prediction goes within about 2.5 x KEEP_SECONDS.
        idle_until = time.monotonic() + SETTLE_SECONDS
        while any((COGLET_PREDICTIONS / i).exists() for i in ids) and time.monotonic() < idle_until:
            time.sleep(0.25)
        left = sum((COGLET_PREDICTIONS / i).exists() for i in ids)
        health.stopped.set()
        health.join()
        # Quiet: coglet's threads and connections wind down to where they were at READY (plus the executor's).
        threads_bound, fds_bound = before["threads"] + EXECUTOR_THREADS + 2, before["fds"] + 8
        quiet_until = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < quiet_until:
            after = {**server.fds_and_threads(), "tmp files": _files(worker_tmp)}
            if after["threads"] <= threads_bound and after["fds"] <= fds_bound:
                break
            time.sleep(0.25)
        print(f"\nlong run: {PREDICTIONS} predictions from {CLIENTS} clients at {rate:.0f}/s; at most at once: "
              f"{peak}; coglet folders left after idle: {left}; at READY -> after: {before} -> {after}; "
              f"slowest prediction {longest[0]:.1f} s, slowest /health-check {health.slowest:.3f} s")
        assert not failures, failures[:5]
        assert len(ids) == PREDICTIONS and largest[0] > SPILL_BYTES
        assert left == 0, f"{left} prediction folders left after {SETTLE_SECONDS} s idle"
        # Folders of the last few KEEP_SECONDS, and those made while the longest prediction ran.
        assert peak["folders"] <= CLIENTS + rate * (3 * KEEP_SECONDS + 1 + longest[0]), (peak, rate, longest)
        assert peak["threads"] <= before["threads"] + 2 * CLIENTS and peak["fds"] <= before["fds"] + 4 * CLIENTS, peak
        assert after["fds"] <= fds_bound and after["threads"] <= threads_bound, (before, after)
        assert after["tmp files"] <= before["tmp files"], (before, after)
        assert health.slowest < HEALTH_SECONDS and not health.bad, (health.slowest, health.bad[:5])
    finally:
        server.stop()
