"""Property-based fuzz of POST /predictions from the OpenAPI schema the server itself publishes (schemathesis).

Positive cases follow the schema, negative ones break it. Every answer must be 2xx/4xx; a failed prediction
must say why without internals; a success must validate against the served schema and hold one vector per
text (per window with long_texts=chunks); the server must stay READY.
`E5_FUZZ_EXAMPLES` sets the examples per mode (default 150).
"""

from __future__ import annotations

import base64
import os

import pytest
import schemathesis
from cog_server import MAX_MESSAGE, REQUEST_SECONDS, assert_no_internals, assert_ready
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

# Starts servers, runs the benchmark or loads real weights: not in the fast subset.
pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("E5_FUZZ_EXAMPLES", "150"))


@pytest.fixture(scope="module")
def predictions(server):
    """The POST /predictions operation of the served schema."""
    return schemathesis.openapi.from_url(f"{server}/openapi.json")["/predictions"]["POST"]


def _check_answer(case, response) -> None:
    assert 200 <= response.status_code < 500, (response.status_code, response.text[:500], case.body)
    if response.status_code >= 400:
        assert response.text.strip(), f"an empty {response.status_code} for {case.body!r}"
        assert_no_internals(response.text)
        return
    body = response.json()
    if body["status"] == "failed":
        assert body["error"] and len(body["error"]) < MAX_MESSAGE, body
        assert_no_internals(body["error"], body.get("logs") or "")
        return
    assert body["status"] == "succeeded", body
    # The served schema describes what the server returns: every succeeded answer validates against it.
    case.validate_response(response, checks=[response_schema_conformance])
    output, sent = body["output"], ((case.body if isinstance(case.body, dict) else {}).get("input") or {})
    encoding = sent.get("encoding_format", "float")
    as_text = encoding in ("base64", "ubinary")
    rows = output["embeddings_base64" if as_text else "embeddings"]
    if sent.get("texts") and encoding == "npy":
        assert output["embeddings"] is None and output["embeddings_file"].startswith("data:"), output
    elif sent.get("texts"):
        chunked = sent.get("long_texts") == "chunks"
        assert len(rows) == (len(output["chunk_text"]) if chunked else len(sent["texts"])), (sent, output)
        assert not chunked or sorted(set(output["chunk_text"])) == list(range(len(sent["texts"])))
        assert all(_length(vector, encoding) == output["dimensions"] for vector in rows)
    for name, sent_it in (("query_embedding", sent.get("query") is not None),
                          ("passage_embedding", sent.get("passage") is not None or sent.get("document") is not None)):
        assert (output[name + "_base64" if as_text else name] is not None) == sent_it, (sent, output)
        assert output[name if as_text else name + "_base64"] is None, (sent, output)


def _length(vector: list[float] | str, encoding: str) -> int:
    """Numbers in a vector, whether sent as numbers, as base64 of float32 or as base64 of packed sign bits."""
    if isinstance(vector, list):
        return len(vector)
    data = base64.b64decode(vector, validate=True)
    return len(data) * 8 if encoding == "ubinary" else len(data) // 4


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_every_generated_request_is_answered_and_the_server_stays_ready(server, predictions, mode):
    answered = {"2xx": 0, "4xx": 0}

    @given(case=predictions.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    def fuzz(case):
        response = case.call(base_url=server, timeout=REQUEST_SECONDS)
        _check_answer(case, response)
        answered["2xx" if response.status_code < 300 else "4xx"] += 1
        assert_ready(server)

    fuzz()
    print(f"fuzz {mode.value}: {answered}")
    assert sum(answered.values()) >= EXAMPLES // 2  # hypothesis really ran the cases
