"""A server under test on 127.0.0.1, for the tests and the benchmarks: started as the README (`serve`) or a built
image (`coglet`) starts it, its health polled until a status, its memory and CPU time read from /proc, and
stopped with SIGTERM (SIGKILL if it lingers). One process group, so a test that fails leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from e5.cog_tools.server import coglet_argv, coglet_env
from e5.settings import PROJECT_ROOT as REPO_ROOT

STARTUP_SECONDS = 120


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    """A server that exited or never reached the awaited status; the message ends with its log's tail."""


class ServerProcess:
    """One server process group on 127.0.0.1: `serve` starts it as the README does, `coglet` as a built image
    does, `command` runs anything else that answers HTTP on the port it is given."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, log_path: Path | None = None,
                 cwd: Path = REPO_ROOT):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        with open(log_path or os.devnull, "w") as log:
            self.proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @classmethod
    def serve(cls, log_path: Path | None = None, *serve_args: str, repo: Path = REPO_ROOT,
              python: str = sys.executable, **env: str) -> "ServerProcess":
        """`python -m e5 serve [serve_args]` in `repo` (this checkout by default) with extra environment."""
        port = free_port()
        full_env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **env)
        return cls([python, "-m", "e5", "serve", *serve_args, "--port", str(port)], full_env, port, log_path, repo)

    @classmethod
    def coglet(cls, predictor: str, log_path: Path | None = None, concurrency: int | None = None,
               cwd: Path = REPO_ROOT, python: str = sys.executable, **env: str) -> "ServerProcess":
        """coglet itself over `predictor` (module path:class), as `cog build` would run it."""
        port = free_port()
        base = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **env)
        if concurrency is not None:
            base["COG_MAX_CONCURRENCY"] = str(concurrency)
        return cls(coglet_argv("127.0.0.1", python), coglet_env(predictor, port, base, python), port, log_path, cwd)

    @classmethod
    def command(cls, argv: list[str], log_path: Path | None = None, **env: str) -> "ServerProcess":
        """`argv` plus `--port PORT`, for another server (a peer in the benchmarks)."""
        port = free_port()
        return cls([*argv, "--port", str(port)], dict(os.environ, PYTHONUNBUFFERED="1", **env), port, log_path)

    def health(self, path: str = "/health-check") -> dict:
        """The server's answer at `path` as JSON, or {} while it does not answer."""
        import requests

        try:
            return requests.get(f"{self.base}{path}", timeout=2).json()
        except (requests.RequestException, ValueError):
            return {}

    def wait_for(self, status: str = "READY", timeout: float = STARTUP_SECONDS, path: str = "/health-check") -> dict:
        """Poll `path` until its `status` is `status`; `ServerError` if the server exits or `timeout` passes."""
        deadline = time.monotonic() + timeout
        health: dict = {}
        while health.get("status") != status:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                state = "exited" if self.proc.poll() is not None else f"not {status} after {timeout:.0f} s"
                raise ServerError(f"server {state} (last health: {health}):\n{self.log()[-3000:]}")
            time.sleep(0.05)
            health = self.health(path)
        return health

    def log(self) -> str:
        """What the server wrote so far (empty without a log file)."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def _group_stats(self) -> list[tuple[int, list[str]]]:
        """(pid, the fields of /proc/PID/stat after the command name) of each process in the server's group."""
        stats = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid:  # field 5 of stat, the process group
                stats.append((int(stat.parent.name), fields))
        return sorted(stats)

    def rss_bytes(self) -> int:
        """Resident memory of the whole process group: coglet and its Python worker."""
        page = os.sysconf("SC_PAGE_SIZE")
        return sum(int(fields[21]) * page for _, fields in self._group_stats())  # field 24, rss in pages

    def rss_parts(self) -> dict[str, int]:
        """The group's resident memory by kind, in bytes (/proc/PID/status): `anon`, the processes' own memory
        (heap, activations, copies of weights), where a leak shows; `file`, pages of mapped files (the
        libraries, and ONNX Runtime's weights, which it maps from the build's data file and faults in as they
        are first read), bounded by those files' sizes and given back under memory pressure."""
        parts = {"anon": 0, "file": 0}
        for pid in self.group_pids():
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                name, _, value = line.partition(":")
                if name in ("RssAnon", "RssFile", "RssShmem"):
                    parts["anon" if name == "RssAnon" else "file"] += int(value.split()[0]) * 1024
        return parts

    def cpu_seconds(self) -> float:
        """User and system CPU time the whole process group has used so far: coglet and its Python worker."""
        ticks = sum(int(fields[11]) + int(fields[12]) for _, fields in self._group_stats())  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def cpu_by_thread(self) -> dict[str, float]:
        """User and system CPU seconds so far by thread name (/proc/PID/task/TID/comm), summed over the threads
        of each name, prefixed with `coglet:` or `worker:` (the Python worker): `worker:e5-batching`, the
        runtime threads each process's Rust side runs (`tokio-rt-worker`), `worker:python` for unnamed ones."""
        by_name: dict[str, float] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for pid in self.group_pids():
            process = "coglet" if pid == self.proc.pid else "worker"
            for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):
                try:
                    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    name = (task / "comm").read_text().strip()
                except OSError:  # the thread ended meanwhile
                    continue
                key = f"{process}:{name}"
                by_name[key] = by_name.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
        return by_name

    def fds_and_threads(self) -> dict[str, int]:
        """Open file descriptors and threads of the whole process group, now."""
        fds = threads = 0
        for pid, fields in self._group_stats():
            try:
                fds += len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:  # exited meanwhile
                continue
            threads += int(fields[17])  # field 20 of stat, num_threads
        return {"fds": fds, "threads": threads}

    def group_pids(self) -> list[int]:
        """The processes of the server's group: coglet, and its Python worker."""
        return [pid for pid, _ in self._group_stats()]

    def stop(self) -> None:
        """SIGTERM to the group (in-flight predictions finish), SIGKILL after 20 s."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
