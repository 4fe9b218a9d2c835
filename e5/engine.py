"""Dynamic batching: concurrent requests share forward passes run by one worker thread.

Requests tokenise on their own, then hand their token ids to the engine. The worker takes
everything that is waiting (waiting a few milliseconds more only while other requests are
known to be on their way), embeds it as one token-budget job, and gives each request back
its own rows. A failure in a shared pass is retried request by request, so a bad neighbour
fails alone.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from .encoder import Encoder, is_out_of_memory
from .settings import env_flag, env_ms

log = logging.getLogger(__name__)

DEFAULT_MAX_WAIT_MS = 2.0
# Requests gathered into one job, counted in real (unpadded) tokens, as a multiple of the
# encoder's per-pass budget: enough to fill several passes, small enough to keep latency fair.
GATHER_BUDGETS = 8


@dataclass
class _Job:
    ids: list[list[int]]
    future: Future = field(default_factory=Future)

    @property
    def tokens(self) -> int:
        return sum(len(row) for row in self.ids)


class BatchingEngine:
    """Runs `encoder` on one background thread; concurrent `submit` calls share its passes."""

    def __init__(self, encoder: Encoder, max_wait_ms: float | None = None, dynamic: bool | None = None):
        self.encoder = encoder
        self.max_wait = (max_wait_ms if max_wait_ms is not None else env_ms("E5_BATCH_WAIT_MS", DEFAULT_MAX_WAIT_MS)) / 1000
        # With dynamic batching off each pass serves one request: the baseline the benchmark compares to.
        self.dynamic = dynamic if dynamic is not None else env_flag("E5_DYNAMIC_BATCHING", True)
        self.gather_tokens = GATHER_BUDGETS * encoder.token_budget
        self._pending: list[_Job] = []
        self._arriving = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="e5-batching", daemon=True)
        self._thread.start()

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Announce a request that is still tokenising, so the worker waits for it briefly."""
        with self._cond:
            self._arriving += 1
        try:
            yield
        finally:
            with self._cond:
                self._arriving -= 1
                self._cond.notify_all()

    def submit(self, ids: list[list[int]]) -> Future:
        """Queue token ids; the future resolves to their float32 vectors in the same order."""
        job = _Job(ids)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batching engine is closed")
            self._pending.append(job)
            self._cond.notify_all()
        return job.future

    def close(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if not self._pending:
                return None
            if self.dynamic:
                deadline = time.monotonic() + self.max_wait
                while self._arriving and sum(j.tokens for j in self._pending) < self.gather_tokens:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            jobs, tokens = [], 0
            while self._pending and (not jobs or (self.dynamic and tokens + self._pending[0].tokens <= self.gather_tokens)):
                job = self._pending.pop(0)
                tokens += job.tokens
                jobs.append(job)
            return jobs

    def _work(self) -> None:
        while (jobs := self._take()) is not None:
            live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            try:
                self._run(live)
            except BaseException as exc:  # never leave a caller waiting for ever
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _run(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        try:
            vectors = self.encoder.embed_ids([row for job in jobs for row in job.ids])
        except Exception as exc:
            if len(jobs) == 1:
                self._fail(jobs[0], exc)
                return
            log.warning("a shared pass of %d requests failed (%s); retrying them one by one", len(jobs), exc)
            for job in jobs:
                try:
                    job.future.set_result(self.encoder.embed_ids(job.ids))
                except Exception as single_exc:
                    self._fail(job, single_exc)
            return
        start = 0
        for job in jobs:
            job.future.set_result(vectors[start : start + len(job.ids)])
            start += len(job.ids)

    @staticmethod
    def _fail(job: _Job, exc: Exception) -> None:
        # Logged here, on the worker thread, so the traceback reaches the server log and not the caller.
        if is_out_of_memory(exc):
            log.warning("a request of %d texts ran out of memory even one text at a time", len(job.ids))
        else:
            log.error("a request of %d texts failed", len(job.ids), exc_info=exc)
        job.future.set_exception(exc)
