"""Dynamic batching: concurrent requests share forward passes run by one worker thread, fairly.

Requests tokenise on their own, then hand their token ids to the engine, which cuts each request
into token-budget slices at once. The worker schedules passes, not requests: the request at the
head of a rotation gives its next slice, the next slices of the other waiting requests join it
oldest first while the pass stays within the budget, and the head then goes to the back. On the
CPU the budget counts the tokens the texts hold and the encoder cuts the joined pass where padding
costs more than a pass; on a GPU it counts padded tokens. A short query that arrives while a large
request runs waits about one pass, not the whole request, and no request is passed over for
younger ones that fit better (oldest first keeps the tail latency near the mean). Each request
gets its rows back in order once its last slice is done. A failed shared pass is retried request by request, so a bad
neighbour fails alone; a request cancelled at any time is not computed any further.

On a GPU (`Encoder.asynchronous`) the worker keeps one turn in flight, as text-embeddings-inference's queue
keeps a channel of one: it issues the next turn from what is already waiting while the device runs the last,
then collects the last turn's vectors and delivers them. On the CPU a pass has run by the time it is issued,
and each turn is delivered before the next is gathered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .encoder import Encoder, is_out_of_memory
from .memory import HeapTrimmer
from .settings import DEFAULT_BATCH_WAIT_MS
from .threads import name_this_thread

log = logging.getLogger(__name__)

# How long the worker must find nothing to do before it trims the heap.
IDLE_TRIM_SECONDS = 0.05

class _LoopSink:
    """Delivers a job's result straight to its caller's asyncio future, on that future's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future):
        self.loop, self.future = loop, future

    def start(self) -> bool:
        return not self.future.cancelled()

    def cancelled(self) -> bool:
        return self.future.cancelled()

    def set_result(self, value) -> None:
        self._settle(asyncio.Future.set_result, value)

    def set_exception(self, exc: BaseException) -> None:
        self._settle(asyncio.Future.set_exception, exc)

    def _settle(self, method, value) -> None:
        _settle_on_loop(self.loop, [(method, self.future, value)])


def _settle_on_loop(loop: asyncio.AbstractEventLoop, settlements: list[tuple]) -> None:
    """Run each `(method, future, value)` on `loop` with one thread-safe wake-up for all of them; a future
    already done (cancelled) is left alone."""
    def settle() -> None:
        for method, future, value in settlements:
            if not future.done():
                method(future, value)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the callers' loop has closed: nobody is waiting any more
        pass


def _deliver(results: list[tuple[_LoopSink, torch.Tensor]]) -> None:
    """Each sink's result, with one wake-up per event loop for all its futures rather than one per future: at
    32 clients of one text each, a pass finishes many requests awaited on coglet's one loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple]] = {}
    for sink, value in results:
        by_loop.setdefault(sink.loop, []).append((asyncio.Future.set_result, sink.future, value))
    for loop, settlements in by_loop.items():
        _settle_on_loop(loop, settlements)


@dataclass(eq=False)
class _Job:
    ids: list[list[int]]
    sink: _LoopSink
    slices: deque[list[int]]  # row indices of each slice still to run, from `PassPolicy.slices`
    vectors: torch.Tensor | None = None
    in_flight: int = 0  # slices taken into a pass whose result has not been stored yet
    started: bool = False
    failed: bool = False

    def slice_tokens(self) -> int:
        return sum(len(self.ids[i]) for i in self.slices[0]) if self.slices else 0


@dataclass(eq=False)
class _Turn:
    """One turn of the rotation, issued: its jobs' slices, and what gives its vectors (`collect`: on a GPU it
    waits for the passes issued, on the CPU it runs them; a failure is raised there)."""

    parts: list[tuple[_Job, list[int]]]
    collect: Callable[[], torch.Tensor]


class BatchingEngine:
    """Runs `encoder` on one background thread; concurrent `submit_async` calls share its passes. With `overlap`
    (default: `encoder.asynchronous`) the next turn is issued before the last one's vectors are collected."""

    def __init__(self, encoder: Encoder, max_wait_ms: float = DEFAULT_BATCH_WAIT_MS, dynamic: bool = True,
                 heap: HeapTrimmer | None = None, clock: Callable[[], float] = time.monotonic,
                 overlap: bool | None = None):
        self.encoder = encoder
        self.overlap = encoder.asynchronous if overlap is None else overlap
        self.heap = heap  # trimmed whenever the worker falls idle after some work (see e5.memory)
        self._worked_since_trim = False
        self.max_wait = max_wait_ms / 1000
        self._clock = clock  # what bounds the wait for announced requests (injectable for tests)
        # With dynamic batching off each pass serves one request: the baseline the benchmark compares to.
        self.dynamic = dynamic
        # The encoder states how passes are cut: the engine slices each request by it when it arrives and
        # joins slices within its budget; the encoder cuts each turn into passes (`Encoder.embed_ids`).
        self.policy = encoder.pass_policy
        self._rotation: deque[_Job] = deque()  # waiting and running jobs; the head gives the next pass's first slice
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

    def submit_async(self, ids: list[list[int]]) -> asyncio.Future:
        """Queue token ids from a caller on an event loop; the future resolves there to their float32 vectors in
        the same order. Cancelling it stops the remaining passes."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._enqueue(ids, _LoopSink(loop, future))
        return future

    def _enqueue(self, ids: list[list[int]], sink) -> None:
        slices = deque(self.policy.slices([len(row) for row in ids]))
        job = _Job(ids, sink, slices)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batching engine is closed")
            if not slices:  # nothing to compute
                sink.start()
                sink.set_result(torch.empty((0, 0), dtype=torch.float32))
                return
            self._rotation.append(job)
            self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # --- the worker ------------------------------------------------------------------------

    def _next_pass(self, wait: bool = True) -> list[tuple[_Job, list[int]]] | None:
        """The slices of the next forward pass, or None once closed and drained; without `wait`, None as soon as
        nothing is waiting to run (a turn is in flight: its results are not held back for requests still on
        their way)."""
        with self._cond:
            while True:
                while wait and not self._rotation and not self._closed:
                    self._wait_idle()
                if not self._rotation:
                    return None
                if self.dynamic and wait:
                    self._wait_for_arrivals()
                for job in [job for job in self._rotation if job.sink.cancelled()]:
                    self._drop(job)
                if not self._rotation:
                    continue
                head = self._rotation[0]
                parts = [(head, head.slices[0])] + (self._fill(head) if self.dynamic else [])
                parts = [(job, slice_) for job, slice_ in parts if self._start(job)]
                if parts:
                    break
            self._worked_since_trim = True
            for job, _ in parts:
                job.slices.popleft()
                job.in_flight += 1
            self._rotation.rotate(-1)  # the head goes to the back
            for job, _ in parts:
                if not job.slices:
                    self._rotation.remove(job)
            return parts

    def _wait_idle(self) -> None:
        # Falling idle after work is the moment to give freed activations back: no request waits for it.
        if self.heap is None or not self._worked_since_trim:
            self._cond.wait()
        elif not self._cond.wait(IDLE_TRIM_SECONDS):
            self.heap.trim()
            self._worked_since_trim = False

    def _wait_for_arrivals(self) -> None:
        # Only while requests are known to be on their way and the next pass is not yet full.
        deadline = self._clock() + self.max_wait
        while self._arriving and sum(job.slice_tokens() for job in self._rotation) < self.policy.token_budget:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _start(self, job: _Job) -> bool:
        """Mark a job's first pass; False (and the job dropped) if it was cancelled while it waited."""
        if not job.started:
            job.started = job.sink.start()
            if not job.started:
                self._drop(job)
        return job.started

    def _drop(self, job: _Job) -> None:
        job.failed = True  # anything still in flight for it is discarded
        self._rotation.remove(job)

    def _fill(self, head: _Job) -> list[tuple[_Job, list[int]]]:
        """Other jobs' next slices that fit beside the head's in one pass, oldest first (rotation order).

        A slice's rows are sorted by length, so its last row is its longest.
        """
        first = head.slices[0]
        rows, width, tokens = len(first), len(head.ids[first[-1]]), head.slice_tokens()
        joined = []
        for job in self._rotation:
            if job is head:
                continue
            slice_ = job.slices[0]
            grown_rows, grown_width = rows + len(slice_), max(width, len(job.ids[slice_[-1]]))
            grown_tokens = tokens + job.slice_tokens()
            if not self.policy.fits(grown_rows, grown_width, grown_tokens):
                continue
            rows, width, tokens = grown_rows, grown_width, grown_tokens
            joined.append((job, slice_))
        return joined

    def _work(self) -> None:
        name_this_thread(self._thread.name)
        in_flight: _Turn | None = None
        while True:
            parts = self._next_pass(wait=in_flight is None)
            if parts is None and in_flight is None:
                return  # closed and drained
            turn = self._issue(parts) if parts is not None else None
            if in_flight is not None:
                self._finish(in_flight)  # the device ran it while the next turn was gathered and issued
            if turn is not None and not self.overlap:
                self._finish(turn)  # the CPU's: run to the end and delivered before the next is gathered
                turn = None
            in_flight = turn

    def _embed(self, ids: list[list[int]]) -> torch.Tensor:
        """The rows of one turn of the rotation, in the passes the encoder cuts them into (on the CPU, a joined
        turn is cut again where padding costs more than a pass)."""
        return self.encoder.embed_ids(ids)

    def _issue(self, parts: list[tuple[_Job, list[int]]]) -> _Turn:
        """A turn's passes issued with `overlap`, their vectors collected later; without it, run when collected."""
        ids = [job.ids[i] for job, slice_ in parts for i in slice_]
        if not self.overlap:
            return _Turn(parts, lambda: self._embed(ids))
        try:
            return _Turn(parts, self.encoder.issue(ids).result)
        except BaseException as exc:  # raised in `_finish`, where its requests are failed or retried
            error = exc  # `exc` itself is unbound when the block ends

            def fail() -> torch.Tensor:
                raise error

            return _Turn(parts, fail)

    def _finish(self, turn: _Turn) -> None:
        try:
            self._run(turn)
        except BaseException as exc:  # never leave a caller waiting for ever
            for job, _ in turn.parts:
                self._fail(job, exc)

    def _run(self, turn: _Turn) -> None:
        parts = turn.parts
        try:
            vectors = turn.collect()
        except Exception as exc:
            if len(parts) == 1:
                self._fail(parts[0][0], exc)
                return
            log.warning("a shared pass of %d requests failed (%s); retrying them one by one", len(parts), exc)
            for job, slice_ in parts:
                try:
                    if self._store(job, slice_, self._embed([job.ids[i] for i in slice_])):
                        _deliver([(job.sink, job.vectors)])
                except Exception as single_exc:
                    self._fail(job, single_exc)
            return
        start, finished = 0, []
        for job, slice_ in parts:
            if self._store(job, slice_, vectors[start : start + len(slice_)]):
                finished.append((job.sink, job.vectors))
            start += len(slice_)
        _deliver(finished)

    def _store(self, job: _Job, slice_: list[int], vectors: torch.Tensor) -> bool:
        """Keep a slice's vectors; True when they were the job's last, its result now ready to deliver."""
        if job.failed:
            return False
        if job.vectors is None and len(slice_) == len(job.ids) and slice_ == list(range(len(slice_))):
            job.vectors = vectors  # the whole job in one slice, in order (a single text): nothing to gather
        else:
            if job.vectors is None:
                job.vectors = torch.empty((len(job.ids), vectors.shape[1]), dtype=vectors.dtype)
            job.vectors[torch.tensor(slice_)] = vectors
        with self._cond:
            job.in_flight -= 1
            return not job.slices and not job.in_flight

    def _fail(self, job: _Job, exc: BaseException) -> None:
        with self._cond:
            if job.failed:
                return
            job.failed = True
            if job in self._rotation:
                self._rotation.remove(job)  # its remaining slices are never run
        # Logged here, on the worker thread, so the traceback reaches the server log and not the caller.
        if is_out_of_memory(exc):
            log.warning("a request of %d texts ran out of memory even one text at a time", len(job.ids))
        elif isinstance(exc, Exception):
            log.error("a request of %d texts failed", len(job.ids), exc_info=exc)
        job.sink.set_exception(exc)
