"""Calls `BatchingEngine.submit_async` from a test's own thread, as the event loop of a server would: one event
loop runs on a daemon thread for the whole session, and `submit` hands back a `Pending` to wait on or cancel."""

from __future__ import annotations

import asyncio
import threading

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def _running_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="test-engine-caller", daemon=True).start()
        return _loop


def _on_loop(function, *args):
    """`function(*args)` run on the loop's thread; its value once it has run."""
    async def call():
        return function(*args)

    return asyncio.run_coroutine_threadsafe(call(), _running_loop()).result(10)


class Pending:
    """A request queued on the engine: `result` waits for its vectors, `cancel` cancels it before returning."""

    def __init__(self, future: asyncio.Future):
        self.future = future

    def result(self, timeout: float):
        async def wait():
            return await self.future

        return asyncio.run_coroutine_threadsafe(wait(), _running_loop()).result(timeout)

    def cancel(self) -> bool:
        return _on_loop(self.future.cancel)


def submit(engine, ids: list[list[int]]) -> Pending:
    """Queue `ids` on `engine` as a server's event loop does; the request is queued when this returns."""
    return Pending(_on_loop(engine.submit_async, ids))
