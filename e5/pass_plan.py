"""Which runtime runs each forward pass on the CPU, chosen from timings taken on this machine.

Each candidate runtime (ONNX Runtime float32, torch float32, torch bfloat16, each torch one also packed:
e5.packed) is timed at load on two probe passes, one short query and the largest batch the encoder cuts
(rows of full width), which fits its cost as `fixed + per_token x padded tokens`.
Small passes go to the runtime that is cheapest for the short query, large ones to the cheapest for the
batch, split where their two cost lines cross. The default runtime keeps a pass shape unless another is
at least `SWITCH_MARGIN` faster there, so timing noise never swaps runtimes (or costs a second copy of
the weights) for a few percent.

Why per pass: which runtime is cheaper depends on the CPU (its bf16 units, AVX-512) and on the pass's size, a
short query and a large batch often preferring different ones (docs/performance.md, "The library and the
runtime crossover").

`Runtime` names what runs a pass. Everything here is pure: the loader measures (e5.pass_timing), this
module decides and says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .batching import CPU_PASS_OVERHEAD_TOKENS


class Framework(str, Enum):
    """The library that executes a model's forward pass (not `e5.engine`, which batches requests into passes)."""

    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"


PRECISIONS = ("float32", "bfloat16", "float16", "int8")


@dataclass(frozen=True)
class Runtime:
    """What runs a pass: a framework at a precision, padded or packed. Its name, `str(runtime)` ('torch
    bfloat16', 'onnxruntime int8', 'torch float32 packed'), is for people (logs, reasons); code reads the
    fields, and the plan cache stores them as fields."""

    framework: Framework
    precision: str
    packed: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "framework", Framework(self.framework))
        if self.precision not in PRECISIONS:
            raise ValueError(f"a runtime's precision is one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.packed and self.framework is not Framework.TORCH:
            raise ValueError(f"packed passes run in torch, not {self.framework.value}")

    def __str__(self) -> str:
        return f"{self.framework.value} {self.precision}" + (" packed" if self.packed else "")

    def as_packed(self) -> "Runtime":
        """The same framework and precision run padding-free."""
        return Runtime(self.framework, self.precision, packed=True)

    @property
    def pass_overhead_tokens(self) -> int:
        """What one more pass costs on the CPU in padded tokens of this framework's work (e5.batching)."""
        return CPU_PASS_OVERHEAD_TOKENS[self.framework.value]


# The CPU's candidate runtimes.
ONNX_FLOAT32 = Runtime(Framework.ONNXRUNTIME, "float32")
ONNX_INT8 = Runtime(Framework.ONNXRUNTIME, "int8")
TORCH_FLOAT32 = Runtime(Framework.TORCH, "float32")
TORCH_BFLOAT16 = Runtime(Framework.TORCH, "bfloat16")
# How much faster than the default another runtime must be on a pass shape to take it over.
SWITCH_MARGIN = 1.15
# bfloat16 is timed as a model only where a bf16 matmul runs at least this much faster than float32:
# AMX measured 3-5x (550-1,076 against 174-201 GFLOP/s at 2 threads); AVX2-only CPUs run bf16 slower.
BF16_MATMUL_GATE = 1.5
# The lowest cosine to float32 on the probe texts at which bfloat16 may serve (measured 0.99997 on
# multilingual-e5-small with AMX).
BF16_MIN_COSINE = 0.9999
# The lowest cosine per probe text at which a packed runtime may serve, against the padded one at its precision.
PACKED_MIN_COSINE = 0.9999
# Bounds on a pass's fixed cost in padded tokens, which decides where the encoder cuts a joined pass
# (e5.batching): measured 16 in ONNX Runtime and 48 in torch float32 on MiniLM, about 150 in torch bfloat16.
OVERHEAD_TOKENS_RANGE = (16, 256)


@dataclass(frozen=True)
class RuntimeCost:
    """One runtime's measured seconds for a pass: `fixed + per_token x padded tokens`."""

    name: Runtime
    fixed: float
    per_token: float

    def seconds(self, tokens: float) -> float:
        return self.fixed + self.per_token * tokens


def fit_cost(name: Runtime, small: tuple[int, float], large: tuple[int, float]) -> RuntimeCost:
    """The cost line through two (padded tokens, seconds) timings; neither part negative."""
    (t1, s1), (t2, s2) = small, large
    per_token = max((s2 - s1) / (t2 - t1), 0.0) if t2 != t1 else s2 / max(t2, 1)
    return RuntimeCost(name, max(s1 - per_token * t1, 0.0), per_token)


@dataclass(frozen=True)
class PassPlan:
    """`small` runs passes of up to `crossover_tokens` padded tokens and `large` the rest (one runtime when
    `large` is None)."""

    small: Runtime
    large: Runtime | None = None
    crossover_tokens: int | None = None
    reason: str = ""
    # What one more pass costs in padded tokens of the large-pass runtime's work (see e5.batching).
    overhead_tokens: int = OVERHEAD_TOKENS_RANGE[0]

    @property
    def runtimes(self) -> tuple[Runtime, ...]:
        return (self.small,) if self.large is None else (self.small, self.large)

    def runtime_for(self, padded_tokens: int) -> Runtime:
        if self.large is None or padded_tokens <= self.crossover_tokens:
            return self.small
        return self.large

    def describe(self) -> str:
        if self.large is None:
            return str(self.small)
        return f"{self.small} for passes of up to {self.crossover_tokens} padded tokens, {self.large} above"


def _fastest(costs: list[RuntimeCost], default: Runtime, tokens: int, margin: float) -> RuntimeCost:
    by_name = {cost.name: cost for cost in costs}
    best = min(costs, key=lambda cost: cost.seconds(tokens))
    if default in by_name and best.seconds(tokens) * margin > by_name[default].seconds(tokens):
        return by_name[default]
    return best


def choose_plan(costs: list[RuntimeCost], default: Runtime, small_tokens: int, large_tokens: int,
                margin: float = SWITCH_MARGIN) -> PassPlan:
    """The runtime for small and for large passes from each candidate's cost line, and the reason in one line.

    `default` keeps a shape unless another runtime is `margin` times faster there; with two runtimes the
    split falls where their cost lines cross, kept between the two probe sizes.
    """
    small = _fastest(costs, default, small_tokens, margin)
    large = _fastest(costs, default, large_tokens, margin)
    timings = "; ".join(f"{c.name} {1000 * c.seconds(small_tokens):.1f} ms for {small_tokens} tokens, "
                        f"{large_tokens / c.seconds(large_tokens):,.0f} tok/s at {large_tokens}" for c in costs)
    overhead = large.fixed / large.per_token if large.per_token > 0 else OVERHEAD_TOKENS_RANGE[1]
    overhead = int(min(max(overhead, OVERHEAD_TOKENS_RANGE[0]), OVERHEAD_TOKENS_RANGE[1]))
    if small.name == large.name:
        return PassPlan(small.name, reason=f"{small.name} is fastest on both probe passes ({timings})",
                        overhead_tokens=overhead)
    if large.per_token < small.per_token:
        crossing = (large.fixed - small.fixed) / (small.per_token - large.per_token)
    else:
        crossing = large_tokens
    crossover = int(min(max(crossing, small_tokens), large_tokens))
    return PassPlan(small.name, large.name, crossover,
                    reason=f"{small.name} is fastest on a short query and {large.name} on a batch ({timings})",
                    overhead_tokens=overhead)
