"""Padding-free passes (e5.packed): packing, attention that never crosses texts, and the same vectors as the
padded path for every family that packs."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from e5.backend import PaddedBackend, Padding
from e5.packed import (
    PackedBackend, PackedModel, attention_for, mean_by_text, pack, packing_refusal, padded_attention, spec_refusal,
    varlen_refusal,
)
from e5.registry import Pooling, get_spec
from e5.runtimes import TorchBackbone
from tiny_checkpoints import random_rows

# The tiny checkpoints that pack, with the registry entry each stands in for (conftest.FAMILY_MODELS).
PACKING_FAMILIES = {"bert": "e5-small-v2", "xlm-roberta": "multilingual-e5-small"}


def _model(path):
    return AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()


def _backends(path, model_name):
    """The padded and the packed backend over one model (the packed one fuses query, key and value in place)."""
    model = _model(path)
    pad_id = model.config.pad_token_id or 0
    padded = PaddedBackend(TorchBackbone(model), Padding(pad_id, torch.device("cpu")), get_spec(model_name).pooling)
    return padded, PackedBackend(model)


# --- packing --------------------------------------------------------------------------------------------------

def test_pack_lays_the_rows_end_to_end_with_positions_restarting_at_each():
    batch = pack([[7, 8, 9], [4], [5, 6]], position_offset=2)
    assert batch.ids.tolist() == [7, 8, 9, 4, 5, 6]
    assert batch.positions.tolist() == [2, 3, 4, 2, 2, 3]  # XLM-RoBERTa's numbering starts after the padding id
    assert batch.segments.tolist() == [0, 0, 0, 1, 2, 2]
    assert batch.cu_seqlens.tolist() == [0, 3, 4, 6] and batch.cu_seqlens.dtype == torch.int32
    assert batch.lengths.tolist() == [3, 1, 2] and batch.longest == 3
    assert batch.grid.tolist() == [0, 1, 2, 3, 6, 7]  # row x longest + place in the row
    assert (batch.texts, batch.tokens) == (3, 6)


@pytest.mark.parametrize("rows", [[], [[1, 2], []]], ids=["no rows", "an empty row"])
def test_pack_refuses_a_pass_with_nothing_to_run(rows):
    with pytest.raises(ValueError, match="at least one row"):
        pack(rows)


def test_padded_attention_equals_attention_over_each_text_alone():
    torch.manual_seed(0)
    lengths = [5, 1, 17, 9, 17]
    heads, head_dim = 4, 8
    q, k, v = (torch.randn(sum(lengths), heads, head_dim) for _ in range(3))
    batch = pack([[1] * n for n in lengths])
    got = padded_attention(q, k, v, batch)
    start = 0
    for n in lengths:
        part = slice(start, start + n)
        alone = F.scaled_dot_product_attention(q[part].transpose(0, 1), k[part].transpose(0, 1),
                                               v[part].transpose(0, 1)).transpose(0, 1)
        assert (got[part] - alone).abs().max() <= 1e-6
        start += n
    assert torch.isfinite(got).all()


def test_attention_never_crosses_texts():
    # Changing one text's values leaves every other text's output exactly as it was.
    torch.manual_seed(1)
    lengths = [6, 3, 8]
    q, k, v = (torch.randn(sum(lengths), 2, 4) for _ in range(3))
    batch = pack([[1] * n for n in lengths])
    before = padded_attention(q, k, v, batch)
    k2, v2 = k.clone(), v.clone()
    k2[6:9] += 5.0
    v2[6:9] -= 3.0
    after = padded_attention(q, k2, v2, batch)
    assert torch.equal(before[:6], after[:6]) and torch.equal(before[9:], after[9:])
    assert not torch.equal(before[6:9], after[6:9])


def test_mean_by_text_averages_each_texts_tokens_in_float32():
    hidden = torch.arange(12, dtype=torch.bfloat16).view(6, 2)
    batch = pack([[1, 1, 1], [1], [1, 1]])
    pooled = mean_by_text(hidden, batch)
    assert pooled.dtype == torch.float32
    assert pooled.tolist() == [[2.0, 3.0], [6.0, 7.0], [9.0, 10.0]]


# --- the same vectors as the padded path ---------------------------------------------------------------------

@pytest.mark.parametrize("family", PACKING_FAMILIES)
@pytest.mark.parametrize("lengths", [[3, 40, 7, 1, 128, 22], [1], [1, 1, 1], [64], [512, 9, 300]],
                         ids=["mixed", "one token", "one-token rows", "a single row", "at the limit"])
def test_packed_vectors_equal_the_padded_ones(family, lengths, checkpoints):
    padded, packed = _backends(checkpoints[family], PACKING_FAMILIES[family])
    rows = random_rows(padded.config.vocab_size, lengths)
    with torch.inference_mode():
        expected, got = padded.embed(rows), packed.embed(rows)
    assert got.shape == expected.shape == (len(lengths), padded.config.hidden_size) and got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", PACKING_FAMILIES)
def test_a_text_packed_among_others_equals_the_text_alone(family, checkpoints):
    _, packed = _backends(checkpoints[family], PACKING_FAMILIES[family])
    rows = random_rows(packed.config.vocab_size, [12, 200, 5, 77], seed=3)
    with torch.inference_mode():
        together = packed.embed(rows)
        alone = torch.cat([packed.embed([row]) for row in rows])
    assert (together - alone).abs().max().item() <= 1e-5


def test_xlm_roberta_positions_start_after_the_padding_id(checkpoints):
    model = _model(checkpoints["xlm-roberta"])
    runner = PackedModel(model)
    assert runner.position_offset == model.config.pad_token_id + 1 == 2
    assert PackedModel(_model(checkpoints["bert"])).position_offset == 0  # BERT numbers from 0
    # The embeddings the packed pass sums are the ones the model itself gives a right-padded row.
    rows = [[0, 17, 23, 2], [0, 9, 2]]
    batch = pack(rows, runner.position_offset)
    ids = torch.tensor([[0, 17, 23, 2], [0, 9, 2, 1]])
    with torch.inference_mode():
        ours = runner.embedding_norm(runner.words(batch.ids) + runner.token_type + runner.positions(batch.positions))
        theirs = model.embeddings(input_ids=ids)
    assert (ours[:4] - theirs[0]).abs().max() <= 1e-6 and (ours[4:] - theirs[1, :3]).abs().max() <= 1e-6


def test_fusing_query_key_and_value_leaves_the_padded_model_as_it_was(checkpoints):
    model = _model(checkpoints["bert"])
    ids = torch.tensor([[2, 30, 31, 3]])
    with torch.inference_mode():
        before = model(input_ids=ids).last_hidden_state
    PackedBackend(model)  # the three projections now view one fused weight
    attention = model.encoder.layer[0].attention.self
    assert attention.key.weight.untyped_storage().data_ptr() == attention.query.weight.untyped_storage().data_ptr()
    with torch.inference_mode():
        after = model(input_ids=ids).last_hidden_state
    assert torch.equal(before, after)


def test_the_packed_backend_names_itself(checkpoints):
    _, packed = _backends(checkpoints["bert"], "e5-small-v2")
    assert str(packed.name) == "torch float32 packed" and packed.name.packed and packed.attention == "padded"


# --- what packs, and where -----------------------------------------------------------------------------------

def test_only_the_mean_pooled_bert_and_xlm_roberta_checkpoints_pack(checkpoints):
    for name in ("e5-small-v2", "e5-large-v2", "multilingual-e5-small", "multilingual-e5-large-instruct"):
        assert spec_refusal(get_spec(name)) is None
    assert spec_refusal(get_spec("e5-mistral-7b-instruct")) == (
        "packed passes run the bert and xlm-roberta checkpoints, not e5-mistral-7b-instruct (mistral)")
    assert get_spec("e5-small-v2").pooling is Pooling.MEAN
    mistral = _model(checkpoints["mistral"])
    assert "not mistral" in packing_refusal(mistral)
    with pytest.raises(ValueError, match="not mistral"):
        PackedBackend(mistral)


def test_relative_positions_do_not_pack(checkpoints):
    model = _model(checkpoints["bert"])
    model.config.position_embedding_type = "relative_key"
    assert packing_refusal(model) == "packed passes need absolute positions, not relative_key"


def test_on_the_cpu_attention_is_padded_per_text_and_the_varlen_kernel_is_refused():
    cpu = torch.device("cpu")
    assert varlen_refusal(cpu, torch.bfloat16) == "the varlen kernel runs on CUDA only, not cpu"
    name, why = attention_for(cpu, torch.float32)
    assert name == "padded" and why == "attention padded per text, as the varlen kernel runs on CUDA only, not cpu"
