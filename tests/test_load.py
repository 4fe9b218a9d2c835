"""Sustained mixed load through the served predictor: 32 clients, valid and invalid requests interleaved.

Every valid request's vectors must equal its texts embedded alone, every invalid one must fail with its own
message, each request is answered exactly once under its own prediction id, and the server's resident
memory at the end stays within 5% of where it was after warm-up. `E5_LOAD_REQUESTS` sets the count
(default 2000); coglet's "409 At capacity" refusals are retried and counted apart, never as answers.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests
from cog_server import REQUEST_SECONDS, assert_no_internals, assert_ready, until_accepted

# Starts servers, runs the benchmark or loads real weights: not in the fast subset.
pytestmark = pytest.mark.slow

REQUESTS = int(os.environ.get("E5_LOAD_REQUESTS", "2000"))
WARM_UP = 500
CLIENTS = 32
DEADLINE_SECONDS = 600
MEMORY_DRIFT = 0.05

POOL = [
    "how much protein should a female eat",
    "As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is 46 grams per day.",
    "南瓜的家常做法",
    "清炒南瓜丝 原料:嫩南瓜半个 调料:葱、盐、白糖、鸡精",
    "Größe und Gewicht eines erwachsenen Elefanten",
    "café naïve résumé",
    "the quick brown fox jumps over the lazy dog",
    "a",
    "protein " * 40,
    "Given a recipe title, retrieve recipes",
] + [f"sentence number {i} about topic {i % 7} " * (1 + i % 5) for i in range(30)]

# Invalid requests and the message each must fail with (or the HTTP status coglet refuses it with).
INVALID = [
    ({"texts": ["fine", "   "]}, "texts[1] is empty or only whitespace"),
    ({"query": "bad\u0000byte"}, "query has a control character (U+0000)"),
    ({"query": "q", "task": "websearch"}, "task: unknown preset 'websearch'"),
    ({"passage": "p" * 100_001}, "passage has 100001 characters, more than the 100000 allowed"),
    ({"texts": []}, "nothing to embed"),
    ({"texts": ["protein " * 600], "truncate": False}, "texts[0] has "),
    ({"texts": ["fine", 7]}, 422),
    ({"normalize": "yes", "query": "q"}, 422),
]


@dataclass
class Planned:
    prediction_id: str
    payload: dict
    expect: str | int | None  # None: succeeds; str: fails saying it; int: refused with that HTTP status


def _plan(count: int, seed: int, prefix: str) -> list[Planned]:
    """A reproducible mix: about one request in five invalid, the rest 1-6 texts with optional query."""
    rng = random.Random(seed)
    plan = []
    for i in range(count):
        if rng.random() < 0.2:
            payload, expect = rng.choice(INVALID)
            plan.append(Planned(f"{prefix}-{i}", payload, expect))
            continue
        payload = {"texts": rng.sample(POOL, rng.randint(1, 6)), "input_type": rng.choice(["query", "passage"]),
                   "normalize": rng.random() < 0.5}
        if rng.random() < 0.3:
            payload["query"] = rng.choice(POOL)
        plan.append(Planned(f"{prefix}-{i}", payload, None))
    return plan


def _send(base: str, planned: Planned, session: requests.Session) -> tuple[requests.Response, int]:
    """PUT the prediction under its own id; return the answer and how often coglet refused it first."""
    return until_accepted(lambda: session.put(f"{base}/predictions/{planned.prediction_id}",
                                              json={"input": planned.payload}, timeout=REQUEST_SECONDS))


def _run(base: str, plan: list[Planned]) -> tuple[dict[str, requests.Response], int]:
    """Send `plan` from CLIENTS threads, each with its own connection; answers keyed by prediction id."""
    local = threading.local()
    sessions: list[requests.Session] = []

    def one(planned: Planned):
        if not hasattr(local, "session"):
            local.session = requests.Session()
            sessions.append(local.session)
        return planned.prediction_id, *_send(base, planned, local.session)

    deadline = time.monotonic() + DEADLINE_SECONDS
    answers: dict[str, requests.Response] = {}
    refusals = 0
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        for prediction_id, response, refused in pool.map(one, plan):
            assert prediction_id not in answers, f"{prediction_id} answered twice"
            answers[prediction_id] = response
            refusals += refused
            assert time.monotonic() < deadline, "the load test ran past its deadline"
    for session in sessions:
        session.close()
    return answers, refusals


def _alone(base: str) -> dict[tuple[str, str], list[float]]:
    """Each pool text embedded alone, as a query and as a passage, un-normalised."""
    alone = {}
    with requests.Session() as session:
        for input_type in ("query", "passage"):
            for text in POOL:
                r = session.post(f"{base}/predictions", json={"input": {"texts": [text], "input_type": input_type}},
                                 timeout=REQUEST_SECONDS)
                alone[input_type, text] = r.json()["output"]["embeddings"][0]
    return alone


def _expected(alone, text: str, input_type: str, normalize: bool) -> list[float]:
    vector = alone[input_type, text]
    if not normalize:
        return vector
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < 1e-5


def _check(planned: Planned, response: requests.Response, alone) -> str:
    """'ok', 'failed as expected', 'refused as expected', or what went wrong."""
    if isinstance(planned.expect, int):
        return "refused as expected" if response.status_code == planned.expect else f"HTTP {response.status_code}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    body = response.json()
    if body.get("id") != planned.prediction_id:
        return f"answered as {body.get('id')}"
    if planned.expect is not None:
        assert_no_internals(body.get("error") or "", body.get("logs") or "")
        return "failed as expected" if planned.expect in (body.get("error") or "") else f"error {body.get('error')}"
    if body["status"] != "succeeded":
        return f"status {body['status']}: {body.get('error')}"
    out, sent = body["output"], planned.payload
    vectors = [_expected(alone, text, sent["input_type"], sent["normalize"]) for text in sent["texts"]]
    if len(out["embeddings"]) != len(vectors) or not all(map(_close, out["embeddings"], vectors)):
        return "embeddings differ from the texts embedded alone"
    if "query" in sent and not _close(out["query_embedding"], _expected(alone, sent["query"], "query", sent["normalize"])):
        return "query_embedding differs from the query embedded alone"
    return "ok"


def test_sustained_mixed_load_loses_nothing_and_holds_memory(cog_server):
    base = cog_server.base
    alone = _alone(base)
    _run(base, _plan(WARM_UP, seed=1, prefix="warm"))
    time.sleep(1)
    rss_warm = cog_server.rss_bytes()

    plan = _plan(REQUESTS, seed=2, prefix="load")
    started = time.monotonic()
    answers, refusals = _run(base, plan)
    elapsed = time.monotonic() - started
    time.sleep(1)
    rss_end = cog_server.rss_bytes()

    outcomes = Counter(_check(planned, answers[planned.prediction_id], alone) for planned in plan)
    drift = (rss_end - rss_warm) / rss_warm
    print(f"load: {len(plan)} requests from {CLIENTS} clients in {elapsed:.1f} s ({len(plan) / elapsed:.0f}/s), "
          f"answered {len(answers)}, lost {len(plan) - len(answers)}, {refusals} refusals (409) retried; "
          f"outcomes {dict(outcomes)}; RSS after warm-up {rss_warm / 2**20:.1f} MiB, at the end "
          f"{rss_end / 2**20:.1f} MiB ({drift:+.1%})")
    assert len(answers) == len(plan)
    expected = {"ok", "failed as expected", "refused as expected"}
    assert set(outcomes) <= expected, {k: v for k, v in outcomes.items() if k not in expected}
    assert outcomes["ok"] > len(plan) // 2
    assert abs(drift) <= MEMORY_DRIFT
    assert_ready(base)
