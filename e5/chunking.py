"""Texts longer than the model reads, as overlapping windows; one vector and one score per text from its windows.

`long_texts` says what happens to a text (a `passage`, `document` or one of `texts`) over the model's token
limit: `truncate` cuts it (the model cards' behaviour), `chunks` returns one row per window and `mean` one
row per text, the token-weighted mean of its windows. A text within the limit is one window either way, and
its vector is exactly the one `truncate` gives. With a query, a text scores as its best window (MaxP).
Queries are never chunked.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Sequence

import numpy as np

# Neighbouring windows share about an eighth of a window, so a sentence cut by one is whole in the next.
DEFAULT_OVERLAP_FRACTION = 8


class LongTexts(str, Enum):
    """What a request does with a text longer than the model reads."""

    TRUNCATE = "truncate"
    CHUNKS = "chunks"
    MEAN = "mean"


@dataclass(frozen=True)
class Window:
    """One window of a text: its character span `[start, end)` in the text, and the prompted ids the model reads."""

    start: int
    end: int
    ids: list[int]


def default_overlap(room: int) -> int:
    """Tokens neighbouring windows share when E5_CHUNK_OVERLAP is unset."""
    return room // DEFAULT_OVERLAP_FRACTION


def window_end(starts_word: Sequence[bool], a: int, room: int) -> int:
    """Where a window starting at token `a` ends (exclusive): `room` tokens on, or earlier, just before a token
    that begins a word (`starts_word[i]`) if one lies in the window's second half, so that no word is cut."""
    n = len(starts_word)
    b = min(a + max(room, 1), n)
    if b < n:
        b = next((c for c in range(b, a + room // 2, -1) if starts_word[c]), b)
    return b


def next_start(starts_word: Sequence[bool], a: int, b: int, overlap: int) -> int:
    """Where the window after `[a, b)` starts: about `overlap` tokens before `b`, at a word start where one lies
    between there and `b`; always after `a` and never after `b`, so no token is skipped."""
    target = max(b - overlap, a + 1)
    return next((c for c in range(target, b) if starts_word[c]), min(target, b))


def window_spans(starts_word: Sequence[bool], room: int, overlap: int,
                 fit: Callable[[int, int], int] | None = None) -> list[tuple[int, int]]:
    """Token ranges `[a, b)` of at most `room` tokens that cover all `len(starts_word)` tokens in order, each
    after the first starting about `overlap` tokens (at most half a window) before the previous one ends.

    `fit(a, b)` may end a window earlier (it returns the end it keeps, above `a`): the tokenizer shortens a
    span that tokenises longer alone than inside the text; the next window starts from the kept end."""
    if room < 1:
        raise ValueError(f"a window needs room for at least one token, not {room}")
    overlap = max(0, min(overlap, room // 2))
    spans: list[tuple[int, int]] = []
    a = 0
    while a < len(starts_word):
        b = window_end(starts_word, a, room)
        if fit is not None:
            b = fit(a, b)
        spans.append((a, b))
        if b >= len(starts_word):
            break
        a = next_start(starts_word, a, b, overlap)
    return spans


def group_rows(owners: Sequence[int], count: int) -> list[list[int]]:
    """For each of `count` inputs, the rows that belong to it (`owners[row]` is the row's input)."""
    rows: list[list[int]] = [[] for _ in range(count)]
    for row, owner in enumerate(owners):
        rows[owner].append(row)
    return rows


def weighted_means(vectors: np.ndarray, groups: list[list[int]], weights: Sequence[int]) -> np.ndarray:
    """One vector per group: its row itself when it has one (bit for bit), else the rows' mean weighted by
    `weights` (the tokens each window holds)."""
    if all(len(group) == 1 for group in groups):
        return vectors[[group[0] for group in groups]]
    out = np.empty((len(groups), vectors.shape[1]), dtype=vectors.dtype)
    for i, group in enumerate(groups):
        if len(group) == 1:
            out[i] = vectors[group[0]]
        else:
            w = np.asarray([float(weights[r]) for r in group], dtype=vectors.dtype)
            out[i] = (vectors[group] * w[:, None]).sum(0) / w.sum()
    return out


def best_per_group(scores: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """Each group's highest score (MaxP: a long text is as relevant as its most relevant window)."""
    return np.asarray([scores[group].max() for group in groups], dtype=scores.dtype) if groups else scores[:0]
