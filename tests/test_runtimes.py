"""The runtime seam (e5/runtimes.py): one pure choice with its reason, and one interface every runtime meets."""

from __future__ import annotations

import pytest
import torch

from e5.onnx_runtime import OnnxBackbone, OnnxRuntimeError
from e5.pass_plan import ONNX_FLOAT32, ONNX_INT8, Engine, Runtime
from e5.runtimes import TORCH, TorchBackbone, choose_runtime
from e5.settings import CpuRuntime, Quantize

REFUSED = "supports the bert, xlm-roberta checkpoints, not e5-mistral-7b-instruct (mistral)"


@pytest.mark.parametrize("device,pinned,quantize,runtime,refusal,expected", [
    # The CPU default: ONNX Runtime float32, measured against torch (and bfloat16) at load, torch if its build fails.
    ("cpu", False, Quantize.NONE, CpuRuntime.AUTO, None, (ONNX_FLOAT32, True, True)),
    ("cpu", True, Quantize.NONE, CpuRuntime.AUTO, None, (ONNX_FLOAT32, False, True)),  # E5_DTYPE: nothing to measure
    ("cpu", False, Quantize.NONE, CpuRuntime.AUTO, REFUSED, (TORCH, True, False)),
    ("cpu", False, Quantize.NONE, CpuRuntime.TORCH, None, (TORCH, False, False)),
    ("cpu", False, Quantize.NONE, CpuRuntime.ONNXRUNTIME, None, (ONNX_FLOAT32, False, False)),
    ("cpu", False, Quantize.INT8, CpuRuntime.AUTO, None, (ONNX_INT8, False, False)),
    ("cuda", False, Quantize.NONE, CpuRuntime.AUTO, "runs on the CPU only", (TORCH, False, False)),
    ("cpu", False, "int8", "auto", None, (ONNX_INT8, False, False)),  # the settings' string values work alike
])
def test_the_choice_follows_the_settings_and_says_why(device, pinned, quantize, runtime, refusal, expected):
    choice = choose_runtime(device, pinned, quantize, runtime, refusal)
    assert (choice.runtime, choice.measure, choice.fallback_to_torch) == expected
    assert choice.reason and (refusal is None or choice.runtime != TORCH or refusal in choice.reason
                              or device != "cpu" or runtime == CpuRuntime.TORCH)


@pytest.mark.parametrize("quantize,runtime,message", [
    (Quantize.INT8, CpuRuntime.AUTO, f"E5_QUANTIZE=int8 runs in ONNX Runtime, which {REFUSED}; unset E5_QUANTIZE"),
    (Quantize.NONE, CpuRuntime.ONNXRUNTIME, f"E5_CPU_RUNTIME=onnxruntime: ONNX Runtime {REFUSED}; unset E5_CPU_RUNTIME"),
])
def test_an_onnx_runtime_insisted_on_where_it_cannot_serve_is_refused_naming_that_setting(quantize, runtime, message):
    with pytest.raises(OnnxRuntimeError) as refused:
        choose_runtime("cpu", False, quantize, runtime, REFUSED)
    assert str(refused.value) == message


def test_with_nothing_set_the_reason_blames_no_setting():
    choice = choose_runtime("cpu", False, Quantize.NONE, CpuRuntime.AUTO, REFUSED)
    assert choice.reason == f"torch, as ONNX Runtime {REFUSED}" and "E5_" not in choice.reason


def test_a_runtime_is_a_typed_name():
    bf16 = Runtime(Engine.TORCH, "bfloat16")
    assert bf16 == "torch bfloat16" and (bf16.engine, bf16.precision) == (Engine.TORCH, "bfloat16")
    assert Runtime.named("onnxruntime int8") == ONNX_INT8 and Runtime.named("onnxruntime int8").engine is Engine.ONNXRUNTIME
    assert (ONNX_FLOAT32.pass_overhead_tokens, bf16.pass_overhead_tokens) == (16, 48)
    with pytest.raises(ValueError):
        Runtime.named("tensorrt float32")
    with pytest.raises(ValueError, match="precision is one of"):
        Runtime(Engine.TORCH, "fp8")
    import pickle

    assert pickle.loads(pickle.dumps(bf16)).precision == "bfloat16"


def test_every_runtime_takes_ids_and_mask_and_gives_hidden_states(checkpoints):
    from e5.encoder import Encoder
    from e5.registry import get_spec

    torch_encoder = Encoder.load(get_spec("e5-small-v2"), checkpoints["bert"], runtime=CpuRuntime.TORCH)
    onnx = Encoder.load(get_spec("e5-small-v2"), checkpoints["bert"], runtime=CpuRuntime.ONNXRUNTIME)
    assert isinstance(torch_encoder.backbone, TorchBackbone) and isinstance(onnx.backbone, OnnxBackbone)
    assert (torch_encoder.backbone.name, onnx.backbone.name) == ("torch float32", "onnxruntime float32")
    ids = torch.tensor([[1, 5, 7, 2], [1, 5, 2, 0]])  # within the tiny vocabulary
    mask = (ids != 0).long()
    hidden = [backbone(ids, mask) for backbone in (torch_encoder.backbone, onnx.backbone)]
    assert all(h.shape == (2, 4, torch_encoder.dimensions) and h.dtype == torch.float32 for h in hidden)
    assert (hidden[0] - hidden[1])[mask.bool()].abs().max() <= 1e-5
    assert onnx.report.choice.runtime == ONNX_FLOAT32 and onnx.runtime == "onnxruntime float32"
