"""Cog's own HTTP server (coglet) on 127.0.0.1 for the end-to-end tests: start it, wait for it, talk to it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 90
REQUEST_SECONDS = 60
# What no answer may show: tracebacks, the host's paths, the environment.
INTERNALS = ("Traceback", str(REPO_ROOT), "/tmp/", "site-packages", "/home/", "HF_ENDPOINT", "E5_WEIGHTS_DIR")
# The longest error message a caller should read; inputs are quoted in excerpts only.
MAX_MESSAGE = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CogServer:
    """One server process group; `serve` starts it as the README does, `coglet` as a built image does."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path, port: int):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @classmethod
    def serve(cls, log_path: Path, **env: str) -> "CogServer":
        """`python -m e5 serve` (the README's command) with extra environment."""
        port = free_port()
        full_env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **env)
        return cls([sys.executable, "-m", "e5", "serve", "--port", str(port)], full_env, log_path, port)

    @classmethod
    def coglet(cls, log_path: Path, predictor: str, concurrency: int = 4, **env: str) -> "CogServer":
        """coglet itself over `predictor` (module path:class), as `cog build` would run it."""
        from e5.__main__ import coglet_argv, coglet_env

        port = free_port()
        base = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", COG_MAX_CONCURRENCY=str(concurrency), **env)
        return cls(coglet_argv("127.0.0.1"), coglet_env(predictor, port, base), log_path, port)

    def wait_for(self, status: str) -> dict:
        """Poll /health-check until it reports `status`; fail if the server exits or STARTUP_SECONDS pass."""
        deadline = time.monotonic() + STARTUP_SECONDS
        health: dict = {}
        while health.get("status") != status:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server never reported {status} (last: {health}):\n{self.log()[-3000:]}")
            try:
                health = requests.get(f"{self.base}/health-check", timeout=2).json()
            except requests.RequestException:
                pass
            time.sleep(0.25)
        return health

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        """Resident memory of the whole process group: coglet and its Python worker."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid:  # field 5 of stat, the process group
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # field 24, rss in pages
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)


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


def assert_ready(base: str) -> None:
    assert requests.get(f"{base}/health-check", timeout=5).json()["status"] == "READY"


def assert_no_internals(*texts: str) -> None:
    """None of `texts` (an error, the prediction's logs, a 4xx body) shows a traceback, a path or the env."""
    leaks = [leak for leak in INTERNALS for text in texts if leak in text]
    assert not leaks, f"{leaks} in {[text[:300] for text in texts]}"
