"""The runtime seam (e5/runtimes.py): one pure choice with its reason, and one interface every runtime meets."""

from __future__ import annotations

import pytest
import torch

from e5.onnx_runtime import OnnxBackbone, QuantizeError
from e5.pass_plan import ONNX_FLOAT32
from e5.runtimes import ONNX_INT8, TORCH, TorchBackbone, choose_runtime
from e5.settings import CpuRuntime, Quantize

REFUSED = "E5_CPU_RUNTIME=onnxruntime: e5-mistral-7b-instruct is not a BERT or XLM-RoBERTa checkpoint"


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


@pytest.mark.parametrize("quantize,runtime", [(Quantize.INT8, CpuRuntime.AUTO), (Quantize.NONE, CpuRuntime.ONNXRUNTIME)])
def test_an_onnx_runtime_insisted_on_where_it_cannot_serve_is_refused_with_the_reason(quantize, runtime):
    with pytest.raises(QuantizeError, match="is not a BERT or XLM-RoBERTa checkpoint"):
        choose_runtime("cpu", False, quantize, runtime, REFUSED)


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
    assert onnx.choice.runtime == ONNX_FLOAT32 and onnx.runtime == "onnxruntime float32"
