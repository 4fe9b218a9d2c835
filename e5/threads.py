"""Threads: the operating system's name for one, so that per-thread CPU (`/proc/PID/task/*/comm`, top -H,
py-spy) tells the library's threads apart from the Python process's others; and one-off torch work on a thread
that ends with it.

OpenMP (libgomp, torch's CPU thread pool) keeps a pool of threads for every thread that runs a parallel region,
for as long as that thread lives, and once the pooled threads outnumber the cores it stops spinning between
regions: each of the hundreds of regions of a pass then waits for its threads to wake, and a single passage's
pass takes about 1.5 times as long. So the torch work of a process that serves runs on one long-lived thread
(the engine's, or the caller's), and one-off work, such as a load's probe passes, on a thread of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
import threading
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

_PR_SET_NAME, _PR_GET_NAME = 15, 16  # prctl(2)


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def name_this_thread(name: str) -> bool:
    """Give the calling thread `name` (at most 15 bytes are kept) where the OS allows; True if it took."""
    if _LIBC is None:
        return False
    return _LIBC.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0) == 0


def this_threads_name() -> str | None:
    """The OS's name for the calling thread, where the OS tells it."""
    if _LIBC is None:
        return None
    buffer = ctypes.create_string_buffer(16)
    if _LIBC.prctl(_PR_GET_NAME, buffer, 0, 0, 0) != 0:
        return None
    return buffer.value.decode(errors="replace")


@contextlib.contextmanager
def threads_started_named(name: str) -> Iterator[None]:
    """Threads that native code starts inside take `name`: a new thread inherits its creator's OS name, and
    pools such as ONNX Runtime's name none of their own. The calling thread's name is restored after."""
    before = this_threads_name()
    renamed = before is not None and name_this_thread(name)
    try:
        yield
    finally:
        if renamed:
            name_this_thread(before)


def run_on_own_thread(function: Callable[[], T], name: str) -> T:
    """`function()` on a new thread named `name` that ends with it: its value, or its exception raised here."""
    outcome: list = []

    def run() -> None:
        name_this_thread(name)
        try:
            outcome.append((True, function()))
        except BaseException as exc:  # handed to the caller, re-raised there
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
