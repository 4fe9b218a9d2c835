"""Cog predictor: translates Cog inputs to `e5.EmbeddingService` and its response back."""

import tempfile
import weakref
from typing import Annotated, Any, Optional

from cog import BaseModel, BaseRunner, Input, Opaque, Path, concurrent

from e5 import EmbeddingRequest, load_service
from e5.cog_output import for_cog


class Output(BaseModel):
    model: str
    dimensions: int
    token_count: int
    truncated: list[str]
    # An array of numbers, or a base64 string with encoding_format=base64. `cog build` allows no union
    # in an output, so these are Opaque (any JSON); the encoding_format input describes both shapes.
    query_embedding: Optional[Annotated[Any, Opaque]] = None
    passage_embedding: Optional[Annotated[Any, Opaque]] = None
    # One item per text, an array of numbers or a base64 string; Opaque too, as Cog has no nested lists.
    embeddings: Optional[Annotated[list, Opaque]] = None
    score: Optional[float] = None
    scores: Optional[list[float]] = None
    # encoding_format=npy: the vectors of `texts` as one float32 .npy file of shape [texts, dimensions].
    embeddings_file: Optional[Path] = None


class Predictor(BaseRunner):
    def setup(self) -> None:
        self.service = load_service(batching=True)
        self.npy_dir = tempfile.mkdtemp(prefix="e5-npy-")

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
            description="Instruct models only (multilingual-e5-large-instruct, e5-mistral-7b-instruct): a one-sentence instruction, or a preset name: web_search, question_answering, duplicate_questions, fact_checking, semantic_similarity, bitext_mining, summarization, sentiment_classification, emotion_classification, review_polarity_classification, intent_classification, toxicity_classification. Default: 'Given a web search query, retrieve relevant passages that answer the query'. Symmetric presets also prompt passages as queries, on every model.",
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
            choices=["float", "base64", "npy"],
            description="How vectors come back. 'float': arrays of numbers. 'base64': `query_embedding`, `passage_embedding` and each item of `embeddings` are strings, the base64 of the vector's little-endian float32 bytes (as OpenAI and text-embeddings-inference send them; decode with numpy.frombuffer(..., '<f4')). 'npy': `embeddings` is null and `embeddings_file` is one float32 .npy file of shape [texts, dimensions] in input order; `query_embedding` and `passage_embedding` stay arrays of numbers. Scores are the same in every format.",
        ),
    ) -> Output:
        response = await self.service.handle_async(
            EmbeddingRequest(query, passage, texts, input_type, task, normalize, truncate, document=document,
                             encoding_format=encoding_format)
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
