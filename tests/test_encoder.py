"""The encoder against the model cards' reference code, on tiny checkpoints of every family."""

import shutil
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
    ids = encoder.text_tokenizer.tokenize(texts).ids
    one_batch = encoder.embed_ids(ids, token_budget=100_000)
    many_batches = encoder.embed_ids(ids, token_budget=64)
    assert (one_batch - many_batches).abs().max().item() <= 1e-5
    alone = torch.cat([encoder.embed_ids([row]) for row in ids])
    assert (one_batch - alone).abs().max().item() <= 1e-5


def test_no_row_longer_than_the_model_accepts_reaches_it(encoders):
    encoder = encoders["bert"]
    row = encoder.text_tokenizer.tokenize(["protein " * 600]).ids[0]
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
