"""Prompt formatting exactly as the E5 model cards prescribe.

Prefix models take "query: " / "passage: "; instruct models take
"Instruct: {task}\\nQuery: {query}" on the query side and bare documents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from .errors import RequestError, excerpt
from .registry import PromptStyle

QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "
INSTRUCT_MARKER = "Instruct: "
QUERY_MARKER = "\nQuery: "  # where an instruct query's instruction ends


class InputType(str, Enum):
    """Which side of a retrieval pair a text is on."""

    QUERY = "query"
    PASSAGE = "passage"


@dataclass(frozen=True)
class TaskPreset:
    """A named instruction from the E5 authors' evaluation code.

    `symmetric` tasks (similarity, bitext, classification...) compare texts of the
    same kind, so the model cards put the query-side format on every text.
    """

    name: str
    instruction: str
    symmetric: bool
    source: str


# Instructions as written in the E5 authors' evaluation code (unilm/e5/utils.py,
# get_task_def_by_task_name_and_type); `source` names the task they come from.
TASK_PRESETS: dict[str, TaskPreset] = {p.name: p for p in (
    TaskPreset("web_search", "Given a web search query, retrieve relevant passages that answer the query",
               False, "MSMARCO retrieval"),
    TaskPreset("question_answering", "Given a question, retrieve Wikipedia passages that answer the question",
               False, "NQ retrieval"),
    TaskPreset("duplicate_questions",
               "Given a question, retrieve questions that are semantically equivalent to the given question",
               False, "Quora retrieval"),
    TaskPreset("fact_checking", "Given a claim, retrieve documents that support or refute the claim",
               False, "FEVER retrieval"),
    TaskPreset("semantic_similarity", "Retrieve semantically similar text.", True, "STS"),
    TaskPreset("bitext_mining", "Retrieve parallel sentences.", True, "BitextMining"),
    TaskPreset("summarization", "Given a news summary, retrieve other semantically similar summaries",
               True, "Summarization"),
    TaskPreset("sentiment_classification",
               "Classify the sentiment of a given tweet as either positive, negative, or neutral",
               True, "TweetSentimentExtraction classification"),
    TaskPreset("emotion_classification",
               "Classify the emotion expressed in the given Twitter message into one of the six emotions: "
               "anger, fear, joy, love, sadness, and surprise",
               True, "Emotion classification"),
    TaskPreset("review_polarity_classification", "Classify Amazon reviews into positive or negative sentiment",
               True, "AmazonPolarity classification"),
    TaskPreset("intent_classification", "Given a user utterance as query, find the user intents",
               True, "MassiveIntent classification"),
    TaskPreset("toxicity_classification", "Classify the given comments as either toxic or not toxic",
               True, "ToxicConversations classification"),
)}

DEFAULT_TASK = TASK_PRESETS["web_search"]

_PRESET_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


class UnknownTaskError(RequestError):
    """A single-word task that names no preset."""


def resolve_task(task: str | None) -> TaskPreset:
    """Turn the caller's `task` (empty, a preset name, or a free instruction) into a preset.

    A single word is read as a preset name, since no real instruction is one word;
    anything longer is used verbatim as an asymmetric instruction.
    """
    text = (task or "").strip()
    if not text:
        return DEFAULT_TASK
    if _PRESET_NAME.match(text):
        preset = TASK_PRESETS.get(text.lower().replace("-", "_"))
        if preset is None:
            raise UnknownTaskError(
                f"task: unknown preset {excerpt(text)}; use one of {', '.join(TASK_PRESETS)}, "
                "or write the instruction as a sentence"
            )
        return preset
    return TaskPreset("custom", text, False, "caller")


def instruct_query(task: str, query: str) -> str:
    """The instruct models' query format: 'Instruct: {task}\\nQuery: {query}'."""
    return f"{INSTRUCT_MARKER}{task}{QUERY_MARKER}{query}"


def prompt_for(text: str, input_type: InputType, style: PromptStyle, task: TaskPreset) -> tuple[str, int]:
    """The prompt in front of `text` and where its content starts: the model reads `prompt + text[start:]`.

    A text that already carries its prompt keeps it, as its prompt (so every window of a long text gets the
    same one), and is never prompted twice.
    """
    as_query = input_type is InputType.QUERY or task.symmetric
    if style is PromptStyle.PREFIX:
        for own in (QUERY_PREFIX, PASSAGE_PREFIX):
            if text.startswith(own):
                return own, len(own)
        return (QUERY_PREFIX if as_query else PASSAGE_PREFIX), 0
    if not as_query:
        return "", 0
    if text.startswith(INSTRUCT_MARKER):
        end = text.find(QUERY_MARKER)
        return (text[:end + len(QUERY_MARKER)], end + len(QUERY_MARKER)) if end >= 0 else ("", 0)
    return instruct_query(task.instruction, ""), 0


def format_text(text: str, input_type: InputType, style: PromptStyle, task: TaskPreset) -> str:
    """`text` as the model reads it, its prompt in front (`prompt_for`)."""
    prompt, start = prompt_for(text, input_type, style, task)
    return prompt + text[start:]
