import random

import pytest

from e5.settings import Settings
from e5.batching import CPU_TOKEN_BUDGET, GPU_TOKEN_BUDGET, default_token_budget, token_budget_batches


def test_every_index_once_and_each_batch_within_the_padded_budget():
    random.seed(0)
    lengths = [random.randint(3, 600) for _ in range(500)]
    batches = token_budget_batches(lengths, token_budget=4096, max_batch=64)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for batch in batches:
        assert len(batch) <= 64
        assert len(batch) * max(lengths[i] for i in batch) <= 4096


def test_batches_run_shortest_first_so_padding_stays_small():
    lengths = [50, 5, 40, 6, 45, 7]
    batches = token_budget_batches(lengths, token_budget=100)
    assert batches == [[1, 3, 5], [2, 4], [0]]


def test_a_text_over_the_budget_gets_a_batch_of_its_own():
    assert token_budget_batches([10, 5000, 12], token_budget=1000) == [[0, 2], [1]]
    assert token_budget_batches([], token_budget=1000) == []


def test_many_short_texts_share_a_batch_up_to_max_batch():
    assert [len(b) for b in token_budget_batches([8] * 300, token_budget=8192, max_batch=256)] == [256, 44]


def test_budget_defaults_per_device_and_env_override():
    assert default_token_budget("cpu") == CPU_TOKEN_BUDGET
    assert default_token_budget("cuda") == GPU_TOKEN_BUDGET
    assert default_token_budget("cpu", Settings.from_env({"E5_TOKEN_BUDGET": "4096"}).token_budget) == 4096
    with pytest.raises(ValueError, match="E5_TOKEN_BUDGET must be a positive number"):
        Settings.from_env({"E5_TOKEN_BUDGET": "0"})
