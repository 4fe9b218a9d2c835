"""e5.threads: the OS sees the library's threads by name."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from e5.threads import name_this_thread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc are Linux's")
def test_a_named_thread_shows_its_name_in_proc():
    seen: list[str] = []

    def run() -> None:
        assert name_this_thread("e5-test-a-very-long-name")
        seen.append(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert seen == ["e5-test-a-very-"]  # the kernel keeps 15 bytes
