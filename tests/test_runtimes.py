"""The runtime seam (e5/runtimes.py): one pure choice with its reason, and one interface every runtime meets."""

from __future__ import annotations

import pytest
import torch

from e5.loader import load_encoder
from e5.onnx_runtime import OnnxBackbone, OnnxRuntimeError
from e5.pass_plan import ONNX_FLOAT32, ONNX_INT8, TORCH_FLOAT32, Framework, Runtime
from e5.runtimes import TORCH, PackingError, PackingMode, TorchBackbone, choose_packing, choose_runtime
from e5.settings import CpuRuntime, Packing, Quantize

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


def test_a_runtime_is_typed_and_named_for_people():
    bf16 = Runtime(Framework.TORCH, "bfloat16")
    assert str(bf16) == "torch bfloat16"
    assert (bf16.framework, bf16.precision, bf16.packed) == (Framework.TORCH, "bfloat16", False)
    int8 = Runtime("onnxruntime", "int8")
    assert int8 == ONNX_INT8 and int8.framework is Framework.ONNXRUNTIME
    assert bf16 != "torch bfloat16"  # a name is not a runtime
    assert (ONNX_FLOAT32.pass_overhead_tokens, bf16.pass_overhead_tokens) == (16, 48)
    with pytest.raises(ValueError):
        Runtime("tensorrt", "float32")
    with pytest.raises(ValueError, match="precision is one of"):
        Runtime(Framework.TORCH, "fp8")
    import pickle

    assert pickle.loads(pickle.dumps(bf16)) == bf16


def test_a_packed_runtime_is_torch_at_a_precision_padding_free():
    packed = Runtime(Framework.TORCH, "bfloat16", packed=True)
    assert str(packed) == TORCH.value + " bfloat16 packed" and packed.packed
    assert Runtime(Framework.TORCH, "bfloat16").as_packed() == packed and {packed: 1}[packed.as_packed()] == 1
    with pytest.raises(ValueError, match="packed passes run in torch, not onnxruntime"):
        Runtime(Framework.ONNXRUNTIME, "float32", packed=True)


MISTRAL = "packed passes run the bert and xlm-roberta checkpoints, not e5-mistral-7b-instruct (mistral)"


@pytest.mark.parametrize("packing,device,measure,refusal,mode", [
    (Packing.AUTO, "cpu", True, None, PackingMode.CANDIDATE),  # timed beside the padded runtimes
    (Packing.AUTO, "cpu", False, None, PackingMode.OFF),  # a runtime or precision pinned: nothing is timed
    (Packing.AUTO, "cuda", False, None, PackingMode.OFF),  # until a GPU has confirmed the packed path
    (Packing.AUTO, "cpu", True, MISTRAL, PackingMode.OFF),
    (Packing.ON, "cpu", False, None, PackingMode.ONLY),
    (Packing.ON, "cuda", False, None, PackingMode.ONLY),
    (Packing.OFF, "cpu", True, None, PackingMode.OFF),
    ("off", "cuda", False, MISTRAL, PackingMode.OFF),
])
def test_packing_follows_e5_packing_the_device_and_the_checkpoint(packing, device, measure, refusal, mode):
    choice = choose_packing(packing, device, measure, refusal)
    assert choice.mode is mode and choice.reason
    if refusal and packing != Packing.OFF:
        assert choice.reason == f"passes stay padded: {refusal}"
    if device == "cuda" and packing == Packing.AUTO:
        assert choice.reason.startswith("passes stay padded on cuda: E5_PACKING=auto packs them only once a GPU")


def test_packing_on_where_it_cannot_serve_fails_naming_the_setting():
    with pytest.raises(PackingError) as refused:
        choose_packing(Packing.ON, "cuda", False, MISTRAL)
    assert str(refused.value) == f"E5_PACKING=on: {MISTRAL}; unset E5_PACKING"


@pytest.mark.parametrize("device,pinned,runtime,measure", [
    ("cpu", False, CpuRuntime.AUTO, True),  # the torch precisions, packed, timed against each other
    ("cpu", True, CpuRuntime.AUTO, False),
    ("cpu", False, CpuRuntime.TORCH, False),
    ("cuda", False, CpuRuntime.AUTO, False),
])
def test_packing_on_runs_torch(device, pinned, runtime, measure):
    choice = choose_runtime(device, pinned, Quantize.NONE, runtime, None, Packing.ON)
    assert (choice.runtime, choice.measure, choice.reason) == (TORCH, measure, "E5_PACKING=on: packed passes in torch")


@pytest.mark.parametrize("quantize,runtime,pinned", [(Quantize.INT8, CpuRuntime.AUTO, "E5_QUANTIZE=int8"),
                                                     (Quantize.NONE, CpuRuntime.ONNXRUNTIME, "E5_CPU_RUNTIME=onnxruntime")])
def test_packing_on_beside_a_setting_that_runs_onnx_runtime_is_refused(quantize, runtime, pinned):
    with pytest.raises(PackingError) as refused:
        choose_runtime("cpu", False, quantize, runtime, None, Packing.ON)
    assert str(refused.value) == (f"E5_PACKING=on runs every pass packed in torch, and {pinned} runs ONNX Runtime; "
                                  "unset one of them")


def test_every_runtime_takes_ids_and_mask_and_gives_hidden_states(checkpoints):
    from e5.registry import get_spec

    torch_encoder = load_encoder(get_spec("e5-small-v2"), checkpoints["bert"], runtime=CpuRuntime.TORCH)
    onnx = load_encoder(get_spec("e5-small-v2"), checkpoints["bert"], runtime=CpuRuntime.ONNXRUNTIME)
    assert isinstance(torch_encoder.backend.backbone, TorchBackbone)
    assert isinstance(onnx.backend.backbone, OnnxBackbone)
    assert (torch_encoder.backend.name, onnx.backend.name) == (TORCH_FLOAT32, ONNX_FLOAT32)
    ids = torch.tensor([[1, 5, 7, 2], [1, 5, 2, 0]])  # within the tiny vocabulary
    mask = (ids != 0).long()
    hidden = [backend.backbone(ids, mask) for backend in (torch_encoder.backend, onnx.backend)]
    assert all(h.shape == (2, 4, torch_encoder.dimensions) and h.dtype == torch.float32 for h in hidden)
    assert (hidden[0] - hidden[1])[mask.bool()].abs().max() <= 1e-5
    assert onnx.report.choice.runtime == ONNX_FLOAT32 and onnx.runtime == "onnxruntime float32"
