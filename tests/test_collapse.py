"""e5.collapse: rows' vectors back to each input's, on hand-made rows (no model)."""

from __future__ import annotations

import pytest
import torch

from e5.collapse import collapse
from e5.finite import NonFiniteError
from e5.prepare import Rows, TextInput
from e5.prompts import InputType
from e5.tokenizer import Tokenized


def _rows(owners: list[int], lengths: list[int], labels: list[str]) -> Rows:
    ids = [[7] * n for n in lengths]
    inputs = [TextInput(label, "text", InputType.PASSAGE) for label in labels]
    return Rows(Tokenized(ids, lengths, [False] * len(ids)), owners, [(0, 4)] * len(ids), [], inputs)


def _never() -> str:
    raise AssertionError("the cause is asked only when a vector is not finite")


def test_one_row_per_input_is_returned_as_it_is():
    raw = torch.randn(3, 4)
    collapsed = collapse(_rows([0, 1, 2], [5, 6, 7], ["query", "texts[0]", "texts[1]"]), raw, False, _never)
    assert collapsed.per_input is raw
    assert torch.equal(collapsed.vectors(range(1, 3)), raw[1:3])


def test_windows_become_their_token_weighted_mean_normalised_after():
    raw = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [4.0, 0.0]])
    rows = _rows([0, 1, 1, 2], [5, 30, 10, 7], ["query", "texts[0]", "texts[1]"])
    mean = (30 * raw[1] + 10 * raw[2]) / 40
    assert torch.allclose(collapse(rows, raw, False, _never).vectors(range(1, 2))[0], mean)
    assert torch.allclose(collapse(rows, raw, True, _never).vectors(range(1, 2))[0], mean / mean.norm())
    kept = collapse(rows, raw, True, _never).row_vectors([1, 2])
    assert torch.allclose(kept.norm(dim=1), torch.ones(2))


def test_an_input_scores_as_its_best_window_and_scores_use_raw_vectors():
    raw = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0], [0.0, 1.0]])
    collapsed = collapse(_rows([0, 1, 1, 2], [3, 3, 3, 3], ["query", "texts[0]", "texts[1]"]), raw, True, _never)
    row_scores = collapsed.row_scores(0)
    assert row_scores.tolist() == pytest.approx([1.0, 2 ** -0.5, 1.0, 0.0])
    assert collapsed.scores(row_scores, range(1, 3)).tolist() == pytest.approx([1.0, 0.0])


def test_a_row_that_is_not_finite_names_its_input_and_the_cause():
    raw = torch.ones(4, 2)
    raw[2, 1] = float("inf")
    rows = _rows([0, 1, 1, 2], [3, 3, 3, 3], ["query", "texts[0]", "texts[1]"])
    with pytest.raises(NonFiniteError, match=r"^texts\[0\] could not be embedded: float16 overflowed$"):
        collapse(rows, raw, False, lambda: "float16 overflowed")


def test_a_mean_that_overflows_is_caught_too():
    raw = torch.full((3, 2), 3e38)
    collapsed = collapse(_rows([0, 0, 1], [1, 1, 1], ["texts[0]", "texts[1]"]), raw, False, lambda: "too large")
    with pytest.raises(NonFiniteError, match=r"^texts\[0\] could not be embedded: too large$"):
        collapsed.vectors(range(0, 2))
