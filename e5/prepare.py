"""The one prepare step of the service and of bulk jobs: prompt each input and tokenise it into model rows,
and the one collapse step back: each input's vector and score from its rows.

`rows_for` takes `TextInput`s that have passed the limits, each with its label (`texts[3]`, `line 7`), its
prompt (query or passage) and whether it may be windowed, and gives the token rows the model reads: one per
input cut to the model's limit (`long_texts: truncate`), or one per window of each input over the limit
(`chunks`, `mean`; queries are never windowed), with the input each row belongs to and its character span.
The service (`EmbeddingService.prepare`) and `embed-file` (`bulk.job.embed_records`) both call it, so both
prompt, cut and window alike, and both collapse windows to one vector per input with `Rows.per_input`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .chunking import LongTexts, Window, best_per_group, group_rows, weighted_means
from .limits import Limits
from .prompts import InputType, TaskPreset, format_text
from .registry import PromptStyle
from .tokenizer import TextTokenizer, Tokenized


@dataclass(frozen=True)
class TextInput:
    """One text to embed: the label errors name it by, its prompt, and whether long_texts may window it (a
    query is always cut)."""

    label: str
    text: str
    kind: InputType
    windowed: bool = True


@dataclass(frozen=True)
class Rows:
    """The model's rows for a list of inputs: `tokens` (one row each), `owners[row]` (the input it belongs to),
    `spans[row]` (its characters `[start, end)` in that input's text), the labels of the inputs that were cut,
    and how many inputs there are."""

    tokens: Tokenized
    owners: list[int]
    spans: list[tuple[int, int]]
    truncated: list[str]
    inputs: int

    @property
    def one_per_input(self) -> bool:
        """Each input is one row, in order: no windows to collapse."""
        return len(self.owners) == self.inputs

    @cached_property
    def groups(self) -> list[list[int]]:
        """For each input, its rows (worked out once: respond asks for them for vectors and for scores)."""
        return [[i] for i in range(self.inputs)] if self.one_per_input else group_rows(self.owners, self.inputs)

    def per_input(self, vectors: torch.Tensor) -> torch.Tensor:
        """One vector per input: its row itself, or the token-weighted mean of its windows' vectors."""
        if self.one_per_input:
            return vectors
        return weighted_means(vectors, self.groups, [len(row) for row in self.tokens.ids])

    def best_per_input(self, scores: torch.Tensor, inputs: range) -> torch.Tensor:
        """The score of each input in `inputs` from its rows' `scores`: its best window's (MaxP)."""
        if self.one_per_input:
            return scores[inputs.start: inputs.stop]
        return best_per_group(scores, [self.groups[i] for i in inputs])

    def without_truncated(self) -> tuple[Rows, list[int]]:
        """These rows less the inputs that were cut (for a caller that skips them rather than embed a cut
        text), and the indices of the inputs kept; for rows of one per input (long_texts truncate)."""
        if not self.one_per_input:
            raise ValueError("without_truncated needs one row per input")
        kept = [i for i, cut in enumerate(self.tokens.truncated) if not cut]
        tokens = Tokenized([self.tokens.ids[i] for i in kept], [self.tokens.counted_lengths[i] for i in kept],
                           [False] * len(kept))
        return Rows(tokens, list(range(len(kept))), [self.spans[i] for i in kept], [], len(kept)), kept

    def rows_of(self, inputs: range) -> list[int]:
        """The rows of the inputs in `inputs`, in order."""
        if self.one_per_input:
            return list(inputs)
        return [row for row, owner in enumerate(self.owners) if owner in inputs]


def rows_for(tokenizer: TextTokenizer, inputs: list[TextInput], style: PromptStyle, task: TaskPreset,
             long_texts: LongTexts, truncate: bool = True, overlap: int | None = None,
             limits: Limits | None = None) -> Rows:
    """Prompt and tokenise `inputs` (see the module's docstring).

    With `truncate` off, an input over the limit that is to be cut raises `TooLongError` naming its label;
    `limits` caps a request's windows (`LimitError` naming the input that passes the cap).
    """
    if long_texts is LongTexts.TRUNCATE:
        tokens = tokenizer.tokenize([format_text(item.text, item.kind, style, task) for item in inputs],
                                    truncate=truncate, labels=[item.label for item in inputs])
        return Rows(tokens, list(range(len(inputs))), [(0, len(item.text)) for item in inputs],
                    [item.label for item, cut in zip(inputs, tokens.truncated) if cut], len(inputs))
    ids: list[list[int]] = []
    owners: list[int] = []
    spans: list[tuple[int, int]] = []
    truncated: list[str] = []
    for owner, item in enumerate(inputs):
        if not item.windowed:
            cut = tokenizer.tokenize([format_text(item.text, item.kind, style, task)], truncate, [item.label])
            windows = [Window(0, len(item.text), cut.ids[0])]
            truncated += [item.label] if cut.truncated[0] else []
        else:
            windows = tokenizer.windows(item.text, lambda part, kind=item.kind: format_text(part, kind, style, task),
                                        overlap)
            if limits is not None:
                limits.check_windows(item.label, len(windows), len(ids) + len(windows), long_texts.value)
        ids += [window.ids for window in windows]
        owners += [owner] * len(windows)
        spans += [(window.start, window.end) for window in windows]
    return Rows(Tokenized(ids, [len(row) for row in ids], [False] * len(ids)), owners, spans, truncated, len(inputs))
