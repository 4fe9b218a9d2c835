"""The loader's choice of backends (e5.loader): packed passes where E5_PACKING allows and they agree with the
padded path at load, padded passes and one log line that says why where they do not."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from e5.loader import load_encoder
from e5.packed import PackedBackend
from e5.pass_timing import Measurements, alternating_timings
from e5.registry import get_spec
from e5.runtimes import PackingError, PackingMode
from e5.settings import Settings

from conftest import FAMILY_MODELS
from tiny_checkpoints import build_sharp_bert

TEXTS = ["query: how much protein should a female eat", "passage: " + "grams of protein a day for women " * 9, "ok"]
PACKING_KEYS = ("bert", "xlm-roberta", "xlm-roberta-instruct")


def _load(checkpoints, key, tmp_path, measurements=None, **overrides):
    settings = replace(Settings.from_env(), cache_dir=tmp_path, **overrides)
    return load_encoder(get_spec(FAMILY_MODELS[key]), checkpoints[key.removesuffix("-instruct")], settings=settings,
                        measurements=measurements)


class CrossingAttention(PackedBackend):
    """A packed backend whose attention runs over the whole flat row, across texts: what the load's check refuses."""

    def __init__(self, model, attention):
        super().__init__(model, attention)

        def across(q, k, v, batch):
            return F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)).transpose(0, 1)

        self.runner.attention = across


@pytest.mark.parametrize("key", PACKING_KEYS)
def test_with_packing_on_each_family_serves_packed_with_the_padded_paths_vectors(key, checkpoints, tmp_path):
    packed = _load(checkpoints, key, tmp_path, packing="on", cpu_runtime="torch")
    padded = _load(checkpoints, key, tmp_path, packing="off", cpu_runtime="torch")
    assert packed.runtime == "torch float32 packed" and padded.runtime == "torch float32"
    assert packed.pass_policy.packed and not padded.pass_policy.packed
    assert packed.report.packing.mode is PackingMode.ONLY and "min cosine 1.0000" in packed.report.why()
    assert (packed.embed(TEXTS)[0] - padded.embed(TEXTS)[0]).abs().max().item() <= 1e-5


def test_a_packed_path_that_disagrees_with_the_padded_one_is_refused_with_one_log_line(tmp_path, caplog):
    checkpoints = {"bert": build_sharp_bert(tmp_path / "sharp")}  # attention that tells texts apart
    crossing = Measurements(packed_backend=CrossingAttention, bf16_matmul_speedup=lambda: 0.5)
    assert _load(checkpoints, "bert", tmp_path, packing="on", cpu_runtime="torch").runtime == "torch float32 packed"
    with caplog.at_level(logging.WARNING, logger="e5.loader"):
        encoder = _load(checkpoints, "bert", tmp_path, crossing, dtype=None, remeasure=True)
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("e5-small-v2: packed passes")]
    assert len(refusals) == 1  # and the setup log's summary line says it again, in its "Why"
    assert refusals[0].startswith("e5-small-v2: packed passes refused, torch float32 stays padded: its vectors "
                                  "differ from the padded path's on 12 probe texts (min cosine 0.")
    assert refusals[0].endswith(", at least 0.9999 needed)")
    assert not any(runtime.packed for runtime in encoder.runtimes) and "packed passes refused" in encoder.report.why()
    with pytest.raises(PackingError, match=r"^E5_PACKING=on: e5-small-v2 cannot run packed here: its vectors differ"):
        _load(checkpoints, "bert", tmp_path, crossing, packing="on", cpu_runtime="torch")


def test_a_packed_path_that_fails_at_load_is_refused_too(checkpoints, tmp_path, caplog):
    def broken(model, attention):
        raise RuntimeError("no kernel for this device")

    with caplog.at_level(logging.WARNING, logger="e5.loader"):
        encoder = _load(checkpoints, "xlm-roberta", tmp_path, Measurements(packed_backend=broken,
                                                                            bf16_matmul_speedup=lambda: 0.5),
                        dtype=None, remeasure=True)
    assert "packed passes refused, torch float32 stays padded: RuntimeError: no kernel for this device" in caplog.text
    assert not any(runtime.packed for runtime in encoder.runtimes)


def test_the_measured_plan_times_packed_runtimes_beside_the_padded_ones(checkpoints, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="e5.loader"):
        encoder = _load(checkpoints, "bert", tmp_path, Measurements(bf16_matmul_speedup=lambda: 0.5), dtype=None,
                        remeasure=True)
    assert encoder.report.packing.mode is PackingMode.CANDIDATE
    assert "torch float32 packed " in encoder.plan.reason and "tok/s at 2048" in encoder.plan.reason
    with caplog.at_level(logging.WARNING, logger="e5.loader"):
        off = _load(checkpoints, "bert", tmp_path, Measurements(bf16_matmul_speedup=lambda: 0.5), dtype=None,
                    packing="off", remeasure=True)
    assert "packed" not in off.plan.reason and off.report.packing.reason == "E5_PACKING=off"


def test_a_packed_plan_is_served_again_from_the_cache(checkpoints, tmp_path, caplog):
    first = _load(checkpoints, "xlm-roberta", tmp_path, dtype=None, packing="on")
    assert all(runtime.packed for runtime in first.runtimes)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="e5.loader"):
        second = _load(checkpoints, "xlm-roberta", tmp_path, dtype=None, packing="on")
    assert "measuring" not in caplog.text and "(the plan measured " in caplog.text
    assert second.runtimes == first.runtimes and all(isinstance(b, PackedBackend) for b in second.backends)
    assert (second.embed(TEXTS)[0] - first.embed(TEXTS)[0]).abs().max().item() <= 1e-5


def test_packing_on_fails_setup_where_it_cannot_serve(checkpoints, tmp_path):
    with pytest.raises(PackingError, match=r"^E5_PACKING=on: packed passes run the bert and xlm-roberta checkpoints, "
                                           r"not e5-mistral-7b-instruct \(mistral\); unset E5_PACKING$"):
        _load(checkpoints, "mistral", tmp_path, packing="on")
    with pytest.raises(PackingError, match="E5_PACKING=on runs every pass packed in torch, and "
                                           "E5_CPU_RUNTIME=onnxruntime runs ONNX Runtime; unset one of them"):
        _load(checkpoints, "bert", tmp_path, packing="on", cpu_runtime="onnxruntime")


def test_mistral_stays_padded_and_says_why(checkpoints, tmp_path):
    encoder = _load(checkpoints, "mistral", tmp_path, cpu_runtime="torch")
    assert encoder.runtime == "torch float32" and not encoder.pass_policy.packed
    assert encoder.report.packing.reason.startswith("passes stay padded: packed passes run the bert and xlm-roberta")


def test_pinned_torch_stays_padded_unless_packing_is_on(checkpoints, tmp_path):
    encoder = _load(checkpoints, "bert", tmp_path, cpu_runtime="torch")
    assert encoder.runtime == "torch float32" and encoder.report.packing.mode is PackingMode.OFF
    assert "E5_PACKING=on packs them" in encoder.report.why()
    torch.testing.assert_close(encoder.embed(TEXTS)[0], _load(checkpoints, "bert", tmp_path, cpu_runtime="torch",
                                                              packing="on").embed(TEXTS)[0], atol=1e-5, rtol=0)


def test_the_load_and_its_probe_passes_run_on_a_thread_that_ends_with_it(checkpoints, tmp_path):
    timed_on: list[threading.Thread] = []

    def timings(backends, rows):  # the plan's probe passes, as the loader runs them
        timed_on.append(threading.current_thread())
        return alternating_timings(backends, rows)

    encoder = _load(checkpoints, "bert", tmp_path, Measurements(timings=timings, bf16_matmul_speedup=lambda: 0.5),
                    dtype=None, remeasure=True)
    assert encoder.embed(TEXTS)[0].shape == (3, encoder.dimensions)
    assert timed_on and timed_on[0] is not threading.current_thread() and timed_on[0].name == "e5-load"
    assert not any(t.is_alive() for t in timed_on)  # no thread of the load is left to keep an OpenMP pool
