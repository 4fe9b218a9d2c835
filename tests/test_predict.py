"""predict.py in-process, without Cog's server: inputs reach the service, and the .npy file's lifetime."""

from __future__ import annotations

import asyncio
import gc
import io

import numpy as np
import pytest

from e5.cog_output import JsonArray
from e5.cog_tools.folders import PredictionFolders
from e5.service import EmbeddingService
from predict import Output, Predictor

# Every input as Cog would pass it when the caller sends none of them.
DEFAULTS = dict(query=None, passage=None, document=None, texts=None, input_type="passage", task=None,
                normalize=False, truncate=True, encoding_format="float", long_texts="truncate")


@pytest.fixture
def predictor(encoders, tmp_path):
    predictor = Predictor()
    predictor.service = EmbeddingService(encoders["bert"])
    predictor.npy_dir = str(tmp_path)
    predictor.folders = PredictionFolders(None)  # setup() sweeps coglet's folders; these tests run no coglet
    yield predictor
    predictor.service.engine.close()


def _run(predictor: Predictor, **inputs) -> Output:
    return asyncio.run(predictor.run(**{**DEFAULTS, **inputs}))


def test_the_npy_file_holds_the_rows_and_is_deleted_with_the_output(predictor, tmp_path):
    floats = _run(predictor, texts=["one", "two"])
    out = _run(predictor, texts=["one", "two"], encoding_format="npy")
    assert out.embeddings is None and out.embeddings_file.parent == tmp_path
    assert np.array_equal(np.load(io.BytesIO(out.embeddings_file.read_bytes())), floats.embeddings)
    del out
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_a_prediction_holds_coglet_s_folders_until_keep_seconds_after_it_ends(predictor, tmp_path):
    now = [100.0]
    predictor.folders = PredictionFolders(5.0, root=tmp_path / "coglet", clock=lambda: now[0])
    _run(predictor, texts=["one"])
    now[0] = 104.0
    assert predictor.folders.cutoff(now[0]) == 95.0  # held at its start, less KEEP
    now[0] = 106.0
    assert predictor.folders.cutoff(now[0]) == 101.0


def test_document_reaches_the_service_as_the_passage(predictor):
    assert _run(predictor, document="d").passage_embedding.tolist() == _run(predictor, passage="d").passage_embedding.tolist()
    assert _run(predictor, query="q").embeddings_file is None


def test_vectors_and_scores_reach_cog_as_json_arrays(predictor):
    # Float32 arrays whose tolist() gives tuples: coglet writes them without inspecting every float.
    out = _run(predictor, query="q", passage="p", texts=["one", "two"])
    for name in ("query_embedding", "passage_embedding", "embeddings", "scores"):
        assert isinstance(getattr(out, name), JsonArray) and getattr(out, name).dtype == np.dtype("<f4"), name
    assert out.embeddings.shape == (2, predictor.service.encoder.dimensions)
    packed = _run(predictor, query="q", encoding_format="base64")
    assert packed.query_embedding is None and isinstance(packed.query_embedding_base64, str)


def test_chunk_positions_reach_cog_as_json_arrays(predictor):
    out = _run(predictor, query="q", texts=["one", "protein " * 700], long_texts="chunks")
    assert out.chunk_text.tolist() == (0,) + (1,) * (len(out.chunk_text) - 1) and len(out.chunk_text) > 2
    for name in ("chunk_text", "chunk_start", "chunk_end", "chunk_scores"):
        assert isinstance(getattr(out, name), JsonArray) and len(getattr(out, name)) == len(out.embeddings), name
