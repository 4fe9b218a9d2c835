"""The one prepare step of the service and of bulk jobs: prompt each text and tokenise it into model rows.

`rows_for` takes texts that have passed the limits, each with its label (`texts[3]`, `line 7`) and side
(query or passage), and gives the token rows the model reads: one per text cut to the model's limit
(`long_texts: truncate`), or one per window of each text over the limit (`chunks`, `mean`; queries are never
windowed), with the text each row belongs to and its character span. The service (`EmbeddingService.prepare`)
and `embed-file` (`bulk.embed_records`) both call it, so both prompt, cut and window alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from .chunking import LongTexts, Window
from .encoder import Encoder, Tokenized
from .limits import Limits
from .prompts import InputType, TaskPreset, format_text


@dataclass(frozen=True)
class Rows:
    """The model's rows for a list of texts: `tokens` (one row each), `owners[row]` (the text it belongs to),
    `spans[row]` (its characters `[start, end)` in that text), and the labels of the texts that were cut."""

    tokens: Tokenized
    owners: list[int]
    spans: list[tuple[int, int]]
    truncated: list[str]


def rows_for(encoder: Encoder, texts: list[str], kinds: list[InputType], labels: list[str], task: TaskPreset,
             long_texts: LongTexts, truncate: bool = True, overlap: int | None = None,
             limits: Limits | None = None, cut_only: frozenset[int] = frozenset()) -> Rows:
    """Prompt and tokenise `texts` (see the module's docstring); the texts at `cut_only` (a request's query)
    are cut even with long_texts chunks or mean.

    With `truncate` off, a text over the limit that is to be cut raises `TooLongError` naming its label;
    `limits` caps a request's windows (`LimitError` naming the text that passes the cap).
    """
    style = encoder.spec.prompt_style
    if long_texts is LongTexts.TRUNCATE:
        tokens = encoder.tokenize([format_text(text, kind, style, task) for text, kind in zip(texts, kinds)],
                                  truncate=truncate, labels=labels)
        return Rows(tokens, list(range(len(texts))), [(0, len(text)) for text in texts],
                    [label for label, cut in zip(labels, tokens.truncated) if cut])
    ids: list[list[int]] = []
    owners: list[int] = []
    spans: list[tuple[int, int]] = []
    truncated: list[str] = []
    for owner, (text, kind, label) in enumerate(zip(texts, kinds, labels)):
        if owner in cut_only:
            query = encoder.tokenize([format_text(text, kind, style, task)], truncate, [label])
            windows = [Window(0, len(text), query.ids[0])]
            truncated += [label] if query.truncated[0] else []
        else:
            windows = encoder.windows(text, lambda part, kind=kind: format_text(part, kind, style, task), overlap)
            if limits is not None:
                limits.check_windows(label, len(windows), len(ids) + len(windows), long_texts.value)
        ids += [window.ids for window in windows]
        owners += [owner] * len(windows)
        spans += [(window.start, window.end) for window in windows]
    return Rows(Tokenized(ids, [len(row) for row in ids], [False] * len(ids)), owners, spans, truncated)
