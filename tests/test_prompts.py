import pytest

from e5.prompts import (
    DEFAULT_TASK,
    TASK_PRESETS,
    InputType,
    UnknownTaskError,
    format_text,
    instruct_query,
    prompt_for,
    resolve_task,
)
from e5.registry import PromptStyle

Q, P = InputType.QUERY, InputType.PASSAGE
PREFIX, INSTRUCT = PromptStyle.PREFIX, PromptStyle.INSTRUCT


def test_prefix_models_get_query_and_passage_prefixes():
    assert format_text("how much protein", Q, PREFIX, DEFAULT_TASK) == "query: how much protein"
    assert format_text("Protein is...", P, PREFIX, DEFAULT_TASK) == "passage: Protein is..."


def test_a_text_that_carries_its_prefix_is_not_prefixed_twice():
    assert format_text("query: already", Q, PREFIX, DEFAULT_TASK) == "query: already"
    assert format_text("passage: already", P, PREFIX, DEFAULT_TASK) == "passage: already"
    instructed = instruct_query("Retrieve parallel sentences.", "hello")
    assert format_text(instructed, Q, INSTRUCT, DEFAULT_TASK) == instructed


def test_instruct_format_is_exactly_the_model_cards():
    assert instruct_query("Given a web search query, retrieve relevant passages that answer the query",
                          "how much protein should a female eat") == (
        "Instruct: Given a web search query, retrieve relevant passages that answer the query\n"
        "Query: how much protein should a female eat")


def test_instruct_models_leave_documents_bare():
    assert format_text("A document.", P, INSTRUCT, DEFAULT_TASK) == "A document."


def test_a_query_without_a_task_still_gets_the_default_task():
    task = resolve_task(None)
    assert task is DEFAULT_TASK
    assert task.instruction == "Given a web search query, retrieve relevant passages that answer the query"
    assert format_text("q", Q, INSTRUCT, resolve_task("  ")) == instruct_query(DEFAULT_TASK.instruction, "q")


def test_presets_resolve_by_name_and_free_text_is_used_verbatim():
    assert resolve_task("semantic_similarity").instruction == "Retrieve semantically similar text."
    assert resolve_task("bitext-mining").instruction == "Retrieve parallel sentences."
    custom = resolve_task("Given a recipe title, retrieve recipes that cook the dish")
    assert custom.instruction == "Given a recipe title, retrieve recipes that cook the dish"
    assert not custom.symmetric


def test_an_unknown_preset_is_an_error_naming_the_presets():
    with pytest.raises(UnknownTaskError, match="unknown preset 'websearch'.*web_search"):
        resolve_task("websearch")


def test_symmetric_presets_prompt_both_sides_as_queries():
    sts = TASK_PRESETS["semantic_similarity"]
    assert sts.symmetric
    assert format_text("a cat", P, PREFIX, sts) == "query: a cat"
    assert format_text("a cat", P, INSTRUCT, sts) == instruct_query(sts.instruction, "a cat")


def test_presets_cover_the_families_the_readme_promises():
    names = set(TASK_PRESETS)
    assert {"web_search", "semantic_similarity", "bitext_mining", "summarization"} <= names
    assert any(name.endswith("_classification") for name in names)
    assert all(p.instruction and p.source for p in TASK_PRESETS.values())


def test_a_text_that_carries_its_prompt_keeps_it_as_its_prompt():
    # So every window of a long text is read with the prompt the text came with.
    assert prompt_for("passage: a long text", P, PREFIX, DEFAULT_TASK) == ("passage: ", 9)
    assert prompt_for("query: asked as a query", P, PREFIX, DEFAULT_TASK) == ("query: ", 7)
    assert prompt_for("a long text", P, PREFIX, DEFAULT_TASK) == ("passage: ", 0)
    own = instruct_query("Retrieve parallel sentences.", "")
    assert prompt_for(own + "hello", Q, INSTRUCT, DEFAULT_TASK) == (own, len(own))
    assert prompt_for("Instruct: no query marker", Q, INSTRUCT, DEFAULT_TASK) == ("", 0)
    assert prompt_for("hello", Q, INSTRUCT, DEFAULT_TASK) == (instruct_query(DEFAULT_TASK.instruction, ""), 0)
    assert prompt_for("A document.", P, INSTRUCT, DEFAULT_TASK) == ("", 0)
