import warnings

import pytest
import torch

from e5 import devices
from e5.devices import (DeviceError, Placement, choose_placement, cuda_dtype, cuda_expected, describe, minimum_driver,
                        nvidia_driver)
from e5.settings import DType, Settings


def test_bf16_on_ampere_and_later_fp16_before():
    assert cuda_dtype((7, 5)) is torch.float16  # T4
    assert cuda_dtype((8, 0)) is torch.bfloat16  # A100
    assert cuda_dtype((9, 0)) is torch.bfloat16  # H100


def test_cpu_runs_float32_without_a_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VERSION", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    placement = choose_placement()
    assert placement.device.type == "cpu" and placement.dtype is torch.float32


def test_overrides_and_a_clear_error_for_a_bad_dtype():
    settings = Settings.from_env({"E5_DEVICE": "cpu", "E5_DTYPE": "bfloat16"})
    assert choose_placement(settings.device, settings.dtype).dtype is torch.bfloat16
    with pytest.raises(ValueError, match="E5_DTYPE must be one of float32, float16, bfloat16, not 'float8'"):
        Settings.from_env({"E5_DTYPE": "float8"})
    assert choose_placement("cpu", DType.FLOAT16).dtype is torch.float16  # typed: Settings checked it once


@pytest.fixture()
def no_gpu(monkeypatch, tmp_path):
    """A host without a usable GPU or NVIDIA driver, whatever this machine has; nothing set that asks for CUDA."""
    for name in ("CUDA_VERSION",):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "NVIDIA_VERSION_FILE", tmp_path / "no-nvidia-driver")
    return monkeypatch


def _driver(monkeypatch, path, version: str) -> None:
    """An NVIDIA driver `version` loaded on the host, as its kernel module reports it."""
    path.write_text(f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {version}  Thu Oct 19 18:56:32 UTC 2023\n"
                    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    monkeypatch.setattr(devices, "NVIDIA_VERSION_FILE", path)


def test_the_driver_is_read_from_the_kernel_module_s_record(tmp_path):
    record = tmp_path / "version"
    record.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  "
                      "(dvs-builder@U16-I3-B03-4-3)  Sun Jul 27 06:54:38 UTC 2025\nGCC version:  gcc 13.3.0\n")
    assert nvidia_driver(record) == "580.65.06"
    record.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.129.03  Thu Oct 19 18:56:32 UTC 2023\n")
    assert nvidia_driver(record) == "535.129.03"
    assert nvidia_driver(tmp_path / "absent") is None


def test_a_gpu_image_on_a_host_without_a_usable_gpu_refuses_to_serve_on_the_cpu(no_gpu):
    # `cog build` with gpu: true starts from nvidia/cuda, which sets CUDA_VERSION; the wheel is a CUDA 13 build.
    no_gpu.setenv("CUDA_VERSION", "13.0.3")
    no_gpu.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(DeviceError) as caught:
        choose_placement()
    message = str(caught.value)
    assert "\n" not in message
    assert message == ("CUDA was expected (this image was built for CUDA 13.0.3 (gpu: true)) but is not usable: "
                       "torch finds no GPU; no NVIDIA driver is loaded on the host; "
                       f"torch {torch.__version__} is built for CUDA 13.0 and needs an NVIDIA GPU with driver >= 580. "
                       "Set E5_DEVICE=cpu to serve on the CPU instead")


def test_a_driver_too_old_names_the_driver_it_has_the_one_it_needs_and_the_image_s_cuda(no_gpu, tmp_path):
    def old_driver():
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version 11040).\n"
                      "Please update your GPU driver.", UserWarning)
        return False

    no_gpu.setattr(torch.cuda, "is_available", old_driver)
    no_gpu.setattr(torch.version, "cuda", "12.8")
    no_gpu.setenv("CUDA_VERSION", "12.8.1")
    _driver(no_gpu, tmp_path / "version", "470.82.01")
    with pytest.raises(DeviceError) as caught:
        choose_placement()
    assert str(caught.value) == (
        "CUDA was expected (this image was built for CUDA 12.8.1 (gpu: true)) but is not usable: torch finds no "
        "usable GPU (CUDA initialization: The NVIDIA driver on your system is too old (found version 11040).); "
        f"the host's NVIDIA driver is 470.82.01; torch {torch.__version__} is built for CUDA 12.8 and needs an "
        "NVIDIA GPU with driver >= 525. Set E5_DEVICE=cpu to serve on the CPU instead")
    with pytest.raises(DeviceError, match=r"^CUDA was expected \(E5_DEVICE=cuda\) but is not usable"):
        choose_placement(Settings.from_env({"E5_DEVICE": "cuda"}).device)


def test_a_cpu_only_torch_asked_for_cuda_says_so(no_gpu):
    no_gpu.setattr(torch.version, "cuda", None)
    with pytest.raises(DeviceError, match=r"\(E5_DEVICE=cuda:1\) but is not usable: this torch \(.*\) is a "
                                          r"CPU-only build; install its CUDA build\. Set E5_DEVICE=cpu"):
        choose_placement("cuda:1")


def test_an_explicit_cpu_wins_over_the_image(no_gpu):
    no_gpu.setenv("CUDA_VERSION", "13.0.3")
    assert cuda_expected("cpu") is None
    assert choose_placement("cpu").device.type == "cpu"
    no_gpu.delenv("CUDA_VERSION")
    assert cuda_expected() is None  # a CPU image (python:3.11-slim) asks for nothing
    assert choose_placement().device.type == "cpu"


def test_a_usable_gpu_is_chosen_and_described_with_its_cuda_and_driver(no_gpu, tmp_path):
    no_gpu.setenv("CUDA_VERSION", "12.8.1")
    _driver(no_gpu, tmp_path / "version", "535.129.03")
    no_gpu.setattr(torch.cuda, "is_available", lambda: True)
    no_gpu.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    no_gpu.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    no_gpu.setattr(torch.version, "cuda", "12.8")
    placement = choose_placement()
    assert placement == Placement(torch.device("cuda"), torch.float16)
    assert describe(placement) == (f"cuda (Tesla T4, sm_75), float16, torch {torch.__version__} built for CUDA 12.8, "
                                   "NVIDIA driver 535.129.03")


def test_the_cpu_is_described_with_its_threads(no_gpu):
    assert describe(choose_placement()) == (f"cpu, float32, {torch.get_num_threads()} threads, "
                                            f"torch {torch.__version__}")


def test_minimum_drivers_follow_nvidias_compatibility_table():
    assert minimum_driver("13.0") == "580" and minimum_driver("12.8") == "525" and minimum_driver("11.8") == "450"
