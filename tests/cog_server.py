"""Cog's own HTTP server (coglet) on 127.0.0.1 for the end-to-end tests: talk to it, and check what it says.

Servers start through `server_process.ServerProcess`, the helper the benchmarks use too.
"""

from __future__ import annotations

import time
from typing import Callable

import pytest
import requests

from server_process import REPO_ROOT, ServerError, ServerProcess

STARTUP_SECONDS = 90
REQUEST_SECONDS = 60
# What no answer may show: tracebacks, the host's paths, the environment.
INTERNALS = ("Traceback", str(REPO_ROOT), "/tmp/", "site-packages", "/home/", "HF_ENDPOINT", "E5_WEIGHTS_DIR")
# The longest error message a caller should read; inputs are quoted in excerpts only.
MAX_MESSAGE = 600


class CogServer(ServerProcess):
    """`server_process.ServerProcess` for tests: a server that never reaches a status fails the test."""

    def wait_for(self, status: str = "READY", timeout: float = STARTUP_SECONDS, path: str = "/health-check") -> dict:
        try:
            return super().wait_for(status, timeout, path)
        except ServerError as exc:
            pytest.fail(str(exc))


def predict(base: str, payload: dict, session: requests.Session | None = None) -> requests.Response:
    """POST one prediction and wait for its answer (no retries: a 409 is a failure)."""
    return (session or requests).post(f"{base}/predictions", json={"input": payload}, timeout=REQUEST_SECONDS)


def until_accepted(send: Callable[[], requests.Response], attempts: int = 50) -> tuple[requests.Response, int]:
    """Call `send` until coglet stops answering "409 At capacity"; return the answer and the refusals.

    coglet 0.23.1 sometimes refuses with free slots under concurrent load. A refusal is not an answer (the
    prediction never started), so the tests retry it and count it apart.
    """
    for refusals in range(attempts):
        response = send()
        if response.status_code != 409 or "At capacity" not in response.text:
            return response, refusals
        time.sleep(0.01 * (refusals + 1))
    pytest.fail(f"refused {attempts} times in a row: {response.text[:200]}")


def assert_ready(base: str, seconds: float = 10.0) -> None:
    """The server answers READY: at once when idle, or within `seconds` while coglet frees the slot of a
    prediction that has just ended (its webhook, or a cancel's, can arrive before the slot is counted free).
    A server left BUSY, DEFUNCT or failed stays so and fails this with its status."""
    deadline = time.monotonic() + seconds
    while (status := requests.get(f"{base}/health-check", timeout=5).json()["status"]) != "READY":
        assert time.monotonic() < deadline, f"health-check says {status}, not READY, after {seconds:.0f} s"
        time.sleep(0.05)


def assert_no_internals(*texts: str) -> None:
    """None of `texts` (an error, the prediction's logs, a 4xx body) shows a traceback, a path or the env."""
    leaks = [leak for leak in INTERNALS for text in texts if leak in text]
    assert not leaks, f"{leaks} in {[text[:300] for text in texts]}"
