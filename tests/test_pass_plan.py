"""The CPU's runtime per pass: the pure choice from timings, and the encoder that measures and follows it."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from e5.encoder import Encoder
from e5.loader import load_encoder, probe_passes
from e5.onnx_runtime import OnnxBackbone
from e5.pass_plan import (
    ONNX_FLOAT32, OVERHEAD_TOKENS_RANGE, TORCH_BFLOAT16, TORCH_FLOAT32, PassPlan, RuntimeCost, choose_plan, fit_cost,
)
from e5.pass_timing import Measurements, bf16_matmul_speedup
from e5.registry import get_spec
from e5.settings import CpuRuntime, DType, Settings

ORT, TORCH, BF16 = ONNX_FLOAT32, TORCH_FLOAT32, TORCH_BFLOAT16


def _cost(name: str, query_ms: float, tokens_per_second: float, query_tokens: int = 12) -> RuntimeCost:
    """A runtime that answers a `query_tokens` query in `query_ms` and runs batches at `tokens_per_second`."""
    per_token = 1 / tokens_per_second
    return RuntimeCost(name, query_ms / 1000 - per_token * query_tokens, per_token)


# Runtime costs of multilingual-e5-small as measured on a 2-core Xeon with AMX ...
AMX = [_cost(ORT, 7.9, 3_300), _cost(TORCH, 15.0, 3_900), _cost(BF16, 12.6, 11_800)]
# ... and as this project measured them on a 2-core AMD EPYC without (bf16 matmul at 0.07x float32).
EPYC = [_cost(ORT, 6.0, 2_800), _cost(TORCH, 21.0, 2_750), _cost(BF16, 36.0, 400)]


def test_fit_cost_recovers_a_cost_line():
    cost = fit_cost("x", (12, 0.002 + 12e-4), (512, 0.002 + 512e-4))
    assert cost.fixed == pytest.approx(0.002) and cost.per_token == pytest.approx(1e-4)
    # A large pass timed faster than a small one (noise) never gives a negative part.
    noisy = fit_cost("x", (12, 0.010), (512, 0.009))
    assert noisy.per_token == 0.0 and noisy.fixed == pytest.approx(0.010)


def test_with_amx_short_queries_stay_in_onnxruntime_and_batches_go_to_bfloat16():
    plan = choose_plan(AMX, ORT, 12, 512)
    assert (plan.small, plan.large) == (ORT, BF16)
    # The split is where the two cost lines cross: above it bfloat16 is the cheaper one.
    small, large = AMX[0], AMX[2]
    assert small.seconds(plan.crossover_tokens) <= large.seconds(plan.crossover_tokens) * 1.01
    assert large.seconds(plan.crossover_tokens + 8) < small.seconds(plan.crossover_tokens + 8)
    assert plan.runtime_for(12) == ORT and plan.runtime_for(2048) == BF16
    assert "fastest on a short query" in plan.reason and "9,314 tok/s at 512" in plan.reason
    assert plan.describe() == f"{ORT} for passes of up to {plan.crossover_tokens} padded tokens, {BF16} above"
    # bfloat16's fixed cost per pass (12.6 ms, 0.085 ms a token) is well above float32's.
    assert 100 <= plan.overhead_tokens <= OVERHEAD_TOKENS_RANGE[1]


def test_without_bf16_units_everything_stays_in_onnxruntime():
    plan = choose_plan(EPYC, ORT, 12, 512)
    assert plan.runtimes == (ORT,) and plan.runtime_for(10_000) == ORT and plan.large is None
    assert plan.describe() == str(ORT) and "fastest on both probe passes" in plan.reason
    assert plan.overhead_tokens == OVERHEAD_TOKENS_RANGE[0]


def test_the_default_keeps_a_shape_unless_another_runtime_is_clearly_faster():
    # 10% faster on batches is within the margin: no second copy of the weights for that.
    close = [_cost(ORT, 6.0, 3_000), _cost(TORCH, 20.0, 3_300)]
    assert choose_plan(close, ORT, 12, 512).runtimes == (ORT,)
    clear = [_cost(ORT, 6.0, 3_000), _cost(TORCH, 20.0, 4_000)]
    assert choose_plan(clear, ORT, 12, 512).runtimes == (ORT, TORCH)
    # Without the default among the candidates (ONNX Runtime refused), the fastest wins each shape.
    assert choose_plan(AMX[1:], ORT, 12, 512).runtimes == (BF16,)


def test_a_packed_runtime_competes_as_any_other():
    # As a Xeon with AMX measured multilingual-e5-small: packed bfloat16 just ahead of padded on the batch probe.
    costs = [_cost(ORT, 6.5, 2_778), _cost(BF16, 17.4, 11_948), _cost(BF16.as_packed(), 16.3, 12_126)]
    plan = choose_plan(costs, ORT, 12, 2048)
    assert plan.runtimes == (ORT, BF16.as_packed()) and plan.runtime_for(2048) == BF16.as_packed()
    assert plan.describe().endswith("torch bfloat16 packed above")


def test_cost_lines_that_never_cross_split_at_the_batch_probe():
    # The large-pass runtime is cheaper per token nowhere: the split falls at the batch probe's size.
    odd = [_cost(ORT, 30.0, 5_000), _cost(TORCH, 5.0, 2_000)]
    plan = choose_plan(odd, ORT, 12, 512, margin=1.0)
    assert plan.small == TORCH and plan.large == ORT and 12 <= plan.crossover_tokens <= 512


def test_bf16_matmul_speedup_is_a_positive_ratio():
    assert bf16_matmul_speedup(rows=16, inner=32, cols=32, calls=2) > 0


def _auto(checkpoints, measurements: Measurements | None = None, family="xlm-roberta", **kwargs) -> Encoder:
    """An encoder loaded with nothing pinned, as the service loads one on the CPU by default, measured at this
    load (not read from the plan cache)."""
    settings = replace(Settings.from_env(), **{"dtype": None, "remeasure": True, **kwargs})
    return load_encoder(get_spec("multilingual-e5-small"), checkpoints[family], settings=settings,
                        measurements=measurements)


def test_the_default_cpu_load_measures_and_keeps_only_the_runtimes_it_uses(checkpoints, encoders, caplog):
    with caplog.at_level(logging.WARNING, logger="e5.loader"):
        auto = _auto(checkpoints)
    assert auto.plan is not None and set(auto.plan.runtimes) <= {ORT, TORCH, BF16, TORCH.as_packed(), BF16.as_packed()}
    # The batch probe is the largest pass the encoder cuts by default: the CPU budget in rows of full width.
    _, batch = probe_passes(auto)
    width = min(512, auto.max_tokens)
    assert [len(row) for row in batch] == [width] * (2048 // width)
    assert f"on the CPU: {auto.plan.describe()} (measured in " in caplog.text and f"tok/s at {2048 // width * width}" in caplog.text
    assert auto.runtime == auto.plan.describe() and auto.pass_policy.overhead_tokens == auto.plan.overhead_tokens
    assert (auto.large_backend is None) == (auto.plan.large is None)
    texts = ["query: how much protein", "passage: " + "a longer text about protein and grams " * 12]
    reference = encoders["xlm-roberta"].embed(texts)[0]  # float32, E5_DTYPE pinned by conftest
    ours = auto.embed(texts)[0]
    if any(runtime.precision == "bfloat16" for runtime in auto.plan.runtimes):
        assert torch.nn.functional.cosine_similarity(ours, reference).min() >= 0.9999
    else:
        assert (ours - reference).abs().max() <= 1e-5


def test_a_pinned_setting_skips_the_measurement(checkpoints):
    for pinned in (dict(dtype=DType.FLOAT32), dict(cpu_runtime=CpuRuntime.TORCH), dict(cpu_runtime=CpuRuntime.ONNXRUNTIME)):
        assert _auto(checkpoints, **pinned).plan is None, pinned


def test_bfloat16_is_refused_below_its_fidelity_gate(checkpoints):
    # As AMX measures; a fidelity gate no model reaches.
    plan = _auto(checkpoints, Measurements(bf16_matmul_speedup=lambda: 4.0, bf16_min_cosine=1.01)).plan
    assert all(r.precision != "bfloat16" for r in plan.runtimes)  # padded or packed
    assert "bfloat16 refused: min cosine to float32" in plan.reason


def test_bfloat16_is_not_tried_where_its_matmul_is_slow(checkpoints):
    plan = _auto(checkpoints, Measurements(bf16_matmul_speedup=lambda: 0.07)).plan  # as an AMD EPYC 7003 measures
    assert all(r.precision != "bfloat16" for r in plan.runtimes)  # padded or packed
    assert "bfloat16 not tried: a bf16 matmul runs at 0.07x" in plan.reason


def test_a_two_runtime_plan_sends_each_pass_to_its_runtime(checkpoints):
    # Force what an AMX machine measures: ONNX Runtime for short passes, torch bfloat16 above 40 tokens.
    forced = Measurements(bf16_matmul_speedup=lambda: 4.0,
                          bf16_min_cosine=0.99,  # tiny random weights: looser than real ones
                          choose_plan=lambda costs, default, small, large: PassPlan(ORT, BF16, 40, "forced", 150))
    auto = _auto(checkpoints, forced)
    assert isinstance(auto.backend.backbone, OnnxBackbone) and next(auto.large_backend.model.parameters()).dtype == torch.bfloat16
    assert auto.backend_for(1, 40) is auto.backend and auto.backend_for(2, 21) is auto.large_backend
    assert auto.runtimes == [ORT, BF16]
    assert auto.precision == "float32 and bfloat16" and auto.report.bf16_min_cosine >= 0.99
    float32 = _auto(checkpoints, dtype=DType.FLOAT32)
    short, long = ["query: protein"], ["passage: " + "protein grams women day " * 20]
    assert (auto.embed(short)[0] - float32.embed(short)[0]).abs().max() <= 1e-5  # ONNX Runtime, exact
    cosine = torch.nn.functional.cosine_similarity(auto.embed(long)[0], float32.embed(long)[0])
    assert 0.99 <= float(cosine.min()) and not torch.equal(auto.embed(long)[0], float32.embed(long)[0])
