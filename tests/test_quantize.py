"""Opt-in int8 (E5_QUANTIZE=int8) and ONNX Runtime float32 (E5_CPU_RUNTIME=onnxruntime): what they accept,
what they refuse, and what they cost in accuracy."""

from __future__ import annotations

import pytest
import torch

from e5.devices import Placement
from e5.encoder import Encoder
from e5.quantize import (
    PROBE_TEXTS,
    OnnxBackbone,
    QuantizeError,
    cpu_runtime,
    float32_layers_kept,
    quantize_mode,
)
from e5.settings import Settings
from e5.registry import get_spec


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("E5_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_mode_comes_from_the_argument_or_the_environment():
    assert quantize_mode(None) == quantize_mode(Settings.from_env({}).quantize) == "none"
    assert quantize_mode(Settings.from_env({"E5_QUANTIZE": " INT8 "}).quantize) == "int8"
    assert quantize_mode("none") == "none"
    with pytest.raises(QuantizeError, match="E5_QUANTIZE must be one of none, int8, not 'fp4'"):
        quantize_mode("fp4")
    with pytest.raises(ValueError, match="E5_QUANTIZE must be one of none, int8, not 'fp4'"):
        Settings.from_env({"E5_QUANTIZE": "fp4"})


def test_the_first_half_of_the_layers_keeps_a_float32_ffn_output():
    assert float32_layers_kept(6) == [0, 1, 2]
    assert float32_layers_kept(12) == list(range(6))
    assert float32_layers_kept(2) == [0]


@pytest.mark.parametrize("family,model", [("bert", "e5-small-v2"), ("xlm-roberta", "multilingual-e5-small")])
def test_int8_runs_through_onnx_runtime_and_is_built_once(family, model, checkpoints, cache):
    spec = get_spec(model)
    fp32 = Encoder.load(spec, checkpoints[family], quantize="none")
    int8 = Encoder.load(spec, checkpoints[family], quantize="int8")
    assert isinstance(int8.model, OnnxBackbone)
    built = list(cache.glob("*.onnx"))
    assert len(built) == 1
    check = int8.int8_check
    assert check.texts == len(PROBE_TEXTS) and -1 <= check.min_cosine <= check.mean_cosine <= 1
    texts = ["passage: the protein", "query: how much", "passage: " + "the fox " * 40]
    a, b = int8.embed(texts)[0], fp32.embed(texts)[0]
    assert a.shape == b.shape and a.dtype == torch.float32
    # Random tiny weights are no accuracy test (see test_real_checkpoint); they must still agree broadly.
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.8
    mtime = built[0].stat().st_mtime_ns
    Encoder.load(spec, checkpoints[family], quantize="int8")
    assert [p.stat().st_mtime_ns for p in cache.glob("*.onnx")] == [mtime]  # reused, not rebuilt


def test_the_cpu_runtime_comes_from_the_argument_or_the_environment():
    assert cpu_runtime(None) == cpu_runtime(Settings.from_env({}).cpu_runtime) == "torch"
    assert cpu_runtime(Settings.from_env({"E5_CPU_RUNTIME": " OnnxRuntime "}).cpu_runtime) == "onnxruntime"
    assert cpu_runtime("torch") == "torch"
    with pytest.raises(QuantizeError, match="E5_CPU_RUNTIME must be one of torch, onnxruntime, not 'tensorrt'"):
        cpu_runtime("tensorrt")
    with pytest.raises(ValueError, match="E5_CPU_RUNTIME must be one of torch, onnxruntime, not 'tensorrt'"):
        Settings.from_env({"E5_CPU_RUNTIME": "tensorrt"})


@pytest.mark.parametrize("family,model", [("bert", "e5-small-v2"), ("xlm-roberta", "multilingual-e5-small")])
def test_onnx_runtime_float32_gives_torchs_vectors(family, model, checkpoints, cache):
    spec = get_spec(model)
    torch_encoder = Encoder.load(spec, checkpoints[family], runtime="torch")
    onnx = Encoder.load(spec, checkpoints[family], runtime="onnxruntime")
    assert isinstance(onnx.model, OnnxBackbone) and len(list(cache.glob("*-float32-*.onnx"))) == 1
    assert onnx.onnx_max_abs_diff <= 1e-5
    texts = ["passage: the protein", "query: how much", "passage: " + "the fox " * 40, "query: 南瓜"]
    batched = onnx.embed(texts)[0]
    assert (batched - torch_encoder.embed(texts)[0]).abs().max() <= 1e-5
    alone = torch.cat([onnx.embed([t])[0] for t in texts])
    assert (alone - batched).abs().max() <= 1e-5  # a text gets the same vector in a batch as alone


@pytest.mark.parametrize("option,setting", [({"quantize": "int8"}, "E5_QUANTIZE=int8"),
                                            ({"runtime": "onnxruntime"}, "E5_CPU_RUNTIME=onnxruntime")])
def test_onnx_runtime_refuses_mistral_and_gpus(option, setting, checkpoints, cache):
    with pytest.raises(QuantizeError, match=f"{setting} supports .* not e5-mistral-7b-instruct"):
        Encoder.load(get_spec("e5-mistral-7b-instruct"), checkpoints["mistral"], **option)
    gpu = Placement(torch.device("cuda"), torch.bfloat16)
    with pytest.raises(QuantizeError, match=f"{setting} runs on the CPU only"):
        Encoder.load(get_spec("e5-small-v2"), checkpoints["bert"], placement=gpu, **option)
    assert not cache.exists()
