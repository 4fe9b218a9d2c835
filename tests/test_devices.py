import pytest
import torch

from e5.devices import choose_placement, cuda_dtype


def test_bf16_on_ampere_and_later_fp16_before():
    assert cuda_dtype((7, 5)) is torch.float16  # T4
    assert cuda_dtype((8, 0)) is torch.bfloat16  # A100
    assert cuda_dtype((9, 0)) is torch.bfloat16  # H100


def test_cpu_runs_float32_without_a_gpu(monkeypatch):
    monkeypatch.delenv("E5_DEVICE", raising=False)
    monkeypatch.delenv("E5_DTYPE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    placement = choose_placement()
    assert placement.device.type == "cpu" and placement.dtype is torch.float32


def test_overrides_and_a_clear_error_for_a_bad_dtype(monkeypatch):
    monkeypatch.setenv("E5_DEVICE", "cpu")
    monkeypatch.setenv("E5_DTYPE", "bfloat16")
    assert choose_placement().dtype is torch.bfloat16
    monkeypatch.setenv("E5_DTYPE", "float8")
    with pytest.raises(ValueError, match="E5_DTYPE must be one of float32, float16, bfloat16"):
        choose_placement()
