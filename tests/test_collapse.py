"""e5.collapse: rows' vectors back to each input's, on hand-made rows (no model)."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest
import torch

from e5.collapse import collapse, cosines, unit_rows
from e5.finite import NonFiniteError
from e5.prepare import Rows, TextInput
from e5.prompts import InputType
from e5.tokenizer import Tokenized


def _rows(owners: list[int], lengths: list[int], labels: list[str]) -> Rows:
    ids = [[7] * n for n in lengths]
    inputs = [TextInput(label, "text", InputType.PASSAGE) for label in labels]
    return Rows(Tokenized(ids, lengths, [False] * len(ids)), owners, [(0, 4)] * len(ids), [], inputs)


def _never() -> str:
    raise AssertionError("the cause is asked only when a vector is not finite")


def test_one_row_per_input_is_returned_as_it_is_from_a_tensor_without_a_copy():
    raw = torch.randn(3, 4)
    collapsed = collapse(_rows([0, 1, 2], [5, 6, 7], ["query", "texts[0]", "texts[1]"]), raw, False, _never)
    assert np.shares_memory(collapsed.per_input, raw.numpy())
    assert np.array_equal(collapsed.vectors(range(1, 3)), raw[1:3].numpy())


def test_windows_become_their_token_weighted_mean_normalised_after():
    raw = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [4.0, 0.0]], dtype=np.float32)
    rows = _rows([0, 1, 1, 2], [5, 30, 10, 7], ["query", "texts[0]", "texts[1]"])
    mean = (30 * raw[1] + 10 * raw[2]) / 40
    assert np.allclose(collapse(rows, raw, False, _never).vectors(range(1, 2))[0], mean)
    assert np.allclose(collapse(rows, raw, True, _never).vectors(range(1, 2))[0], mean / np.linalg.norm(mean))
    kept = collapse(rows, raw, True, _never).row_vectors([1, 2])
    assert np.allclose(np.linalg.norm(kept, axis=1), 1.0) and kept.dtype == np.float32


def test_unit_rows_and_cosines_agree_with_torch():
    vectors = torch.randn(64, 384, generator=torch.Generator().manual_seed(0)) * 3
    vectors[5] = 0.0  # a zero row stays zero, as torch.nn.functional.normalize leaves it
    expected = torch.nn.functional.normalize(vectors, dim=-1)
    assert np.allclose(unit_rows(vectors.numpy()), expected.numpy(), atol=1e-6)
    assert not unit_rows(vectors.numpy())[5].any()
    assert np.allclose(cosines(vectors[0].numpy(), vectors.numpy()), (expected @ expected[0]).clamp(-1, 1).numpy(),
                       atol=1e-6)
    assert cosines(np.array([1.0, 0.0], np.float32), np.array([[2, 0], [-1, 0], [1, 1]], np.float32)).tolist() == \
        pytest.approx([1.0, -1.0, 2 ** -0.5])


def test_an_input_scores_as_its_best_window_and_scores_use_raw_vectors():
    raw = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    collapsed = collapse(_rows([0, 1, 1, 2], [3, 3, 3, 3], ["query", "texts[0]", "texts[1]"]), raw, True, _never)
    row_scores = collapsed.row_scores(0)
    assert row_scores.tolist() == pytest.approx([1.0, 2 ** -0.5, 1.0, 0.0])
    assert collapsed.scores(row_scores, range(1, 3)).tolist() == pytest.approx([1.0, 0.0])


def test_a_row_that_is_not_finite_names_its_input_and_the_cause():
    raw = np.ones((4, 2), dtype=np.float32)
    raw[2, 1] = np.inf
    rows = _rows([0, 1, 1, 2], [3, 3, 3, 3], ["query", "texts[0]", "texts[1]"])
    with pytest.raises(NonFiniteError, match=r"^texts\[0\] could not be embedded: float16 overflowed$"):
        collapse(rows, raw, False, lambda: "float16 overflowed")


def test_a_mean_that_overflows_is_caught_too():
    raw = np.full((3, 2), 3e38, dtype=np.float32)
    collapsed = collapse(_rows([0, 0, 1], [1, 1, 1], ["texts[0]", "texts[1]"]), raw, False, lambda: "too large")
    with pytest.raises(NonFiniteError, match=r"^texts\[0\] could not be embedded: too large$"):
        collapsed.vectors(range(0, 2))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads counted in /proc")
def test_collapse_starts_no_thread_pool_on_the_thread_that_calls_it():
    # A torch operation this large runs in parallel and leaves an OpenMP pool on the calling thread, beside the
    # pass thread's own; libgomp then stops spinning and every later pass is slower (e5.threads).
    raw = torch.randn(512, 1024)
    rows = _rows(list(range(256)) + [255] * 256, [3] * 512, ["query"] + [f"texts[{i}]" for i in range(255)])
    done, release = threading.Event(), threading.Event()

    def respond() -> None:
        collapsed = collapse(rows, raw, True, _never)
        collapsed.scores(collapsed.row_scores(0), range(1, 256))
        collapsed.vectors(range(256))
        collapsed.row_vectors(slice(None))
        done.set()
        release.wait(10)

    before = len(os.listdir("/proc/self/task"))
    caller = threading.Thread(target=respond)
    caller.start()
    assert done.wait(30)
    during = len(os.listdir("/proc/self/task"))
    release.set()
    caller.join(10)
    assert during == before + 1  # the caller itself, nothing else
