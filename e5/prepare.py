"""The one step from a caller's fields to the token rows the model reads: `Preprocessor`.

`Preprocessor.prepare` checks every limit of a request (`e5.limits`: the count and each text before any
tokenising, the windows while windowing, the tokens at the end), resolves its choices, prompts each input
(`e5.prompts.prompt_for`) and tokenises it (`e5.tokenizer.TextTokenizer`): one row per input cut to the model's
limit (`long_texts: truncate`), or one per window of each input over the limit (`chunks`, `mean`; a query is
never windowed). The rows know their input, and so its label and role, and their character span in its text.
Bulk jobs (`e5.bulk.job`) make their rows with the same `Preprocessor.rows`, so both prompt, cut and window
alike; `e5.collapse` takes the rows' vectors back to one per input.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .chunking import LongTexts, Window, group_rows
from .encoding import EncodingFormat
from .errors import RequestError, parse_choice
from .limits import Limits
from .prompts import InputType, TaskPreset, prompt_for, resolve_task
from .registry import PromptStyle
from .tokenizer import TextTokenizer, Tokenized


@dataclass(kw_only=True)
class EmbeddingRequest:
    """The caller's fields, as the predictor receives them, each passed by its name."""

    query: str | None = None
    passage: str | None = None
    texts: list[str] | None = None
    input_type: str = InputType.PASSAGE.value
    task: str | None = None
    normalize: bool = False
    truncate: bool = True
    # Another name for `passage`, as the public e5-mistral-7b-instruct predictor's clients send it.
    document: str | None = None
    encoding_format: str = EncodingFormat.FLOAT.value
    # What a passage or text over the model's limit becomes: cut (`truncate`), windows (`chunks`), or their mean.
    long_texts: str = LongTexts.TRUNCATE.value


@dataclass(frozen=True)
class TextInput:
    """One text to embed: the label errors name it by, its role (query or passage side of the prompt), and
    whether long_texts may window it (a query is always cut)."""

    label: str
    text: str
    role: InputType
    windowed: bool = True


@dataclass(frozen=True)
class Rows:
    """The model's rows for a list of inputs: `tokens` (one row each), `owners[row]` (the index of the input it
    belongs to), `spans[row]` (its characters `[start, end)` in that input's text), and the labels of the inputs
    that were cut."""

    tokens: Tokenized
    owners: list[int]
    spans: list[tuple[int, int]]
    truncated: list[str]
    inputs: list[TextInput]

    @property
    def one_per_input(self) -> bool:
        """Each input is one row, in order: no windows to collapse."""
        return len(self.owners) == len(self.inputs)

    @cached_property
    def groups(self) -> list[list[int]]:
        """For each input, its rows (worked out once: a response asks for them for vectors and for scores)."""
        count = len(self.inputs)
        return [[i] for i in range(count)] if self.one_per_input else group_rows(self.owners, count)

    def label(self, row: int) -> str:
        """The label of the input `row` belongs to."""
        return self.inputs[self.owners[row]].label

    def rows_of(self, inputs: range) -> list[int]:
        """The rows of the inputs in `inputs`, in order."""
        if self.one_per_input:
            return list(inputs)
        return [row for row, owner in enumerate(self.owners) if owner in inputs]

    def without_truncated(self) -> tuple[Rows, list[int]]:
        """These rows less the inputs that were cut (for a caller that skips them rather than embed a cut
        text), and the indices of the inputs kept; for rows of one per input (long_texts truncate)."""
        if not self.one_per_input:
            raise ValueError("without_truncated needs one row per input")
        kept = [i for i, cut in enumerate(self.tokens.truncated) if not cut]
        tokens = Tokenized([self.tokens.ids[i] for i in kept], [self.tokens.counted_lengths[i] for i in kept],
                           [False] * len(kept))
        return Rows(tokens, list(range(len(kept))), [self.spans[i] for i in kept], [],
                    [self.inputs[i] for i in kept]), kept


@dataclass(frozen=True)
class PreparedRequest:
    """A validated request: its rows (and through them its inputs, in order: the query, the passage, then
    `texts`), where each role stands among the inputs, and how the response is to be made."""

    rows: Rows
    query: int | None  # the query's index among the inputs
    passage: int | None  # the passage's (sent as `passage` or `document`)
    texts: range  # the inputs of `texts`
    normalize: bool
    encoding: EncodingFormat = EncodingFormat.FLOAT
    long_texts: LongTexts = LongTexts.TRUNCATE

    @property
    def inputs(self) -> list[TextInput]:
        return self.rows.inputs

    @property
    def tokens(self) -> Tokenized:
        return self.rows.tokens


def _passage_input(request: EmbeddingRequest) -> tuple[str, str | None]:
    """The passage and the input name it came under (`document` is another name for `passage`)."""
    if request.document is None:
        return "passage", request.passage
    if request.passage is not None:
        raise RequestError("give `passage` or `document`, not both: `document` is another name for `passage`")
    return "document", request.document


class Preprocessor:
    """Requests to prompted token rows for one checkpoint: its tokenizer and prompt style, the per-request
    `limits`, and `overlap`, the tokens neighbouring windows share (None: an eighth of a window)."""

    def __init__(self, tokenizer: TextTokenizer, style: PromptStyle, limits: Limits | None = None,
                 overlap: int | None = None):
        self.tokenizer = tokenizer
        self.style = style
        self.limits = limits or Limits()
        self.overlap = overlap

    def prepare(self, request: EmbeddingRequest) -> PreparedRequest:
        """Check the request, prompt its texts and tokenise them; a `RequestError` (`LimitError`,
        `TooLongError`, `UnknownTaskError`, raised where each fault is found) names what is wrong."""
        texts = list(request.texts or [])
        passage_label, passage = _passage_input(request)
        if request.query is None and passage is None and not texts:
            raise RequestError("nothing to embed: give `query`, `passage` (or `document`), or a non-empty `texts` list")
        # Before any prompting or tokenising, so a megabyte paste costs nothing.
        self.limits.check_count(len(texts))
        for label, text in (("query", request.query), (passage_label, passage), ("task", request.task)):
            if text is not None:
                self.limits.check_text(label, text)
        for i, text in enumerate(texts):
            self.limits.check_text(f"texts[{i}]", text)
        input_type = parse_choice(InputType, request.input_type, "input_type")
        encoding = parse_choice(EncodingFormat, request.encoding_format, "encoding_format")
        long_texts = parse_choice(LongTexts, request.long_texts, "long_texts")
        task = resolve_task(request.task)

        inputs: list[TextInput] = []
        query_at = passage_at = None
        if request.query is not None:
            query_at = len(inputs)
            inputs.append(TextInput("query", request.query, InputType.QUERY, windowed=False))
        if passage is not None:
            passage_at = len(inputs)
            inputs.append(TextInput(passage_label, passage, InputType.PASSAGE))
        first_text = len(inputs)
        inputs += [TextInput(f"texts[{i}]", text, input_type) for i, text in enumerate(texts)]
        rows = self.rows(inputs, task, long_texts, request.truncate, self.limits)
        self.limits.check_tokens(rows.tokens.token_count)
        return PreparedRequest(rows, query_at, passage_at, range(first_text, len(inputs)), request.normalize,
                               encoding, long_texts)

    def rows(self, inputs: list[TextInput], task: TaskPreset, long_texts: LongTexts, truncate: bool = True,
             limits: Limits | None = None) -> Rows:
        """Prompt and tokenise `inputs`, which have passed the per-text limits (see the module's docstring).

        With `truncate` off, an input over the limit that is to be cut raises `TooLongError` naming its label;
        `limits` caps the windows of all `inputs` together (`LimitError` naming the input that passes the cap).
        """
        prompts = [prompt_for(item.text, item.role, self.style, task) for item in inputs]
        if long_texts is LongTexts.TRUNCATE:
            tokens = self.tokenizer.tokenize([prompt + item.text[start:] for item, (prompt, start) in
                                              zip(inputs, prompts)], truncate, [item.label for item in inputs])
            return Rows(tokens, list(range(len(inputs))), [(0, len(item.text)) for item in inputs],
                        [item.label for item, cut in zip(inputs, tokens.truncated) if cut], inputs)
        ids: list[list[int]] = []
        owners: list[int] = []
        spans: list[tuple[int, int]] = []
        truncated: list[str] = []
        for owner, (item, (prompt, start)) in enumerate(zip(inputs, prompts)):
            if item.windowed:
                windows = self._windows(item.text, prompt, start)
                if limits is not None:
                    limits.check_windows(item.label, len(windows), len(ids) + len(windows), long_texts.value)
            else:
                cut = self.tokenizer.tokenize([prompt + item.text[start:]], truncate, [item.label])
                windows = [Window(0, len(item.text), cut.ids[0])]
                truncated += [item.label] if cut.truncated[0] else []
            ids += [window.ids for window in windows]
            owners += [owner] * len(windows)
            spans += [(window.start, window.end) for window in windows]
        return Rows(Tokenized(ids, [len(row) for row in ids], [False] * len(ids)), owners, spans, truncated, inputs)

    def _windows(self, text: str, prompt: str, start: int) -> list[Window]:
        """The windows of `text`, whose content begins at `start` (after a prompt it carries itself), with spans
        in `text`: the first window's starts at 0, as its ids begin with the text's own prompt."""
        windows = self.tokenizer.windows(text[start:], prompt, self.overlap)
        if not start:
            return windows
        return [Window(window.start + start if i else 0, window.end + start, window.ids)
                for i, window in enumerate(windows)]
