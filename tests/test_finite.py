"""Only finite numbers leave the service (e5/finite.py), in process.

A tiny BERT whose activations reach about 4e5 (finite in float32 and bfloat16, past float16's 65,504) is served
with E5_DTYPE=float16 on the CPU, the dtype path a T4 takes: every vector must come back finite and close to
float32's, with a warning that counts the recomputed rows. Its poison word overflows float32 too: a request
holding it fails alone, with an error that names the input, the precision and what avoids it.
"""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_checkpoints import OVERFLOW_POISON
from transformers import AutoModel
from vectors import cosines, decode_vector

from e5 import encoder as encoder_module
from e5.encoder import Encoder
from e5.finite import Float32Fallback, NonFiniteError, check_finite, finite_rows, non_finite_cause, overflow_warning
from e5.loader import load_encoder
from e5.pass_plan import ONNX_INT8, TORCH_BFLOAT16, TORCH_FLOAT32, Runtime
from e5.registry import get_spec
from e5.service import EmbeddingRequest, EmbeddingService
from e5.settings import Settings

MODEL = "e5-small-v2"  # the tiny BERT's registry stand-in (conftest.FAMILY_MODELS)
TEXTS = ["how much protein should a female eat", "the quick brown dog", "46 grams a day"]
LONG = "protein the quick brown dog " * 120  # over 512 tokens: windows with long_texts chunks or mean
FORMATS = ("float", "base64", "ubinary", "npy")
MODES = ("truncate", "chunks", "mean")
RECOMPUTED = "overflowed float16; recomputed in float32 (E5_DTYPE=float32 avoids this)"
FLOAT32_TOO = ("could not be embedded: the model's output for it is not finite in float16, nor in float32 when "
               "recomputed (an activation overflows even float32), so E5_DTYPE=float32 does not avoid it; check the "
               "checkpoint's weights")


def load(path, cache_dir, **env: str) -> Encoder:
    """An encoder of `path` loaded with these E5_* settings (and nothing from the environment)."""
    return load_encoder(get_spec(MODEL), path, settings=Settings.from_env({"E5_CACHE_DIR": str(cache_dir), **env}))


@pytest.fixture(scope="module")
def float16(overflowing_bert, tmp_path_factory) -> Encoder:
    return load(overflowing_bert, tmp_path_factory.mktemp("cache"), E5_DTYPE="float16")


@pytest.fixture(scope="module")
def float32(overflowing_bert, tmp_path_factory) -> Encoder:
    """The reference: the same weights in float32, in torch (no ONNX build to wait for)."""
    return load(overflowing_bert, tmp_path_factory.mktemp("cache"), E5_DTYPE="float32", E5_CPU_RUNTIME="torch")


# --- the checkpoint really overflows float16, and only float16 -------------------------------

def _ffn_peak_and_states(path, dtype: torch.dtype, input_ids, mask) -> tuple[float, torch.Tensor]:
    """The largest magnitude out of the first layer's FFN, and the last hidden states, in `dtype`."""
    model = AutoModel.from_pretrained(path, dtype=dtype).eval()
    peaks = []
    model.encoder.layer[0].output.dense.register_forward_hook(
        lambda module, inputs, output: peaks.append(float(output.float().abs().max())))
    with torch.inference_mode():
        states = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    return peaks[0], states


def test_the_checkpoint_overflows_float16_but_not_float32_or_bfloat16(overflowing_bert, float32):
    input_ids, mask = float32.backend.padding(float32.text_tokenizer.encode([f"passage: {t}" for t in TEXTS]))
    peak, states = _ffn_peak_and_states(overflowing_bert, torch.float32, input_ids, mask)
    assert 1e5 < peak < 1e6 and torch.isfinite(states).all()
    peak, states = _ffn_peak_and_states(overflowing_bert, torch.bfloat16, input_ids, mask)
    assert 1e5 < peak < 1e6 and torch.isfinite(states).all()
    peak, states = _ffn_peak_and_states(overflowing_bert, torch.float16, input_ids, mask)
    assert peak == float("inf")
    assert not torch.isfinite(states).all(dim=2).any(), "every row must overflow float16, or the tests prove nothing"
    # The poison word overflows float32 as well, on the texts that hold it only.
    input_ids, mask = float32.backend.padding(float32.text_tokenizer.encode([f"the {OVERFLOW_POISON}", "the dog"]))
    _, states = _ffn_peak_and_states(overflowing_bert, torch.float32, input_ids, mask)
    assert torch.isfinite(states).all(dim=2).all(dim=1).tolist() == [False, True]


# --- the encoder recomputes in float32 what float16 cannot hold ------------------------------

def test_float16_rows_that_overflow_are_recomputed_in_float32_with_a_warning(float16, float32, caplog):
    assert float16.runtime == "torch float16" and float16.precision == "float16"
    texts = [f"passage: {t}" for t in TEXTS]
    with caplog.at_level("WARNING", logger="e5.encoder"):
        vectors, _ = float16.embed(texts)
        again, _ = float16.embed(texts[:1])
    assert torch.isfinite(vectors).all() and torch.isfinite(again).all()
    assert cosines(vectors, float32.embed(texts)[0]).min() > 0.99
    assert (again[0] - vectors[0]).abs().max() <= 1e-5
    messages = [record.getMessage() for record in caplog.records]
    assert f"3 rows {RECOMPUTED}" in messages and f"1 row {RECOMPUTED}" in messages
    assert sum("made a float32 copy of the model" in m for m in messages) <= 1  # made once, then kept


def test_the_float32_copy_is_made_once_and_leaves_the_served_model_in_float16(float16):
    float16.embed(["passage: one"])
    fallback = float16._float32_fallback()
    kept = fallback.backend
    float16.embed(["passage: two"])
    assert float16._float32_fallback().backend is kept and kept.name == TORCH_FLOAT32
    assert str(float16.backend.name) == "torch float16"
    assert next(float16.backend.model.parameters()).dtype == torch.float16


def test_float32_vectors_are_left_as_they_are_and_nothing_is_logged(float32, caplog):
    # E5_DTYPE=float32 finds nothing to recompute: the same vectors as before this check existed.
    with caplog.at_level("WARNING", logger="e5.encoder"):
        vectors, _ = float32.embed([f"passage: {t}" for t in TEXTS])
    assert torch.isfinite(vectors).all() and not caplog.records


# --- the service: every format and long_texts mode, finite and close to float32 --------------

def _vectors(response, encoding: str) -> dict[str, np.ndarray]:
    """The response's vectors by field, decoded as a client would (ubinary: the sign bits, unpacked)."""
    def decode(text: str) -> np.ndarray:
        return decode_vector(text, encoding)

    if encoding in ("base64", "ubinary"):
        return {"query": decode(response.query_embedding_base64), "passage": decode(response.passage_embedding_base64),
                "texts": np.stack([decode(v) for v in response.embeddings_base64])}
    texts = np.load(io.BytesIO(response.embeddings_npy)) if encoding == "npy" else response.embeddings
    return {"query": response.query_embedding, "passage": response.passage_embedding, "texts": texts}


def _strict_json(response) -> str:
    """The response as JSON that refuses NaN and Infinity, as coglet's parser does."""
    def plain(value):
        return value.tolist() if isinstance(value, np.ndarray) else (None if isinstance(value, bytes) else value)

    return json.dumps({name: plain(value) for name, value in vars(response).items()}, allow_nan=False)


@pytest.mark.parametrize("long_texts", MODES)
@pytest.mark.parametrize("encoding", FORMATS)
def test_every_format_and_long_texts_mode_is_finite_and_close_to_float32(float16, float32, encoding, long_texts):
    request = EmbeddingRequest(query="how much protein", passage=LONG, texts=[LONG, *TEXTS], normalize=True,
                               encoding_format=encoding, long_texts=long_texts)
    got = EmbeddingService(float16).handle(request)
    expected = EmbeddingService(float32).handle(request)
    _strict_json(got)
    assert np.isfinite(got.scores).all() and np.isfinite(got.score)
    np.testing.assert_allclose(got.scores, expected.scores, atol=0.01)
    if long_texts == "chunks":
        assert len(got.chunk_scores) == len(got.chunk_text) > len(TEXTS) + 1 and np.isfinite(got.chunk_scores).all()
    for field, vectors in _vectors(got, encoding).items():
        reference = _vectors(expected, encoding)[field]
        assert np.isfinite(vectors).all(), field
        if encoding == "ubinary":  # sign bits: nearly all agree with float32's
            assert (np.asarray(vectors) == reference).mean() > 0.9, field
        else:
            assert cosines(vectors, reference).min() > 0.99, field


# --- what cannot be recomputed fails its own request, named ------------------------------------

@pytest.mark.parametrize("request_,label", [
    (EmbeddingRequest(texts=["the dog", f"the {OVERFLOW_POISON}"]), "texts[1]"),
    (EmbeddingRequest(query=f"a {OVERFLOW_POISON}", passage="the dog"), "query"),
    (EmbeddingRequest(query="the dog", passage=f"a {OVERFLOW_POISON}"), "passage"),
    (EmbeddingRequest(query="the dog", document=f"a {OVERFLOW_POISON}"), "document"),
    (EmbeddingRequest(texts=[f"{OVERFLOW_POISON} one", "fine", f"{OVERFLOW_POISON} two"]),
     "texts[0] (and 1 other input)"),
    # The poison in the last window of a long text: the text is named, in every long_texts mode.
    (EmbeddingRequest(texts=["fine", LONG + OVERFLOW_POISON], long_texts="chunks"), "texts[1]"),
    (EmbeddingRequest(texts=["fine", LONG + OVERFLOW_POISON], long_texts="mean"), "texts[1]"),
])
def test_an_input_that_overflows_float32_too_fails_its_request_naming_it(float16, request_, label):
    with pytest.raises(NonFiniteError) as err:
        EmbeddingService(float16).handle(request_)
    assert str(err.value) == f"{label} {FLOAT32_TOO}"


def test_where_no_float32_copy_can_be_made_the_request_fails_naming_e5_dtype(overflowing_bert, tmp_path,
                                                                             monkeypatch, caplog):
    # On a GPU without room for a float32 copy of the model: the copy runs out of memory.
    attempts = []

    def no_room(model):
        attempts.append(model)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (injected)")

    monkeypatch.setattr(encoder_module, "float32_copy", no_room)
    service = EmbeddingService(load(overflowing_bert, tmp_path, E5_DTYPE="float16"))
    with caplog.at_level("WARNING", logger="e5.encoder"):
        for _ in range(2):
            with pytest.raises(NonFiniteError) as err:
                service.handle(EmbeddingRequest(query="how much protein", texts=["the dog"]))
    assert str(err.value) == (
        "query (and 1 other input) could not be embedded: the model's activations overflow float16 (its range ends "
        "at 65,504) on it, and it cannot be recomputed in float32 here (cpu has no room for a 0.1 MiB float32 copy "
        "of the model); E5_DTYPE=float32 avoids this")
    assert len(attempts) == 1  # refused for good, not tried again by every request
    assert ("2 rows overflowed float16 and cannot be recomputed in float32 (cpu has no room for a 0.1 MiB float32 "
            "copy of the model); their requests fail (E5_DTYPE=float32 avoids this)") in caplog.text


def test_in_float32_the_input_that_overflows_fails_alone(float32, caplog):
    service = EmbeddingService(float32)
    with caplog.at_level("WARNING", logger="e5.encoder"):
        with pytest.raises(NonFiniteError) as err:
            service.handle(EmbeddingRequest(texts=["the dog", f"the {OVERFLOW_POISON}"]))
    assert str(err.value) == ("texts[1] could not be embedded: the model's output for it is not finite in float32 "
                              "(an activation overflows); check the checkpoint's weights")
    assert "1 row is not finite in float32; its request fails" in caplog.text
    assert np.isfinite(service.handle(EmbeddingRequest(texts=["the dog"])).embeddings).all()


class NaNRows:
    """A backend that gives NaN vectors for the rows holding `poison_id`, under another runtime's name."""

    def __init__(self, backend, poison_id: int, name: Runtime):
        self.backend, self.poison_id, self.name = backend, poison_id, name
        self.config, self.model = backend.config, backend.model

    def embed(self, rows: list[list[int]]) -> torch.Tensor:
        vectors = self.backend.embed(rows).clone()
        vectors[torch.tensor([self.poison_id in row for row in rows])] = float("nan")
        return vectors


def test_whatever_runtime_gives_a_non_finite_vector_it_never_leaves_the_service(checkpoints, tmp_path):
    # int8 is never recomputed: the service's guard names the input and what may avoid it.
    encoder = load(checkpoints["bert"], tmp_path, E5_DTYPE="float32", E5_CPU_RUNTIME="torch")
    poison_id = encoder.tokenizer.convert_tokens_to_ids("protein")
    encoder.backend = NaNRows(encoder.backend, poison_id, ONNX_INT8)
    service = EmbeddingService(encoder)
    for encoding in FORMATS:
        with pytest.raises(NonFiniteError) as err:
            service.handle(EmbeddingRequest(query="how much protein", texts=["a dog"], encoding_format=encoding))
        assert str(err.value) == ("query could not be embedded: the model's output for it is not finite in int8; "
                                  "E5_QUANTIZE=none (float32) may avoid it")
    assert np.isfinite(service.handle(EmbeddingRequest(query="a dog", texts=["a cat"])).scores).all()


def test_a_measured_plans_bfloat16_rows_are_recomputed_in_its_float32_runtime_without_a_copy(checkpoints, tmp_path,
                                                                                               caplog):
    # As on a CPU with AMX: float32 for short passes, bfloat16 for long ones (here every pass, NaN where the
    # marker word is); the plan's own float32 runtime recomputes them, and no float32 copy is made.
    encoder = load(checkpoints["bert"], tmp_path, E5_DTYPE="float32", E5_CPU_RUNTIME="torch")
    reference = EmbeddingService(encoder).handle(EmbeddingRequest(texts=["how much protein", "a dog"])).embeddings
    marker = encoder.tokenizer.convert_tokens_to_ids("protein")
    encoder.large_backend = NaNRows(encoder.backend, marker, TORCH_BFLOAT16)
    encoder.plan = SimpleNamespace(large="torch bfloat16", runtime_for=lambda tokens: "torch bfloat16",
                                   overhead_tokens=48)
    with caplog.at_level("WARNING", logger="e5.encoder"):
        got = EmbeddingService(encoder).handle(EmbeddingRequest(texts=["how much protein", "a dog"])).embeddings
    np.testing.assert_allclose(got, reference, atol=1e-6)
    assert "1 row overflowed bfloat16; recomputed in float32 (E5_DTYPE=float32 avoids this)" in caplog.text
    assert encoder._float32_fallback().backend is encoder.backend and "float32 copy" not in caplog.text


# --- the helpers -------------------------------------------------------------------------------

def test_finite_rows_marks_each_row():
    vectors = torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [float("inf"), 1.0], [-3.0, 4.0]])
    assert finite_rows(vectors).tolist() == [True, False, False, True]


def test_check_finite_names_the_first_input_and_counts_the_others():
    vectors = np.array([[1.0], [np.nan], [np.nan], [-np.inf], [0.0]], dtype=np.float32)
    labels = ["query", "texts[0]", "texts[0]", "texts[1]", "texts[2]"]
    with pytest.raises(NonFiniteError, match=r"^texts\[0\] \(and 1 other input\) could not be embedded: why$"):
        check_finite(vectors, labels.__getitem__, lambda: "why")
    check_finite(vectors[[0, 4]], labels.__getitem__, lambda: pytest.fail("asked for a cause with nothing to fail"))


@pytest.mark.parametrize("precisions,fallback,cause", [
    (["float16"], Float32Fallback(refusal="no room"),
     "the model's activations overflow float16 (its range ends at 65,504) on it, and it cannot be recomputed in "
     "float32 here (no room); E5_DTYPE=float32 avoids this"),
    (["bfloat16"], Float32Fallback(backend=object()),
     "the model's output for it is not finite in bfloat16, nor in float32 when recomputed (an activation overflows "
     "even float32), so E5_DTYPE=float32 does not avoid it; check the checkpoint's weights"),
    (["float32"], Float32Fallback(),
     "the model's output for it is not finite in float32 (an activation overflows); check the checkpoint's weights"),
    # A measured plan's float32 pass, before any bfloat16 row needed recomputing.
    (["float32", "bfloat16"], Float32Fallback(), "the model's output for it is not finite in float32 (an activation "
                                                 "overflows); check the checkpoint's weights"),
    (["int8"], Float32Fallback(),
     "the model's output for it is not finite in int8; E5_QUANTIZE=none (float32) may avoid it"),
])
def test_non_finite_cause_names_the_precision_and_what_avoids_it(precisions, fallback, cause):
    assert non_finite_cause(precisions, fallback) == cause


def test_overflow_warning_counts_rows():
    made, refused = Float32Fallback(backend=object()), Float32Fallback(refusal="no room")
    assert overflow_warning(3, "float16", made) == f"3 rows {RECOMPUTED}"
    assert overflow_warning(3, "float16", made, still=1) == (
        "3 rows overflowed float16; recomputed in float32, where 1 of them is not finite either and fails its request")
    assert overflow_warning(1, "float16", refused) == (
        "1 row overflowed float16 and cannot be recomputed in float32 (no room); its request fails "
        "(E5_DTYPE=float32 avoids this)")
    assert overflow_warning(2, "int8", None) == "2 rows are not finite in int8; their requests fail"
