"""Per-request limits and well-formed text: each failure names the input and the rule."""

import re

import pytest

from e5.limits import DEFAULT_MAX_CHARS, DEFAULT_MAX_TEXTS, DEFAULT_MAX_TOKENS, LimitError, Limits
from e5.service import EmbeddingRequest, EmbeddingService, RequestError
from e5.settings import Settings


def test_defaults_and_the_environment():
    assert Settings.from_env({}).limits == Limits(DEFAULT_MAX_TEXTS, DEFAULT_MAX_CHARS, DEFAULT_MAX_TOKENS)
    env = {"E5_MAX_TEXTS": "3", "E5_MAX_CHARS": "10", "E5_MAX_TOKENS": "99"}
    assert Settings.from_env(env).limits == Limits(3, 10, 99)
    with pytest.raises(ValueError, match="E5_MAX_TOKENS must be a positive whole number, not '-5'"):
        Settings.from_env({**env, "E5_MAX_TOKENS": "-5"})


@pytest.mark.parametrize("text,message", [
    ("", "texts[2] is empty or only whitespace"),
    ("  \n\t ", "texts[2] is empty or only whitespace"),
    ("x" * 11, "texts[2] has 11 characters, more than the 10 allowed"),
    ("ab\x00c", "texts[2] has a control character (U+0000) at character 2"),
    ("\x1bescape", "texts[2] has a control character (U+001B) at character 0"),
    ("a\ud800b", "texts[2] has a lone surrogate (U+D800) at character 1; send valid Unicode"),
    (5, "texts[2] must be a string, not int"),
])
def test_malformed_texts_are_named(text, message):
    with pytest.raises(LimitError, match=re.escape(message)):
        Limits(max_chars=10).check_text("texts[2]", text)


def test_tabs_newlines_and_any_script_are_fine():
    Limits().check_text("query", "line one\n\tline two\r\n 南瓜 café 🎃")


@pytest.fixture(scope="module")
def small_limits_service(encoders):
    return EmbeddingService(encoders["bert"], limits=Limits(max_texts=3, max_chars=40, max_tokens=30))


@pytest.mark.parametrize("request_,message", [
    (EmbeddingRequest(texts=["a", "b", "c", "d"]), r"texts has 4 items, more than the 3 allowed per request"),
    (EmbeddingRequest(query="q", passage=" "), r"passage is empty or only whitespace"),
    (EmbeddingRequest(query="q" * 41), r"query has 41 characters, more than the 40 allowed"),
    (EmbeddingRequest(query="q", task="\x07"), r"task has a control character \(U\+0007\)"),
    (EmbeddingRequest(texts=["the fox " * 4] * 3), r"the request has \d+ tokens, more than the 30 allowed"),
])
def test_the_service_refuses_before_any_work_and_names_the_input(small_limits_service, request_, message):
    with pytest.raises(RequestError, match=message):
        small_limits_service.handle(request_)


def test_a_request_at_the_limits_is_served(small_limits_service):
    r = small_limits_service.handle(EmbeddingRequest(texts=["the fox", "how much", "protein"]))
    assert len(r.embeddings) == 3 and r.token_count <= 30


def test_errors_quote_at_most_an_excerpt_of_the_input():
    from e5.errors import excerpt
    from e5.prompts import UnknownTaskError, resolve_task

    assert excerpt("websearch") == "'websearch'"
    long = excerpt("w" * 5000)
    assert long.startswith("'www") and long.endswith("… (5000 characters)") and len(long) < 70
    with pytest.raises(UnknownTaskError) as err:
        resolve_task("z" * 90_000)
    assert "(90000 characters)" in str(err.value) and str(err.value).count("z") < 60
