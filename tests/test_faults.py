"""Faults end to end through coglet: out-of-memory isolation, cancellation and SIGTERM.

The server runs `tests/faulty_predict.py`: the production predictor whose model forward pass runs out of
memory on texts holding `oomalways` (always) or `oomwide` (on passes of more than one text) and sleeps on
texts holding `slowpass` (see that module).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from cog_server import REQUEST_SECONDS, CogServer, assert_ready, predict, until_accepted
from faulty_predict import SLOW_PASS_LOG

# Starts servers, runs the benchmark or loads real weights: not in the fast subset.
pytestmark = pytest.mark.slow

SLOW_SECONDS = 2.0
FAULTY_PREDICTOR = "tests/faulty_predict.py:FaultyPredictor"


def _start_faulty(tmp_path, checkpoints, concurrency: int) -> CogServer:
    server = CogServer.coglet(FAULTY_PREDICTOR, tmp_path / "server.log", concurrency=concurrency,
                              E5_MODEL="multilingual-e5-small", E5_WEIGHTS_DIR=str(checkpoints["xlm-roberta"]),
                              E5_FAULT_SLOW_S=str(SLOW_SECONDS))
    server.wait_for("READY")
    return server


@pytest.fixture(scope="module")
def faulty_server(tmp_path_factory, checkpoints):
    server = _start_faulty(tmp_path_factory.mktemp("faulty"), checkpoints, concurrency=8)
    yield server
    server.stop()


class _Webhooks:
    """A 127.0.0.1 receiver for Cog's `completed` webhooks, keyed by prediction id."""

    def __init__(self):
        self.completed: dict[str, dict] = {}
        self.arrived = threading.Condition()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hooks.arrived:
                    hooks.completed[body["id"]] = body
                    hooks.arrived.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait(self, prediction_id: str, timeout: float = REQUEST_SECONDS) -> dict:
        with self.arrived:
            if not self.arrived.wait_for(lambda: prediction_id in self.completed, timeout):
                pytest.fail(f"no completed webhook for {prediction_id} in {timeout} s")
            return self.completed[prediction_id]

    def close(self):
        self.httpd.shutdown()


def _start_async(base: str, prediction_id: str, payload: dict, webhook: str) -> requests.Response:
    """PUT an asynchronous prediction that reports its end to `webhook`."""
    return until_accepted(lambda: requests.put(
        f"{base}/predictions/{prediction_id}", headers={"Prefer": "respond-async"}, timeout=10,
        json={"input": payload, "webhook": webhook, "webhook_events_filter": ["completed"]}))[0]


def _predict(base: str, payload: dict) -> dict:
    """One prediction's answer, past any spurious "409 At capacity" (see `until_accepted`)."""
    return until_accepted(lambda: predict(base, payload))[0].json()


def _logged(server, text: str, seconds: float = 15.0) -> bool:
    """Whether `text` reaches the server's log within `seconds`: coglet relays the worker's log lines on its own
    time, so under load a line can land after the response that followed it."""
    deadline = time.monotonic() + seconds
    while text not in server.log():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _vector(body: dict) -> list[float]:
    assert body["status"] == "succeeded", body
    return body["output"]["embeddings"][0]


def test_out_of_memory_is_recovered_by_splitting_the_pass(faulty_server):
    # Near-equal lengths (30-32 tokens here), so the encoder runs them as one pass rather than cutting it
    # where padding would cost more than a pass.
    texts = ["needs a narrow pass oomwide", "needs a narrow pass second", "needs a narrow pass third",
             "needs a narrow pass fourth"]
    alone = [_vector(_predict(faulty_server.base, {"texts": [text]})) for text in texts]
    body = _predict(faulty_server.base, {"texts": texts})
    assert body["status"] == "succeeded", body
    for vector, solo in zip(body["output"]["embeddings"], alone):
        assert max(abs(x - y) for x, y in zip(vector, solo)) < 1e-5
    assert _logged(faulty_server, "out of memory on a batch of 4 texts; retrying as 2 + 2")


def test_an_out_of_memory_request_fails_alone_and_its_batch_neighbours_succeed(faulty_server):
    base = faulty_server.base
    good = ["good one", "good two here", "the third good text"]
    alone = {text: _vector(_predict(base, {"texts": [text]})) for text in good}

    with ThreadPoolExecutor(max_workers=5) as pool:
        # The slow request holds the worker, so the next four queue up and share one pass.
        holder = pool.submit(_predict, base, {"texts": ["hold the worker slowpass"]})
        assert _logged(faulty_server, SLOW_PASS_LOG), "the slow pass never started"
        calls = {text: pool.submit(_predict, base, {"texts": [text]}) for text in [good[0], "bad oomalways", *good[1:]]}
        answers = {text: call.result() for text, call in calls.items()}
        assert holder.result()["status"] == "succeeded"

    bad = answers.pop("bad oomalways")
    assert bad["status"] == "failed"
    assert bad["error"].endswith("the device ran out of memory on this request even one text at a time; "
                                 "send fewer or shorter texts"), bad["error"]
    assert "Traceback" not in (bad.get("logs") or "")
    for text, body in answers.items():
        assert max(abs(x - y) for x, y in zip(_vector(body), alone[text])) < 1e-5
    assert _logged(faulty_server, "a shared pass of 4 requests failed"), "the four requests did not share a pass"
    assert_ready(base)


def test_a_cancelled_prediction_frees_its_slot_and_is_never_computed(tmp_path, checkpoints):
    server = _start_faulty(tmp_path, checkpoints, concurrency=2)
    hooks = _Webhooks()
    try:
        assert _start_async(server.base, "running", {"texts": ["first slowpass"]}, hooks.url).status_code == 202
        assert _logged(server, SLOW_PASS_LOG), "the slow pass never started"  # "running" holds the model
        # Accepted (202): "queued" holds the second slot, waiting behind "running".
        assert _start_async(server.base, "queued", {"texts": ["second slowpass"]}, hooks.url).status_code == 202
        assert predict(server.base, {"texts": ["no room"]}).status_code == 409  # both slots taken

        assert requests.post(f"{server.base}/predictions/queued/cancel", timeout=10).status_code == 200
        assert hooks.wait("queued")["status"] == "canceled"
        # The freed slot takes a new prediction (coglet may need a moment to count it free).
        r, refusals = until_accepted(lambda: predict(server.base, {"texts": ["after the cancel"]}))
        assert r.json()["status"] == "succeeded" and refusals < 20
        assert hooks.wait("running")["status"] == "succeeded"
        assert server.log().count(SLOW_PASS_LOG) == 1, "the cancelled prediction was computed anyway"
        assert_ready(server.base)
    finally:
        hooks.close()
        server.stop()


def test_sigterm_lets_in_flight_predictions_finish(tmp_path, checkpoints):
    server = _start_faulty(tmp_path, checkpoints, concurrency=4)
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            in_flight = [pool.submit(_predict, server.base, {"texts": ["a slowpass in flight"]})]
            assert _logged(server, SLOW_PASS_LOG), "the slow pass never started"
            in_flight += [pool.submit(_predict, server.base, {"texts": [f"queued behind it {i}"]}) for i in range(2)]
            time.sleep(SLOW_SECONDS / 8)
            os.kill(server.proc.pid, signal.SIGTERM)  # what `docker stop` sends: to the server, not its worker
            bodies = [call.result() for call in in_flight]
        for body in bodies:
            assert body["status"] == "succeeded", body
            assert len(body["output"]["embeddings"][0]) == 32
        assert server.proc.wait(timeout=30) == 0
        assert "Server shutdown complete" in server.log()
    finally:
        server.stop()
