"""Only finite numbers leave the service, whatever precision computed them.

float16, which a T4 serves in, ends at 65,504: a checkpoint whose activations pass it (finite in float32 and in
bfloat16) gives inf, then NaN, hidden states there, and a NaN in a response is not JSON (coglet then fails
the prediction with a parser error that names no input). Two checks keep them out:

- the encoder (`Encoder.issue_passes`) checks the pooled rows of every pass (`finite_rows`) and recomputes the
  rows a float16 or bfloat16 model could not hold in float32 (`Float32Fallback`: a float32 runtime the encoder
  already has, else a float32 copy of the torch model made on first need and kept), and logs how many
  (`overflow_warning`);
- the service checks the vectors of every response before it assembles it (`check_finite`), so a row that
  is still not finite, from any runtime (int8, bfloat16, float16, even float32), fails only the request it
  belongs to, with a `NonFiniteError` that names the input, the precision and what avoids it
  (`non_finite_cause`).
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .errors import ServiceError

# Precisions whose rows are recomputed in float32 when they are not finite: float16 overflows past 65,504;
# bfloat16 has float32's range, so it rarely needs to, but its rows are recomputed alike.
REDUCED_PRECISIONS = ("float16", "bfloat16")
FLOAT16_RANGE_NOTE = "its range ends at 65,504"


class NonFiniteError(ServiceError):
    """The model's output for an input is not a finite number at the precision it serves (and could not be
    recomputed in one that holds it); the message names the input, the precision and what avoids it."""


def precision_of(backend) -> str:
    """The precision a runtime computes in ('torch float16' -> 'float16')."""
    return backend.name.precision


def finite_rows(vectors: torch.Tensor) -> torch.Tensor:
    """One bool per row: every number in it is finite. Stays on the vectors' device (no synchronisation)."""
    return torch.isfinite(vectors).all(dim=1)


def float32_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A float32 copy of a float16 or bfloat16 torch model, on its device; the served model is left as it is.

    Made outside inference mode (the encoder asks for it from `IssuedPasses.result`, which runs in it), so that its
    parameters are ordinary tensors rather than inference tensors, which autograd refuses everywhere else.
    """
    with torch.inference_mode(False):
        return copy.deepcopy(model).to(torch.float32).eval()


def float32_size(model: torch.nn.Module) -> str:
    """What a float32 copy of `model`'s parameters takes, in words ('1,278.4 MiB')."""
    return f"{4 * sum(p.numel() for p in model.parameters()) / 2**20:,.1f} MiB"


@dataclass(eq=False)
class Float32Fallback:
    """What recomputes the rows a float16 or bfloat16 model could not hold: a float32 backend (`backend`),
    or why there is none (`refusal`). Settled once, on first need, under `lock`; a refusal stays, so that a
    GPU without room for the copy is not asked again by every request that overflows."""

    backend: object | None = None
    refusal: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def settled(self) -> bool:
        return self.backend is not None or self.refusal is not None


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _requests_fail(count: int) -> str:
    return "its request fails" if count == 1 else "their requests fail"


def _named(precision: str) -> str:
    return f"{precision} ({FLOAT16_RANGE_NOTE})" if precision == "float16" else precision


def overflow_warning(count: int, precision: str, fallback: Float32Fallback | None, still: int = 0) -> str:
    """The log line for `count` rows that were not finite in `precision`: recomputed in float32 (`still` of
    them not finite there either), not recomputed (`fallback.refusal`), or, at a precision that is not
    recomputed (`fallback` None), left to fail their requests."""
    if fallback is None:
        return f"{_rows(count)} {'is' if count == 1 else 'are'} not finite in {precision}; {_requests_fail(count)}"
    if fallback.backend is None:
        return (f"{_rows(count)} overflowed {precision} and cannot be recomputed in float32 ({fallback.refusal}); "
                f"{_requests_fail(count)} (E5_DTYPE=float32 avoids this)")
    if still:
        return (f"{_rows(count)} overflowed {precision}; recomputed in float32, where "
                + ("1 of them is not finite either and fails its request" if still == 1 else
                   f"{still} of them are not finite either and fail their requests"))
    return f"{_rows(count)} overflowed {precision}; recomputed in float32 (E5_DTYPE=float32 avoids this)"


def non_finite_cause(precisions: list[str], fallback: Float32Fallback) -> str:
    """Why an input's vector is not finite, for an encoder that serves in `precisions` (one, or a measured
    plan's two) and whose `fallback` is settled when a float16 or bfloat16 row first needed it.

    Every such row settles the fallback before its pass returns, so while it is unsettled the row came from a
    runtime that is not recomputed (float32, int8).
    """
    reduced = next((p for p in precisions if p in REDUCED_PRECISIONS), None)
    if reduced is not None and fallback.settled:
        if fallback.backend is None:
            return (f"the model's activations overflow {_named(reduced)} on it, and it cannot be recomputed in "
                    f"float32 here ({fallback.refusal}); E5_DTYPE=float32 avoids this")
        return (f"the model's output for it is not finite in {reduced}, nor in float32 when recomputed (an "
                "activation overflows even float32), so E5_DTYPE=float32 does not avoid it; check the checkpoint's "
                "weights")
    served = [p for p in precisions if p not in REDUCED_PRECISIONS] or precisions
    if served == ["int8"]:
        return "the model's output for it is not finite in int8; E5_QUANTIZE=none (float32) may avoid it"
    return (f"the model's output for it is not finite in {' and '.join(served)} (an activation overflows); check "
            "the checkpoint's weights")


def check_finite(vectors: np.ndarray, label_of_row: Callable[[int], str], cause: Callable[[], str]) -> None:
    """`NonFiniteError` naming the first input (`label_of_row(row)`) a row of `vectors` (an array, as
    `e5.collapse` holds them) that is not finite belongs to, and how many other inputs share its fate; `cause()`
    is asked only then."""
    finite = np.isfinite(vectors).all(axis=1)
    if bool(finite.all()):
        return
    labels = list(dict.fromkeys(label_of_row(int(row)) for row in np.flatnonzero(~finite)))
    others = f" (and {len(labels) - 1} other input{'s' if len(labels) > 2 else ''})" if len(labels) > 1 else ""
    raise NonFiniteError(f"{labels[0]}{others} could not be embedded: {cause()}")
