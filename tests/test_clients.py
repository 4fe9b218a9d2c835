"""End to end through Cog's own server: requests as other embedding APIs' clients send them.

The public e5-mistral-7b-instruct predictor's clients send `document`; OpenAI-style clients ask for
`encoding_format: base64` (in the `*_base64` fields); large batches come back as one .npy file with `npy`.
"""

from __future__ import annotations

import base64
import io
import urllib.request

import numpy as np
import pytest
from cog_server import predict

# Starts servers, runs the benchmark or loads real weights: not in the fast subset.
pytestmark = pytest.mark.slow

MISTRAL_CLIENT = {"task": "Given a web search query, retrieve relevant passages that answer the query",
                  "query": "What is the recommended sugar intake for women",
                  "normalize": True}
DOCUMENT = "As a general guideline, the CDC's average recommended sugar intake for women is 20 grams per day."


def _output(server: str, payload: dict) -> dict:
    body = predict(server, payload).json()
    assert body["status"] == "succeeded", body
    return body["output"]


def _from_base64(text: str) -> bytes:
    """As an OpenAI-style client decodes a vector (`np.frombuffer(..., "<f4")`), as float32 bytes."""
    return np.frombuffer(base64.b64decode(text), "<f4").tobytes()


def _float32(numbers: list) -> bytes:
    """The float output read as what it is, float32 values, as bytes.

    Compared as float32, not as Python floats: coglet re-parses the worker's JSON with a float parser that
    can land one double-ULP off the 17-digit number it was given (0.10890050232410431 came back
    ...432), which is still the same float32.
    """
    return np.asarray(numbers, "<f4").tobytes()


def _load_npy(url: str) -> np.ndarray:
    """As a client loads the file: urllib opens the local server's data: URI and an uploaded file's URL alike."""
    with urllib.request.urlopen(url, timeout=30) as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


def test_the_e5_mistral_clients_document_is_the_passage(server):
    as_document = _output(server, {**MISTRAL_CLIENT, "document": DOCUMENT})
    as_passage = _output(server, {**MISTRAL_CLIENT, "passage": DOCUMENT})
    assert as_document["passage_embedding"] == as_passage["passage_embedding"]
    assert as_document["score"] == as_passage["score"] is not None
    assert as_document["query_embedding"] == as_passage["query_embedding"]
    alone = _output(server, {"task": MISTRAL_CLIENT["task"], "document": DOCUMENT, "normalize": True})
    assert alone["passage_embedding"] == as_passage["passage_embedding"] and alone["query_embedding"] is None


def test_passage_and_document_together_fail_naming_both(server):
    body = predict(server, {"query": "q", "passage": "p", "document": "d"}).json()
    assert body["status"] == "failed"
    assert body["error"].endswith("give `passage` or `document`, not both: `document` is another name for `passage`")


def test_base64_decodes_to_the_float_output_exactly(server):
    request = {"query": "how much protein", "passage": "46 grams a day", "texts": ["one", "two texts", "三"],
               "normalize": True}
    floats = _output(server, request)
    packed = _output(server, {**request, "encoding_format": "base64"})
    assert packed["query_embedding"] is packed["passage_embedding"] is packed["embeddings"] is None
    assert _from_base64(packed["query_embedding_base64"]) == _float32(floats["query_embedding"])
    assert _from_base64(packed["passage_embedding_base64"]) == _float32(floats["passage_embedding"])
    assert [_from_base64(v) for v in packed["embeddings_base64"]] == [_float32(v) for v in floats["embeddings"]]
    assert (packed["score"], packed["scores"]) == (floats["score"], floats["scores"])
    assert packed["embeddings_file"] is None and floats["embeddings_file"] is None


def test_npy_file_loads_to_the_float_output_exactly(server):
    request = {"query": "how much protein", "passage": "46 grams a day",
               "texts": [f"text {i} " + "protein " * (i % 5) for i in range(40)]}
    floats = _output(server, request)
    npy = _output(server, {**request, "encoding_format": "npy"})
    assert npy["embeddings"] is None
    # coglet 0.23.1 inlines a file inside an object output as a data: URI (with --upload-url too).
    assert npy["embeddings_file"].startswith("data:application/octet-stream;base64,")
    matrix = _load_npy(npy["embeddings_file"])
    assert matrix.dtype == np.dtype("<f4") and matrix.shape == (40, floats["dimensions"])
    assert matrix.tobytes() == _float32(floats["embeddings"])
    for field in ("query_embedding", "passage_embedding"):
        assert npy[field] == floats[field]  # single vectors stay numbers
    assert (npy["score"], npy["scores"]) == (floats["score"], floats["scores"])


def test_npy_without_texts_has_no_file(server):
    out = _output(server, {"query": "only a query", "encoding_format": "npy"})
    assert out["embeddings_file"] is None and out["embeddings"] is None and len(out["query_embedding"]) == 32
