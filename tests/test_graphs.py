"""Recorded passes (e5.graphs): the bucket ladder and choice, the fixed-size layout of a pass, replays that give
the vectors of the pass run as always (whatever the buffers held before, whatever a kernel leaves in the
padding), the check and fallback at load, and when E5_CUDA_GRAPHS records.

No GPU here: the recorder these tests inject runs the recorded function again over the same buffers, which is
what a CUDA graph's replay does, so everything but the capture itself is checked. The CUDA capture is untested
until a GPU runs bench/gpu_check.sh.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from transformers import AutoModel

from e5.graphs import (
    Bucket, GraphedBackend, GraphError, bucket_for, bucket_ladder, choose_graphs, graphed_twin,
    static_arrays,
)
from e5.loader import checkpoint_tokenizer, load_encoder, recorded_twin
from e5.packed import PackedBackend, padded_attention
from e5.pass_timing import Measurements
from e5.registry import get_spec
from e5.settings import CudaGraphs, Settings, SettingsError
from tiny_checkpoints import random_rows


def rerun(run):
    """A recorder without CUDA: the replay runs the recorded function again over the same buffers."""
    return run


def _packed(path) -> PackedBackend:
    return PackedBackend(AutoModel.from_pretrained(path, attn_implementation="sdpa").eval())


VOCAB = 60  # ids every tiny checkpoint has


LADDER = (Bucket(16, 4, 16), Bucket(32, 8, 24), Bucket(64, 8, 24))


# --- the ladder and the choice of a bucket ------------------------------------------------------------------------

def test_the_ladder_doubles_up_to_the_pass_budget_and_bounds_texts_and_length():
    ladder = bucket_ladder(16384, 256, 512)
    assert [b.tokens for b in ladder] == [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    assert ladder[0] == Bucket(64, 64, 64) and ladder[-1] == Bucket(16384, 256, 512)
    assert [b.tokens for b in bucket_ladder(1000, 256, 512)] == [64, 128, 256, 512, 1000]  # the budget itself last
    assert bucket_ladder(40, 256, 512) == (Bucket(40, 40, 40),)
    with pytest.raises(ValueError):
        bucket_ladder(0, 256, 512)


@pytest.mark.parametrize("lengths, expected", [
    ([3], Bucket(16, 4, 16)),
    ([4, 4, 4, 4], Bucket(16, 4, 16)),          # exactly full
    ([2, 2, 2, 2, 2], Bucket(32, 8, 24)),       # few tokens, but more texts than the smallest has slots
    ([20], Bucket(32, 8, 24)),                  # a text longer than the smallest's longest
    ([24, 24, 10], Bucket(64, 8, 24)),
    ([25], None),                               # longer than any bucket's longest: run as always
    ([20, 20, 20, 20], None),                   # more tokens than the largest
    ([1] * 9, None),                            # more texts than any bucket has slots
])
def test_a_pass_takes_the_smallest_bucket_that_holds_it(lengths, expected):
    assert bucket_for(lengths, LADDER) == expected


# --- the fixed-size layout ----------------------------------------------------------------------------------------

def test_the_texts_come_first_and_the_padding_belongs_to_no_text():
    bucket = Bucket(12, 4, 6)
    a = static_arrays([[7, 8, 9], [4], [5, 6]], bucket, position_offset=2)
    assert a["ids"].tolist() == [7, 8, 9, 4, 5, 6, 0, 0, 0, 0, 0, 0]
    assert a["padding"].tolist() == [False] * 6 + [True] * 6
    assert a["positions"][:6].tolist() == [2, 3, 4, 2, 2, 3] and set(a["positions"][6:].tolist()) == {2}
    # Text slots 0-2 hold the texts, slot 3 is empty, slot 4 (the last) takes the padding tokens.
    assert a["lengths"].tolist() == [3, 1, 2, 0, 0]
    assert a["cu_seqlens"].tolist() == [0, 3, 4, 6, 6, 6] and a["cu_seqlens"].dtype == np.int32
    assert a["segments"].tolist() == [0, 0, 0, 1, 2, 2] + [4] * 6
    grid = a["grid"]
    assert grid[:6].tolist() == [0, 1, 2, 6, 12, 13]  # slot x longest + place, as e5.packed.pack with longest 6
    assert all(4 * 6 <= cell < 5 * 6 for cell in grid[6:])  # padding only in the last slot's row of the grid


def test_a_pass_that_does_not_fit_its_bucket_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        static_arrays(random_rows(VOCAB, [7]), Bucket(16, 4, 6))
    with pytest.raises(ValueError, match="at least one row"):
        static_arrays([], Bucket(16, 4, 6))


# --- replays ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_a_replay_gives_the_vectors_of_the_pass_run_as_always(checkpoints, family):
    packed = _packed(checkpoints[family])
    graphed = GraphedBackend(packed, LADDER, rerun)
    with torch.inference_mode():
        # Large, then small in the same bucket: what the large pass left in the buffers must not count.
        for lengths in ([24, 24, 10], [3, 5], [4, 4, 4, 4], [20, 2], [1], [24, 24, 10, 6]):
            rows = random_rows(VOCAB, lengths, seed=len(lengths))
            got, want = graphed.embed(rows), packed.embed(rows)
            assert got.shape == (len(rows), packed.config.hidden_size)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_pass_beyond_the_ladder_runs_as_always(checkpoints):
    packed = _packed(checkpoints["bert"])
    graphed = GraphedBackend(packed, LADDER, rerun)
    calls: list[int] = []
    original = packed.embed
    packed.embed = lambda rows: calls.append(len(rows)) or original(rows)
    with torch.inference_mode():
        graphed.embed(random_rows(VOCAB, [3, 3]))
        assert calls == []
        rows = random_rows(VOCAB, [30, 30, 30])
        torch.testing.assert_close(graphed.embed(rows), original(rows))
    assert calls == [3]


def test_whatever_attention_leaves_in_the_padding_never_reaches_a_text(checkpoints):
    """A variable-length kernel leaves the padding tokens' output unwritten: here it is NaN."""
    packed = _packed(checkpoints["bert"])
    expected_rows = random_rows(VOCAB, [5, 9, 2], seed=3)
    with torch.inference_mode():
        want = packed.embed(expected_rows)

    def unwritten_padding(q, k, v, batch):
        out = padded_attention(q, k, v, batch)
        return out.masked_fill(batch.padding[:, None, None], float("nan")) if batch.padding is not None else out

    packed.runner.attention = unwritten_padding
    graphed = GraphedBackend(packed, LADDER, rerun)
    with torch.inference_mode():
        got = graphed.embed(expected_rows)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_replays_output_is_the_callers_own(checkpoints):
    """The next replay overwrites the recording's output: what a pass returned must not change with it."""
    graphed = GraphedBackend(_packed(checkpoints["bert"]), LADDER, rerun)
    with torch.inference_mode():
        first = graphed.embed(random_rows(VOCAB, [3, 4], seed=1))
        kept = first.clone()
        graphed.embed(random_rows(VOCAB, [6, 2], seed=2))
    assert torch.equal(first, kept)


def _nudged(vectors: torch.Tensor) -> torch.Tensor:
    """`vectors` turned by about 2.5 degrees each: a cosine near 0.999, under the check's threshold."""
    noise = torch.randn(vectors.shape, generator=torch.Generator().manual_seed(0))
    noise -= (noise * vectors).sum(1, keepdim=True) / (vectors * vectors).sum(1, keepdim=True) * vectors
    return vectors + 0.045 * noise / noise.norm(dim=1, keepdim=True) * vectors.norm(dim=1, keepdim=True)


# --- the check at load, and the fallback --------------------------------------------------------------------------

def test_recordings_that_agree_serve_and_say_so(checkpoints):
    packed = _packed(checkpoints["bert"])
    backend, why = graphed_twin(packed, LADDER, random_rows(VOCAB, [5, 7, 12, 3, 9]), rerun)
    assert isinstance(backend, GraphedBackend) and backend.name == packed.name
    assert "3 CUDA graphs (16-64 tokens) recorded in" in why and "min cosine 1.0000" in why


@pytest.mark.parametrize("recorder, reason", [
    (lambda run: (lambda: torch.zeros_like(run())), "differs from the unrecorded pass"),
    (lambda run: (lambda: _nudged(run())), "(min cosine 0.998"),  # close, but under GRAPH_MIN_COSINE
    (lambda run: (lambda: torch.full_like(run(), float("nan"))), "min cosine nan"),
    (lambda run: (_ for _ in ()).throw(RuntimeError("operation not permitted when stream is capturing")),
     "RuntimeError: operation not permitted when stream is capturing"),
], ids=["wrong vectors", "slightly off", "NaN", "capture fails"])
def test_recordings_that_disagree_or_fail_leave_the_pass_unrecorded_with_one_log_line(checkpoints, caplog,
                                                                                      recorder, reason):
    packed = _packed(checkpoints["bert"])
    with caplog.at_level(logging.WARNING, logger="e5.graphs"):
        backend, why = graphed_twin(packed, LADDER, random_rows(VOCAB, [5, 7, 12]), recorder)
    assert backend is packed and why.startswith("CUDA graphs refused, passes run unrecorded: ") and reason in why
    assert [r.getMessage() for r in caplog.records] == [why]


def test_the_loaders_ladder_runs_to_the_pass_budget_and_the_models_longest_text(checkpoints):
    spec = get_spec("e5-small-v2")
    packed = _packed(checkpoints["bert"])
    backend, why = recorded_twin(spec, checkpoint_tokenizer(checkpoints["bert"]), packed,
                                 Settings(token_budget=256), Measurements(graph_recorder=rerun))
    assert isinstance(backend, GraphedBackend) and "min cosine" in why
    assert [b.tokens for b in backend.ladder] == [64, 128, 256] and backend.ladder[-1] == Bucket(256, 256, 256)


# --- when passes are recorded -------------------------------------------------------------------------------------

VARLEN = ("varlen", "FlashAttention's varlen kernel")  # e5.packed.attention_for on an sm_80 or later GPU


def test_passes_are_recorded_only_when_asked_on_a_cuda_device_with_packed_passes():
    assert choose_graphs(CudaGraphs.ON, "cuda", packed=True, attention=VARLEN) == (True, "E5_CUDA_GRAPHS=on")
    on, why = choose_graphs(CudaGraphs.AUTO, "cuda", packed=True, attention=VARLEN)  # untested on a GPU: not by default
    assert not on and "until a GPU has confirmed" in why
    assert choose_graphs(CudaGraphs.OFF, "cuda", packed=True, attention=VARLEN)[0] is False
    cpu = choose_graphs(CudaGraphs.AUTO, "cpu", packed=True, attention=("padded", "attention padded per text"))
    assert cpu == (False, "CUDA graphs are for CUDA devices")
    with pytest.raises(GraphError, match="E5_CUDA_GRAPHS=on: CUDA graphs need a CUDA device, and this one is cpu"):
        choose_graphs(CudaGraphs.ON, "cpu", packed=True, attention=VARLEN)
    with pytest.raises(GraphError, match="record packed passes, and these are padded; set E5_PACKING=on"):
        choose_graphs(CudaGraphs.ON, "cuda", packed=False, attention=VARLEN)
    t4 = ("padded", "attention padded per text, as the varlen kernel needs compute capability 8.0 or later, and "
                    "this GPU has 7.5")
    with pytest.raises(GraphError, match="varlen kernel, and here packed passes run attention padded per text"):
        choose_graphs(CudaGraphs.ON, "cuda", packed=True, attention=t4)


def test_e5_cuda_graphs_is_read_once_and_a_bad_value_is_named():
    assert Settings.from_env({}).cuda_graphs is CudaGraphs.AUTO
    assert Settings.from_env({"E5_CUDA_GRAPHS": "ON"}).cuda_graphs is CudaGraphs.ON
    with pytest.raises(SettingsError, match="E5_CUDA_GRAPHS"):
        Settings.from_env({"E5_CUDA_GRAPHS": "maybe"})


def test_asking_for_graphs_on_the_cpu_fails_setup_naming_the_rule(checkpoints):
    settings = Settings(cuda_graphs=CudaGraphs.ON)
    with pytest.raises(GraphError, match="need a CUDA device"):
        load_encoder(get_spec("e5-small-v2"), checkpoints["bert"], settings=settings, runtime="torch", packing="on")
