"""The glibc mmap threshold that keeps the server's memory flat (the soak in test_soak.py checks the effect)."""

import platform

import pytest

from e5.memory import pin_mmap_threshold
from e5.service import load_service


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_threshold_is_pinned_on_glibc():
    assert pin_mmap_threshold(64 * 1024) is True


def test_off_leaves_the_allocator_alone():
    assert pin_mmap_threshold(None) is False


def test_a_malformed_threshold_is_a_named_error(monkeypatch):
    monkeypatch.setenv("E5_MMAP_THRESHOLD", "lots")
    with pytest.raises(ValueError, match="E5_MMAP_THRESHOLD must be a positive number of bytes, not 'lots'"):
        load_service("demo-all-minilm-l6-v2")
