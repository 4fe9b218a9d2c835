"""A battery of bad (and odd) requests against the real Cog server: each is answered 2xx/4xx with a message
that names the problem, shows no internals, and leaves the server READY.

Where coglet answers before the predictor runs (malformed JSON, schema violations) the case pins coglet's
answer; where the predictor answers, the case pins this project's message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import requests
from cog_server import MAX_MESSAGE, REQUEST_SECONDS, assert_no_internals, assert_ready

# Starts servers, runs the benchmark or loads real weights: not in the fast subset.
pytestmark = pytest.mark.slow

JSON = {"Content-Type": "application/json"}


@dataclass
class Case:
    name: str
    body: dict | str | bytes | None
    status: int  # the HTTP status
    says: str  # in the message (4xx) or the prediction's error (200 failed); "" for a success
    headers: dict = field(default_factory=lambda: dict(JSON))
    method: str = "POST"
    path: str = "/predictions"

    def send(self, base: str) -> requests.Response:
        data = json.dumps(self.body) if isinstance(self.body, dict) else self.body
        return requests.request(self.method, base + self.path, data=data, headers=self.headers,
                                timeout=REQUEST_SECONDS)


def _in(**fields) -> dict:
    return {"input": fields}


NOTHING = "nothing to embed: give `query`, `passage` (or `document`), or a non-empty `texts` list"
CASES = [
    # Not a prediction request at all: coglet refuses it before the predictor sees it.
    Case("not JSON", "not json", 400, "Failed to parse the request body as JSON"),
    Case("empty body", "", 400, "Failed to parse the request body as JSON"),
    Case("truncated JSON", '{"input": {"query": "a"', 400, "EOF while parsing"),
    Case("invalid UTF-8", b'{"input": {"query": "\xff\xfe"}}', 400, "invalid unicode code point"),
    Case("byte-order mark", '\ufeff{"input": {"query": "q"}}'.encode(), 400, "Failed to parse the request body"),
    Case("number out of range", '{"input": {"query": 1e400}}', 400, "number out of range"),
    Case("10,000-deep nesting", '{"input": {"query": ' + "[" * 10_000 + "]" * 10_000 + "}}", 400,
         "Failed to parse the request body as JSON"),
    Case("high lone surrogate", '{"input": {"query": "a\\ud800b"}}', 400, "input.query"),
    Case("low lone surrogate", '{"input": {"texts": ["ok", "a\\udc00"]}}', 400, "input.texts[1]"),
    Case("top-level array", "[]", 422, "expected struct PredictionRequest"),
    Case("top-level string", '"x"', 422, "expected struct PredictionRequest"),
    Case("id of the wrong type", '{"id": 5, "input": {"query": "q"}}', 422, "id: invalid type"),
    Case("text/plain", json.dumps(_in(query="q")), 415, "Content-Type: application/json",
         headers={"Content-Type": "text/plain"}),
    Case("GET /predictions", None, 405, "", method="GET"),
    Case("DELETE /predictions", None, 405, "", method="DELETE"),
    Case("cancel an unknown prediction", None, 404, "", path="/predictions/no-such-id/cancel"),
    Case("unknown path", None, 404, "", method="GET", path="/embeddings"),
    # Inputs of the wrong type: coglet's schema validation names the field (422).
    Case("input is a string", {"input": "q"}, 422, "is not of type \\\"object\\\""),
    Case("input is an array", {"input": []}, 422, "is not of type \\\"object\\\""),
    Case("query is a number", _in(query=5), 422, '"query"'),
    Case("query is an object", _in(query={"a": 1}), 422, '"query"'),
    Case("query is a list", _in(query=["a"]), 422, '"query"'),
    Case("query is null", _in(query=None), 422, '"query"'),
    Case("texts is a string", _in(texts="not a list"), 422, '"texts"'),
    Case("texts is a number", _in(texts=5), 422, '"texts"'),
    Case("texts holds numbers", _in(texts=[1, 2]), 422, '"texts/0"'),
    Case("texts holds null", _in(texts=[None]), 422, '"texts/0"'),
    Case("texts holds a list", _in(texts=[["nested"]]), 422, '"texts/0"'),
    Case("texts holds an object", _in(texts=["ok", {"a": 1}]), 422, '"texts/1"'),
    Case("normalize is a string", _in(query="q", normalize="yes"), 422, '"normalize"'),
    Case("normalize is 1", _in(query="q", normalize=1), 422, '"normalize"'),
    Case("truncate is a string", _in(query="q", truncate="no"), 422, '"truncate"'),
    Case("truncate is null", _in(query="q", truncate=None), 422, '"truncate"'),
    Case("input_type is unknown", _in(texts=["a"], input_type="document"), 422, '"input_type"'),
    Case("input_type is a number", _in(texts=["a"], input_type=5), 422, '"input_type"'),
    Case("task is a number", _in(query="q", task=7), 422, '"task"'),
    Case("document is a number", _in(document=5), 422, '"document"'),
    Case("encoding_format is unknown", _in(texts=["a"], encoding_format="json"), 422, '"encoding_format"'),
    # Well-typed but unusable: the predictor refuses it and says why (a failed prediction).
    Case("no input", {}, 200, NOTHING),
    Case("input is null", {"input": None}, 200, NOTHING),
    Case("empty input", _in(), 200, NOTHING),
    Case("empty texts", _in(texts=[]), 200, NOTHING),
    Case("a misspelt field only", _in(text="hello"), 200, NOTHING),
    # coglet reads no input from a body without a Content-Type: refused as empty, never half-read.
    Case("no Content-Type", json.dumps(_in(query="q")), 200, NOTHING, headers={}),
    Case("empty query", _in(query=""), 200, "query is empty or only whitespace"),
    Case("blank passage", _in(passage=" \n\t "), 200, "passage is empty or only whitespace"),
    Case("blank document", _in(document=" "), 200, "document is empty or only whitespace"),
    Case("passage and document", _in(query="q", passage="p", document="d"), 200,
         "give `passage` or `document`, not both: `document` is another name for `passage`"),
    Case("one blank text among good ones", _in(texts=["fine", "  ", "fine"]), 200,
         "texts[1] is empty or only whitespace"),
    Case("NUL in the query", _in(query="a\u0000b"), 200, "query has a control character (U+0000) at character 1"),
    Case("escape in a text", _in(texts=["\u001b[31mred"]), 200, "texts[0] has a control character (U+001B)"),
    Case("DEL in the passage", _in(passage="x\u007f"), 200, "passage has a control character (U+007F)"),
    Case("control character in the task", _in(query="q", task="Retrieve\u0007 docs"), 200,
         "task has a control character (U+0007)"),
    Case("blank task", _in(query="q", task=""), 200, "task is empty or only whitespace"),
    Case("unknown task preset", _in(query="q", task="websearch"), 200, "task: unknown preset 'websearch'"),
    Case("a 100,000-letter task word", _in(query="q", task="w" * 100_000), 200, "(100000 characters); use one of"),
    Case("a 100,001-character passage", _in(passage="p" * 100_001), 200,
         "passage has 100001 characters, more than the 100000 allowed"),
    Case("a 6 MB query", _in(query="x" * 6_000_000), 200, "query has 6000000 characters"),
    Case("one over-long text among many", _in(texts=["a"] * 5 + ["b" * 100_001]), 200, "texts[5] has 100001"),
    Case("2,049 texts", _in(texts=["a"] * 2049), 200, "texts has 2049 items, more than the 2048 allowed"),
    Case("over-long text with truncate off", _in(texts=["protein " * 600], truncate=False), 200, "texts[0] has "),
    # Odd but valid: served.
    Case("an unknown extra field", _in(query="q", bogus=1), 200, ""),
    Case("a repeated key", '{"input": {"query": "a", "query": "b"}}', 200, ""),
    Case("emoji, bidi and zero-width characters", _in(texts=["🙂\u200f\u202e zero\u200bwidth"]), 200, ""),
    Case("tabs and newlines", _in(passage="line one\n\tline two\r\n"), 200, ""),
    Case("2,048 texts", _in(texts=["a"] * 2048), 200, ""),
    Case("document without passage, as e5-mistral's clients send it", _in(task="web_search", document="d"), 200, ""),
    Case("npy without texts", _in(query="q", encoding_format="npy"), 200, ""),
]


def test_the_battery_has_at_least_forty_cases():
    assert len(CASES) >= 40 and len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_answered_clearly_and_the_server_stays_ready(server, case):
    r = case.send(server)
    assert r.status_code == case.status, r.text[:500]
    if r.status_code == 200:
        body = r.json()
        message, logs = body.get("error") or "", body.get("logs") or ""
        if case.says:
            assert body["status"] == "failed", body
            assert case.says in message, message
            assert len(message) < MAX_MESSAGE, message[:MAX_MESSAGE]
        else:
            assert body["status"] == "succeeded", body
            assert body["output"]["dimensions"] == 32
        assert_no_internals(message, logs)
    else:
        assert case.says in r.text, r.text[:500]
        if r.status_code == 422 and r.text.startswith("{"):
            assert r.json()["detail"], r.text
        assert_no_internals(r.text)
    assert_ready(server)


def test_inputs_are_not_echoed_into_logs_or_errors(cog_server):
    # Errors say where a problem is, not what the text was (an unknown preset is quoted in a short excerpt).
    marker = "confidential-marker-5813"
    requests_ = [{"query": marker}, {"texts": [marker, " "]}, {"query": f"{marker}\u0000"},
                 {"query": "q", "task": marker.replace("-", "_") * 3}, {"passage": marker * 10_000}]
    for payload in requests_:
        body = requests.post(f"{cog_server.base}/predictions", json={"input": payload}, timeout=REQUEST_SECONDS).json()
        assert marker not in (body.get("logs") or ""), body
        assert marker not in (body.get("error") or ""), body
    assert marker not in cog_server.log()
