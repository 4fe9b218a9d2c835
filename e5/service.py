"""One embedding request, from the caller's fields to vectors and scores.

Cog-free: `predict.py` and the CLI both call `EmbeddingService.handle`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from .chunking import LongTexts
from .collapse import collapse
from .devices import describe
from .encoder import Encoder, is_out_of_memory
from .encoding import EncodingFormat, as_float32, matrix_to_npy, vectors_to_text
from .engine import BatchingEngine
from .errors import RequestError, ServiceError
from .limits import Limits
from .loader import load_encoder
from .prepare import EmbeddingRequest, PreparedRequest, Preprocessor
from .settings import Settings
from .weights import find_checkpoint

__all__ = ["EmbeddingFailed", "EmbeddingRequest", "EmbeddingResponse", "EmbeddingService", "PreparedRequest",
           "RequestError", "load_service"]

log = logging.getLogger(__name__)


class EmbeddingFailed(ServiceError):
    """The model could not embed a valid request; the message says why, never the internals (paths, env)."""


def embedding_failure(exc: Exception) -> EmbeddingFailed:
    """What the caller is told when a forward pass fails; the details stay in the server log."""
    if is_out_of_memory(exc):
        return EmbeddingFailed("the device ran out of memory on this request even one text at a time; "
                               "send fewer or shorter texts")
    return EmbeddingFailed(f"embedding failed with an internal error ({type(exc).__name__}); "
                           "the server log has the details")


@dataclass
class EmbeddingResponse:
    """Vectors and scores; fields not asked for stay None. Each field has one type, whatever the request.

    Vectors are float32 numpy arrays: `embeddings` one [rows, dimensions] matrix (a row per text, or per
    window with long_texts=chunks), `scores` one float32 per text. With `encoding_format` base64 or ubinary
    the vectors are base64 strings in the `*_base64` fields instead; with npy the rows are the bytes of one
    .npy file in `embeddings_npy`. With long_texts=chunks, `chunk_text`, `chunk_start` and `chunk_end` say
    which text each row comes from and its character span `[start, end)` in it; `chunk_scores` is a score
    per row.
    """

    model: str
    dimensions: int
    token_count: int
    truncated: list[str] = field(default_factory=list)
    query_embedding: np.ndarray | None = None
    passage_embedding: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    query_embedding_base64: str | None = None
    passage_embedding_base64: str | None = None
    embeddings_base64: list[str] | None = None
    score: float | None = None
    scores: np.ndarray | None = None
    chunk_text: np.ndarray | None = None
    chunk_start: np.ndarray | None = None
    chunk_end: np.ndarray | None = None
    chunk_scores: np.ndarray | None = None
    embeddings_npy: bytes | None = None


# A request this small is prepared on the event loop: checking and tokenising it costs less than a thread hop.
SHORT_REQUEST_TEXTS = 8
SHORT_REQUEST_CHARS = 4096
# A response of more rows is assembled on a thread: encoding many vectors (base64, npy) takes milliseconds.
RESPOND_ON_LOOP_ROWS = 8


def _is_short(request: EmbeddingRequest) -> bool:
    texts = request.texts if isinstance(request.texts, list) else []
    if len(texts) > SHORT_REQUEST_TEXTS:
        return False
    fields = [request.query, request.passage, request.task, *texts]
    return sum(len(text) for text in fields if isinstance(text, str)) <= SHORT_REQUEST_CHARS


class EmbeddingService:
    """Answers embedding requests with one loaded `Encoder`, directly or through a `BatchingEngine`."""

    def __init__(self, encoder: Encoder, engine: BatchingEngine | None = None, limits: Limits | None = None,
                 model_name: str | None = None, chunk_overlap: int | None = None):
        self.encoder = encoder
        self.engine = engine
        # `chunk_overlap`: the tokens neighbouring windows share (None: an eighth of a window).
        self.preprocessor = Preprocessor(encoder.text_tokenizer, encoder.spec.prompt_style, limits, chunk_overlap)
        # What responses call the model: the registry name, and what the weights are when not the published ones.
        self.model_name = model_name or encoder.spec.name

    def handle(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """Embed every text of the request in one pass on the calling thread."""
        prepared = self.prepare(request)
        try:
            vectors = self.encoder.embed_ids(prepared.tokens.ids)
        except Exception as exc:
            log.error("embedding %d rows failed", len(prepared.tokens.ids), exc_info=exc)
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
        if len(prepared.tokens.ids) > RESPOND_ON_LOOP_ROWS:
            return await asyncio.to_thread(self.respond, prepared, vectors)
        return self.respond(prepared, vectors)

    def prepare(self, request: EmbeddingRequest) -> PreparedRequest:
        """The request checked, prompted and tokenised (`Preprocessor.prepare`)."""
        return self.preprocessor.prepare(request)

    def respond(self, prepared: PreparedRequest, raw: torch.Tensor) -> EmbeddingResponse:
        """Assemble vectors (normalised if asked, in the request's encoding) and cosine scores of the raw vectors
        (`e5.collapse`: an input of several windows has the token-weighted mean of their vectors and the best of
        their scores; a vector that is not finite fails the request with a `NonFiniteError` naming its input)."""
        rows, encoding, texts = prepared.rows, prepared.encoding, prepared.texts
        vectors = collapse(rows, raw, prepared.normalize, self.encoder.non_finite_cause)
        chunked = prepared.long_texts is LongTexts.CHUNKS and len(texts) > 0
        text_rows = rows.rows_of(texts) if chunked else None
        response = EmbeddingResponse(model=self.model_name, dimensions=self.encoder.dimensions,
                                     token_count=prepared.tokens.token_count, truncated=list(rows.truncated))
        for at, name in ((prepared.query, "query_embedding"), (prepared.passage, "passage_embedding")):
            if at is None:
                continue
            vector = as_float32(vectors.vectors(range(at, at + 1)))
            if encoding.as_text:
                setattr(response, name + "_base64", vectors_to_text(vector, encoding)[0])
            else:
                setattr(response, name, vector[0])
        if texts:
            matrix = as_float32(vectors.row_vectors(text_rows) if chunked else vectors.vectors(texts))
            if encoding.as_text:
                response.embeddings_base64 = vectors_to_text(matrix, encoding)
            elif encoding is EncodingFormat.NPY:
                response.embeddings_npy = matrix_to_npy(matrix)
            else:
                response.embeddings = matrix
        if chunked:
            response.chunk_text = np.asarray([rows.owners[row] - texts.start for row in text_rows], dtype=np.int64)
            response.chunk_start = np.asarray([rows.spans[row][0] for row in text_rows], dtype=np.int64)
            response.chunk_end = np.asarray([rows.spans[row][1] for row in text_rows], dtype=np.int64)
        if prepared.query is not None and (prepared.passage is not None or texts):
            row_scores = vectors.row_scores(prepared.query)
            if prepared.passage is not None:
                passage = prepared.passage
                response.score = float(vectors.scores(row_scores, range(passage, passage + 1))[0])
            if texts:
                response.scores = as_float32(vectors.scores(row_scores, texts))
                if chunked:
                    response.chunk_scores = as_float32(row_scores[text_rows])
        return response


def load_service(model_name: str | None = None, batching: bool = False,
                 settings: Settings | None = None) -> EmbeddingService:
    """Load the checkpoint chosen by `model_name`, `E5_MODEL` or the one baked under `weights/`.

    `settings` default to the environment, read once here and passed down. Files come from `E5_WEIGHTS_DIR`
    or `weights/<name>/` and are checked against their manifest; missing ones are fetched only with
    `E5_ALLOW_DOWNLOAD=1`. With `batching`, the service starts its `BatchingEngine` now rather than on the
    first `handle_async`.
    """
    settings = settings or Settings.from_env()
    checkpoint = find_checkpoint(settings, model_name)
    encoder = load_encoder(checkpoint.spec, checkpoint.path, settings=settings)
    # A warning so that it reaches the setup log: nothing configures logging in a Cog worker.
    log.warning("%s runs on %s, in %s", checkpoint.label, describe(encoder.placement), encoder.runtime)
    engine = BatchingEngine(encoder, settings.batch_wait_ms, settings.dynamic_batching, encoder.heap) if batching else None
    return EmbeddingService(encoder, engine, settings.limits, model_name=checkpoint.label,
                            chunk_overlap=settings.chunk_overlap)
