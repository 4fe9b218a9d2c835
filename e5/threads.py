"""The operating system's name for a thread, so that per-thread CPU (`/proc/PID/task/*/comm`, top -H, py-spy)
tells the library's threads apart from the Python process's others."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_PR_SET_NAME = 15  # prctl(2)


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
