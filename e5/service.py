"""One embedding request, from the caller's fields to vectors and scores.

Cog-free: `predict.py` and the CLI both call `EmbeddingService.handle`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field

import torch

from .devices import describe
from .encoder import Encoder, Tokenized, TooLongError, is_out_of_memory
from .engine import BatchingEngine
from .limits import LimitError, Limits, excerpt
from .pooling import cosine_scores, l2_normalize
from .prompts import InputType, UnknownTaskError, format_text, resolve_task
from .registry import get_spec
from .weights import (
    WeightsNotFoundError, choose_model_name, download_allowed, fetch, is_present,
    missing_weights_message, verify_weights, weights_dir_for,
)

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the service cannot answer; the message names the input and the rule."""


class EmbeddingFailed(RuntimeError):
    """The model could not embed a valid request; the message says why, never the internals (paths, env)."""


def embedding_failure(exc: Exception) -> EmbeddingFailed:
    """What the caller is told when a forward pass fails; the details stay in the server log."""
    if is_out_of_memory(exc):
        return EmbeddingFailed("the device ran out of memory on this request even one text at a time; "
                               "send fewer or shorter texts")
    return EmbeddingFailed(f"embedding failed with an internal error ({type(exc).__name__}); "
                           "the server log has the details")


@dataclass
class EmbeddingRequest:
    """The caller's fields, as the predictor receives them."""

    query: str | None = None
    passage: str | None = None
    texts: list[str] | None = None
    input_type: str = InputType.PASSAGE.value
    task: str | None = None
    normalize: bool = False
    truncate: bool = True


@dataclass
class EmbeddingResponse:
    """Vectors and scores; fields not asked for stay None."""

    model: str
    dimensions: int
    token_count: int
    truncated: list[str] = field(default_factory=list)
    query_embedding: list[float] | None = None
    passage_embedding: list[float] | None = None
    embeddings: list[list[float]] | None = None
    score: float | None = None
    scores: list[float] | None = None


def _parse_input_type(value: str) -> InputType:
    try:
        return InputType(value)
    except ValueError:
        raise RequestError(f"input_type must be 'query' or 'passage', not {excerpt(value)}") from None


@dataclass
class PreparedRequest:
    """A validated request: one label and one tokenised, prompted text per vector to compute."""

    labels: list[str]
    tokens: Tokenized
    text_count: int
    normalize: bool


class EmbeddingService:
    """Answers embedding requests with one loaded `Encoder`, directly or through a `BatchingEngine`."""

    def __init__(self, encoder: Encoder, engine: BatchingEngine | None = None, limits: Limits | None = None):
        self.encoder = encoder
        self.engine = engine
        self.limits = limits or Limits.from_env()

    def handle(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Embed every text of the request in one pass on the calling thread."""
        prepared = self.prepare(request)
        try:
            vectors = self.encoder.embed_ids(prepared.tokens.ids)
        except Exception as exc:
            log.error("embedding %d texts failed", len(prepared.labels), exc_info=exc)
            raise embedding_failure(exc) from None
        return self.respond(prepared, vectors)

    async def handle_async(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Like `handle`, but the forward passes are shared with concurrent requests."""
        if self.engine is None:
            self.engine = BatchingEngine(self.encoder)
        with self.engine.arriving():
            prepared = await asyncio.to_thread(self.prepare, request)
            future = self.engine.submit(prepared.tokens.ids)
        try:
            vectors = await asyncio.wrap_future(future)
        except Exception as exc:  # the engine has logged it on its own thread, out of the request's logs
            raise embedding_failure(exc) from None
        return self.respond(prepared, vectors)

    def prepare(self, request: EmbeddingRequest) -> PreparedRequest:
        """Check the request, prompt its texts and tokenise them; `RequestError` names what is wrong."""
        texts = list(request.texts or [])
        if request.query is None and request.passage is None and not texts:
            raise RequestError("nothing to embed: give `query`, `passage`, or a non-empty `texts` list")
        try:
            self._check_limits(request, texts)
        except LimitError as exc:
            raise RequestError(str(exc)) from None
        input_type = _parse_input_type(request.input_type)
        try:
            task = resolve_task(request.task)
        except UnknownTaskError as exc:
            raise RequestError(str(exc)) from None

        style = self.encoder.spec.prompt_style
        labels: list[str] = []
        formatted: list[str] = []
        for label, text, kind in (("query", request.query, InputType.QUERY),
                                  ("passage", request.passage, InputType.PASSAGE)):
            if text is not None:
                labels.append(label)
                formatted.append(format_text(text, kind, style, task))
        for i, text in enumerate(texts):
            labels.append(f"texts[{i}]")
            formatted.append(format_text(text, input_type, style, task))

        try:
            tokens = self.encoder.tokenize(formatted, truncate=request.truncate, labels=labels)
            self.limits.check_tokens(tokens.token_count)
        except (TooLongError, LimitError) as exc:
            raise RequestError(str(exc)) from None
        return PreparedRequest(labels, tokens, len(texts), request.normalize)

    def _check_limits(self, request: EmbeddingRequest, texts: list[str]) -> None:
        # Before any prompting or tokenising, so a megabyte paste costs nothing.
        self.limits.check_count(len(texts))
        for label, text in (("query", request.query), ("passage", request.passage), ("task", request.task)):
            if text is not None:
                self.limits.check_text(label, text)
        for i, text in enumerate(texts):
            self.limits.check_text(f"texts[{i}]", text)

    def respond(self, prepared: PreparedRequest, raw: torch.Tensor) -> EmbeddingResponse:
        """Assemble vectors (normalised if asked) and cosine scores of the raw vectors."""
        labels, texts_at = prepared.labels, len(prepared.labels) - prepared.text_count
        returned = l2_normalize(raw) if prepared.normalize else raw
        by_label = {label: i for i, label in enumerate(labels)}
        response = EmbeddingResponse(
            model=self.encoder.spec.name,
            dimensions=self.encoder.dimensions,
            token_count=prepared.tokens.token_count,
            truncated=[label for label, cut in zip(labels, prepared.tokens.truncated) if cut],
        )
        if "query" in by_label:
            response.query_embedding = returned[by_label["query"]].tolist()
        if "passage" in by_label:
            response.passage_embedding = returned[by_label["passage"]].tolist()
        if prepared.text_count:
            response.embeddings = returned[texts_at:].tolist()
        if "query" in by_label and "passage" in by_label:
            response.score = _cosine(raw[by_label["query"]], raw[by_label["passage"]])
        if "query" in by_label and prepared.text_count:
            response.scores = cosine_scores(raw[by_label["query"]][None], raw[texts_at:])[0].tolist()
        return response


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(cosine_scores(a[None], b[None])[0, 0])


def load_service(model_name: str | None = None, batching: bool = False) -> EmbeddingService:
    """Load the checkpoint chosen by `model_name`, `E5_MODEL` or the one baked under `weights/`.

    Files come from `E5_WEIGHTS_DIR` or `weights/<name>/` and are checked against their manifest;
    missing ones are fetched only with `E5_ALLOW_DOWNLOAD=1`. With `batching`, the service starts
    its `BatchingEngine` now rather than on the first `handle_async`.
    """
    spec = get_spec(model_name or choose_model_name())
    path = weights_dir_for(spec)
    if not is_present(path):
        # Only into weights/<name>/: never into a directory the operator pointed E5_WEIGHTS_DIR at.
        if not download_allowed() or os.environ.get("E5_WEIGHTS_DIR") or spec.demo:
            raise WeightsNotFoundError(missing_weights_message(spec, path))
        fetch(spec, path)
    verify_weights(spec, path)
    encoder = Encoder.load(spec, path)
    # A warning so that it reaches the setup log: nothing configures logging in a Cog worker.
    log.warning("%s runs on %s", spec.name, describe(encoder.placement))
    return EmbeddingService(encoder, BatchingEngine(encoder) if batching else None)
