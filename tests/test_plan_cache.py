"""The CPU's measured plan, kept between boots: its key, its file, and a loader that measures only when it must."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import pytest

from e5.encoder import Encoder
from e5.loader import load_encoder
from e5.pass_plan import ONNX_FLOAT32, TORCH_FLOAT32, Framework, PassPlan
from e5.pass_timing import CoreUse, Measurements, alternating_timings
from e5.plan_cache import LoadRecord, PlanCache, PlanSettings, cpu_identity, plan_key
from e5.registry import get_spec
from e5.settings import Settings

EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse avx2 fma avx512f avx512_bf16 avx512_vnni\n"
XEON = "processor\t: 0\nmodel name\t: Intel Xeon Platinum 8488C\nflags\t\t: avx2 fma avx512f amx_bf16 amx_tile\n"
SETTINGS = PlanSettings(None, "none", "auto", "auto", None)


def _key(checkpoint, cpuinfo=EPYC, threads=2, versions="torch 2.13.0", settings=SETTINGS):
    return plan_key(checkpoint, settings, threads, cpuinfo=cpuinfo, versions=versions)


def test_the_cpu_is_named_by_its_model_and_the_instruction_sets_that_set_its_speed():
    assert cpu_identity(EPYC) == ("AMD EPYC 9R14", "avx2 avx512f avx512_bf16 avx512_vnni fma")
    assert cpu_identity(XEON) == ("Intel Xeon Platinum 8488C", "avx2 avx512f amx_bf16 amx_tile fma")
    assert cpu_identity("") == ("unknown", "")


def test_every_part_of_the_key_changes_it(checkpoints, tmp_path):
    base = _key(checkpoints["bert"])
    assert _key(checkpoints["bert"]) == base and _key(checkpoints["bert"]).digest() == base.digest()
    changed = {
        "cpu": _key(checkpoints["bert"], cpuinfo=XEON),
        "threads": _key(checkpoints["bert"], threads=4),
        "versions": _key(checkpoints["bert"], versions="torch 2.14.1"),
        "token_budget": _key(checkpoints["bert"], settings=dataclasses.replace(SETTINGS, token_budget=4096)),
        "checkpoint": _key(checkpoints["xlm-roberta"]),
    }
    for part, key in changed.items():
        assert key.digest() != base.digest(), part
        assert any(line.startswith(part) for line in key.differences(base)), (part, key.differences(base))
    # The same directory with a rewritten weights file is another checkpoint.
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in checkpoints["bert"].iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    before = _key(copy)
    weights = next(copy.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert _key(copy).digest() != before.digest() and _key(copy).differences(before)[0].startswith("checkpoint")


def test_a_record_reads_back_as_written_and_only_under_its_key(checkpoints, tmp_path):
    cache = PlanCache(tmp_path, "e5-small-v2")
    key = _key(checkpoints["bert"])
    record = LoadRecord(key, (ONNX_FLOAT32, TORCH_FLOAT32), PassPlan(ONNX_FLOAT32, TORCH_FLOAT32, 300, "why", 48),
                        onnx_max_abs_diff=2e-7, notes=("a note",), measured_at="2026-12-04T18:00:00+00:00")
    assert cache.write(record) is None
    assert cache.read(key) == (record, f"measured 2026-12-04T18:00:00+00:00, cached in {cache.path(key)}")
    other, why = cache.read(_key(checkpoints["bert"], threads=4))
    assert other is None and why == "the cached plan was measured with threads 2 -> 4"
    assert PlanCache(tmp_path, "e5-base-v2").read(key) == (None, "no plan measured yet for this checkpoint here")


def test_a_corrupt_or_foreign_record_is_not_used(checkpoints, tmp_path):
    cache = PlanCache(tmp_path, "e5-small-v2")
    key = _key(checkpoints["bert"])
    cache.path(key).write_text("{not json")
    record, why = cache.read(key)
    assert record is None and why.startswith(f"the cached plan {cache.path(key)} is unreadable (JSONDecodeError")
    foreign = LoadRecord(_key(checkpoints["bert"], cpuinfo=XEON), (ONNX_FLOAT32,))
    cache.path(key).write_text(foreign.to_json())  # a file under the wrong name: its key still decides
    record, why = cache.read(key)
    assert record is None and "measured for another key: cpu 'Intel Xeon Platinum 8488C' -> 'AMD EPYC 9R14'" in why


def test_an_unwritable_cache_reports_why(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    cache = PlanCache(tmp_path / "file", "e5-small-v2")
    problem = cache.write(LoadRecord(_key(tmp_path), (ONNX_FLOAT32,)))
    assert problem is not None and "file" in problem


class CountingTimings:
    """The real alternating timings, counted: how often a load measured."""

    def __init__(self):
        self.calls = 0

    def __call__(self, models, passes):
        self.calls += 1
        return alternating_timings(models, passes, rounds=1)


class Cores:
    """The machine's cores as /proc would tell it: each reading adds two core seconds, one of them this process's
    and `others` of them other processes' (0: a quiet machine; 1: another process as busy as this one)."""

    def __init__(self, others: float = 0.0):
        self.others, self.readings = others, 0

    def __call__(self) -> CoreUse:
        self.readings += 1
        return CoreUse(total=2.0 * self.readings, busy=(1 + self.others) * self.readings, own=float(self.readings))


def _load(checkpoint, cache_dir, timings, cores=None, **settings) -> Encoder:
    measurements = Measurements(bf16_matmul_speedup=lambda: 0.5, timings=timings, core_use=cores or Cores())
    return load_encoder(get_spec("e5-small-v2"), checkpoint, measurements=measurements,
                        settings=Settings(cache_dir=cache_dir, **settings))


def test_a_plan_measured_on_busy_cores_serves_that_boot_and_the_next_quiet_one_is_kept(checkpoints, tmp_path,
                                                                                         caplog):
    timings = CountingTimings()
    with caplog.at_level(logging.WARNING, logger="e5.loader"):
        busy = _load(checkpoints["bert"], tmp_path, timings, cores=Cores(others=0.9))
    assert timings.calls == 1 and busy.plan is not None and not list(tmp_path.glob("e5-small-v2-plan-*.json"))
    assert ("not cached (the cores were busy: other processes took 45% of them while the runtimes were timed (at "
            "most 25% is kept)): the next boot measures again") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="e5.loader"):
        quiet = _load(checkpoints["bert"], tmp_path, timings, cores=Cores(others=0.1))
    assert timings.calls == 2 and "cached in" in caplog.text
    assert len(list(tmp_path.glob("e5-small-v2-plan-*.json"))) == 1
    warm = _load(checkpoints["bert"], tmp_path, timings, cores=Cores(others=0.9))
    assert timings.calls == 2 and warm.plan == quiet.plan  # a cached plan is read, not measured, whatever the cores


def test_a_warm_load_measures_nothing_and_serves_the_same_plan(checkpoints, tmp_path, caplog):
    timings = CountingTimings()
    with caplog.at_level(logging.WARNING, logger="e5.loader"):
        first = _load(checkpoints["bert"], tmp_path, timings)
    assert timings.calls == 1 and "measuring this CPU's runtimes: no plan measured yet" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="e5.loader"):
        second = _load(checkpoints["bert"], tmp_path, timings)
    assert timings.calls == 1 and "measuring" not in caplog.text and "(the plan measured " in caplog.text
    assert second.plan == first.plan and second.runtimes == first.runtimes
    assert second.report.onnx_max_abs_diff == first.report.onnx_max_abs_diff
    texts = ["query: protein", "passage: " + "grams of protein a day " * 30]
    assert (second.embed(texts)[0] - first.embed(texts)[0]).abs().max() <= 1e-5
    # E5_REMEASURE measures again, and says so.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="e5.loader"):
        _load(checkpoints["bert"], tmp_path, timings, remeasure=True)
    assert timings.calls == 2 and "measuring this CPU's runtimes: E5_REMEASURE=1" in caplog.text


def test_a_changed_key_or_a_corrupt_record_measures_again(checkpoints, tmp_path, caplog):
    timings = CountingTimings()
    _load(checkpoints["bert"], tmp_path, timings)
    (path,) = tmp_path.glob("e5-small-v2-plan-*.json")
    data = json.loads(path.read_text())
    data["key"]["threads"] = 64  # as if measured with other threads (or a CPU, version ...) and copied here
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="e5.loader"):
        _load(checkpoints["bert"], tmp_path, timings)
    assert timings.calls == 2 and "measured for another key: threads 64 -> " in caplog.text
    path.write_text("\x00garbage")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="e5.loader"):
        encoder = _load(checkpoints["bert"], tmp_path, timings)
    assert timings.calls == 3 and "is unreadable" in caplog.text and encoder.plan is not None
    assert LoadRecord.from_json(path.read_text()).plan == encoder.plan  # rewritten


def test_a_cached_plan_whose_build_is_gone_measures_again(checkpoints, tmp_path, caplog):
    timings = CountingTimings()
    first = _load(checkpoints["bert"], tmp_path, timings)
    if ONNX_FLOAT32 not in first.runtimes:
        pytest.skip("this CPU's plan does not use the ONNX build")
    for path in tmp_path.glob("e5-small-v2-float32-*/*"):
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="e5.loader"):
        _load(checkpoints["bert"], tmp_path, timings)
    assert timings.calls == 2 and "the cached plan could not be used (FileNotFoundError" in caplog.text


def test_an_unwritable_cache_still_serves_measuring_each_time(checkpoints, tmp_path, caplog):
    (tmp_path / "cache").write_text("a file where the cache directory should be")
    timings = CountingTimings()
    with caplog.at_level(logging.WARNING, logger="e5.loader"):
        encoder = _load(checkpoints["bert"], tmp_path / "cache", timings)
    # The ONNX build cannot be made there, so torch serves (padded, packed, or split between the two).
    assert {runtime.framework for runtime in encoder.runtimes} == {Framework.TORCH} and "not cached (" in caplog.text
    assert "the next boot measures again" in caplog.text
    texts = ["query: protein"]
    assert encoder.embed(texts)[0].shape == (1, encoder.dimensions)


def test_the_record_round_trips_through_json(checkpoints):
    record = LoadRecord(_key(checkpoints["bert"]), (ONNX_FLOAT32,), None, int8_min_cosine=0.99, int8_mean_cosine=0.995,
                        int8_texts=12, notes=("int8 runs ...",), measure_seconds=1.5)
    assert LoadRecord.from_json(record.to_json()) == record
    assert dataclasses.asdict(LoadRecord.from_json(record.to_json())) == dataclasses.asdict(record)


def test_a_warm_load_tokenises_from_the_cached_tokenizer_as_hugging_face_does(checkpoints, tmp_path):
    texts = ["query: how much protein", "passage: Der Zug nach Berlin fährt um 7:40. 东京是日本的首都。", "ok"]
    for family, model in (("bert", "e5-small-v2"), ("xlm-roberta", "multilingual-e5-small")):
        settings = Settings(cache_dir=tmp_path / family)
        first = load_encoder(get_spec(model), checkpoints[family], settings=settings)
        (cached,) = [p for p in (tmp_path / family).glob(f"{model}-tokenizer-*.json") if ".ids" not in p.suffixes]
        second = load_encoder(get_spec(model), checkpoints[family], settings=settings)
        assert second.report.record == first.report.record
        assert second.text_tokenizer.encode(texts) == first.text_tokenizer.encode(texts)
        reference = second.tokenizer(texts)["input_ids"]  # the Hugging Face tokenizer, loaded afresh
        assert second.text_tokenizer.encode(texts) == reference
        cached.write_text("{}")  # a tokenizer file that cannot be read: measured again, and rewritten
        third = load_encoder(get_spec(model), checkpoints[family], settings=settings)
        assert third.text_tokenizer.encode(texts) == reference and cached.stat().st_size > 2
