"""e5.prepare: a request's fields to prompted token rows, every limit checked in that one step."""

from __future__ import annotations

import pytest

from e5.chunking import LongTexts
from e5.encoding import EncodingFormat
from e5.limits import LimitError, Limits
from e5.prepare import EmbeddingRequest, Preprocessor, TextInput
from e5.prompts import DEFAULT_TASK, InputType, format_text
from e5.registry import PromptStyle
from e5.tokenizer import TooLongError

LONG = " ".join(f"Sentence {i} says that proteins, enzymes and cells work together." for i in range(120))


@pytest.fixture
def bert(encoders):
    return encoders["bert"]


def _preprocessor(encoder, limits: Limits | None = None, overlap: int | None = None) -> Preprocessor:
    return Preprocessor(encoder.text_tokenizer, encoder.spec.prompt_style, limits, overlap)


class _Untouchable:
    """A tokenizer that fails any test that reaches it."""

    def __getattr__(self, name):
        raise AssertionError(f"the tokenizer was reached ({name}) before the limits were checked")


def test_inputs_come_in_order_with_their_labels_and_roles(bert):
    prepared = _preprocessor(bert).prepare(EmbeddingRequest(query="q", document="d", texts=["a", "b"],
                                                            input_type="query", encoding_format="base64"))
    assert [(i.label, i.role, i.windowed) for i in prepared.inputs] == [
        ("query", InputType.QUERY, False), ("document", InputType.PASSAGE, True),
        ("texts[0]", InputType.QUERY, True), ("texts[1]", InputType.QUERY, True)]
    assert (prepared.query, prepared.passage, prepared.texts) == (0, 1, range(2, 4))
    assert prepared.encoding is EncodingFormat.BASE64 and prepared.long_texts is LongTexts.TRUNCATE
    expected = [format_text(text, role, bert.spec.prompt_style, DEFAULT_TASK)
                for text, role in (("q", InputType.QUERY), ("d", InputType.PASSAGE), ("a", InputType.QUERY),
                                   ("b", InputType.QUERY))]
    assert prepared.tokens.ids == bert.text_tokenizer.tokenize(expected).ids


@pytest.mark.parametrize("request_, message", [
    (EmbeddingRequest(texts=["fine"] * 3), "texts has 3 items, more than the 2 allowed"),
    (EmbeddingRequest(query="x" * 101), "query has 101 characters, more than the 100 allowed"),
    (EmbeddingRequest(passage="p", task="t" * 101), "task has 101 characters"),
    (EmbeddingRequest(texts=["fine", "bad\x00"]), r"texts\[1\] has a control character \(U\+0000\)"),
])
def test_limits_are_checked_before_anything_is_tokenised(request_, message):
    preprocessor = Preprocessor(_Untouchable(), PromptStyle.PREFIX, Limits(max_texts=2, max_chars=100))
    with pytest.raises(LimitError, match=message):
        preprocessor.prepare(request_)


def test_the_token_cap_counts_what_the_model_reads(bert):
    tokens = len(_preprocessor(bert).prepare(EmbeddingRequest(texts=["one two", "three"])).tokens.ids[0]) + len(
        _preprocessor(bert).prepare(EmbeddingRequest(texts=["three"])).tokens.ids[0])
    capped = _preprocessor(bert, Limits(max_tokens=tokens - 1))
    with pytest.raises(LimitError, match=f"the request has {tokens} tokens, more than the {tokens - 1} allowed"):
        capped.prepare(EmbeddingRequest(texts=["one two", "three"]))


def test_windows_know_their_input_and_span_and_the_cap_names_the_input(bert):
    preprocessor = _preprocessor(bert)
    inputs = [TextInput("texts[0]", "short", InputType.PASSAGE), TextInput("texts[1]", LONG, InputType.PASSAGE)]
    rows = preprocessor.rows(inputs, DEFAULT_TASK, LongTexts.CHUNKS)
    assert rows.owners[0] == 0 and set(rows.owners[1:]) == {1} and len(rows.owners) > 2
    assert rows.spans[0] == (0, 5) and rows.spans[1][0] == 0 and rows.spans[-1][1] == len(LONG)
    assert [rows.label(row) for row in (0, 1)] == ["texts[0]", "texts[1]"] and rows.rows_of(range(1, 2))[0] == 1
    for row, (start, end) in list(enumerate(rows.spans))[1:]:
        assert rows.tokens.ids[row] == bert.text_tokenizer.tokenize(["passage: " + LONG[start:end]]).ids[0]
    windows = len(rows.owners) - 1
    with pytest.raises(LimitError, match=rf"texts\[1\] makes {windows} windows, which brings the request to "
                                         rf"{windows + 1}, more than the {windows} windows allowed"):
        preprocessor.rows(inputs, DEFAULT_TASK, LongTexts.CHUNKS, limits=Limits(max_windows=windows))


def test_every_window_of_a_text_that_carries_its_prompt_is_read_with_that_prompt(bert):
    own = "query: " + LONG  # a passage that came as a query: each window is read as one
    rows = _preprocessor(bert).rows([TextInput("passage", own, InputType.PASSAGE)], DEFAULT_TASK, LongTexts.MEAN)
    assert len(rows.spans) > 1 and rows.spans[0][0] == 0 and rows.spans[-1][1] == len(own)
    assert rows.tokens.ids[0] == bert.text_tokenizer.tokenize([own[:rows.spans[0][1]]]).ids[0]
    for row, (start, end) in list(enumerate(rows.spans))[1:]:
        assert rows.tokens.ids[row] == bert.text_tokenizer.tokenize(["query: " + own[start:end]]).ids[0]


def test_a_query_is_cut_never_windowed_and_truncate_off_names_it(bert):
    preprocessor = _preprocessor(bert)
    prepared = preprocessor.prepare(EmbeddingRequest(query=LONG * 2, texts=["a"], long_texts="mean"))
    assert prepared.rows.truncated == ["query"] and prepared.rows.owners == [0, 1]
    with pytest.raises(TooLongError, match="query has more than the 512 tokens"):
        preprocessor.prepare(EmbeddingRequest(query=LONG * 2, long_texts="mean", truncate=False))


def test_without_truncated_keeps_the_inputs_that_fit(bert):
    inputs = [TextInput(f"line {i}", text, InputType.PASSAGE) for i, text in enumerate(["a", LONG * 2, "b"])]
    rows, kept = _preprocessor(bert).rows(inputs, DEFAULT_TASK, LongTexts.TRUNCATE).without_truncated()
    assert kept == [0, 2] and [item.label for item in rows.inputs] == ["line 0", "line 2"]
    assert rows.owners == [0, 1] and rows.truncated == []
