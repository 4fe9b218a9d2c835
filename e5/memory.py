"""Flat resident memory under varied request shapes: glibc's mmap threshold, pinned at startup.

glibc raises its mmap threshold each time a large mmapped block is freed, up to 32 MiB, so after a
while the activations of every forward pass (a few hundred KB to tens of MB, a different shape each
time) come from the heap, and freed heap rarely goes back to the OS: a served model's RSS crept up
by about 60 MB per 1000 mixed requests. A fixed threshold keeps every large buffer in its own
mapping, returned when freed. Setting it also stops the dynamic adjustment.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
DEFAULT_MMAP_THRESHOLD = 64 * 1024


def pin_mmap_threshold(threshold: int | None = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes (None leaves glibc's default); False where libc is not glibc."""
    if threshold is None:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows: no mallopt to call
        log.info("no glibc mallopt here; the allocator's mmap threshold is left as it is")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
