"""The one step back from the rows' vectors to each input's: `collapse`, used by the service and bulk jobs.

Every row's vector is checked finite first (`NonFiniteError` names the input it belongs to, whatever runtime
computed it; the rows of other requests that shared its passes are checked in their own collapse). An input of
several windows has the token-weighted mean of their vectors, checked again, and scores as its best window
(MaxP). Vectors are normalised where asked, after the mean; scores are cosines of the raw vectors.

The maths is numpy's, on one thread: this step runs on the callers' threads (the event loop, its executor), and
a torch operation big enough to run in parallel there would leave an OpenMP pool beside the passes' own, which
makes every later pass slower (`e5.threads`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np

from .chunking import best_per_group, weighted_means
from .encoding import as_float32
from .finite import check_finite
from .prepare import Rows

# What a zero row is divided by instead of its norm of 0, as torch.nn.functional.normalize does: it stays zero.
NORM_FLOOR = 1e-12


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (a zero row stays zero), in float32."""
    with np.errstate(over="ignore", invalid="ignore"):  # rows are checked finite; squares of huge ones may not be
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
        return vectors / np.maximum(norms, np.float32(NORM_FLOOR))[:, None]


def cosines(query: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The cosine of the vector `query` with each of `rows`, in [-1, 1] (no BLAS: no thread pool of its own)."""
    return np.clip(np.einsum("ij,j->i", unit_rows(rows), unit_rows(query[None])[0]), -1.0, 1.0)


@dataclass(frozen=True)
class Collapsed:
    """The finite vectors of `rows` (`raw`, one per row, not normalised) and what an input's vector and score
    are made of. Build it with `collapse`."""

    rows: Rows
    raw: np.ndarray
    normalize: bool
    cause: Callable[[], str]  # why a vector is not finite, asked only when one is (`Encoder.non_finite_cause`)

    @cached_property
    def per_input(self) -> np.ndarray:
        """One raw vector per input: its row itself (bit for bit), or the token-weighted mean of its windows."""
        rows = self.rows
        if rows.one_per_input:
            return self.raw
        with np.errstate(over="ignore", invalid="ignore"):  # an overflowing mean is caught just below
            means = weighted_means(self.raw, rows.groups, [len(row) for row in rows.tokens.ids])
        # A mean of finite windows overflows only for absurd magnitudes, but is checked.
        check_finite(means, lambda at: rows.inputs[at].label, self.cause)
        return means

    def vectors(self, inputs: range) -> np.ndarray:
        """The vector of each input of `inputs`, normalised if asked."""
        return self._returned(self.per_input[inputs.start: inputs.stop])

    def row_vectors(self, rows: list[int] | slice) -> np.ndarray:
        """The vectors of `rows` themselves (windows kept apart), normalised if asked."""
        return self._returned(self.raw[rows])

    def row_scores(self, query: int) -> np.ndarray:
        """The cosine of input `query`'s row (a query is never windowed) with every row."""
        return cosines(self.raw[self.rows.rows_of(range(query, query + 1))[0]], self.raw)

    def scores(self, row_scores: np.ndarray, inputs: range) -> np.ndarray:
        """The score of each input of `inputs` from its rows' `row_scores`: its best window's (MaxP)."""
        if self.rows.one_per_input:
            return row_scores[inputs.start: inputs.stop]
        return best_per_group(row_scores, [self.rows.groups[i] for i in inputs])

    def _returned(self, vectors: np.ndarray) -> np.ndarray:
        return unit_rows(vectors) if self.normalize else vectors


def collapse(rows: Rows, raw, normalize: bool, cause: Callable[[], str]) -> Collapsed:
    """`raw` (a vector per row of `rows`: a CPU tensor or an array, read as float32 without a copy) once every
    row is known to be finite; `NonFiniteError` names the first input with a row that is not, and `cause()`
    says why."""
    raw = as_float32(raw)
    check_finite(raw, rows.label, cause)
    return Collapsed(rows, raw, normalize, cause)
