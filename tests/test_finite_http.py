"""Only finite numbers leave the service, end to end through Cog's own server (coglet) on 127.0.0.1.

The server runs the tiny BERT that overflows float16 with E5_DTYPE=float16 on the CPU, as a T4 would serve it.
Without the float32 recompute every answer was `"status": "failed"` with `Prediction failed: Failed to parse
output JSON: expected value at line 1 column 100` (NaN vectors reached coglet's JSON parser).
"""

from __future__ import annotations

import io
import json
import urllib.request

import numpy as np
import pytest
from cog_server import MAX_MESSAGE, CogServer, assert_no_internals, assert_ready, predict
from conftest import serving
from tiny_checkpoints import OVERFLOW_POISON
from vectors import cosines, decode_vector

from e5.encoder import Encoder
from e5.loader import load_encoder
from e5.registry import get_spec
from e5.service import EmbeddingRequest, EmbeddingService
from e5.settings import Settings

# Starts servers, runs the benchmark or loads real weights: not in the fast subset.
pytestmark = pytest.mark.slow

MODEL = "e5-small-v2"
TEXTS = ["how much protein should a female eat", "the quick brown dog"]
LONG = "protein the quick brown dog " * 120  # windows with long_texts chunks or mean


@pytest.fixture(scope="module")
def float16_server(overflowing_bert, tmp_path_factory) -> CogServer:
    root = tmp_path_factory.mktemp("float16-server")
    yield from serving(root, E5_MODEL=MODEL, E5_WEIGHTS_DIR=str(overflowing_bert), E5_DTYPE="float16",
                       E5_CACHE_DIR=str(root / "cache"))


@pytest.fixture(scope="module")
def float32(overflowing_bert, tmp_path_factory) -> Encoder:
    """The same weights in float32 in this process: the vectors the server should come close to."""
    settings = Settings.from_env({"E5_DTYPE": "float32", "E5_CPU_RUNTIME": "torch",
                                  "E5_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))})
    return load_encoder(get_spec(MODEL), overflowing_bert, settings=settings)


def _strict(text: str) -> dict:
    """The body parsed as strict JSON: NaN, Infinity and -Infinity are refused."""
    def refuse(token):
        raise AssertionError(f"{token} in the response")

    return json.loads(text, parse_constant=refuse)


def _rows(out: dict, encoding: str) -> np.ndarray:
    """The rows of `texts` as a client decodes them."""
    if encoding == "float":
        return np.asarray(out["embeddings"], dtype=np.float32)
    if encoding == "npy":
        with urllib.request.urlopen(out["embeddings_file"]) as f:  # a data: URI from coglet 0.23
            return np.load(io.BytesIO(f.read()))
    return np.stack([decode_vector(v, encoding) for v in out["embeddings_base64"]]).astype(np.float32)


def _vector(out: dict, field: str, encoding: str) -> np.ndarray:
    """One vector (`query_embedding`, `passage_embedding`) as a client decodes it, as a row of one."""
    if encoding in ("float", "npy"):
        return np.asarray([out[field]], dtype=np.float32)
    return decode_vector(out[field + "_base64"], encoding).astype(np.float32)[None]


@pytest.mark.parametrize("encoding,long_texts", [
    ("float", "truncate"), ("base64", "truncate"), ("ubinary", "truncate"), ("npy", "truncate"),
    ("float", "chunks"), ("base64", "mean"),
])
def test_a_checkpoint_that_overflows_float16_is_served_finite_in_every_format(float16_server, float32, encoding,
                                                                              long_texts):
    texts = [*TEXTS, LONG]
    payload = {"query": "how much protein", "passage": LONG, "texts": texts, "long_texts": long_texts,
               "normalize": True}
    r = predict(float16_server.base, {**payload, "encoding_format": encoding})
    body = _strict(r.text)
    assert r.status_code == 200 and body["status"] == "succeeded", body
    out = body["output"]
    expected = EmbeddingService(float32).handle(EmbeddingRequest(**payload))
    np.testing.assert_allclose(out["scores"], expected.scores, atol=0.01)
    assert -1 <= out["score"] <= 1 and abs(out["score"] - expected.score) < 0.01
    for got, reference in ((_rows(out, encoding), expected.embeddings),
                           (_vector(out, "query_embedding", encoding), expected.query_embedding[None]),
                           (_vector(out, "passage_embedding", encoding), expected.passage_embedding[None])):
        assert np.isfinite(got).all() and got.shape == reference.shape
        if encoding == "ubinary":  # sign bits: nearly all agree with float32's
            assert (got == (reference > 0)).mean() > 0.9
        else:
            assert cosines(got, reference).min() > 0.99


def test_the_recompute_is_logged_with_its_count(float16_server):
    assert predict(float16_server.base, {"texts": TEXTS}).json()["status"] == "succeeded"
    assert "2 rows overflowed float16; recomputed in float32 (E5_DTYPE=float32 avoids this)" in float16_server.log()


def test_an_input_that_overflows_float32_too_fails_its_request_with_a_clear_message(float16_server):
    r = predict(float16_server.base, {"query": "how much protein", "texts": ["the dog", f"the {OVERFLOW_POISON}"]})
    body = _strict(r.text)
    assert body["status"] == "failed", body
    # coglet puts "Prediction failed: Async prediction failed: NonFiniteError: " before the message.
    assert body["error"].endswith(
        "texts[1] could not be embedded: the model's output for it is not finite in float16, nor in float32 when "
        "recomputed (an activation overflows even float32), so E5_DTYPE=float32 does not avoid it; check the "
        "checkpoint's weights"), body["error"]
    assert "parse" not in body["error"] and len(body["error"]) < MAX_MESSAGE
    assert_no_internals(body["error"], body.get("logs") or "")
    assert_ready(float16_server.base)
    ok = _strict(predict(float16_server.base, {"query": "how much protein", "texts": ["the dog"]}).text)
    assert ok["status"] == "succeeded" and np.isfinite(ok["output"]["embeddings"]).all()
