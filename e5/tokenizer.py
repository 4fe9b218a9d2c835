"""A checkpoint's tokenizer as its model reads it: token ids with the special tokens (and EOS where the model
card appends it), cut to the model's limit, or as overlapping windows of a long text.

The preprocessor (`e5.prepare.Preprocessor`) tokenises prompted texts through a `TextTokenizer`; the encoder
only runs the passes. Safe to share between threads: the Rust tokenizer is configured once and never reconfigured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from tokenizers import Tokenizer

from .chunking import Window, default_overlap, window_end, window_spans
from .errors import RequestError
from .registry import ModelSpec
from .threads import threads_started_named
from .weights import WeightsError

# A token covers 3-5 characters of text in the E5 tokenizers' languages (one for CJK): a head of 8 characters
# per token the model reads nearly always holds more tokens than it reads; when it does not (long tokens,
# runs of [UNK]) the head doubles until it does or the whole text is read.
FIRST_CUT_CHARS_PER_TOKEN = 8
# Tokens past the limit that a head must hold: the head's last word may tokenise differently from the same
# word in the whole text when the head has no whitespace to end at.
HEAD_MARGIN_TOKENS = 16


class TooLongError(RequestError):
    """An input over the model's token limit when truncation is off."""


@dataclass(frozen=True)
class Tokenized:
    """Token ids ready for the model, one list per text, plus what truncation did."""

    ids: list[list[int]]
    # Tokens counted per text: all of them for a text within the limit, a number past the limit for a
    # longer one (it is tokenised only a little past what the model reads).
    counted_lengths: list[int]
    truncated: list[bool]

    @property
    def token_count(self) -> int:
        """Tokens that the model actually reads."""
        return sum(len(row) for row in self.ids)


@dataclass(frozen=True)
class CheckpointTokenizer:
    """What serving needs of a checkpoint's tokenizer: the Rust tokenizer, set never to truncate or pad, and
    the ids around it. Made from the Hugging Face tokenizer once (`from_hugging_face`), it is kept in the
    plan cache as the Rust tokenizer's JSON (`to_files` / `from_file`): the Hugging Face load took 2.2 s of a
    warm boot for multilingual-e5-small, reading its JSON back 0.6 s."""

    rust: Tokenizer
    eos_id: int | None
    pad_id: int | None
    adds_eos: bool  # whether the tokenizer itself ends a text with EOS
    source: str  # the checkpoint directory, where `Encoder.tokenizer` loads the Hugging Face one from

    def __post_init__(self) -> None:
        self.rust.no_truncation()  # `TextTokenizer` cuts to the model's limit itself
        self.rust.no_padding()
        # The Rust tokenizer tokenises a batch on one thread pool for the whole process, started by the first
        # batch, whose threads would take the name of whichever thread that was (the load's, say): started here
        # under a name of its own, per-thread CPU shows tokenising as tokenising.
        with threads_started_named("e5-tokenize"):
            self.rust.encode_batch(["", ""])

    @property
    def padding_id(self) -> int:
        """The id padded rows are filled with: the checkpoint's pad token, else its EOS, else 0."""
        return self.pad_id if self.pad_id is not None else (self.eos_id or 0)

    @classmethod
    def from_hugging_face(cls, tokenizer) -> "CheckpointTokenizer":
        """Take over `tokenizer`'s Rust tokenizer. Taken rather than copied: multilingual-e5-small's is about
        260 MB in memory, and the Hugging Face wrapper another 370 MB, given back once only this holds it.
        Hugging Face's per-call `truncation=`/`max_length=` reconfigure the Rust tokenizer, which would race
        between threads: the caller hands `tokenizer` over and no longer calls it."""
        eos = tokenizer.eos_token_id
        ids = tokenizer.backend_tokenizer.encode("a", add_special_tokens=True).ids  # one text: no batch (above)
        adds_eos = eos is not None and bool(ids) and ids[-1] == eos
        return cls(tokenizer.backend_tokenizer, eos, tokenizer.pad_token_id, adds_eos, str(tokenizer.name_or_path))

    def to_files(self, path: Path) -> dict[Path, str]:
        """What `from_file(path)` reads back, by file: the Rust tokenizer's JSON at `path`, the ids beside it."""
        ids = {"eos_id": self.eos_id, "pad_id": self.pad_id, "adds_eos": self.adds_eos, "source": self.source}
        return {path: self.rust.to_str(), _ids_path(path): json.dumps(ids)}

    @classmethod
    def from_file(cls, path: Path) -> "CheckpointTokenizer":
        ids = json.loads(_ids_path(path).read_text())
        return cls(Tokenizer.from_file(str(path)), ids["eos_id"], ids["pad_id"], bool(ids["adds_eos"]), ids["source"])


def _ids_path(path: Path) -> Path:
    return Path(f"{path}.ids.json")


class TextTokenizer:
    """Prompted texts to the token ids `spec`'s model reads, at most `max_tokens` a row.

    Shared between threads: its Rust tokenizer is configured once and only read afterwards.
    """

    def __init__(self, tokenizer: CheckpointTokenizer, spec: ModelSpec, max_tokens: int):
        self.model_name = spec.name
        self.max_tokens = max_tokens
        eos = tokenizer.eos_id
        if spec.append_eos and eos is None:
            raise WeightsError(f"{spec.name} needs an EOS token but the tokenizer defines none")
        self.eos_id = eos
        self.pad_id = tokenizer.padding_id
        # Transformers 5 tokenizers no longer append EOS for e5-mistral; whether this one does was learnt
        # once, so EOS ends up there exactly once either way.
        self.append_eos = spec.append_eos and not tokenizer.adds_eos
        self._rust = tokenizer.rust
        self._specials = self._rust.num_special_tokens_to_add(False)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids with the special tokens, whole (no cut)."""
        if len(texts) == 1:  # one text: `encode` skips the batch call's thread-pool hand-off
            rows = [self._rust.encode(texts[0], add_special_tokens=True).ids]
        else:
            rows = [encoding.ids for encoding in self._rust.encode_batch(texts, add_special_tokens=True)]
        if self.append_eos:
            rows = [row + [self.eos_id] for row in rows]
        return rows

    @property
    def content_room(self) -> int:
        """How many of a text's own tokens fit beside the special tokens (and the appended EOS)."""
        return self.max_tokens - self._specials - (1 if self.append_eos else 0)

    def _with_specials(self, encoding) -> list[int]:
        """`encoding` (content tokens only) as the model reads it: special tokens added, EOS appended where due."""
        row = self._rust.post_process(encoding, None, add_special_tokens=True).ids
        return row + [self.eos_id] if self.append_eos else row

    def _head(self, text: str):
        """The content encoding of `text`, or of a head of it whose first `content_room` + 1 tokens are the
        whole text's: a text is tokenised only as far as the model can read it (a 100,000-character text
        costs what its first few thousand characters cost)."""
        room = self.content_room
        cut = room * FIRST_CUT_CHARS_PER_TOKEN
        while cut < len(text):
            head = text[:cut]
            # End the head at a whitespace, so its last word is whole and its tokens are the text's own.
            space = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
            encoding = self._rust.encode(head[:space] if space > cut // 2 else head, add_special_tokens=False)
            if len(encoding.ids) > room + HEAD_MARGIN_TOKENS:
                return encoding
            cut *= 2  # a text of long tokens: read twice as far
        return self._rust.encode(text, add_special_tokens=False)

    def tokenize(self, texts: list[str], truncate: bool = True, labels: list[str] | None = None) -> Tokenized:
        """Token ids for each text, cut to the model's limit, or `TooLongError` naming the first over-long one.

        A text longer than the model could read is tokenised only up to a little past the limit, so
        `counted_lengths` says the whole text's token count for texts within the limit and a count past the
        limit for the others.
        """
        bound = self.content_room * FIRST_CUT_CHARS_PER_TOKEN
        ids = self.encode([text if len(text) <= bound else "" for text in texts])
        counted = [len(row) for row in ids]
        for i, text in enumerate(texts):
            if len(text) > bound:
                encoding = self._head(text)
                counted[i] = len(encoding.ids) + self.max_tokens - self.content_room
                if counted[i] > self.max_tokens:
                    encoding.truncate(self.content_room)  # a per-call object: nothing shared changes
                ids[i] = self._with_specials(encoding)
        over = [i for i, n in enumerate(counted) if n > self.max_tokens]
        if over and not truncate:
            raise TooLongError(self.too_long_message(labels[over[0]] if labels else f"texts[{over[0]}]"))
        for i in over:
            if len(ids[i]) > self.max_tokens:  # tokenised whole (within the first cut's bound): cut it now
                encoding = self._rust.encode(texts[i], add_special_tokens=False)
                encoding.truncate(self.content_room)
                ids[i] = self._with_specials(encoding)
        return Tokenized(ids, counted, [n > self.max_tokens for n in counted])

    def windows(self, text: str, prompt: str, overlap: int | None = None) -> list[Window]:
        """`text` (content, its prompt apart) as overlapping windows of at most the model's limit, `prompt` and
        special tokens included.

        Windows fall on token boundaries (on word starts where the window allows: `window_end`, `next_start`)
        and cover every token of the text; neighbours share about `overlap` tokens (default an eighth of a
        window, at most half). Each window's ids are `prompt` and its own span of the text, tokenised as a
        whole text of that content would be. A text within the limit is one window, the whole text.
        """
        whole = self.tokenize([prompt + text])
        if not whole.truncated[0]:
            return [Window(0, len(text), whole.ids[0])]
        room = self.max_tokens - len(self.encode([prompt])[0])
        if room < 1:
            raise TooLongError(f"the prompt alone fills the {self.max_tokens} tokens of {self.model_name}")
        overlap = default_overlap(room) if overlap is None else overlap
        # The whole text once (E5_MAX_CHARS bounds it), for its offsets and word starts; then window by window.
        encoding = self._rust.encode(text, add_special_tokens=False)
        offsets, words = encoding.offsets, encoding.word_ids
        del encoding
        starts_word = [i == 0 or words[i] != words[i - 1] or text[offsets[i][0] - 1: offsets[i][0]].isspace()
                       for i in range(len(offsets))]
        windows: dict[int, Window] = {}  # by first token

        def fit(a: int, b: int) -> int:
            while True:
                start, end = offsets[a][0], offsets[b - 1][1]
                while start < end and text[start].isspace():
                    start += 1
                row = self.encode([prompt + text[start:end]])[0]
                # A span can tokenise a little longer alone than inside the text: shorten it by the excess.
                if len(row) <= self.max_tokens or b - a == 1:
                    break
                b = window_end(starts_word, a, b - a - (len(row) - self.max_tokens))
            if len(row) > self.max_tokens:
                raise TooLongError(f"characters {start}-{end} of a text tokenise past the {self.max_tokens}-token "
                                   f"limit of {self.model_name} even alone")
            windows[a] = Window(start, end, row)
            return b

        return [windows[a] for a, _ in window_spans(starts_word, room, overlap, fit)]

    def too_long_message(self, label: str, hint: str = "shorten it or set truncate=true") -> str:
        """What a caller is told about a text over the model's limit when it is not to be cut."""
        return f"{label} has more than the {self.max_tokens} tokens that {self.model_name} accepts; {hint}"
