"""Timing on this machine (e5/pass_timing.py): whether other processes had the cores while the runtimes were
timed, read from /proc/stat and this process's own CPU time."""

from __future__ import annotations

import os

import pytest

from e5.pass_timing import BUSY_SHARE, CoreUse, CoreWatch, Measurements, core_use


def test_core_use_adds_up_the_ticks_of_the_cores_this_process_may_run_on(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice, in clock ticks
    stat.write_text("cpu  1600 0 800 12000 150 0 0 600 0 0\n"
                    "cpu0 500 0 250 4000 50 0 0 200 0 0\n"
                    "cpu1 500 0 250 4000 50 0 0 200 0 0\n"
                    "cpu2 600 0 300 4000 50 0 0 200 0 0\n"
                    "intr 12345 0 0\n")
    tick = os.sysconf("SC_CLK_TCK")
    use = core_use(stat, cpus={0, 1})
    assert use.total == 10000 / tick and use.busy == 1900 / tick and use.own > 0
    assert core_use(stat, cpus={2}).busy == 1100 / tick
    assert core_use(tmp_path / "absent") is None and core_use(stat, cpus={7}) is None


def test_the_share_other_processes_took_decides_whether_a_measurement_is_kept():
    quiet, busy = CoreUse(total=10.0, busy=6.0, own=5.0), CoreUse(total=10.0, busy=10.0, own=5.0)
    assert quiet.others_share == pytest.approx(0.1) and busy.others_share == pytest.approx(0.5)
    assert CoreUse(10.0, 4.0, 5.0).others_share == 0.0 and CoreUse(0.0, 0.0, 0.0).others_share == 0.0
    measurements = Measurements()
    assert measurements.busy(None) is None and measurements.busy(quiet) is None
    assert measurements.busy(busy) == (f"the cores were busy: other processes took 50% of them while the runtimes "
                                       f"were timed (at most {100 * BUSY_SHARE:.0f}% is kept)")


def test_the_watch_adds_up_only_the_calls_it_wraps():
    readings = iter([CoreUse(0, 0, 0), CoreUse(2, 1, 1), CoreUse(3, 1.5, 1.2), CoreUse(5, 3, 2), CoreUse(6, 4, 2.5)])
    watch = CoreWatch(lambda: next(readings))
    timed = watch.wrap(lambda x: x * 2)
    assert timed(3) == 6
    next(readings)  # a load between two timings, not counted
    assert timed(4) == 8
    assert watch.total == CoreUse(2 + 1, 1 + 1, 1 + 0.5)
    failing = CoreWatch(lambda: None)
    failing.wrap(lambda: None)()
    assert failing.total is None


def test_this_machine_s_core_use_moves_forward():
    before = core_use()
    if before is None:
        pytest.skip("no /proc/stat here")
    sum(range(3_000_000))
    spent = core_use() - before
    assert spent.own > 0 and spent.total >= 0
