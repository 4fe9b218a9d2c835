"""The runtimes a model runs in, behind one interface, and the one function that chooses among them.

A `Backbone` takes padded token ids and their attention mask and returns the last hidden states; the
encoder pools them. `TorchBackbone` runs a Hugging Face model (float32, bfloat16 or float16, CPU or CUDA);
`e5.onnx_runtime.OnnxBackbone` runs the checkpoint's fused ONNX graph (float32 or int8, CPU). Each says
what it is in `name` ("torch float32", "onnxruntime int8"), which is how the encoder reports what runs.

`choose_runtime` turns the settings and what ONNX Runtime can do here into the runtime to load and the
reason, in one pure function; on the CPU with nothing pinned it asks for the load-time measurement
(`e5.loader`, `e5.pass_plan`) that then splits the passes between the runtimes that are fastest.
`choose_packing` decides, as purely, whether torch passes may run padding-free (`e5.packed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import torch

from .onnx_runtime import OnnxRuntimeError
from .pass_plan import ONNX_FLOAT32, ONNX_INT8, Framework, Runtime
from .settings import CpuRuntime, Packing, Quantize

TORCH = Framework.TORCH  # in the dtype the placement chose: its backbone is "torch float32", "torch bfloat16" ...


class Backbone(Protocol):
    """Token ids and attention mask in ([rows, width] each), last hidden states out ([rows, width, hidden])."""

    name: Runtime
    config: object

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


class TorchBackbone:
    """A Hugging Face model in torch, in the dtype and on the device it was loaded with."""

    def __init__(self, model):
        self.model = model
        self.config = model.config
        self.name = Runtime(Framework.TORCH, str(next(model.parameters()).dtype).removeprefix("torch."))

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@dataclass(frozen=True)
class RuntimeChoice:
    """What `load_encoder` loads: `runtime` (TORCH, ONNX_FLOAT32 or ONNX_INT8), whether to time the CPU's
    candidates at load (`measure`), whether a failed ONNX build may fall back to torch, and why."""

    runtime: Runtime | Framework
    measure: bool
    fallback_to_torch: bool
    reason: str


class PackingError(OnnxRuntimeError):
    """E5_PACKING=on where packed passes cannot serve: a checkpoint they do not run, a setting that runs ONNX
    Runtime, or a packed path that disagrees with the padded one at load."""


def choose_runtime(device_type: str, dtype_pinned: bool, quantize: Quantize, cpu_runtime: CpuRuntime,
                   onnx_refusal: str | None, packing: Packing = Packing.AUTO) -> RuntimeChoice:
    """The runtime for a model on `device_type`, given E5_QUANTIZE, E5_CPU_RUNTIME, whether E5_DTYPE is set,
    E5_PACKING, and `onnx_refusal`, why ONNX Runtime cannot serve the model here (None when it can), which is
    phrased here for the setting that was set.

    `OnnxRuntimeError` when ONNX Runtime is insisted on (int8, or E5_CPU_RUNTIME=onnxruntime) and cannot serve;
    `PackingError` when it is insisted on beside E5_PACKING=on, which runs every pass in torch.
    """
    if packing == Packing.ON:
        pinned = ("E5_QUANTIZE=int8" if quantize == Quantize.INT8 else
                  "E5_CPU_RUNTIME=onnxruntime" if cpu_runtime == CpuRuntime.ONNXRUNTIME else None)
        if pinned:
            raise PackingError(f"E5_PACKING=on runs every pass packed in torch, and {pinned} runs ONNX Runtime; "
                               "unset one of them")
        measure = device_type == "cpu" and not dtype_pinned and cpu_runtime == CpuRuntime.AUTO
        return RuntimeChoice(TORCH, measure, False, "E5_PACKING=on: packed passes in torch")
    if quantize == Quantize.INT8:
        if onnx_refusal:
            raise OnnxRuntimeError(f"E5_QUANTIZE=int8 runs in ONNX Runtime, which {onnx_refusal}; unset E5_QUANTIZE")
        return RuntimeChoice(ONNX_INT8, False, False, "E5_QUANTIZE=int8")
    if cpu_runtime == CpuRuntime.ONNXRUNTIME:
        if onnx_refusal:
            raise OnnxRuntimeError(f"E5_CPU_RUNTIME=onnxruntime: ONNX Runtime {onnx_refusal}; unset E5_CPU_RUNTIME")
        return RuntimeChoice(ONNX_FLOAT32, False, False, "E5_CPU_RUNTIME=onnxruntime")
    if cpu_runtime == CpuRuntime.TORCH:
        return RuntimeChoice(TORCH, False, False, "E5_CPU_RUNTIME=torch")
    if device_type != "cpu":
        return RuntimeChoice(TORCH, False, False, f"torch on {device_type}")
    measure = not dtype_pinned  # E5_DTYPE pins the precision: nothing to measure among
    if onnx_refusal:
        return RuntimeChoice(TORCH, measure, False, f"torch, as ONNX Runtime {onnx_refusal}")
    return RuntimeChoice(ONNX_FLOAT32, measure, True, "ONNX Runtime float32 where it serves the model (the CPU default)")


class PackingMode(str, Enum):
    """Whether torch passes run packed: never, as a candidate the CPU's plan times beside the padded ones, or all."""

    OFF = "off"
    CANDIDATE = "candidate"
    ONLY = "only"


@dataclass(frozen=True)
class PackingChoice:
    """Whether passes may run packed (`mode`), and why."""

    mode: PackingMode
    reason: str


def choose_packing(packing: Packing, device_type: str, measure: bool, refusal: str | None) -> PackingChoice:
    """Whether torch passes run packed, given E5_PACKING, the device, whether the CPU's plan is measured at this
    load, and `refusal`, why the checkpoint cannot run packed (None when it can).

    `auto` makes packing a candidate the CPU's plan times beside the padded runtimes, and keeps CUDA padded:
    the packed path has not yet been confirmed on a GPU. `PackingError` for E5_PACKING=on where it cannot serve.
    """
    if packing == Packing.OFF:
        return PackingChoice(PackingMode.OFF, "E5_PACKING=off")
    if refusal is not None:
        if packing == Packing.ON:
            raise PackingError(f"E5_PACKING=on: {refusal}; unset E5_PACKING")
        return PackingChoice(PackingMode.OFF, f"passes stay padded: {refusal}")
    if packing == Packing.ON:
        return PackingChoice(PackingMode.ONLY, "E5_PACKING=on")
    if device_type != "cpu":
        return PackingChoice(PackingMode.OFF, f"passes stay padded on {device_type}: E5_PACKING=auto packs them only "
                                              "once a GPU has confirmed the packed path (E5_PACKING=on packs them)")
    if not measure:
        return PackingChoice(PackingMode.OFF, "passes stay padded: nothing is measured with the CPU's runtime or "
                                              "precision pinned (E5_PACKING=on packs them)")
    return PackingChoice(PackingMode.CANDIDATE, "packed passes are timed beside the padded runtimes")
