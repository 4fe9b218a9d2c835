"""Long texts, binary vectors and the served schema, end to end through Cog's own server on real MiniLM weights.

all-MiniLM-L6-v2 served as e5-small-v2 (`minilm_server`): each window's vector is checked against
sentence-transformers on that window's prompted text, and every response shape against the Output schema
that the server itself publishes at /openapi.json.
"""

from __future__ import annotations

import base64
import random
import threading
import time

import jsonschema
import numpy as np
import pytest
import requests
from cog_server import assert_no_internals, assert_ready, predict
from vectors import cosines

# Starts servers, runs the benchmark or loads real weights: not in the fast subset.
pytestmark = pytest.mark.slow

QUERY = "how much protein should a female eat"
WORDS = ("protein female eat guideline average requirement women grams chart increase expecting training "
         "marathon summit mountain train platform ticket oven pumpkin crust sunlight scattered molecules").split()


def _article(seed: int, words: int) -> str:
    rng = random.Random(seed)
    sentences = []
    while sum(len(s.split()) for s in sentences) < words:
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18))).capitalize() + ".")
    return " ".join(sentences)


ARTICLE = _article(1, 1500)  # about 3 windows of MiniLM's 512 tokens
SHORT = ["The CDC's average requirement of protein for women is 46 grams per day.", "Peel the pumpkin."]


def _output(base: str, payload: dict) -> dict:
    body = predict(base, payload).json()
    assert body["status"] == "succeeded", body
    return body["output"]


@pytest.fixture(scope="module")
def reference(minilm_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    model.max_seq_length = 512  # the model's own limit, as e5-small-v2's; its sentence-transformers config says 256
    return model


@pytest.fixture(scope="module")
def output_schema(minilm_server) -> dict:
    """The served Output schema as JSON Schema (OpenAPI 3.0's `nullable` is a union with null there)."""
    served = requests.get(f"{minilm_server.base}/openapi.json", timeout=30).json()
    return _json_schema(served["components"]["schemas"]["Output"])


def _json_schema(node):
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    return {"anyOf": [converted, {"type": "null"}]} if node.get("nullable") else converted


def test_each_window_is_sentence_transformers_on_its_prompted_text(minilm_server, reference):
    texts = [SHORT[0], ARTICLE, SHORT[1]]
    out = _output(minilm_server.base, {"query": QUERY, "texts": texts, "long_texts": "chunks"})
    rows, owner = out["embeddings"], out["chunk_text"]
    assert owner[0] == 0 and owner[-1] == 2 and owner.count(1) >= 3 and owner == sorted(owner)
    assert len(out["chunk_start"]) == len(out["chunk_end"]) == len(out["chunk_scores"]) == len(rows)
    spans = list(zip(owner, out["chunk_start"], out["chunk_end"]))
    windows = [texts[t][start:end] for t, start, end in spans]
    # Spans slice the original text, and the article's windows cover every one of its tokens.
    assert windows[0] == texts[0] and windows[-1] == texts[2]
    offsets = reference.tokenizer(ARTICLE, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    article = [(start, end) for t, start, end in spans if t == 1]
    assert all(any(s <= a and b <= e for s, e in article) for a, b in offsets)
    expected = reference.encode(["passage: " + w for w in windows], convert_to_numpy=True, batch_size=8)
    assert cosines(rows, expected).min() >= 0.99999
    # MaxP: the article scores as its best window.
    assert out["scores"][1] == max(score for t, score in zip(owner, out["chunk_scores"]) if t == 1)
    assert out["truncated"] == [] and out["token_count"] > 3 * 400


@pytest.mark.parametrize("mode", ["chunks", "mean"])
def test_texts_within_the_limit_are_todays_vectors_in_every_mode(minilm_server, mode):
    request = {"query": QUERY, "passage": SHORT[0], "texts": SHORT, "normalize": True}
    today = _output(minilm_server.base, request)
    chunked = _output(minilm_server.base, {**request, "long_texts": mode})
    for field in ("query_embedding", "passage_embedding", "embeddings", "score", "scores"):
        assert np.array_equal(np.asarray(chunked[field], "<f4"), np.asarray(today[field], "<f4")), field


def test_a_long_passage_is_its_windows_mean_and_scores_as_its_best(minilm_server, reference):
    mean = _output(minilm_server.base, {"query": QUERY, "passage": ARTICLE, "texts": [ARTICLE], "long_texts": "mean"})
    chunks = _output(minilm_server.base, {"query": QUERY, "passage": ARTICLE, "texts": [ARTICLE],
                                          "long_texts": "chunks"})
    assert np.allclose(mean["passage_embedding"], mean["embeddings"][0], atol=1e-6)
    assert np.allclose(chunks["passage_embedding"], mean["passage_embedding"], atol=1e-6)
    weights = [len(reference.tokenizer("passage: " + ARTICLE[s:e])["input_ids"])
               for s, e in zip(chunks["chunk_start"], chunks["chunk_end"])]
    weighted = np.average(np.asarray(chunks["embeddings"]), axis=0, weights=weights)
    assert cosines([mean["embeddings"][0]], [weighted])[0] >= 0.99999
    assert mean["score"] == pytest.approx(max(chunks["chunk_scores"]), abs=1e-6)
    assert mean["scores"][0] == pytest.approx(max(chunks["chunk_scores"]), abs=1e-6)


def test_ubinary_is_sentence_transformers_bits(minilm_server, reference):
    from sentence_transformers.util.quantization import quantize_embeddings

    request = {"query": QUERY, "texts": SHORT + [ARTICLE], "normalize": True}
    floats = _output(minilm_server.base, request)
    bits = _output(minilm_server.base, {**request, "encoding_format": "ubinary"})
    packed = np.stack([np.frombuffer(base64.b64decode(t), np.uint8) for t in bits["embeddings_base64"]])
    assert packed.shape == (3, 384 // 8)
    ours = np.asarray(floats["embeddings"], np.float32)
    assert np.array_equal(packed, quantize_embeddings(ours, precision="ubinary"))  # the same float vectors
    theirs = reference.encode(["passage: " + t for t in request["texts"]], normalize_embeddings=True)
    agree = np.unpackbits(packed) == np.unpackbits(quantize_embeddings(theirs, precision="ubinary"))
    assert agree.mean() >= 0.999  # their own float vectors: only signs of values within float noise of 0 may flip
    assert np.array_equal(np.frombuffer(base64.b64decode(bits["query_embedding_base64"]), np.uint8),
                          np.packbits(np.asarray(floats["query_embedding"]) > 0))
    assert bits["scores"] == floats["scores"]


@pytest.mark.parametrize("encoding", ["float", "base64", "ubinary", "npy"])
@pytest.mark.parametrize("mode", ["truncate", "chunks", "mean"])
def test_every_response_shape_validates_against_the_served_schema(minilm_server, output_schema, encoding, mode):
    for payload in ({"query": QUERY, "passage": ARTICLE, "texts": [ARTICLE, SHORT[0]]}, {"query": QUERY},
                    {"texts": SHORT, "normalize": True}, {"passage": SHORT[1]}):
        out = _output(minilm_server.base, {**payload, "encoding_format": encoding, "long_texts": mode})
        jsonschema.validate(out, output_schema)
        assert set(out) <= set(output_schema["properties"]), "a field the schema does not declare"


def test_the_schema_check_fails_on_a_shape_the_schema_does_not_describe(output_schema):
    # The old shape (a base64 string where the schema says an array of numbers) must not pass.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"model": "m", "dimensions": 1, "token_count": 1, "truncated": [],
                             "query_embedding": "AACAPw=="}, output_schema)


def test_bad_values_are_failed_predictions_and_the_server_stays_ready(minilm_server):
    base = minilm_server.base
    unknown = predict(base, {"texts": ["a"], "long_texts": "split"})
    assert unknown.status_code == 422 and "long_texts" in unknown.text
    giant = _article(2, 14_000)[:100_000]  # about 30 windows: ten pass the cap of 256 windows this server has
    windows = _output(base, {"texts": [giant], "long_texts": "chunks"})["chunk_text"].count(0)
    assert 256 // 10 < windows <= 256 // 2
    body = predict(base, {"texts": [giant] * 10, "long_texts": "chunks"}).json()
    assert body["status"] == "failed"
    assert "windows, which brings the request to" in body["error"] and "more than the 256 windows" in body["error"]
    over = 256 // windows  # the first text whose windows pass the cap
    assert f"texts[{over}] makes {windows} windows, which brings the request to {(over + 1) * windows}" in body["error"]
    assert "long_texts=chunks" in body["error"]
    assert_no_internals(body["error"], body.get("logs") or "")
    assert_ready(base)


class PeakRss:
    """The server's peak resident memory while a block runs, sampled every 50 ms."""

    def __init__(self, server):
        self.server, self.peak = server, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss_bytes())
            time.sleep(0.05)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


GIANTS = 48


def test_a_giant_request_costs_what_the_model_reads(minilm_server):
    """48 texts of 100,000 characters (the issue's 512, scaled): the model reads 512 tokens of each. The request
    costs at most 1.3x the same request with each text cut to 4,000 characters (the same ids reach the model),
    its peak memory stays within 100 MiB of that request's, and a short query is answered meanwhile."""
    base = minilm_server.base
    giants = [_article(10 + i, 17_000)[:100_000] for i in range(GIANTS)]
    cut = [text[:4_000] for text in giants]  # still over 512 tokens: the model reads the same ids
    _output(base, {"texts": cut[:4]})  # warm-up

    def timed(texts: list[str]) -> tuple[float, dict, int]:
        with PeakRss(minilm_server) as rss:
            started = time.perf_counter()
            out = _output(base, {"texts": texts})
            seconds = time.perf_counter() - started
        return seconds, out, rss.peak

    model_seconds, model_out, model_peak = timed(cut)
    query_seconds: list[float] = []

    def short_query():
        time.sleep(1.0)
        started = time.perf_counter()
        _output(base, {"query": "a short query"})
        query_seconds.append(time.perf_counter() - started)

    querier = threading.Thread(target=short_query)
    querier.start()
    try:
        giant_seconds, giant_out, giant_peak = timed(giants)
    finally:
        querier.join(60)
    assert giant_out["token_count"] == model_out["token_count"] == GIANTS * 512
    assert giant_out["truncated"] == [f"texts[{i}]" for i in range(GIANTS)]
    assert np.array_equal(np.asarray(giant_out["embeddings"], "<f4"), np.asarray(model_out["embeddings"], "<f4"))
    print(f"giant request: {giant_seconds:.2f} s, the same ids from texts cut short {model_seconds:.2f} s "
          f"({giant_seconds / model_seconds:.2f}x); peak RSS {giant_peak / 2**20:.0f} MiB against "
          f"{model_peak / 2**20:.0f}; short query {query_seconds[0]:.2f} s")
    assert giant_seconds <= 1.3 * model_seconds + 1.0
    assert giant_peak - model_peak <= 100 * 2**20
    assert query_seconds and query_seconds[0] <= 2.0
