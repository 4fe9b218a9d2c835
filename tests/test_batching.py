import random

import pytest
import torch

from e5.batching import (CPU_PASS_OVERHEAD_TOKENS, CPU_TOKEN_BUDGET, GPU_TOKEN_BUDGET, PassPolicy,
                         default_token_budget, real_token_batches, token_budget_batches)
from e5.devices import Placement
from e5.loader import load_encoder
from e5.registry import get_spec
from e5.settings import Settings


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


def _pass_cost(batches, lengths, overhead):
    return sum(overhead + len(b) * max(lengths[i] for i in b) for b in batches)


def _cheapest_by_brute_force(ascending, budget, max_batch, overhead):
    """Every way to cut the sorted rows into consecutive batches (2**(n-1) of them): the lowest cost."""
    n, best = len(ascending), None
    for mask in range(2 ** (n - 1)):
        cuts = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        spans = list(zip(cuts, cuts[1:]))
        if any(e - s > max_batch or (e - s > 1 and (e - s) * ascending[e - 1] > budget) for s, e in spans):
            continue
        cost = sum(overhead + (e - s) * ascending[e - 1] for s, e in spans)
        best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("overhead", [0, 16, 48, 400])
def test_with_a_pass_overhead_batches_cost_the_least_padding_plus_passes(overhead):
    rng = random.Random(overhead)
    for _ in range(40):
        lengths = [rng.choice([rng.randint(3, 40), rng.randint(16, 128), rng.randint(100, 600)])
                   for _ in range(rng.randint(1, 11))]
        batches = token_budget_batches(lengths, token_budget=1024, max_batch=4, pass_overhead_tokens=overhead)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for batch in batches:
            assert len(batch) <= 4 and (len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 1024)
        assert _pass_cost(batches, lengths, overhead) == _cheapest_by_brute_force(sorted(lengths), 1024, 4, overhead)
        greedy = token_budget_batches(lengths, token_budget=1024, max_batch=4)
        assert _pass_cost(batches, lengths, overhead) <= _pass_cost(greedy, lengths, overhead)


def test_mixed_lengths_are_cut_where_padding_costs_more_than_a_pass():
    lengths = [20, 22, 24, 120, 124, 128]
    assert token_budget_batches(lengths, token_budget=2048) == [[0, 1, 2, 3, 4, 5]]
    assert token_budget_batches(lengths, token_budget=2048, pass_overhead_tokens=16) == [[0, 1, 2], [3, 4, 5]]
    # Equal lengths add no padding: only the budget and max_batch cut them.
    assert [len(b) for b in token_budget_batches([8] * 300, 8192, 256, pass_overhead_tokens=16)] == [256, 44]


def test_the_cpu_runs_cut_passes_by_padding_and_the_gpu_by_budget_only(checkpoints):
    spec = get_spec("e5-small-v2")
    torch_cpu = load_encoder(spec, checkpoints["bert"], runtime="torch")
    assert torch_cpu.pass_policy.overhead_tokens == CPU_PASS_OVERHEAD_TOKENS["torch"]
    onnx_cpu = load_encoder(spec, checkpoints["bert"], runtime="onnxruntime")
    assert onnx_cpu.pass_policy.overhead_tokens == CPU_PASS_OVERHEAD_TOKENS["onnxruntime"]
    torch_cpu.placement = Placement(torch.device("cuda"), torch.float16)  # only the device type is read
    assert torch_cpu.pass_policy.overhead_tokens is None


def test_a_packed_backends_passes_hold_the_budget_in_real_tokens():
    lengths = [512, 16, 16, 16, 300, 40, 16, 700]
    batches = real_token_batches(lengths, 1024, max_batch=4)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert [[lengths[i] for i in batch] for batch in batches] == [[16, 16, 16, 16], [40, 300, 512], [700]]
    # Padded, rows x longest counts the padding: 40, 300 and 512 would be 3 x 512 tokens, over the budget.
    assert [[lengths[i] for i in b] for b in token_budget_batches(lengths, 1024, 4)] == [
        [16, 16, 16, 16], [40, 300], [512], [700]]
    packed = PassPolicy(1024, max_rows=4, packed=True)
    assert packed.slices(lengths) == packed.passes(lengths) == batches
    assert packed.fits(rows=3, width=512, tokens=1000) and not packed.fits(rows=3, width=512, tokens=1100)
    assert not PassPolicy(1024, max_rows=4).fits(rows=3, width=512, tokens=1000)  # padded: 3 x 512


def test_budget_defaults_per_device_and_env_override():
    assert default_token_budget("cpu") == CPU_TOKEN_BUDGET
    assert default_token_budget("cuda") == GPU_TOKEN_BUDGET
    assert default_token_budget("cpu", Settings.from_env({"E5_TOKEN_BUDGET": "4096"}).token_budget) == 4096
    with pytest.raises(ValueError, match="E5_TOKEN_BUDGET must be a positive number"):
        Settings.from_env({"E5_TOKEN_BUDGET": "0"})
