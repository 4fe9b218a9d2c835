"""Timing forward passes on this machine, for the load-time choice of runtime (`e5.pass_plan` decides).

`Measurements` bundles what the loader measures and the rules it applies, so that a test hands the loader
its own figures instead of patching module globals.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .onnx_runtime import ONNX_FLOAT32_TOLERANCE
from .pass_plan import BF16_MIN_COSINE, PACKED_MIN_COSINE, choose_plan


def pass_seconds(backend, rows: list[list[int]], calls: int, warm_up: bool = True) -> float:
    """The median seconds of `calls` forward passes of `backend` (an `e5.backend.Backend` on the CPU) on one pass
    of token id rows, padding or packing and pooling included (after one warm-up call)."""
    timings = []
    with torch.inference_mode():
        for _ in range(calls + warm_up):
            started = time.perf_counter()
            backend.embed(rows)
            timings.append(time.perf_counter() - started)
    timings = sorted(timings[warm_up:])
    return timings[len(timings) // 2]


def alternating_timings(models: dict, passes: dict, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Median seconds of each backend in `models` on each probe pass (rows of token ids) in `passes`, the backends
    taking turns in every round so that the machine's drift (up to 30% here) falls on all of them alike; short
    passes take the median of 3 calls."""
    for model in models.values():  # warm-up: first calls allocate and plan
        for rows in passes.values():
            pass_seconds(model, rows, calls=1)
    seconds: dict[str, dict[str, list[float]]] = {name: {shape: [] for shape in passes} for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            for shape, rows in passes.items():
                calls = 3 if sum(map(len, rows)) < 64 else 1
                seconds[name][shape].append(pass_seconds(model, rows, calls=calls, warm_up=False))
    return {name: {shape: sorted(v)[len(v) // 2] for shape, v in by.items()} for name, by in seconds.items()}


def bf16_matmul_speedup(rows: int = 256, inner: int = 384, cols: int = 1536, calls: int = 5) -> float:
    """How many times faster a bfloat16 matmul of an encoder layer's shape runs than float32 on this CPU.

    About 3-5x with AMX (550-1,076 against 174-201 GFLOP/s at 2 threads); below 1 on CPUs without bf16
    units (AMD EPYC 7003, AVX2), where a bfloat16 model ran 7x slower than float32.
    """
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(rows, inner, generator=generator), torch.randn(inner, cols, generator=generator)

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        x @ y  # warm-up
        timings = []
        for _ in range(calls):
            started = time.perf_counter()
            x @ y
            timings.append(time.perf_counter() - started)
        return min(timings)

    return best(a, b) / best(a.bfloat16(), b.bfloat16())


@dataclass(frozen=True)
class CoreUse:
    """Core seconds: what the machine had, what was busy on it (every process, and time the hypervisor took), and
    what this process used; a difference of two readings covers the time between them."""

    total: float
    busy: float
    own: float

    def __sub__(self, earlier: "CoreUse") -> "CoreUse":
        return CoreUse(self.total - earlier.total, self.busy - earlier.busy, self.own - earlier.own)

    def __add__(self, other: "CoreUse") -> "CoreUse":
        return CoreUse(self.total + other.total, self.busy + other.busy, self.own + other.own)

    @property
    def others_share(self) -> float:
        """The share of the machine's cores that other processes (or the hypervisor) took."""
        return max(self.busy - self.own, 0.0) / self.total if self.total > 0 else 0.0


def core_use(stat: Path = Path("/proc/stat"), cpus: set[int] | None = None) -> CoreUse | None:
    """The `CoreUse` so far of the cores this process may run on (`cpus`, default its affinity: /proc/stat's line
    of each, in clock ticks) and this process's own CPU time; None where there is no /proc/stat."""
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    busy = total = 0
    try:
        for line in stat.read_text().splitlines():
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
                continue
            user, nice, system, idle, iowait, irq, softirq, steal = (list(map(int, values[:8])) + [0] * 8)[:8]
            busy += user + nice + system + irq + softirq + steal
            total += user + nice + system + idle + iowait + irq + softirq + steal
    except (OSError, ValueError):
        return None
    if total == 0:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    own = os.times()
    return CoreUse(total=total / tick, busy=busy / tick, own=own.user + own.system)


class CoreWatch:
    """The `CoreUse` added up over the calls of the functions it wraps: the time spent timing passes, not loading
    or building. `total` is None where a reading failed."""

    def __init__(self, read: Callable[[], CoreUse | None]):
        self._read = read
        self.total: CoreUse | None = CoreUse(0.0, 0.0, 0.0)

    def wrap(self, function: Callable) -> Callable:
        def watched(*args, **kwargs):
            before = self._read()
            try:
                return function(*args, **kwargs)
            finally:
                after = self._read()
                if before is None or after is None or self.total is None:
                    self.total = None
                else:
                    self.total = self.total + (after - before)
        return watched


# A plan timed while other processes took more than this share of the cores serves that boot and is not cached:
# timings taken beside another heavy process were off by up to 70%.
BUSY_SHARE = 0.25


@dataclass(frozen=True)
class Measurements:
    """What the loader measures on the CPU and the rules it decides by; each replaceable in tests."""

    bf16_matmul_speedup: Callable[[], float] = bf16_matmul_speedup
    timings: Callable[[dict, dict], dict[str, dict[str, float]]] = alternating_timings
    bf16_min_cosine: float = BF16_MIN_COSINE
    packed_min_cosine: float = PACKED_MIN_COSINE
    # What makes a packed backend of a torch model and its attention (default: e5.packed.PackedBackend).
    packed_backend: Callable | None = None
    # What records a pass for replay (e5.graphs.Recorder; default: a CUDA graph), where E5_CUDA_GRAPHS=on.
    graph_recorder: Callable | None = None
    onnx_float32_tolerance: float = ONNX_FLOAT32_TOLERANCE
    choose_plan: Callable = field(default=choose_plan)
    # The machine's use of its cores, to tell timings taken beside another busy process.
    core_use: Callable[[], CoreUse | None] = core_use
    busy_share: float = BUSY_SHARE

    def busy(self, during: CoreUse | None) -> str | None:
        """Why timings taken `during` (a `CoreUse` difference) must not be kept for later boots, or None."""
        if during is None or during.others_share <= self.busy_share:
            return None
        return (f"the cores were busy: other processes took {100 * during.others_share:.0f}% of them while the "
                f"runtimes were timed (at most {100 * self.busy_share:.0f}% is kept)")
