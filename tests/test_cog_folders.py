"""coglet's per-prediction folders (e5/cog_tools/folders.py): which ones a sweep removes, on a clock of the test's."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from e5.cog_tools.folders import PredictionFolders, last_change

KEEP = 30.0
START = 1_000_000.0


class Clock:
    def __init__(self, now: float = START):
        self.now = now

    def __call__(self) -> float:
        return self.now


def coglet_folder(root: Path, name: str, made: float) -> Path:
    """A folder as coglet makes one for a prediction, with its inputs/ and outputs/, all changed at `made`."""
    folder = root / name
    for part in ("inputs", "outputs"):
        (folder / part).mkdir(parents=True)
        os.utime(folder / part, (made, made))
    os.utime(folder, (made, made))
    return folder


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def folders(tmp_path, clock) -> PredictionFolders:
    return PredictionFolders(KEEP, root=tmp_path, clock=clock)


def test_a_finished_prediction_s_folder_goes_once_it_is_untouched_for_keep_seconds(folders, tmp_path, clock):
    with folders.running():
        clock.now += 1
        done = coglet_folder(tmp_path, "pred_done", clock.now)
        clock.now += 1
    clock.now += KEEP - 0.5  # untouched for longer than KEEP, but its prediction ended less than KEEP ago
    assert folders.sweep() == 0 and done.exists()
    clock.now += 1
    assert folders.sweep() == 1 and not done.exists()


def test_a_folder_stays_while_a_prediction_runs_however_long(folders, tmp_path, clock):
    early = coglet_folder(tmp_path, "pred_early", clock.now + 1)  # made before the long prediction started
    clock.now += 2 * KEEP
    with folders.running():
        clock.now += 1
        mine = coglet_folder(tmp_path, "pred_mine", clock.now)
        clock.now += 10 * KEEP
        assert folders.sweep() == 1 and not early.exists() and mine.exists()
    clock.now += KEEP + 1
    assert mine.exists() and folders.sweep() == 1 and not mine.exists()


def test_a_folder_with_a_spilled_file_goes_whole(folders, tmp_path, clock):
    folder = coglet_folder(tmp_path, "pred_spilled", clock.now + 1)
    (folder / "outputs" / "spill_1.json").write_text("[]")
    os.utime(folder / "outputs", (clock.now + 1, clock.now + 1))
    clock.now += 3 * KEEP
    assert folders.sweep() == 1 and not folder.exists()


def test_a_folder_that_changed_lately_stays(folders, tmp_path, clock):
    folder = coglet_folder(tmp_path, "pred_spilled", clock.now + 1)
    clock.now += 2 * KEEP
    os.utime(folder / "outputs", (clock.now - 1, clock.now - 1))  # coglet spilled a large output into it
    assert folders.sweep() == 0 and folder.exists()
    (entry,) = [entry for entry in os.scandir(tmp_path) if entry.name == folder.name]
    assert last_change(entry) == clock.now - 1


def test_folders_made_before_the_worker_started_are_another_server_s(folders, tmp_path, clock):
    older = coglet_folder(tmp_path, "pred_older", START - 1)
    (tmp_path / "not-a-folder").write_text("")
    clock.now += 10 * KEEP
    assert folders.sweep() == 0 and older.exists() and (tmp_path / "not-a-folder").exists()


def test_nothing_is_removed_when_keeping_is_off_or_coglet_made_no_folder_yet(tmp_path, clock):
    kept = PredictionFolders(None, root=tmp_path, clock=clock)
    folder = coglet_folder(tmp_path, "pred_1", clock.now + 1)
    clock.now += 10 * KEEP
    assert kept.sweep() == 0 and folder.exists()
    assert kept.start() is kept  # no thread to stop
    assert PredictionFolders(KEEP, root=tmp_path / "absent", clock=clock).sweep() == 0
    with pytest.raises(ValueError, match="positive seconds"):
        PredictionFolders(0.0, root=tmp_path)


def test_a_failed_prediction_still_ends(folders, clock):
    with pytest.raises(RuntimeError):
        with folders.running():
            raise RuntimeError("the prediction failed")
    clock.now += KEEP + 1
    assert folders.cutoff(clock.now) == clock.now - KEEP  # nothing in flight any more


def test_the_thread_sweeps_until_stopped(tmp_path):
    folders = PredictionFolders(0.1, root=tmp_path)
    folder = coglet_folder(tmp_path, "pred_1", folders.since + 0.01)
    folders.start()
    try:
        deadline = time.monotonic() + 10
        while folder.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not folder.exists()
    finally:
        folders.stop()
