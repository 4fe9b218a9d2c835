"""Opt-in int8 (E5_QUANTIZE=int8) and ONNX Runtime float32 (E5_CPU_RUNTIME, `auto` by default): what they
accept, what they refuse, what they cost in accuracy, and how `auto` falls back to torch."""

from __future__ import annotations

import json

import pytest
import torch

from e5.devices import Placement
from e5.loader import load_encoder
from e5.onnx_build import float32_layers_kept
from e5.onnx_runtime import PROBE_TEXTS, OnnxBackbone, OnnxRuntimeError, float32_bytes, onnx_refusal
from e5.pass_timing import Measurements
from e5.registry import get_spec
from e5.settings import CpuRuntime, Quantize, Settings


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("E5_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_mode_is_checked_once_by_the_settings():
    assert Settings.from_env({}).quantize is Quantize.NONE == "none"
    assert Settings.from_env({"E5_QUANTIZE": " INT8 "}).quantize is Quantize.INT8 == "int8"
    with pytest.raises(ValueError, match="E5_QUANTIZE must be one of none, int8, not 'fp4'"):
        Settings.from_env({"E5_QUANTIZE": "fp4"})


def test_the_first_half_of_the_layers_keeps_a_float32_ffn_output():
    assert float32_layers_kept(6) == [0, 1, 2]
    assert float32_layers_kept(12) == list(range(6))
    assert float32_layers_kept(2) == [0]


@pytest.mark.parametrize("family,model", [("bert", "e5-small-v2"), ("xlm-roberta", "multilingual-e5-small")])
def test_int8_runs_through_onnx_runtime_and_is_built_once(family, model, checkpoints, cache):
    spec = get_spec(model)
    fp32 = load_encoder(spec, checkpoints[family], quantize="none", runtime="torch")
    int8 = load_encoder(spec, checkpoints[family], quantize="int8")
    assert isinstance(int8.backend.backbone, OnnxBackbone)
    assert int8.runtime == "onnxruntime int8" == str(int8.report.choice.runtime)
    built = sorted(path / "model.onnx" for path in cache.glob("*-int8-*"))
    assert len(built) == 1 and len(list(cache.glob("*-float32-*"))) == 1  # int8 is timed against float32
    check = int8.report.int8_check
    assert check.texts == len(PROBE_TEXTS) and -1 <= check.min_cosine <= check.mean_cosine <= 1
    texts = ["passage: the protein", "query: how much", "passage: " + "the fox " * 40]
    a, b = int8.embed(texts)[0], fp32.embed(texts)[0]
    assert a.shape == b.shape and a.dtype == torch.float32
    # Random tiny weights are no accuracy test (see test_real_checkpoint); they must still agree broadly.
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.8
    mtime = built[0].stat().st_mtime_ns
    load_encoder(spec, checkpoints[family], quantize="int8")
    assert [p.stat().st_mtime_ns for p in built] == [mtime]  # reused, not rebuilt


def test_the_cpu_runtime_is_checked_once_by_the_settings():
    assert Settings.from_env({}).cpu_runtime is CpuRuntime.AUTO
    assert Settings.from_env({"E5_CPU_RUNTIME": " OnnxRuntime "}).cpu_runtime is CpuRuntime.ONNXRUNTIME
    with pytest.raises(ValueError, match="E5_CPU_RUNTIME must be one of auto, torch, onnxruntime, not 'tensorrt'"):
        Settings.from_env({"E5_CPU_RUNTIME": "tensorrt"})


@pytest.mark.parametrize("family,model", [("bert", "e5-small-v2"), ("xlm-roberta", "multilingual-e5-small")])
def test_float32_on_the_cpu_runs_in_onnx_runtime_by_default(family, model, checkpoints, cache):
    encoder = load_encoder(get_spec(model), checkpoints[family])
    assert encoder.runtime == "onnxruntime float32" and isinstance(encoder.backend.backbone, OnnxBackbone)
    assert load_encoder(get_spec(model), checkpoints[family], runtime="torch").runtime == "torch float32"


def test_auto_keeps_torch_where_onnx_runtime_cannot_serve(checkpoints, cache):
    mistral = load_encoder(get_spec("e5-mistral-7b-instruct"), checkpoints["mistral"])
    assert mistral.runtime == "torch float32" and not cache.exists()
    assert mistral.report.choice.reason.startswith("torch, as ONNX Runtime supports the bert, xlm-roberta checkpoints")
    bf16 = load_encoder(get_spec("e5-small-v2"), checkpoints["bert"], placement=Placement(torch.device("cpu"),
                                                                                           torch.bfloat16))
    assert bf16.runtime == "torch bfloat16" and not cache.exists()


def _safetensors_header(path, tensors: dict[str, list[int]]) -> None:
    header = json.dumps({name: {"dtype": "F16", "shape": shape, "data_offsets": [0, 0]}
                         for name, shape in tensors.items()}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header)


def test_a_model_over_one_onnx_files_2_gib_is_refused_by_its_size(tmp_path):
    # Sizes come from the safetensors headers alone, counted in float32 whatever the stored dtype.
    _safetensors_header(tmp_path / "model.safetensors", {"embeddings": [250_002, 1024], "layers": [24, 12, 1024, 1024]})
    assert float32_bytes(tmp_path) == 4 * (250_002 * 1024 + 24 * 12 * 1024 * 1024)
    spec, cpu = get_spec("multilingual-e5-large"), torch.device("cpu")
    reason = onnx_refusal(spec, cpu, torch.float32, tmp_path)
    assert reason == "holds at most 2 GiB of weights in one ONNX file, and multilingual-e5-large's take 2.08 GiB in float32"
    _safetensors_header(tmp_path / "model.safetensors", {"embeddings": [250_002, 384]})
    assert onnx_refusal(spec, cpu, torch.float32, tmp_path) is None


def test_auto_falls_back_to_torch_when_the_build_fails(checkpoints, tmp_path, monkeypatch, caplog):
    spec = get_spec("e5-small-v2")
    (tmp_path / "cache").write_text("a file where the cache directory should be")
    monkeypatch.setenv("E5_CACHE_DIR", str(tmp_path / "cache"))
    with caplog.at_level("WARNING", logger="e5.loader"):
        encoder = load_encoder(spec, checkpoints["bert"])
    assert encoder.runtime == "torch float32" and not isinstance(encoder.backend.backbone, OnnxBackbone)
    assert "the ONNX Runtime float32 build failed" in caplog.text and "runs in torch instead" in caplog.text
    reference = load_encoder(spec, checkpoints["bert"], runtime="torch")
    texts = ["passage: the protein", "query: how much"]
    assert (encoder.embed(texts)[0] - reference.embed(texts)[0]).abs().max() <= 1e-5
    with pytest.raises(OSError):  # asked for by name, the failure is the caller's to see
        load_encoder(spec, checkpoints["bert"], runtime="onnxruntime")


def test_a_float32_build_that_disagrees_with_torch_is_not_served(checkpoints, cache):
    strict = Measurements(onnx_float32_tolerance=-1.0)  # no difference passes now
    spec = get_spec("multilingual-e5-small")
    fallen_back = load_encoder(spec, checkpoints["xlm-roberta"], measurements=strict)
    assert fallen_back.runtime == "torch float32" and not isinstance(fallen_back.backend.backbone, OnnxBackbone)
    with pytest.raises(OnnxRuntimeError, match="float32 ONNX build of multilingual-e5-small differs from torch by"):
        load_encoder(spec, checkpoints["xlm-roberta"], runtime="onnxruntime", measurements=strict)


@pytest.mark.parametrize("family,model", [("bert", "e5-small-v2"), ("xlm-roberta", "multilingual-e5-small")])
def test_onnx_runtime_float32_gives_torchs_vectors(family, model, checkpoints, cache):
    spec = get_spec(model)
    torch_encoder = load_encoder(spec, checkpoints[family], runtime="torch")
    onnx = load_encoder(spec, checkpoints[family], runtime="onnxruntime")
    assert isinstance(onnx.backend.backbone, OnnxBackbone) and len(list(cache.glob("*-float32-*/model.onnx"))) == 1
    assert onnx.report.onnx_max_abs_diff <= 1e-5
    texts = ["passage: the protein", "query: how much", "passage: " + "the fox " * 40, "query: 南瓜"]
    batched = onnx.embed(texts)[0]
    assert (batched - torch_encoder.embed(texts)[0]).abs().max() <= 1e-5
    alone = torch.cat([onnx.embed([t])[0] for t in texts])
    assert (alone - batched).abs().max() <= 1e-5  # a text gets the same vector in a batch as alone


@pytest.mark.parametrize("option,setting", [({"quantize": "int8"}, "E5_QUANTIZE=int8"),
                                            ({"runtime": "onnxruntime"}, "E5_CPU_RUNTIME=onnxruntime")])
def test_onnx_runtime_refuses_mistral_and_gpus(option, setting, checkpoints, cache):
    with pytest.raises(OnnxRuntimeError, match=f"{setting}.*supports .* not e5-mistral-7b-instruct"):
        load_encoder(get_spec("e5-mistral-7b-instruct"), checkpoints["mistral"], **option)
    gpu = Placement(torch.device("cuda"), torch.bfloat16)
    with pytest.raises(OnnxRuntimeError, match=f"{setting}.*runs on the CPU only"):
        load_encoder(get_spec("e5-small-v2"), checkpoints["bert"], placement=gpu, **option)
    assert not cache.exists()
