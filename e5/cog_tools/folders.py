"""The folder coglet makes for every prediction, removed once no prediction of this worker can still use it.

coglet 0.23 creates `/tmp/coglet/predictions/<prediction id>/{inputs,outputs}` for each prediction and never
removes it (`predict` in crates/coglet/src/service.rs): three inodes a prediction, and an output over 6 MiB of
JSON stays there whole as `outputs/spill_*.json` (docs/development.md, "coglet's prediction folders"). coglet
uses a folder from just before the prediction reaches the worker (an input over 6 MiB is spilled to `inputs/`
and read back by the worker) until just after the prediction returns (a large output is spilled to
`outputs/` and read by coglet). A predictor is not told its prediction's id, so `PredictionFolders` judges by
time: a folder is removed when

- it was made after this worker started (older ones may be another server's on the same machine),
- nothing in it changed for `keep` seconds, and
- it is older, by `keep` seconds, than the start of every prediction this worker is running or ended less than
  `keep` seconds ago, so that a prediction in flight never loses its folder, however long it runs.

So at most the folders of the last two and a half `keep`s (the sweep runs every `keep / 2` seconds), plus those
made while the longest prediction in flight has been running, exist at once.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..threads import name_this_thread

log = logging.getLogger(__name__)

# coglet's own path, fixed in its code (not under $TMPDIR).
COGLET_PREDICTIONS = Path("/tmp/coglet/predictions")
DEFAULT_KEEP_SECONDS = 30.0


class PredictionFolders:
    """The predictions this worker runs, and the sweep of coglet's folders that they leave behind.

    `running()` brackets each prediction; `sweep()` removes what the rules above allow; `start()` sweeps every
    `keep / 2` seconds on a daemon thread. `keep=None` removes nothing (coglet's own behaviour). `clock` is
    wall-clock seconds, the time file modification times use.
    """

    def __init__(self, keep: float | None = DEFAULT_KEEP_SECONDS, root: Path = COGLET_PREDICTIONS,
                 clock: Callable[[], float] = time.time):
        if keep is not None and keep <= 0:
            raise ValueError(f"keep must be positive seconds or None, not {keep}")
        self.keep = keep
        self.root = root
        self._clock = clock
        self.since = clock()
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._running: dict[int, float] = {}  # token -> start
        self._ended: deque[tuple[float, float]] = deque()  # (end, start), in the order they ended
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def running(self) -> Iterator[None]:
        """Bracket one prediction: folders made since `keep` seconds before its start stay until `keep` seconds
        after its end."""
        token, start = next(self._tokens), self._clock()
        with self._lock:
            self._running[token] = start
        try:
            yield
        finally:
            with self._lock:
                del self._running[token]
                self._ended.append((self._clock(), start))

    def cutoff(self, now: float) -> float:
        """Folders last changed before this time belong to no prediction that may still use them."""
        assert self.keep is not None
        with self._lock:
            while self._ended and self._ended[0][0] < now - self.keep:
                self._ended.popleft()
            oldest = min((*self._running.values(), *(start for _, start in self._ended)), default=now)
        return min(now, oldest) - self.keep

    def sweep(self) -> int:
        """Remove the folders the rules allow now; how many were removed."""
        if self.keep is None:
            return 0
        cut = self.cutoff(self._clock())
        removed = 0
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                made = entry.stat(follow_symlinks=False).st_mtime
                if made < self.since or made >= cut or last_change(entry) >= cut:
                    continue
            except FileNotFoundError:
                continue
            remove(entry.path)
            removed += 1
        return removed

    def start(self) -> "PredictionFolders":
        """Sweep every `keep / 2` seconds on a daemon thread until `stop()` (no thread with `keep=None`)."""
        if self.keep is None:
            return self
        self._thread = threading.Thread(target=self._sweep_forever, name="e5-folders", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sweep_forever(self) -> None:
        name_this_thread(self._thread.name)
        failed = False
        while not self._stop.wait(self.keep / 2):
            try:
                self.sweep()
                failed = False
            except OSError as error:
                if not failed:  # once per run of failures, not every few seconds
                    log.warning("could not remove coglet's finished prediction folders in %s: %s", self.root, error)
                failed = True


def last_change(folder: os.DirEntry) -> float:
    """The newest modification time of `folder` and of the folders directly in it (coglet's inputs/ and
    outputs/, which change when it spills a file into them); the folder's own from its entry's cached stat."""
    newest = folder.stat(follow_symlinks=False).st_mtime
    with os.scandir(folder.path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


def remove(folder: str) -> None:
    """Remove one of coglet's folders: its empty inputs/ and outputs/ and itself by rmdir, as almost every one is
    (36 us of CPU a folder here, against 60 for shutil.rmtree), else the whole tree (a spilled file in it)."""
    try:
        for part in ("inputs", "outputs"):
            os.rmdir(os.path.join(folder, part))
        os.rmdir(folder)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
