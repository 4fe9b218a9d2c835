"""e5.tokenizer: ids as each model card reads them (special tokens, EOS once), truncation like the tokenizer's
own, thread safety, and long texts as windows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading

import pytest

from e5.chunking import default_overlap
from e5.encoder import Encoder
from e5.loader import load_encoder
from e5.prompts import DEFAULT_TASK, InputType, format_text
from e5.registry import get_spec
from e5.tokenizer import TooLongError

PASSAGES = [
    "As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is 46 grams per "
    "day. But, as you can see from this chart, you'll need to increase that if you're expecting or training.",
    "1.清炒南瓜丝 原料:嫩南瓜半个 调料:葱、盐、白糖、鸡精",
]
LONG = " ".join(f"Sentence {i} says that proteins, enzymes and cells work together." for i in range(260))


@pytest.fixture(scope="module")
def minilm(minilm_dir) -> Encoder:
    return load_encoder(get_spec("e5-small-v2"), minilm_dir)


def test_mistral_appends_eos_exactly_once(encoders):
    encoder = encoders["mistral"]
    eos = encoder.tokenizer.eos_token_id
    plain = encoder.tokenizer("a text", add_special_tokens=True)["input_ids"]
    assert plain[-1] != eos, "the tiny tokenizer must not add EOS itself (transformers 5 behaviour)"
    for ids in encoder.text_tokenizer.tokenize(["a text", "another, longer text", ""]).ids:
        assert ids[-1] == eos and ids[-2] != eos
        assert ids.count(eos) == 1
    assert encoder.text_tokenizer.tokenize(["a text"]).ids[0] == plain + [eos]


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
    ids = encoder.text_tokenizer.tokenize(["a text", "word " * 5000]).ids
    for row in ids:
        assert row[-1] == eos and row.count(eos) == 1
    assert len(ids[1]) == 4096


@pytest.mark.parametrize("key,limit", [("bert", 512), ("xlm-roberta", 512), ("mistral", 4096)])
def test_truncation_cuts_to_the_limit_and_keeps_the_closing_token(key, limit, encoders):
    encoder = encoders[key]
    long_text = "protein " * (limit + 100)
    tokens = encoder.text_tokenizer.tokenize(["short", long_text])
    assert tokens.truncated == [False, True]
    assert len(tokens.ids[1]) == limit < tokens.counted_lengths[1]
    closing = encoder.text_tokenizer.tokenize(["short"]).ids[0][-1]
    assert tokens.ids[1][-1] == closing
    assert encoder.embed([long_text])[0].shape == (1, encoder.dimensions)


def test_truncate_false_names_the_input_and_the_limit(encoders):
    encoder = encoders["bert"]
    with pytest.raises(TooLongError) as err:
        encoder.text_tokenizer.tokenize(["fine", "protein " * 600], truncate=False, labels=["query", "texts[0]"])
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
    cut = encoder.text_tokenizer.tokenize(texts)
    whole = encoder.text_tokenizer.tokenize(texts[2:], truncate=False)
    assert all(len(row) <= limit for row in cut.ids) and cut.truncated == [True, True, False, False, False]
    errors: list[str] = []

    def hammer(seed: int) -> None:
        for i in range(60):
            try:
                if (seed + i) % 2:
                    got = encoder.text_tokenizer.tokenize(texts)
                    if got.ids != cut.ids or got.truncated != cut.truncated:
                        errors.append(f"truncated tokenisation differs (thread {seed}, call {i})")
                else:
                    got = encoder.text_tokenizer.tokenize(texts[2:], truncate=False)
                    if got.ids != whole.ids:
                        errors.append(f"untruncated tokenisation differs (thread {seed}, call {i})")
                    try:
                        encoder.text_tokenizer.tokenize(texts[:1], truncate=False)
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
    assert encoder.text_tokenizer.tokenize(texts).ids == [row + eos for row in reference]



@pytest.mark.parametrize("key", ["bert", "xlm-roberta", "mistral"])
def test_encoder_windows_slice_the_text_fit_the_model_and_are_prompted_alone(key, encoders):
    encoder = encoders[key]
    text = " ".join(["protein-rich foods, eaten daily."] * (encoder.max_tokens // 2))

    prompt = format_text("", InputType.PASSAGE, encoder.spec.prompt_style, DEFAULT_TASK)
    windows = encoder.text_tokenizer.windows(text, prompt)
    assert len(windows) > 1
    assert windows[0].start == 0 and windows[-1].end == len(text)
    assert all(w2.start < w1.end for w1, w2 in zip(windows, windows[1:]))  # they overlap: no character is lost
    for window in windows:
        assert len(window.ids) <= encoder.max_tokens
        assert window.ids == encoder.text_tokenizer.tokenize([prompt + text[window.start:window.end]]).ids[0]
    short = encoder.text_tokenizer.windows("protein", prompt)
    assert [(w.start, w.end, w.ids) for w in short] == [(0, 7, encoder.text_tokenizer.tokenize([prompt + "protein"]).ids[0])]


def test_windows_cover_every_token_of_a_real_text(minilm):
    windows = minilm.text_tokenizer.windows(LONG, "passage: ")
    offsets = minilm.text_tokenizer._rust.encode(LONG, add_special_tokens=False).offsets
    assert len(windows) >= 5
    assert all(any(w.start <= a and b <= w.end for w in windows) for a, b in offsets)
    room = minilm.max_tokens - len(minilm.text_tokenizer.tokenize(["passage: "]).ids[0])
    overlaps = [len(minilm.text_tokenizer._rust.encode(LONG[w2.start:w1.end], add_special_tokens=False).ids)
                for w1, w2 in zip(windows, windows[1:])]
    assert all(default_overlap(room) - 8 <= n <= default_overlap(room) + 8 for n in overlaps), overlaps


_POOL_NAMES = """
import os, sys
from e5.loader import checkpoint_tokenizer
from e5.threads import run_on_own_thread
tokenizer = run_on_own_thread(lambda: checkpoint_tokenizer(sys.argv[1]), "e5-load")
tokenizer.rust.encode_batch(["a text"] * 64)
print(" ".join(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc are Linux's")
def test_the_tokenizers_batch_pool_is_named_for_tokenising_not_for_the_thread_that_loaded_it(checkpoints):
    """The Rust tokenizer's pool is the process's, started by its first batch: per-thread CPU reads it by name."""
    names = subprocess.run([sys.executable, "-c", _POOL_NAMES, str(checkpoints["xlm-roberta"])], capture_output=True,
                           text=True, check=True, timeout=120).stdout.split()
    assert "e5-tokenize" in names and "e5-load" not in names, names
