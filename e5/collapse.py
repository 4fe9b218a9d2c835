"""The one step back from the rows' vectors to each input's: `collapse`, used by the service and bulk jobs.

Every row's vector is checked finite first (`NonFiniteError` names the input it belongs to, whatever runtime
computed it; the rows of other requests that shared its passes are checked in their own collapse). An input of
several windows has the token-weighted mean of their vectors, checked again, and scores as its best window
(MaxP). Vectors are normalised where asked, after the mean; scores are cosines of the raw vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import torch

from .chunking import best_per_group, weighted_means
from .finite import check_finite
from .pooling import cosine_scores, l2_normalize
from .prepare import Rows


@dataclass(frozen=True)
class Collapsed:
    """The finite vectors of `rows` (`raw`, one per row, not normalised) and what an input's vector and score
    are made of. Build it with `collapse`."""

    rows: Rows
    raw: torch.Tensor
    normalize: bool
    cause: Callable[[], str]  # why a vector is not finite, asked only when one is (`Encoder.non_finite_cause`)

    @cached_property
    def per_input(self) -> torch.Tensor:
        """One raw vector per input: its row itself (bit for bit), or the token-weighted mean of its windows."""
        rows = self.rows
        if rows.one_per_input:
            return self.raw
        means = weighted_means(self.raw, rows.groups, [len(row) for row in rows.tokens.ids])
        # A mean of finite windows overflows only for absurd magnitudes, but is checked.
        check_finite(means, lambda at: rows.inputs[at].label, self.cause)
        return means

    def vectors(self, inputs: range) -> torch.Tensor:
        """The vector of each input of `inputs`, normalised if asked."""
        return self._returned(self.per_input[inputs.start: inputs.stop])

    def row_vectors(self, rows: list[int] | slice) -> torch.Tensor:
        """The vectors of `rows` themselves (windows kept apart), normalised if asked."""
        return self._returned(self.raw[rows])

    def row_scores(self, query: int) -> torch.Tensor:
        """The cosine of input `query`'s row (a query is never windowed) with every row."""
        row = self.rows.rows_of(range(query, query + 1))[0]
        return cosine_scores(self.raw[row: row + 1], self.raw)[0]

    def scores(self, row_scores: torch.Tensor, inputs: range) -> torch.Tensor:
        """The score of each input of `inputs` from its rows' `row_scores`: its best window's (MaxP)."""
        if self.rows.one_per_input:
            return row_scores[inputs.start: inputs.stop]
        return best_per_group(row_scores, [self.rows.groups[i] for i in inputs])

    def _returned(self, vectors: torch.Tensor) -> torch.Tensor:
        return l2_normalize(vectors) if self.normalize else vectors


def collapse(rows: Rows, raw: torch.Tensor, normalize: bool, cause: Callable[[], str]) -> Collapsed:
    """`raw` (a vector per row of `rows`) once every row is known to be finite; `NonFiniteError` names the
    first input with a row that is not, and `cause()` says why."""
    check_finite(raw, rows.label, cause)
    return Collapsed(rows, raw, normalize, cause)
