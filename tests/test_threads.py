"""e5.threads: the OS sees the library's threads by name; one-off work runs on a thread that ends with it."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from e5.threads import name_this_thread, run_on_own_thread, this_threads_name, threads_started_named


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc are Linux's")
def test_threads_started_inside_take_the_name_and_the_caller_keeps_its_own():
    seen: dict[str, str | None] = {}

    def child() -> None:
        seen["child"] = this_threads_name()

    def run() -> None:
        name_this_thread("e5-caller")
        with threads_started_named("e5-pool"):  # as ONNX Runtime's pool starts inside its session's constructor
            seen["inside"] = this_threads_name()
            thread = threading.Thread(target=child)
            thread.start()
            thread.join(10)
        seen["after"] = this_threads_name()

    run_on_own_thread(run, "e5-test")
    assert seen == {"inside": "e5-pool", "child": "e5-pool", "after": "e5-caller"}


def test_work_on_its_own_thread_gives_back_its_value_or_its_exception_and_the_thread_ends():
    ran_on: list[threading.Thread] = []

    def work() -> int:
        ran_on.append(threading.current_thread())
        return 42

    assert run_on_own_thread(work, "e5-test-work") == 42
    assert ran_on[0] is not threading.current_thread() and ran_on[0].name == "e5-test-work"
    assert not ran_on[0].is_alive()

    def fail() -> None:
        raise KeyError("the load's own error")

    with pytest.raises(KeyError, match="the load's own error"):
        run_on_own_thread(fail, "e5-test-fail")
