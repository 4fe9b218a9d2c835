"""Where the model runs and in which precision."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    """A device and the dtype the model weights use on it."""

    device: torch.device
    dtype: torch.dtype


def cuda_dtype(capability: tuple[int, int]) -> torch.dtype:
    """bf16 on Ampere (sm_80) and later, fp16 on older cards such as the T4."""
    return torch.bfloat16 if capability >= (8, 0) else torch.float16


def choose_placement(device_name: str | None = None, dtype_name: str | None = None) -> Placement:
    """CUDA when present, else CPU in float32; `device_name` (E5_DEVICE) and `dtype_name` (E5_DTYPE) override."""
    if device_name:
        device = torch.device(device_name)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype_name:
        if dtype_name not in _DTYPES:
            raise ValueError(f"E5_DTYPE must be one of {', '.join(_DTYPES)}, not {dtype_name!r}")
        dtype = _DTYPES[dtype_name]
    elif device.type == "cuda":
        dtype = cuda_dtype(torch.cuda.get_device_capability(device))
    else:
        dtype = torch.float32
    return Placement(device, dtype)
