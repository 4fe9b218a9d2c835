"""Flat resident memory under varied request shapes: freed heap given back to the OS (glibc malloc_trim).

Forward passes of ever-changing shapes allocate activations of a few hundred KB to tens of MB. glibc
raises its mmap threshold each time a large mapped block is freed, so after a while those buffers come
from the heap, and freed heap in the middle of it is rarely returned: a served model's RSS grew by about
60 MB per 1000 mixed requests. Pinning the mmap threshold low stops that but maps and faults in every
buffer afresh, which cost about 30% of batch throughput on MiniLM. `malloc_trim(0)` instead returns the
free pages of the heap (middle included) now and then: after a pass once at least `interval` seconds
have passed since the last trim, and when the engine falls idle. A trim takes 0.4 ms after a one-query
pass and 10 ms after a 256-text one.

Time alone does not bound the heap within one long call. The passes of a job are sorted by length, so each
allocates activations a little larger than the last, which fit none of the holes the previous passes left:
within one `embed-file` chunk (2,048 texts, hundreds of passes, trimmed only at its end) RSS rose by 10 MB a
pass, up to 800 MB above the trimmed heap, and the job's peak was the worst chunk's, so it grew with the
corpus (tiny BERT: 658 MiB peak at 2,000 texts, 1,276 MiB at 100,000). So a pass also trims once resident
memory has grown by more than `growth` bytes above its level after the first pass since the last trim:
reading RSS costs about 9 us a pass; on MiniLM a 2,048-text chunk trims about 15 times, some 6% of its time
in process (34.8 s against 32.7 s for 4,096 texts), and the peak stops growing with the corpus (tiny BERT:
680 MiB at 10,000 texts, 679 at 100,000).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

DEFAULT_TRIM_SECONDS = 1.0
DEFAULT_TRIM_GROWTH = 32 * 2**20  # bytes of resident growth after which a pass trims
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl, macOS, Windows: nothing to call
        log.info("no glibc malloc_trim here; freed heap is left to the allocator")
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def resident_bytes() -> int | None:
    """This process's resident set size now (Linux `/proc/self/statm`), None where there is no such file."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
    except OSError:
        return None
    try:
        return int(os.read(fd, 128).split()[1]) * _PAGE
    finally:
        os.close(fd)


class HeapTrimmer:
    """Returns freed heap to the OS at most every `interval` seconds (None: never), and whenever resident
    memory has grown by more than `growth` bytes since the last trim (None: only by time); safe from any thread."""

    def __init__(self, interval: float | None = DEFAULT_TRIM_SECONDS, growth: int | None = DEFAULT_TRIM_GROWTH):
        self.interval = interval
        self.growth = growth
        self._trim = _malloc_trim() if interval is not None else None
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._watch = self._trim is not None and growth is not None
        self._resident: int | None = None  # RSS after the first pass since the last trim: None until then
        self.trims = 0

    @property
    def enabled(self) -> bool:
        return self._trim is not None

    def trim(self) -> None:
        """Trim now."""
        if self._trim is None:
            return
        with self._lock:
            self._trim(0)
            self._last = time.monotonic()
            self.trims += 1
            self._resident = None

    def trim_if_due(self) -> None:
        """Trim if `interval` seconds have passed since the last trim."""
        if self._trim is not None and time.monotonic() - self._last >= self.interval:
            self.trim()

    def trim_if_grown(self) -> None:
        """Trim if resident memory is more than `growth` bytes above its level after the first pass since the last
        trim; called after every pass, so that the heap of one long call stays within about `growth` of that level."""
        if not self._watch:
            return
        now = resident_bytes()
        if now is None:
            self._watch = False
        elif self._resident is None:
            # The first pass after a trim faults its working set back in: that is the level to grow from, or
            # every pass whose working set exceeds `growth` would trim and fault it in again.
            self._resident = now
        elif now - self._resident > self.growth:
            self.trim()
