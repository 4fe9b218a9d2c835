import pytest
import torch

from e5.devices import choose_placement, cuda_dtype
from e5.settings import Settings


def test_bf16_on_ampere_and_later_fp16_before():
    assert cuda_dtype((7, 5)) is torch.float16  # T4
    assert cuda_dtype((8, 0)) is torch.bfloat16  # A100
    assert cuda_dtype((9, 0)) is torch.bfloat16  # H100


def test_cpu_runs_float32_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    placement = choose_placement()
    assert placement.device.type == "cpu" and placement.dtype is torch.float32


def test_overrides_and_a_clear_error_for_a_bad_dtype():
    settings = Settings.from_env({"E5_DEVICE": "cpu", "E5_DTYPE": "bfloat16"})
    assert choose_placement(settings.device, settings.dtype).dtype is torch.bfloat16
    with pytest.raises(ValueError, match="E5_DTYPE must be one of float32, float16, bfloat16, not 'float8'"):
        Settings.from_env({"E5_DTYPE": "float8"})
    with pytest.raises(ValueError, match="E5_DTYPE must be one of float32, float16, bfloat16"):
        choose_placement("cpu", "float8")
