"""Where the model runs and in which precision."""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ServiceError
from .settings import DType

_DTYPES = {DType.FLOAT32: torch.float32, DType.FLOAT16: torch.float16, DType.BFLOAT16: torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    """A device and the dtype the model weights use on it."""

    device: torch.device
    dtype: torch.dtype


def cuda_dtype(capability: tuple[int, int]) -> torch.dtype:
    """bf16 on Ampere (sm_80) and later, fp16 on older cards such as the T4."""
    return torch.bfloat16 if capability >= (8, 0) else torch.float16


# The oldest Linux driver each CUDA major release runs on (NVIDIA's CUDA compatibility guide, minor
# version compatibility): a torch wheel bundles its CUDA runtime, so the host needs only this driver.
_MINIMUM_DRIVER = {11: "450", 12: "525", 13: "580"}


class DeviceError(ServiceError):
    """CUDA was asked for (by the image or by E5_DEVICE) but is not usable here."""


def minimum_driver(cuda: str) -> str:
    """The oldest NVIDIA Linux driver that runs CUDA `cuda` ("13.0" -> "580")."""
    return _MINIMUM_DRIVER[int(cuda.split(".")[0])]


# The NVIDIA kernel module's own record, which containers on NVIDIA's runtime see too.
NVIDIA_VERSION_FILE = Path("/proc/driver/nvidia/version")


def nvidia_driver(version_file: Path | None = None) -> str | None:
    """The host's NVIDIA driver ("580.65.06"), or None where no NVIDIA kernel module is loaded."""
    try:
        text = (version_file or NVIDIA_VERSION_FILE).read_text()
    except OSError:
        return None
    # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.129.03  ...", or for the open module
    # "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  ..."
    match = re.search(r"Kernel Module\b.*?\s(\d+\.\d+(?:\.\d+)?)\s", text)
    return match.group(1) if match else None


def _driver_phrase() -> str:
    driver = nvidia_driver()
    return f"the host's NVIDIA driver is {driver}" if driver else "no NVIDIA driver is loaded on the host"


def cuda_expected(requested: str | None = None) -> str | None:
    """Why CUDA must be used, or None: `requested` (E5_DEVICE) is cuda..., or an image built on NVIDIA's CUDA base image.

    `cog build` with `gpu: true` starts from nvidia/cuda, which sets CUDA_VERSION (an image fact, not an E5
    setting, so it is read here); a CPU image does not. An explicit `E5_DEVICE=cpu` always wins.
    """
    if requested:
        return f"E5_DEVICE={requested}" if requested.startswith("cuda") else None
    image_cuda = os.environ.get("CUDA_VERSION", "").strip()
    return f"this image was built for CUDA {image_cuda} (gpu: true)" if image_cuda else None


def _cuda_unavailable_reason() -> str | None:
    """None when CUDA works, else why not, with torch's own explanation when it gives one."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if torch.cuda.is_available():
            return None
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build; install its CUDA build"
    told = next((str(w.message).splitlines()[0] for w in caught if "CUDA" in str(w.message)), None)
    needs = (f"{_driver_phrase()}; torch {torch.__version__} is built for CUDA {torch.version.cuda} and needs an "
             f"NVIDIA GPU with driver >= {minimum_driver(torch.version.cuda)}")
    return f"torch finds no usable GPU ({told}); {needs}" if told else f"torch finds no GPU; {needs}"


def check_cuda_expected(requested: str | None = None) -> None:
    """`DeviceError` (one line: why CUDA was expected, why it is not usable, the fix) rather than
    silently serving on the CPU when CUDA was asked for."""
    why = cuda_expected(requested)
    if why is None:
        return
    reason = _cuda_unavailable_reason()
    if reason is not None:
        raise DeviceError(f"CUDA was expected ({why}) but is not usable: {reason}. "
                          "Set E5_DEVICE=cpu to serve on the CPU instead")


def describe(placement: Placement) -> str:
    """One line for the setup log: the device (with the GPU's name and compute capability, torch's CUDA and the
    host's driver) and the dtype."""
    dtype = str(placement.dtype).removeprefix("torch.")
    if placement.device.type != "cuda":
        return f"{placement.device}, {dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    major, minor = torch.cuda.get_device_capability(placement.device)
    return (f"{placement.device} ({torch.cuda.get_device_name(placement.device)}, sm_{major}{minor}), {dtype}, "
            f"torch {torch.__version__} built for CUDA {torch.version.cuda}, "
            f"NVIDIA driver {nvidia_driver() or 'unknown'}")


def choose_placement(device_name: str | None = None, dtype: DType | None = None) -> Placement:
    """CUDA when present, else CPU in float32; `device_name` (E5_DEVICE) and `dtype` (E5_DTYPE, as `Settings`
    checked it) override.

    `DeviceError` when CUDA was expected (see `cuda_expected`) but is not usable.
    """
    check_cuda_expected(device_name)
    if device_name:
        device = torch.device(device_name)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is not None:
        torch_dtype = _DTYPES[dtype]
    elif device.type == "cuda":
        torch_dtype = cuda_dtype(torch.cuda.get_device_capability(device))
    else:
        torch_dtype = torch.float32
    return Placement(device, torch_dtype)
