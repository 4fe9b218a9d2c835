"""End to end through Cog's own HTTP server (coglet) on 127.0.0.1, with a tiny checkpoint.

Bad input is in test_battery.py, faults in test_faults.py, sustained mixed load in test_load.py.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from cog_server import CogServer, predict, until_accepted

# Starts servers, runs the benchmark or loads real weights: not in the fast subset.
pytestmark = pytest.mark.slow


def test_query_and_passage(server):
    r = predict(server, {"query": "how much protein", "passage": "46 grams per day"})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "succeeded", body
    out = body["output"]
    assert out["model"] == "multilingual-e5-small" and out["dimensions"] == 32
    assert len(out["query_embedding"]) == len(out["passage_embedding"]) == 32
    assert -1.0 <= out["score"] <= 1.0
    assert out["embeddings"] is None and out["scores"] is None and out["truncated"] == []
    assert body["metrics"]["token_count"] == out["token_count"] > 0


def test_a_batch_of_texts_with_a_query(server):
    texts = ["one text", "two texts here", "三"]
    out = predict(server, {"texts": texts, "query": "a query", "normalize": True}).json()["output"]
    assert isinstance(out["embeddings"], list) and len(out["embeddings"]) == 3
    assert all(isinstance(v, list) and len(v) == 32 and all(isinstance(x, float) for x in v)
               for v in out["embeddings"])
    assert len(out["scores"]) == 3
    assert abs(sum(x * x for x in out["embeddings"][0]) - 1.0) < 1e-5


@pytest.mark.parametrize("payload,field", [
    ({"query": "only a query"}, "query_embedding"),
    ({"passage": "only a passage"}, "passage_embedding"),
    ({"texts": ["as queries"], "input_type": "query"}, "embeddings"),
    ({"texts": ["similar"], "query": "similar", "task": "semantic_similarity"}, "scores"),
    ({"query": "q", "task": "Given a recipe title, retrieve recipes"}, "query_embedding"),
])
def test_every_input_shape(server, payload, field):
    body = predict(server, payload).json()
    assert body["status"] == "succeeded", body
    assert body["output"][field] is not None


def test_same_text_same_vector_whichever_field_carries_it(server):
    a = predict(server, {"texts": ["query: same"]}).json()["output"]["embeddings"][0]
    b = predict(server, {"query": "same"}).json()["output"]["query_embedding"]
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5


def test_truncation_is_reported(server):
    out = predict(server, {"texts": ["short", "protein " * 600]}).json()["output"]
    assert out["truncated"] == ["texts[1]"]


def test_served_openapi_is_the_schema_from_predict_py(server):
    from e5.cog_tools.schema import build_schema

    served = requests.get(f"{server}/openapi.json", timeout=5).json()
    assert served == json.loads(json.dumps(build_schema()))


def test_a_serial_client_is_never_told_the_server_is_at_capacity(server):
    # With one slot coglet answered about 2% of back-to-back requests 409 (the slot is freed
    # just after the answer goes out); @concurrent(max=64) on run() leaves room for that.
    statuses = []
    with requests.Session() as session:
        for i in range(300):
            statuses.append(predict(server, {"query": f"serial {i}"}, session).status_code)
    assert statuses.count(200) == 300, {code: statuses.count(code) for code in set(statuses)}


def test_concurrent_clients_each_get_their_own_vectors(server):
    texts = [f"text {i} " + "protein " * (i % 7) for i in range(64)]
    alone = {t: predict(server, {"texts": [t]}).json()["output"]["embeddings"][0] for t in texts[:8]}

    refusals = []

    def call(text):
        with requests.Session() as session:
            r, refused = until_accepted(lambda: predict(server, {"texts": [text]}, session))
        refusals.append(refused)
        body = r.json()
        assert body["status"] == "succeeded", body
        return body["output"]["embeddings"][0]

    with ThreadPoolExecutor(max_workers=32) as pool:
        together = list(pool.map(call, texts))
    print(f"concurrent clients: {sum(refusals)} spurious 409s retried in {len(texts)} requests")
    assert sum(refusals) <= len(texts) // 4
    assert len(together) == len(texts)
    for text, vector in zip(texts, together):
        if text in alone:
            assert max(abs(x - y) for x, y in zip(vector, alone[text])) < 1e-5
    # Rows came back to the request that sent them: different texts, different vectors.
    assert len({tuple(round(x, 5) for x in v) for v in together}) == len(texts)


def _damaged_weights_root(root: Path, checkpoints, damage: str) -> None:
    import shutil

    from e5.registry import get_spec
    from e5.weights import write_manifest

    shutil.copytree(checkpoints["bert"], root / "e5-small-v2")
    write_manifest(get_spec("e5-small-v2"), root / "e5-small-v2", "local")
    weights = root / "e5-small-v2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "corrupt":  # same size, other bytes: only the full check (E5_VERIFY=full) reads them
        data[-1] ^= 0xFF
    elif damage == "resized":
        data += b"\0"
    weights.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,env,reason", [
    ("missing", {}, "weights for e5-small-v2 are not in"),
    ("resized", {}, "e5-small-v2: model.safetensors has "),
    ("corrupt", {"E5_VERIFY": "full"}, "e5-small-v2: model.safetensors does not match its sha256 in the manifest; "
                                       "fetch it again with `python -m e5 fetch e5-small-v2`"),
    # Sound weights, but the image was built for CUDA (nvidia/cuda sets CUDA_VERSION) and there is no GPU.
    ("none", {"CUDA_VERSION": "12.8.1"}, "CUDA was expected (this image was built for CUDA 12.8.1 (gpu: true)) but "
                                         "is not usable: "),
])
def test_a_failed_setup_is_reported_with_its_reason_not_a_hang(damage, env, reason, checkpoints, tmp_path):
    # coglet directly (as in a built image): `python -m e5 serve` would stop before starting it.
    root = tmp_path / "weights"
    root.mkdir()
    if damage != "missing":
        _damaged_weights_root(root, checkpoints, damage)
    server = CogServer.coglet("predict.py:Predictor", tmp_path / "server.log", concurrency=4,
                              E5_WEIGHTS_ROOT=str(root), E5_MODEL="e5-small-v2", **env)
    try:
        health = server.wait_for("SETUP_FAILED")
        assert reason in health["setup"]["logs"]
        assert "Traceback" not in health["setup"]["logs"] and str(tmp_path) not in health["setup"]["logs"]
        body = predict(server.base, {"query": "q"}).json()  # answered at once, not queued for ever
        assert body["status"] == "failed"
    finally:
        server.stop()
