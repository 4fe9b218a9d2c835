"""Cog predictor: translates Cog inputs to `e5.EmbeddingService` and its response back."""

from typing import Annotated, Optional

from cog import BaseModel, BaseRunner, Input, Opaque, concurrent

from e5 import EmbeddingRequest, load_service


class Output(BaseModel):
    model: str
    dimensions: int
    token_count: int
    truncated: list[str]
    query_embedding: Optional[list[float]] = None
    passage_embedding: Optional[list[float]] = None
    # Cog's type system has no nested lists, so the batch is declared Opaque; the JSON
    # is still a plain array (one per text) of arrays of numbers.
    embeddings: Optional[Annotated[list[list[float]], Opaque]] = None
    score: Optional[float] = None
    scores: Optional[list[float]] = None


class Predictor(BaseRunner):
    def setup(self) -> None:
        self.service = load_service(batching=True)

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
    ) -> Output:
        response = await self.service.handle_async(
            EmbeddingRequest(query, passage, texts, input_type, task, normalize, truncate)
        )
        self.record_metric("token_count", response.token_count)
        return Output(**vars(response))
