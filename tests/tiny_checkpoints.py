"""Tiny random checkpoints of the three E5 families, saved in Hugging Face format.

They load through exactly the code that loads real weights; only sizes differ.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    LlamaTokenizerFast,
    MistralConfig,
    MistralModel,
    XLMRobertaConfig,
    XLMRobertaModel,
    XLMRobertaTokenizerFast,
)

HIDDEN = 32
CORPUS = [
    "query: how much protein should a female eat",
    "passage: As a general guideline, the CDC's average requirement of protein for women is 46 grams per day.",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: protein",
    "the quick brown fox jumps over the lazy dog while the cat sleeps in the sun",
    "南瓜的家常做法 清炒南瓜丝 Größe café naïve",
]



def random_rows(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    """Rows of random token ids below `vocab`, past the special tokens, one row of each of `lengths`."""
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab) for _ in range(length)] for length in lengths]


def build_bert(path: Path, seed: int = 0) -> Path:
    """A WordPiece BERT like e5-*-v2 (lower-cased, [CLS] ... [SEP])."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = ["query", "passage", "protein", "the", "how", "much", "should", "female", "eat", "fox"]
    pieces = specials + chars + ["##" + c for c in string.ascii_lowercase + string.digits] + words
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece()
    tokenizer = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=512, pad_token_id=vocab["[PAD]"])
    BertModel(config).save_pretrained(path, safe_serialization=True)
    return path


def build_xlm_roberta(path: Path, seed: int = 0) -> Path:
    """A Unigram (SentencePiece-style) XLM-RoBERTa like multilingual-e5-*."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    chars = sorted(set("".join(CORPUS)) | set(string.ascii_letters + string.digits + string.punctuation))
    chars = [c for c in chars if not c.isspace()]
    words = ["▁query", "▁passage", "▁protein", "▁the", "▁how", "▁much", ":", "▁Instruct", "▁Query"]
    vocab = [(s, 0.0) for s in specials] + [("▁", -3.0)] + [(c, -5.0) for c in chars] + [(w, -1.0) for w in words]
    vocab += [("<mask>", 0.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                        cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                        model_max_length=512)
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = XLMRobertaConfig(vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=514, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2, type_vocab_size=1)
    XLMRobertaModel(config).save_pretrained(path, safe_serialization=True)
    return path


def build_mistral(path: Path, seed: int = 0) -> Path:
    """A SentencePiece-style BPE with byte fallback like e5-mistral-7b-instruct's Llama tokenizer.

    BOS is added by the tokenizer; EOS is not (the encoder appends it, as transformers 5 requires).
    """
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    draft = Tokenizer(models.BPE(unk_token="<unk>"))
    draft.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    draft.train_from_iterator(CORPUS * 4, trainer)
    trained = json.loads(draft.to_str())["model"]
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list(trained["vocab"])
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = draft.normalizer
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = LlamaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>", add_bos_token=True, add_eos_token=False,
                                   model_max_length=4096)
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = MistralConfig(vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                           max_position_embeddings=4096, bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
                           pad_token_id=vocab["</s>"], sliding_window=None)
    MistralModel(config).save_pretrained(path, safe_serialization=True)
    return path


# A word of the tiny BERT vocabulary whose embedding row `build_overflowing_bert` makes overflow float32 too.
OVERFLOW_POISON = "fox"


def build_overflowing_bert(path: Path, seed: int = 0) -> Path:
    """The tiny BERT with activations that pass float16's 65,504 on every text, yet stay finite in float32
    and bfloat16 (about 4e5, out of the first layer's FFN), and one word (`OVERFLOW_POISON`) whose embedding
    row (about 1e30) overflows even float32 in the embedding LayerNorm's variance, on the texts that hold it.

    The FFN's up projection is scaled by 300 and its down projection by 3e4 (weights of at most a few
    thousand, which float16 holds) rather than one weight by 1e7, which float16 could not even load.
    """
    build_bert(path, seed)
    model = BertModel.from_pretrained(path)
    with torch.no_grad():
        layer = model.encoder.layer[0]
        layer.intermediate.dense.weight *= 300
        layer.output.dense.weight *= 3e4
        vocab = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
        row = model.embeddings.word_embeddings.weight[vocab[OVERFLOW_POISON]]
        row *= 1e30 / row.abs().max()
    model.save_pretrained(path, safe_serialization=True)
    return path


BUILDERS = {"bert": build_bert, "xlm-roberta": build_xlm_roberta, "mistral": build_mistral}


def build_sharp_bert(path: Path, seed: int = 0) -> Path:
    """The tiny BERT with peaked attention (query and key scaled by 30, values by 10): random tiny weights attend
    almost uniformly, so attention that wrongly crosses texts would change their vectors by less than a load's
    check can see (cosine 0.99999); here it changes them visibly (cosine 0.97-0.99)."""
    build_bert(path, seed)
    model = BertModel.from_pretrained(path)
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.attention.self.query.weight *= 30
            layer.attention.self.key.weight *= 30
            layer.attention.self.value.weight *= 10
    model.save_pretrained(path, safe_serialization=True)
    return path
