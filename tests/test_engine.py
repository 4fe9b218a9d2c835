"""Dynamic batching: shared passes, per-request results, isolation, cancellation."""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time

import pytest
import torch

from e5.batching import PassPolicy
from e5.engine import BatchingEngine
from e5.loader import load_encoder
from e5.service import EmbeddingRequest, EmbeddingService, RequestError
from e5.settings import Settings
from engine_caller import submit

POISON = "fox"  # a whole word in the tiny BERT vocabulary


class GatedEncoder:
    """Wraps a real encoder: the first pass waits for `gate`, every pass is recorded, poison fails."""

    asynchronous = False  # as on the CPU: the engine delivers each turn before it gathers the next

    def __init__(self, encoder, poison_id: int | None = None, at: str = "result"):
        self.encoder = encoder
        self.at = at
        # Passes cut by a budget of padded tokens alone, as on a GPU: a few long texts fill one.
        self.pass_policy = PassPolicy(encoder.token_budget)
        self.gate = threading.Event()
        self.passes: list[int] = []  # rows per call
        self.poison_id = poison_id

    def embed_ids(self, ids):
        self.passes.append(len(ids))
        if len(self.passes) == 1:
            assert self.gate.wait(10), "test never opened the gate"
        if self.poison_id is not None and any(self.poison_id in row for row in ids):
            raise RuntimeError("injected fault")
        return self.encoder.embed_ids(ids)


@pytest.fixture()
def bert(encoders):
    return encoders["bert"]


def _ids(encoder, texts):
    return encoder.text_tokenizer.tokenize(texts).ids


def _wait_for(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_requests_that_arrive_while_a_pass_runs_share_the_next_pass(bert):
    gated = GatedEncoder(bert)
    engine = BatchingEngine(gated, max_wait_ms=0)
    texts = [f"passage: text number {i} " + "word " * i for i in range(12)]
    first = submit(engine, _ids(bert, ["passage: the first one"]))
    _wait_for(lambda: gated.passes)  # the worker is now inside the first pass
    futures = [submit(engine, _ids(bert, [t])) for t in texts]
    gated.gate.set()
    results = [f.result(10) for f in futures]
    first.result(10)
    engine.close()
    assert gated.passes == [1, len(texts)]
    for text, got in zip(texts, results):
        alone = bert.embed([text])[0]
        assert got.shape == alone.shape
        assert (got - alone).abs().max().item() <= 1e-5


def test_with_dynamic_batching_off_each_pass_serves_one_request(bert):
    gated = GatedEncoder(bert)
    engine = BatchingEngine(gated, dynamic=False)
    first = submit(engine, _ids(bert, ["passage: a"]))
    _wait_for(lambda: gated.passes)
    futures = [submit(engine, _ids(bert, [f"passage: {i}", f"passage: {i}!"])) for i in range(4)]
    gated.gate.set()
    for f in futures + [first]:
        f.result(10)
    engine.close()
    assert gated.passes == [1, 2, 2, 2, 2]


def _poisoned_turn(bert, wrapper, started) -> None:
    """A warm-up request held at `wrapper.gate`, then three good requests and a poisoned one that share the next
    turn: the poisoned one fails with the injected fault, the others get their own vectors."""
    engine = BatchingEngine(wrapper, max_wait_ms=0)
    first = submit(engine, _ids(bert, ["passage: warm"]))
    _wait_for(started)
    good = [submit(engine, _ids(bert, [f"passage: good {i}"])) for i in range(3)]
    bad = submit(engine, _ids(bert, [f"passage: {POISON}"]))
    wrapper.gate.set()
    first.result(10)  # the turn before is not touched by the failure
    with pytest.raises(RuntimeError, match="injected fault"):
        bad.result(10)
    for i, f in enumerate(good):
        alone = bert.embed([f"passage: good {i}"])[0]
        assert (f.result(10) - alone).abs().max().item() <= 1e-5
    engine.close()


def test_a_failing_request_fails_alone_and_its_neighbours_get_correct_vectors(bert):
    poison_id = bert.tokenizer.convert_tokens_to_ids(POISON)
    assert poison_id != bert.tokenizer.unk_token_id, "the tiny vocabulary must hold the poison word"
    gated = GatedEncoder(bert, poison_id=poison_id)
    _poisoned_turn(bert, gated, lambda: gated.passes)
    assert gated.passes[1] == 4  # the shared pass was tried first, then one by one
    assert sorted(gated.passes[2:]) == [1, 1, 1, 1]


def test_a_cancelled_request_is_not_computed(bert):
    gated = GatedEncoder(bert)
    engine = BatchingEngine(gated, max_wait_ms=0)
    first = submit(engine, _ids(bert, ["passage: busy"]))
    _wait_for(lambda: gated.passes)
    cancelled = submit(engine, _ids(bert, ["passage: never mind", "passage: at all"]))
    kept = submit(engine, _ids(bert, ["passage: kept"]))
    assert cancelled.cancel()
    gated.gate.set()
    first.result(10)
    assert kept.result(10).shape == (1, bert.dimensions)
    engine.close()
    assert gated.passes == [1, 1]


def test_the_worker_waits_for_a_request_announced_while_it_tokenises(bert):
    gated = GatedEncoder(bert)
    gated.gate.set()
    engine = BatchingEngine(gated, max_wait_ms=600_000)  # a bound no test run reaches
    with engine.arriving():
        early = submit(engine, _ids(bert, ["passage: early"]))
        late = submit(engine, _ids(bert, ["passage: late"]))
    early.result(10), late.result(10)
    engine.close()
    assert gated.passes == [2]  # the early request waited for the announced one


def test_the_worker_waits_for_announced_requests_no_longer_than_the_bound(bert):
    # Each reading of this clock is a second later: the 200 ms bound has passed by the worker's second look.
    ticks = itertools.count()
    engine = BatchingEngine(bert, max_wait_ms=200, clock=lambda: float(next(ticks)))
    with engine.arriving():  # announced, never submitted
        assert submit(engine, _ids(bert, ["passage: alone"])).result(10).shape == (1, bert.dimensions)
    engine.close()


def test_handle_async_equals_handle_for_concurrent_requests(encoders):
    service = EmbeddingService(encoders["xlm-roberta"])
    requests = [EmbeddingRequest(query=f"question {i}", passage=f"answer {i} " * (i + 1), normalize=bool(i % 2))
                for i in range(10)]
    requests.append(EmbeddingRequest(texts=[f"text {i}" for i in range(7)], input_type="query"))

    async def run_all():
        return await asyncio.gather(*(service.handle_async(r) for r in requests), return_exceptions=True)

    results = asyncio.run(run_all())
    for request, got in zip(requests, results):
        expected = service.handle(request)
        assert got.token_count == expected.token_count
        for name in ("query_embedding", "passage_embedding", "embeddings"):
            a, b = getattr(got, name), getattr(expected, name)
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)
        if expected.score is not None:
            assert got.score == pytest.approx(expected.score, abs=1e-5)
    service.engine.close()


def test_a_bad_request_among_concurrent_ones_fails_alone(encoders):
    service = EmbeddingService(encoders["bert"])
    requests = [EmbeddingRequest(texts=["fine"]), EmbeddingRequest(texts=[]),
                EmbeddingRequest(query="q", task="no-such-preset"), EmbeddingRequest(passage="also fine")]

    async def run_all():
        return await asyncio.gather(*(service.handle_async(r) for r in requests), return_exceptions=True)

    ok1, empty, unknown, ok2 = asyncio.run(run_all())
    assert isinstance(empty, RequestError) and "nothing to embed" in str(empty)
    assert isinstance(unknown, RequestError) and "no-such-preset" in str(unknown)
    assert len(ok1.embeddings) == 1 and len(ok2.passage_embedding) == service.encoder.dimensions
    service.engine.close()


def test_engine_settings_from_the_environment_are_checked(bert):
    with pytest.raises(ValueError, match="E5_BATCH_WAIT_MS must be a number of milliseconds"):
        Settings.from_env({"E5_BATCH_WAIT_MS": "soon"})
    with pytest.raises(ValueError, match="E5_DYNAMIC_BATCHING must be on or off"):
        Settings.from_env({"E5_BATCH_WAIT_MS": "5", "E5_DYNAMIC_BATCHING": "maybe"})
    settings = Settings.from_env({"E5_BATCH_WAIT_MS": "5", "E5_DYNAMIC_BATCHING": "off"})
    engine = BatchingEngine(bert, settings.batch_wait_ms, settings.dynamic_batching)
    assert engine.max_wait == pytest.approx(0.005) and engine.dynamic is False
    engine.close()


class RecordingEncoder(GatedEncoder):
    """A gated encoder that also keeps the token rows of every pass."""

    def __init__(self, encoder):
        super().__init__(encoder)
        self.rows: list[list[list[int]]] = []

    def embed_ids(self, ids):
        self.rows.append(ids)
        return super().embed_ids(ids)


def test_a_short_request_is_served_between_the_passes_of_a_large_one(bert):
    recording = RecordingEncoder(bert)
    engine = BatchingEngine(recording, max_wait_ms=0)
    large_texts = [f"passage: {i} " + "protein the fox " * 120 for i in range(40)]  # 8 texts per 2048-token pass
    large = submit(engine, _ids(bert, large_texts))
    _wait_for(lambda: recording.passes)  # the large request's first pass is running
    short_ids = _ids(bert, ["query: how much protein"])
    short = submit(engine, short_ids)
    recording.gate.set()
    short_vector = short.result(10)
    got = large.result(30)
    engine.close()
    served_in = next(i for i, rows in enumerate(recording.rows) if short_ids[0] in rows)
    assert len(recording.passes) >= 5 and served_in <= 2, recording.passes
    assert (short_vector - bert.embed_ids(short_ids)).abs().max().item() <= 1e-5
    assert (got - bert.embed(large_texts)[0]).abs().max().item() <= 1e-5


def test_cancelling_a_running_async_request_stops_its_remaining_passes(bert):
    recording = RecordingEncoder(bert)
    engine = BatchingEngine(recording, max_wait_ms=0)
    large_ids = _ids(bert, [f"passage: {i} " + "protein the fox " * 120 for i in range(40)])

    async def cancel_after_first_pass():
        task = asyncio.ensure_future(engine.submit_async(large_ids))
        await asyncio.to_thread(_wait_for, lambda: recording.passes)
        task.cancel()
        recording.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_after_first_pass())
    submit(engine, _ids(bert, ["passage: after"])).result(10)  # the worker is free again
    engine.close()
    assert len(recording.passes) <= 3  # the first pass, at most one taken before the cancel was seen, then "after"


def test_waiting_requests_join_a_pass_oldest_first_not_shortest_first(bert):
    # Shortest first, 32 clients of single texts saw p99 at 3.1x the mean latency: long texts were passed over.
    recording = RecordingEncoder(bert)
    engine = BatchingEngine(recording, max_wait_ms=0)
    first = submit(engine, _ids(bert, ["passage: warm"]))
    _wait_for(lambda: recording.passes)  # the gated first pass runs; everything below waits behind it
    old_ids = [_ids(bert, [f"passage: {i} " + "protein the fox " * 40]) for i in range(10)]
    old = [submit(engine, ids) for ids in old_ids]
    young = [submit(engine, _ids(bert, [f"query: {i}"])) for i in range(40)]
    recording.gate.set()
    for f in [first, *old, *young]:
        f.result(10)
    engine.close()
    second = recording.rows[1]
    assert all(ids[0] in second for ids in old_ids), "an older long text was left for younger short ones"
    assert recording.pass_policy.fits(len(second), max(map(len, second)), sum(map(len, second)))  # within its budget
    assert len(recording.rows) >= 3  # the young texts that did not fit ran next


def test_a_row_that_stays_non_finite_fails_only_its_request_in_a_shared_pass(overflowing_bert, tmp_path):
    # float16 overflows on every row of this checkpoint and the engine's pass recomputes them in float32; the
    # poison word overflows float32 too, so its request fails, named, and its neighbour gets its vectors.
    from e5.finite import NonFiniteError
    from e5.registry import get_spec

    settings = Settings.from_env({"E5_DTYPE": "float16", "E5_CACHE_DIR": str(tmp_path)})
    encoder = load_encoder(get_spec("e5-small-v2"), overflowing_bert, settings=settings)
    gated = GatedEncoder(encoder)
    service = EmbeddingService(encoder, engine=BatchingEngine(gated, max_wait_ms=0))
    bad_request = EmbeddingRequest(texts=["the dog", f"the {POISON}"])
    good_request = EmbeddingRequest(query="how much protein", passage="46 grams a day")

    async def shared_pass():
        warm = asyncio.ensure_future(service.handle_async(EmbeddingRequest(passage="warm")))
        await asyncio.to_thread(_wait_for, lambda: gated.passes)  # the worker is inside the first pass
        bad = asyncio.ensure_future(service.handle_async(bad_request))
        good = asyncio.ensure_future(service.handle_async(good_request))
        await asyncio.sleep(0)  # both submit their rows before the gate opens
        gated.gate.set()
        return await asyncio.gather(warm, bad, good, return_exceptions=True)

    warm, bad, good = asyncio.run(shared_pass())
    service.engine.close()
    assert gated.passes == [1, 4]  # the two requests' four rows in one pass
    assert isinstance(bad, NonFiniteError) and str(bad).startswith("texts[1] could not be embedded: the model's "
                                                                   "output for it is not finite in float16, nor in "
                                                                   "float32 when recomputed")
    alone = service.handle(good_request)
    assert math.isfinite(good.score) and good.score == pytest.approx(alone.score, abs=1e-5)
    for name in ("query_embedding", "passage_embedding"):
        assert torch.allclose(torch.tensor(getattr(good, name)), torch.tensor(getattr(alone, name)), atol=1e-5)
    assert torch.isfinite(torch.tensor(warm.passage_embedding)).all()


# --- one turn in flight (a GPU's overlap) ------------------------------------------------------------------------

class DeviceLikeEncoder:
    """Wraps a real encoder as a GPU's would behave: `issue` returns at once, `result()` is where the host waits.
    The first issue waits for `gate`; every issue and result is recorded in `events`; poison fails at result(),
    or `at` issue (a launch the device refuses)."""

    asynchronous = True

    def __init__(self, encoder, poison_id: int | None = None, at: str = "result"):
        self.encoder = encoder
        self.at = at
        self.pass_policy = PassPolicy(encoder.token_budget)
        self.gate = threading.Event()
        self.events: list[tuple[str, int]] = []
        self.poison_id = poison_id
        self.turns = 0

    def issue(self, ids):
        self.turns += 1
        turn = self.turns
        self.events.append(("issue", turn))
        if turn == 1:
            assert self.gate.wait(10), "test never opened the gate"
        poisoned = self.poison_id is not None and any(self.poison_id in row for row in ids)
        if poisoned and self.at == "issue":
            raise RuntimeError("injected fault, at launch")
        issued = self.encoder.issue(ids)
        wrapper = self

        class Issued:
            def result(self):
                wrapper.events.append(("result", turn))
                if poisoned:
                    raise RuntimeError("injected fault, seen when the device is synchronised")
                return issued.result()

        return Issued()

    def embed_ids(self, ids):  # the one-by-one retry after a shared turn failed
        if self.poison_id is not None and any(self.poison_id in row for row in ids):
            raise RuntimeError("injected fault")
        return self.encoder.embed_ids(ids)


def test_on_a_gpu_the_next_turn_is_issued_before_the_last_is_collected(bert):
    device = DeviceLikeEncoder(bert)
    engine = BatchingEngine(device, max_wait_ms=0)
    assert engine.overlap and not BatchingEngine(bert).overlap  # the CPU's encoder runs a pass as it is issued
    first = submit(engine, _ids(bert, ["passage: the first one"]))
    _wait_for(lambda: device.events)  # turn 1 is being issued
    texts = [f"passage: waiting {i} " + "word " * i for i in range(3)]
    waiting = [submit(engine, _ids(bert, [t])) for t in texts]
    device.gate.set()
    results = [f.result(10) for f in waiting]
    first_vector = first.result(10)
    engine.close()
    assert device.events == [("issue", 1), ("issue", 2), ("result", 1), ("result", 2)]
    assert (first_vector - bert.embed(["passage: the first one"])[0]).abs().max().item() <= 1e-5
    for text, got in zip(texts, results):  # each request its own rows, in order
        assert (got - bert.embed([text])[0]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("at", ["result", "issue"])
def test_on_a_gpu_a_turn_that_fails_when_issued_or_collected_fails_only_its_requests(bert, at):
    device = DeviceLikeEncoder(bert, poison_id=bert.tokenizer.convert_tokens_to_ids(POISON), at=at)
    _poisoned_turn(bert, device, lambda: device.events)
    # Turn 1 was still in flight when turn 2 was issued, and was collected whole before turn 2 failed.
    assert device.events[:3] == [("issue", 1), ("issue", 2), ("result", 1)]
    assert ("result", 2) in device.events if at == "result" else ("result", 2) not in device.events


def test_the_encoders_two_halves_give_what_embed_ids_gives(bert):
    ids = _ids(bert, ["passage: one", "query: two words", "passage: " + "three " * 40])
    issued = bert.issue(ids, token_budget=64)  # several passes, all issued before any is collected
    assert not bert.asynchronous and len(issued.pooled) > 1
    assert torch.equal(issued.result(), bert.embed_ids(ids, token_budget=64))
    assert bert.issue([]).result().shape == (0, bert.dimensions)
