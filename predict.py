"""Cog predictor: translates Cog inputs to `e5.EmbeddingService` and its response back."""

import dataclasses
import os
import tempfile
import weakref
from typing import Optional

# Before torch loads OpenMP (libgomp), which reads these once: torch's idle intra-op threads spin about a tenth
# of a millisecond (GOMP_SPINCOUNT; libgomp counts about 100,000 spins a millisecond) before they sleep. A pass
# runs hundreds of parallel regions microseconds apart: threads that sleep at once (OMP_WAIT_POLICY=PASSIVE)
# are woken for every one, and a single passage's pass takes about 1.5 times as long; threads that spin long
# (libgomp's default, about 3 ms) burn, after each pass, the cores coglet, tokenising and output need. Either
# variable set by the user is left to libgomp.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

from cog import BaseModel, BaseRunner, Input, Path, concurrent  # noqa: E402

# Imported here, when the worker loads this file, not on first use in setup(): imported lazily, the served
# feed cost 4-10% more server CPU per request (bench feed at 1,024 dims, against the same baseline commit).
from e5 import EmbeddingRequest, load_service  # noqa: E402
from e5.cog_output import for_cog  # noqa: E402
from e5.cog_tools.folders import PredictionFolders  # noqa: E402
from e5.settings import Settings  # noqa: E402


class Output(BaseModel):
    """One type per field, whatever the request: the served schema says what each response holds."""

    model: str
    dimensions: int
    token_count: int
    truncated: list[str]
    # encoding_format float or npy: the vectors as numbers (npy puts the rows of `texts` in a file instead).
    query_embedding: Optional[list[float]] = None
    passage_embedding: Optional[list[float]] = None
    embeddings: Optional[list[list[float]]] = None
    # encoding_format base64 or ubinary: the vectors as base64 text.
    query_embedding_base64: Optional[str] = None
    passage_embedding_base64: Optional[str] = None
    embeddings_base64: Optional[list[str]] = None
    score: Optional[float] = None
    scores: Optional[list[float]] = None
    # long_texts=chunks: for each row of `embeddings`, its text's index in `texts`, its character span
    # [start, end) in that text and, with a query, its score.
    chunk_text: Optional[list[int]] = None
    chunk_start: Optional[list[int]] = None
    chunk_end: Optional[list[int]] = None
    chunk_scores: Optional[list[float]] = None
    # encoding_format=npy: the rows as one float32 .npy file of shape [rows, dimensions].
    embeddings_file: Optional[Path] = None

    def model_dump(self) -> dict:
        """The fields as they are. coglet turns an output into JSON from its model_dump() where it has one, else
        from dataclasses.asdict(), which deep-copies every vector first (docs/development.md, coglet)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


class Predictor(BaseRunner):
    def setup(self) -> None:
        settings = Settings.from_env()
        self.service = load_service(batching=True, settings=settings)
        self.npy_dir = tempfile.mkdtemp(prefix="e5-npy-")
        # coglet leaves a folder behind for every prediction: removed once no prediction here can still use it.
        self.folders = PredictionFolders(settings.prediction_folder_seconds).start()

    # Async so that coglet runs up to 64 predictions at once (`cog build` reads the literal `max`; above the
    # benchmark's 32 clients, as coglet frees a slot just after its answer goes out); the service's batching
    # engine gathers their texts into shared forward passes.
    # `cog build` reads each description from the source text, not the imported value: keep every one a
    # single plain string literal, however long (tests/test_static_schema.py).
    @concurrent(max=64)
    async def run(
        self,
        query: Optional[str] = Input(
            default=None,
            description="A search query or question. With `passage` it gets a relevancy `score`; with `texts` it gets `scores` against each text.",
        ),
        passage: Optional[str] = Input(
            default=None, description="A passage (document) to embed and score against `query`."
        ),
        document: Optional[str] = Input(
            default=None,
            description="An alias of `passage`, the name the public e5-mistral-7b-instruct predictor uses: same vector in `passage_embedding`, same `score`. Give `passage` or `document`, not both.",
        ),
        texts: Optional[list[str]] = Input(
            default=None,
            description="A batch of texts embedded in one request; they are prompted as `input_type` says. The result is `embeddings`, an array of arrays of numbers in the same order.",
        ),
        input_type: str = Input(
            default="passage",
            choices=["passage", "query"],
            description="How `texts` are prompted: 'passage' for documents to search, 'query' for queries and for symmetric tasks (similarity, clustering, classification).",
        ),
        task: Optional[str] = Input(
            default=None,
            description="Instruct models only: a one-sentence instruction, or a preset such as web_search, semantic_similarity or fact_checking (all in docs/usage.md). Default: the model card's web-search instruction.",
        ),
        normalize: bool = Input(
            default=False,
            description="Return unit-length (L2-normalised) vectors. Scores are cosine similarities either way.",
        ),
        truncate: bool = Input(
            default=True,
            description="Cut texts longer than the model's token limit. When false, an over-long text is an error that names it and its token count.",
        ),
        encoding_format: str = Input(
            default="float",
            choices=["float", "base64", "ubinary", "npy"],
            description="How vectors come back: 'float' arrays of numbers; 'base64' each vector's little-endian float32 bytes; 'ubinary' its sign bits, packed (32x smaller); 'npy' one .npy file in `embeddings_file`.",
        ),
        long_texts: str = Input(
            default="truncate",
            choices=["truncate", "chunks", "mean"],
            description="A text over the model's token limit: 'truncate' reads its first tokens, as the model cards do; 'chunks' gives one row per overlapping window, with `chunk_*` spans; 'mean' one row, the windows' mean.",
        ),
    ) -> Output:
        with self.folders.running():
            response = await self.service.handle_async(
                EmbeddingRequest(query=query, passage=passage, document=document, texts=texts, input_type=input_type,
                                 task=task, normalize=normalize, truncate=truncate, encoding_format=encoding_format,
                                 long_texts=long_texts)
            )
            self.record_metric("token_count", response.token_count)
            # Vectors and scores stay float32 arrays, which coglet writes as JSON numbers without a walk per float.
            fields = {name: for_cog(value) for name, value in vars(response).items()}
            npy = fields.pop("embeddings_npy")
            return Output(**fields, embeddings_file=None if npy is None else self._npy_file(npy))

    def _npy_file(self, data: bytes) -> Path:
        """`data` in a new .npy file that is deleted once the returned Path is dropped.

        coglet reads a file inside an object output while it serialises the output, before dropping it.
        """
        with tempfile.NamedTemporaryFile(dir=self.npy_dir, prefix="embeddings-", suffix=".npy", delete=False) as f:
            f.write(data)
        path = Path(f.name)
        weakref.finalize(path, Path(f.name).unlink, missing_ok=True)
        return path
