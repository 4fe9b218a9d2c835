"""What one request may hold, checked before any tokenising: counts, sizes and well-formed text."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import RequestError

# 2048 texts is what OpenAI's embeddings endpoint accepts in one call; 100k characters is far past every
# E5 context (4096 tokens at most) but stops a megabyte paste before the tokenizer reads it; the token
# cap bounds one request's compute at 2048 full 512-token texts.
DEFAULT_MAX_TEXTS = 2048
DEFAULT_MAX_CHARS = 100_000
DEFAULT_MAX_TOKENS = 2048 * 512
# Windows one request may have with long_texts chunks or mean: 4,096 windows of 512 tokens are twice the
# tokens of the largest request `truncate` takes (E5_MAX_TOKENS still applies to them).
DEFAULT_MAX_WINDOWS = 4096

# C0 controls except tab, newline and carriage return, plus DEL: never part of real text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class LimitError(RequestError):
    """A request over a limit or with malformed text; the message names the input and the rule."""


@dataclass(frozen=True)
class Limits:
    """Per-request limits (E5_MAX_TEXTS, E5_MAX_CHARS, E5_MAX_TOKENS, E5_MAX_WINDOWS through `Settings.limits`)."""

    max_texts: int = DEFAULT_MAX_TEXTS
    max_chars: int = DEFAULT_MAX_CHARS
    max_tokens: int = DEFAULT_MAX_TOKENS
    max_windows: int = DEFAULT_MAX_WINDOWS

    def check_count(self, count: int) -> None:
        """At most `max_texts` texts in `texts`."""
        if count > self.max_texts:
            raise LimitError(f"texts has {count} items, more than the {self.max_texts} allowed per request; "
                             "split it into several requests")

    def check_text(self, label: str, text: str) -> None:
        """Non-blank, at most `max_chars` characters, no control characters or lone surrogates."""
        if not isinstance(text, str):
            raise LimitError(f"{label} must be a string, not {type(text).__name__}")
        if len(text) > self.max_chars:
            raise LimitError(f"{label} has {len(text)} characters, more than the {self.max_chars} allowed")
        if not text.strip():
            raise LimitError(f"{label} is empty or only whitespace; every text needs content")
        if match := _SURROGATE.search(text):
            raise LimitError(f"{label} has a lone surrogate (U+{ord(match.group()):04X}) at character "
                             f"{match.start()}; send valid Unicode")
        if match := _CONTROL.search(text):
            raise LimitError(f"{label} has a control character (U+{ord(match.group()):04X}) at character "
                             f"{match.start()}; only tab, newline and carriage return are allowed")

    def check_windows(self, label: str, windows: int, total: int, mode: str) -> None:
        """At most `max_windows` windows for the whole request (`total` so far, `windows` of them from `label`)."""
        if total > self.max_windows:
            raise LimitError(f"{label} makes {windows} windows, which brings the request to {total}, more than the "
                             f"{self.max_windows} windows allowed per request (long_texts={mode}); "
                             "send fewer or shorter texts")

    def check_tokens(self, tokens: int) -> None:
        """At most `max_tokens` tokens read by the model for the whole request."""
        if tokens > self.max_tokens:
            raise LimitError(f"the request has {tokens} tokens, more than the {self.max_tokens} allowed per "
                             "request; split it into several requests")
