"""Freed heap given back to the OS (e5/memory.py); the soak in test_soak.py checks the effect on a server."""

import platform
import time

import pytest

from e5.engine import BatchingEngine
from e5.memory import HeapTrimmer
from e5.settings import Settings
from engine_caller import submit

GLIBC = platform.libc_ver()[0] == "glibc"


def test_off_never_trims():
    heap = HeapTrimmer(None)
    heap.trim()
    heap.trim_if_due()
    assert not heap.enabled and heap.trims == 0


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_a_trim_is_due_only_after_its_interval():
    rare, often = HeapTrimmer(3600), HeapTrimmer(0.01)
    rare.trim_if_due()
    time.sleep(0.02)
    often.trim_if_due()
    assert rare.enabled and rare.trims == 0 and often.trims == 1
    rare.trim()
    assert rare.trims == 1


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_the_engine_trims_once_when_it_falls_idle_after_work(encoders):
    heap = HeapTrimmer(3600)  # so that only the idle trim can happen
    engine = BatchingEngine(encoders["bert"], heap=heap)
    time.sleep(0.2)
    assert heap.trims == 0  # idle from the start: nothing to give back
    submit(engine, encoders["bert"].text_tokenizer.tokenize(["passage: some work"]).ids).result(10)
    deadline = time.monotonic() + 5
    while heap.trims == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    engine.close()
    assert heap.trims == 1


def test_the_interval_is_a_setting():
    assert Settings.from_env({}).heap_trim_seconds == 1.0
    assert Settings.from_env({"E5_HEAP_TRIM_SECONDS": "0.25"}).heap_trim_seconds == 0.25
    assert Settings.from_env({"E5_HEAP_TRIM_SECONDS": "off"}).heap_trim_seconds is None
    with pytest.raises(ValueError, match="E5_HEAP_TRIM_SECONDS must be a number of seconds between 0 and 3600, "
                                         "or off, not 'often'"):
        Settings.from_env({"E5_HEAP_TRIM_SECONDS": "often"})
