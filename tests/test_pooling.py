import torch

from e5.pooling import last_token_pool, mean_pool, pool
from e5.registry import Pooling


def _reference_average_pool(last_hidden_states, attention_mask):
    # The model cards' average_pool.
    last_hidden = last_hidden_states.masked_fill(~attention_mask[..., None].bool(), 0.0)
    return last_hidden.sum(dim=1) / attention_mask.sum(dim=1)[..., None]


def test_mean_pool_ignores_padding_and_matches_the_model_card():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    got = mean_pool(hidden, mask)
    assert torch.allclose(got, _reference_average_pool(hidden, mask), atol=1e-6)
    assert torch.allclose(got[1], hidden[1, :2].mean(dim=0), atol=1e-6)
    hidden[1, 2:] = 1e6  # padded positions must not leak in
    assert torch.allclose(mean_pool(hidden, mask)[1], got[1], atol=1e-6)


def test_mean_pool_accumulates_in_float32():
    hidden = torch.full((1, 4096, 4), 1.001, dtype=torch.bfloat16)
    mask = torch.ones(1, 4096, dtype=torch.long)
    out = mean_pool(hidden, mask)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.full((1, 4), float(hidden[0, 0, 0])), atol=1e-6)


def test_last_token_pool_is_right_for_right_and_left_padding():
    torch.manual_seed(1)
    hidden = torch.randn(2, 4, 3)
    right = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    left = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    assert torch.equal(last_token_pool(hidden, right), torch.stack([hidden[0, 3], hidden[1, 1]]))
    assert torch.equal(last_token_pool(hidden, left), torch.stack([hidden[0, 3], hidden[1, 3]]))


def test_pool_dispatches_on_the_registry_value():
    hidden = torch.randn(1, 3, 2)
    mask = torch.ones(1, 3, dtype=torch.long)
    assert torch.equal(pool(hidden, mask, Pooling.LAST_TOKEN), hidden[:, -1])
    assert torch.allclose(pool(hidden, mask, Pooling.MEAN), hidden.mean(dim=1))
