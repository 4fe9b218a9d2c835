"""Long texts as windows (e5.chunking) and what a request with long_texts chunks or mean returns."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from e5.chunking import best_per_group, group_rows, weighted_means, window_spans
from e5.encoder import Encoder
from e5.limits import Limits
from e5.loader import load_encoder
from e5.registry import get_spec
from e5.service import EmbeddingRequest, EmbeddingService, RequestError

LONG = " ".join(f"Sentence {i} says that proteins, enzymes and cells work together." for i in range(260))


@pytest.fixture(scope="module")
def minilm(minilm_dir) -> Encoder:
    return load_encoder(get_spec("e5-small-v2"), minilm_dir)


def _covers(spans: list[tuple[int, int]], n: int) -> bool:
    covered = [False] * n
    for a, b in spans:
        covered[a:b] = [True] * (b - a)
    return all(covered)


@pytest.mark.parametrize("seed", range(20))
def test_windows_cover_every_token_in_order_within_the_room(seed):
    rng = random.Random(seed)
    n, room = rng.randint(1, 3000), rng.randint(2, 600)
    overlap = rng.randint(0, room)
    starts_word = [i == 0 or rng.random() < rng.choice([0.0, 0.1, 0.8]) for i in range(n)]
    spans = window_spans(starts_word, room, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == n and _covers(spans, n)
    assert all(0 < b - a <= room for a, b in spans)
    assert all(a2 > a1 and a2 <= b1 for (a1, b1), (a2, _) in zip(spans, spans[1:]))  # forward, no gap


def test_windows_end_and_start_on_word_starts_with_the_overlap_asked():
    starts_word = [i % 5 == 0 for i in range(1000)]  # a word every 5 tokens
    spans = window_spans(starts_word, 100, 12)
    assert all(starts_word[a] for a, _ in spans) and all(b == 1000 or starts_word[b] for _, b in spans)
    assert all(10 <= b1 - a2 <= 15 for (_, b1), (a2, _) in zip(spans, spans[1:]))
    assert window_spans([True] * 10, 10, 3) == [(0, 10)]  # within the room: one window
    assert window_spans([True] * 10, 4, 0) == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(ValueError, match="room for at least one token"):
        window_spans([True], 0, 0)


def test_a_window_the_tokenizer_shortens_is_kept_short_and_the_next_starts_from_its_end():
    asked = []

    def fit(a: int, b: int) -> int:  # as spans that tokenise 3 tokens longer alone than inside the text
        asked.append((a, b))
        return b - 3 if b - a > 10 else b

    spans = window_spans([True] * 100, 20, 4, fit)
    assert spans == [(a, b - 3 if b - a > 10 else b) for a, b in asked] and len(spans) > 5
    assert spans[0][0] == 0 and spans[-1][1] == 100 and _covers(spans, 100)
    assert all(a2 == b1 - 4 for (_, b1), (a2, _) in zip(spans, spans[1:]))  # the overlap counts from the kept end


def test_a_single_window_keeps_its_vector_bit_for_bit_and_several_average_by_tokens():
    vectors = np.random.default_rng(0).standard_normal((4, 6), dtype=np.float32)
    groups = group_rows([0, 1, 1, 2], 3)
    assert groups == [[0], [1, 2], [3]]
    means = weighted_means(vectors, groups, [5, 30, 10, 7])
    assert np.array_equal(means[0], vectors[0]) and np.array_equal(means[2], vectors[3])
    assert np.allclose(means[1], (30 * vectors[1] + 10 * vectors[2]) / 40) and means.dtype == np.float32
    scores = np.array([0.1, 0.5, 0.3, -1.0], dtype=np.float32)
    assert best_per_group(scores, groups).tolist() == pytest.approx([0.1, 0.5, -1.0])


def _request(**fields) -> EmbeddingRequest:
    return EmbeddingRequest(**{"query": "which foods are rich in protein", **fields})


def test_chunks_return_a_row_per_window_with_its_text_and_span(minilm):
    service = EmbeddingService(minilm)
    texts = ["short text about proteins", LONG, "another short one"]
    out = service.handle(_request(texts=texts, long_texts="chunks"))
    windows = minilm.text_tokenizer.windows(LONG, "passage: ")
    assert out.chunk_text.tolist() == [0] + [1] * len(windows) + [2]
    assert out.chunk_start.tolist() == [0] + [w.start for w in windows] + [0]
    assert out.chunk_end.tolist() == [len(texts[0])] + [w.end for w in windows] + [len(texts[2])]
    assert out.embeddings.shape == (len(windows) + 2, minilm.dimensions) and out.truncated == []
    expected = minilm.embed_ids([w.ids for w in windows])
    assert np.allclose(out.embeddings[1:-1], expected.numpy(), atol=1e-6)
    # MaxP: a text scores as its best window; chunk_scores has one per row.
    assert len(out.chunk_scores) == len(out.embeddings)
    assert out.scores.tolist() == [out.chunk_scores[0], out.chunk_scores[1:-1].max(), out.chunk_scores[-1]]


@pytest.mark.parametrize("mode", ["chunks", "mean"])
def test_texts_within_the_limit_keep_todays_vectors_in_every_mode(minilm, mode):
    service = EmbeddingService(minilm)
    request = dict(passage="a short passage", texts=["one", "two short texts"], normalize=True)
    today = service.handle(_request(**request))
    chunked = service.handle(_request(**request, long_texts=mode))
    for name in ("query_embedding", "passage_embedding", "embeddings", "scores"):
        assert np.array_equal(getattr(chunked, name), getattr(today, name)), name
    assert chunked.score == today.score and chunked.token_count == today.token_count


def test_mean_is_the_token_weighted_mean_of_the_windows_normalised_after(minilm):
    service = EmbeddingService(minilm)
    windows = minilm.text_tokenizer.windows(LONG, "passage: ")
    raw = minilm.embed_ids([w.ids for w in windows])
    weights = torch.tensor([float(len(w.ids)) for w in windows])
    mean = (raw * weights[:, None]).sum(0) / weights.sum()
    out = service.handle(_request(texts=[LONG, "short"], passage=LONG, long_texts="mean", normalize=True))
    assert out.embeddings.shape == (2, minilm.dimensions) and out.chunk_text is None
    unit = (mean / mean.norm()).numpy()
    assert np.allclose(out.embeddings[0], unit, atol=1e-6) and np.allclose(out.passage_embedding, unit, atol=1e-6)
    chunks = service.handle(_request(texts=[LONG, "short"], passage=LONG, long_texts="chunks"))
    assert out.scores[0] == pytest.approx(chunks.chunk_scores[:-1].max(), abs=1e-6)  # the best window's
    assert out.score == pytest.approx(out.scores[0], abs=1e-6)
    # A long passage gets the mean in `chunks` too (its windows are not rows of `embeddings`).
    assert np.allclose(chunks.passage_embedding, mean.numpy(), atol=1e-6)


def test_queries_are_never_chunked(minilm):
    service = EmbeddingService(minilm)
    out = service.handle(EmbeddingRequest(query=LONG, texts=["short"], long_texts="chunks"))
    assert out.truncated == ["query"] and out.chunk_text.tolist() == [0]
    with pytest.raises(RequestError, match="query has more than the 512 tokens"):
        service.handle(EmbeddingRequest(query=LONG, texts=[LONG], long_texts="mean", truncate=False))
    # truncate=false refuses over-long texts only when they are to be cut.
    assert service.handle(EmbeddingRequest(texts=[LONG], long_texts="mean", truncate=False)).embeddings.shape[0] == 1


def test_too_many_windows_is_an_error_naming_the_input_and_the_count(minilm):
    service = EmbeddingService(minilm, limits=Limits(max_windows=12))
    count = len(minilm.text_tokenizer.windows(LONG, "passage: "))
    with pytest.raises(RequestError) as err:
        service.handle(EmbeddingRequest(texts=["short", LONG, LONG], long_texts="chunks"))
    assert str(err.value) == (f"texts[2] makes {count} windows, which brings the request to {1 + 2 * count}, more "
                              "than the 12 windows allowed per request (long_texts=chunks); send fewer or shorter texts")


def test_chunks_in_every_encoding(minilm):
    service = EmbeddingService(minilm)
    floats = service.handle(_request(texts=[LONG], long_texts="chunks"))
    bits = service.handle(_request(texts=[LONG], long_texts="chunks", encoding_format="ubinary"))
    npy = service.handle(_request(texts=[LONG], long_texts="chunks", encoding_format="npy"))
    assert len(bits.embeddings_base64) == len(floats.embeddings) and bits.embeddings is None
    assert npy.embeddings is None and npy.embeddings_npy is not None
    for out in (bits, npy):
        assert out.chunk_text.tolist() == floats.chunk_text.tolist()
        assert out.chunk_scores.tolist() == floats.chunk_scores.tolist()


def test_a_chunked_request_shares_the_engine_like_any_other(minilm):
    import asyncio

    service = EmbeddingService(minilm)

    async def both():
        return await asyncio.gather(service.handle_async(_request(texts=[LONG], long_texts="chunks")),
                                    service.handle_async(EmbeddingRequest(query="a short query")))

    try:
        chunked, short = asyncio.run(both())
    finally:
        service.engine.close()
    direct = service.handle(_request(texts=[LONG], long_texts="chunks"))
    assert np.allclose(chunked.embeddings, direct.embeddings, atol=1e-5) and short.query_embedding is not None
