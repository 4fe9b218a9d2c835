"""The encoder against the model cards' reference code, on tiny checkpoints of every family."""

import json
import shutil
import threading
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from e5.encoder import TooLongError, WeightsError, check_weights_dir
from e5.loader import load_encoder
from e5.prompts import DEFAULT_TASK, TASK_PRESETS, InputType, format_text
from e5.registry import get_spec

QUERIES = ["how much protein should a female eat", "南瓜的家常做法"]
PASSAGES = [
    "As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is 46 grams per "
    "day. But, as you can see from this chart, you'll need to increase that if you're expecting or training.",
    "1.清炒南瓜丝 原料:嫩南瓜半个 调料:葱、盐、白糖、鸡精",
]


# --- the model cards' reference code, re-implemented -------------------------------------------

def average_pool(last_hidden_states, attention_mask):
    last_hidden = last_hidden_states.masked_fill(~attention_mask[..., None].bool(), 0.0)
    return last_hidden.sum(dim=1) / attention_mask.sum(dim=1)[..., None]


def last_token_pool(last_hidden_states, attention_mask):
    left_padding = attention_mask[:, -1].sum() == attention_mask.shape[0]
    if left_padding:
        return last_hidden_states[:, -1]
    sequence_lengths = attention_mask.sum(dim=1) - 1
    batch_size = last_hidden_states.shape[0]
    return last_hidden_states[torch.arange(batch_size), sequence_lengths]


def get_detailed_instruct(task_description, query):
    return f"Instruct: {task_description}\nQuery: {query}"


@torch.no_grad()
def reference_embeddings(model_dir, input_texts, mistral, padding_side=None):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if padding_side:
        tokenizer.padding_side = padding_side
    model = AutoModel.from_pretrained(model_dir).eval()
    if not mistral:
        batch_dict = tokenizer(input_texts, max_length=512, padding=True, truncation=True, return_tensors="pt")
        outputs = model(**batch_dict)
        return average_pool(outputs.last_hidden_state, batch_dict["attention_mask"])
    max_length = 4096
    batch_dict = tokenizer(input_texts, max_length=max_length - 1, return_attention_mask=False, padding=False,
                           truncation=True)
    batch_dict["input_ids"] = [ids + [tokenizer.eos_token_id] for ids in batch_dict["input_ids"]]
    batch_dict = tokenizer.pad(batch_dict, padding=True, return_attention_mask=True, return_tensors="pt")
    outputs = model(**batch_dict)
    return last_token_pool(outputs.last_hidden_state, batch_dict["attention_mask"])


def reference_texts(key):
    """The texts exactly as the model cards write them."""
    if key in ("bert", "xlm-roberta"):
        return [f"query: {q}" for q in QUERIES] + [f"passage: {p}" for p in PASSAGES]
    return [get_detailed_instruct(DEFAULT_TASK.instruction, q) for q in QUERIES] + PASSAGES


def our_embeddings(encoder, batched):
    style = encoder.spec.prompt_style
    texts = ([format_text(text, InputType.QUERY, style, DEFAULT_TASK) for text in QUERIES]
             + [format_text(text, InputType.PASSAGE, style, DEFAULT_TASK) for text in PASSAGES])
    if batched:
        return encoder.embed(texts)[0]
    return torch.cat([encoder.embed([t])[0] for t in texts])


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
@pytest.mark.parametrize("key", ["bert", "xlm-roberta", "xlm-roberta-instruct", "mistral",
                                 "bert packed", "xlm-roberta packed", "xlm-roberta-instruct packed"])
def test_parity_with_the_model_card_reference(key, batched, normalize, encoders, packed_encoders, checkpoints):
    key, _, packed = key.partition(" ")
    family = key.removesuffix("-instruct")
    encoder = packed_encoders[key] if packed else encoders[key]
    assert encoder.backend.name.packed == bool(packed)
    ours = our_embeddings(encoder, batched)
    ref = reference_embeddings(checkpoints[family], reference_texts(key), mistral=family == "mistral")
    if normalize:
        ours, ref = F.normalize(ours, p=2, dim=1), F.normalize(ref, p=2, dim=1)
    diff = (ours - ref).abs().max().item()
    print(f"parity {key} {'batched' if batched else 'single'} {'normalized' if normalize else 'raw'}: "
          f"max abs diff {diff:.2e}")
    assert ours.shape == ref.shape
    assert diff <= 1e-5


def test_mistral_parity_with_a_left_padded_reference(encoders, checkpoints):
    # The model card's last_token_pool has a left-padding branch; exercise it too.
    ours = our_embeddings(encoders["mistral"], batched=True)
    ref = reference_embeddings(checkpoints["mistral"], reference_texts("mistral"), mistral=True,
                               padding_side="left")
    diff = (ours - ref).abs().max().item()
    print(f"parity mistral batched raw, left-padded reference: max abs diff {diff:.2e}")
    assert diff <= 1e-5


@pytest.mark.parametrize("key", ["bert", "xlm-roberta", "mistral"])
def test_a_text_in_a_batch_equals_the_text_alone(key, encoders):
    encoder = encoders[key]
    texts = ["short", "a somewhat longer text about protein " * 3, "mid length text here", "x " * 60]
    batched = encoder.embed(texts)[0]
    alone = torch.cat([encoder.embed([t])[0] for t in texts])
    assert (batched - alone).abs().max().item() <= 1e-5


@pytest.mark.parametrize("key", ["bert", "mistral"])
def test_any_token_budget_gives_the_same_vectors_in_the_callers_order(key, encoders):
    encoder = encoders[key]
    texts = [("protein " * n).strip() for n in (40, 3, 25, 1, 60, 8, 12)]
    ids = encoder.tokenize(texts).ids
    one_batch = encoder.embed_ids(ids, token_budget=100_000)
    many_batches = encoder.embed_ids(ids, token_budget=64)
    assert (one_batch - many_batches).abs().max().item() <= 1e-5
    alone = torch.cat([encoder.embed_ids([row]) for row in ids])
    assert (one_batch - alone).abs().max().item() <= 1e-5


def test_mistral_appends_eos_exactly_once(encoders):
    encoder = encoders["mistral"]
    eos = encoder.tokenizer.eos_token_id
    plain = encoder.tokenizer("a text", add_special_tokens=True)["input_ids"]
    assert plain[-1] != eos, "the tiny tokenizer must not add EOS itself (transformers 5 behaviour)"
    for ids in encoder.tokenize(["a text", "another, longer text", ""]).ids:
        assert ids[-1] == eos and ids[-2] != eos
        assert ids.count(eos) == 1
    assert encoder.tokenize(["a text"]).ids[0] == plain + [eos]


def test_eos_is_not_doubled_when_the_tokenizer_adds_it(checkpoints, tmp_path):
    path = shutil.copytree(checkpoints["mistral"], tmp_path / "mistral-adds-eos")
    tokenizer_json = json.loads((path / "tokenizer.json").read_text())
    post = tokenizer_json["post_processor"]
    post["single"].append({"SpecialToken": {"id": "</s>", "type_id": 0}})
    post["special_tokens"]["</s>"] = {"id": "</s>", "ids": [2], "tokens": ["</s>"]}
    (path / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    encoder = load_encoder(get_spec("e5-mistral-7b-instruct"), path)
    eos = encoder.tokenizer.eos_token_id
    assert encoder.tokenizer("a text")["input_ids"][-1] == eos
    ids = encoder.tokenize(["a text", "word " * 5000]).ids
    for row in ids:
        assert row[-1] == eos and row.count(eos) == 1
    assert len(ids[1]) == 4096


@pytest.mark.parametrize("key,limit", [("bert", 512), ("xlm-roberta", 512), ("mistral", 4096)])
def test_truncation_cuts_to_the_limit_and_keeps_the_closing_token(key, limit, encoders):
    encoder = encoders[key]
    long_text = "protein " * (limit + 100)
    tokens = encoder.tokenize(["short", long_text])
    assert tokens.truncated == [False, True]
    assert len(tokens.ids[1]) == limit < tokens.counted_lengths[1]
    closing = encoder.tokenize(["short"]).ids[0][-1]
    assert tokens.ids[1][-1] == closing
    assert encoder.embed([long_text])[0].shape == (1, encoder.dimensions)


def test_truncate_false_names_the_input_and_the_limit(encoders):
    encoder = encoders["bert"]
    with pytest.raises(TooLongError) as err:
        encoder.tokenize(["fine", "protein " * 600], truncate=False, labels=["query", "texts[0]"])
    assert str(err.value) == ("texts[0] has more than the 512 tokens that e5-small-v2 accepts; "
                              "shorten it or set truncate=true")


@pytest.mark.parametrize("key", ["bert", "xlm-roberta", "mistral"])
def test_tokenize_is_safe_to_share_between_threads(key, encoders):
    # The predictor tokenises each request on its own thread; truncation on and off at once must not leak
    # from one call into another (a shared tokenizer mutated per call once let 600-token rows reach the model).
    encoder = encoders[key]
    limit = encoder.max_tokens
    texts = [("protein " * (limit + 40 * i)).strip() for i in (1, 2)] + [("protein " * (limit // 8)).strip(),
                                                                          "short", "fine too"]
    cut = encoder.tokenize(texts)
    whole = encoder.tokenize(texts[2:], truncate=False)
    assert all(len(row) <= limit for row in cut.ids) and cut.truncated == [True, True, False, False, False]
    errors: list[str] = []

    def hammer(seed: int) -> None:
        for i in range(60):
            try:
                if (seed + i) % 2:
                    got = encoder.tokenize(texts)
                    if got.ids != cut.ids or got.truncated != cut.truncated:
                        errors.append(f"truncated tokenisation differs (thread {seed}, call {i})")
                else:
                    got = encoder.tokenize(texts[2:], truncate=False)
                    if got.ids != whole.ids:
                        errors.append(f"untruncated tokenisation differs (thread {seed}, call {i})")
                    try:
                        encoder.tokenize(texts[:1], truncate=False)
                        errors.append(f"an over-long text passed with truncate=False (thread {seed}, call {i})")
                    except TooLongError:
                        pass
            except Exception as exc:  # noqa: BLE001 - any error is a failure of this test
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, f"{len(errors)} wrong results, e.g. {errors[:3]}"


@pytest.mark.parametrize("key", ["bert", "xlm-roberta", "mistral", "minilm"])
def test_tokenize_equals_the_tokenizers_own_truncation(key, encoders, minilm_dir):
    encoder = load_encoder(get_spec("demo-all-minilm-l6-v2"), minilm_dir) if key == "minilm" else encoders[key]
    eos = [encoder.tokenizer.eos_token_id] if encoder.spec.append_eos else []
    # The last four are read only up to a head past the limit: whitespace-free, CJK and punctuation-dense ones too.
    texts = ["short", PASSAGES[0], PASSAGES[1] * 80, "protein " * (encoder.max_tokens + 7), "naïve café " * 900,
             "x" * 60_000, "蛋白质的需求" * 9_000, "a,b;c." * 12_000, ("word " * 300 + "z" * 5_000) * 4]
    reference = encoder.tokenizer(texts, truncation=True, max_length=encoder.max_tokens - len(eos))["input_ids"]
    assert encoder.tokenize(texts).ids == [row + eos for row in reference]


def test_no_row_longer_than_the_model_accepts_reaches_it(encoders):
    encoder = encoders["bert"]
    row = encoder.tokenize(["protein " * 600]).ids[0]
    with pytest.raises(TooLongError, match="513 tokens, more than the 512"):
        encoder.embed_ids([row[:10], row[:-1] + [row[-1], row[-1]]])


def test_instruct_presets_change_the_query_vector(encoders):
    encoder = encoders["mistral"]
    style = encoder.spec.prompt_style
    web = [format_text("protein", InputType.QUERY, style, DEFAULT_TASK)]
    sts = [format_text("protein", InputType.QUERY, style, TASK_PRESETS["semantic_similarity"])]
    assert not torch.allclose(encoder.embed(web)[0], encoder.embed(sts)[0])


def test_weights_must_be_safetensors(tmp_path, checkpoints):
    with pytest.raises(WeightsError, match="does not exist"):
        check_weights_dir(tmp_path / "nowhere")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(checkpoints["bert"] / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(WeightsError, match="no .safetensors weights.*pickled pytorch_model.bin.*refused"):
        load_encoder(get_spec("e5-small-v2"), pickled)


class _OutOfMemoryAbove:
    """Stands in for a model on a small GPU: batches of more than `max_rows` texts raise CUDA's OOM."""

    def __init__(self, backend, max_rows: int):
        self.backend, self.max_rows, self.rows_seen = backend, max_rows, []
        self.name, self.config, self.model = backend.name, backend.config, backend.model

    def embed(self, rows):
        self.rows_seen.append(len(rows))
        if len(rows) > self.max_rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return self.backend.embed(rows)


def test_out_of_memory_splits_the_batch_and_gives_the_same_vectors(encoders, monkeypatch):
    enc = encoders["bert"]
    texts = [f"passage: the fox number {i} " + "eat " * (i % 5) for i in range(11)]
    expected = enc.embed(texts)[0]
    faulty = _OutOfMemoryAbove(enc.backend, max_rows=3)
    monkeypatch.setattr(enc, "backend", faulty)
    got = enc.embed(texts)[0]
    assert faulty.rows_seen == [11, 5, 2, 3, 6, 3, 3]  # halved until each part fits
    assert (got - expected).abs().max().item() <= 1e-5


def test_out_of_memory_on_a_single_text_is_raised(encoders, monkeypatch):
    enc = encoders["bert"]
    monkeypatch.setattr(enc, "backend", _OutOfMemoryAbove(enc.backend, max_rows=0))
    with pytest.raises(torch.OutOfMemoryError):
        enc.embed(["passage: a", "passage: b"])


def test_other_errors_are_not_retried(encoders, monkeypatch):
    enc = encoders["bert"]
    calls = []

    def broken(rows):
        calls.append(len(rows))
        raise ValueError("not a memory problem")

    monkeypatch.setattr(enc, "backend", SimpleNamespace(name=enc.backend.name, config=enc.backend.config, model=None,
                                                        embed=broken))
    with pytest.raises(ValueError, match="not a memory problem"):
        enc.embed(["passage: a", "passage: b", "passage: c"])
    assert calls == [3]


def test_remote_code_in_a_checkpoint_is_never_run(tmp_path, checkpoints):
    import json
    import shutil

    hostile = tmp_path / "hostile"
    shutil.copytree(checkpoints["bert"], hostile)
    ran = tmp_path / "remote-code-ran"
    (hostile / "hostile_code.py").write_text(f"open({str(ran)!r}, 'w').close()\nfrom transformers import BertModel as "
                                             "HostileModel\nfrom transformers import BertTokenizerFast as HostileTokenizer\n")
    for name, key, cls in [("config.json", "AutoModel", "hostile_code.HostileModel"),
                           ("tokenizer_config.json", "AutoTokenizer", ["hostile_code.HostileTokenizer", None])]:
        config = json.loads((hostile / name).read_text())
        config["auto_map"] = {key: cls}
        (hostile / name).write_text(json.dumps(config))
    try:
        # In torch, so that the model object itself can be checked (both runtimes load it the same way).
        encoder = load_encoder(get_spec("e5-small-v2"), hostile, runtime="torch")
    except Exception as exc:  # refusing the checkpoint is fine too; running its code is not
        print(f"refused: {exc}")
    else:
        assert type(encoder.backend.model).__module__.startswith("transformers.")
    assert not ran.exists()


def test_the_position_limit_follows_the_models_own_architecture(encoders):
    from transformers import BertConfig, XLMRobertaConfig

    from e5.encoder import position_capacity

    spec = get_spec("multilingual-e5-small")  # a BERT encoder with an XLM-R tokenizer, as the real checkpoint is
    assert position_capacity(spec, BertConfig(max_position_embeddings=512)) == 512
    assert position_capacity(spec, XLMRobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert encoders["xlm-roberta"].max_tokens == 512 and encoders["bert"].max_tokens == 512
