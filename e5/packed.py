"""Padding-free passes for the BERT and XLM-RoBERTa checkpoints: one flat row of real tokens a pass.

A pass of texts of 16 to 512 tokens padded to its longest row spends most of its linear-layer work on padding.
Packed, as text-embeddings-inference and vLLM run these models, the texts lie end to end (`pack`): token ids,
positions that restart at every text (after the padding id for XLM-RoBERTa, as its embeddings number them),
the text each token belongs to, and the cumulative lengths (`cu_seqlens`) that delimit them. Every linear
layer then runs on real tokens only; attention alone needs the texts apart, and never crosses them:

- `varlen_attention`: FlashAttention's variable-length kernel (`torch.nn.attention.varlen`, torch >= 2.10,
  CUDA compute capability 8.0 and later, float16 and bfloat16), straight on the flat row;
- `padded_attention`: the texts' queries, keys and values scattered into a [texts, longest] grid for
  scaled_dot_product_attention with a key mask, and gathered back; it runs everywhere (the CPU, a T4's
  sm_75), pays padding in attention alone, and is the reference the varlen kernel is checked against.

`PackedModel` runs a loaded Hugging Face `BertModel` or `XLMRobertaModel` this way with its own parameters
(query, key and value become one matrix product over a fused weight the three projections then view, so no
weight is held twice); activations are the model's own (BERT's erf GELU stays erf). `PackedBackend` is the
`e5.backend.Backend` that packs a pass, runs it and mean-pools each text in float32.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .pass_plan import Framework, Runtime
from .registry import Family, ModelSpec, Pooling

# The Hugging Face model types that run packed: BERT (e5-*-v2, multilingual-e5-small, MiniLM) and XLM-RoBERTa
# (multilingual-e5-base/large/large-instruct), with absolute position embeddings.
PACKED_MODEL_TYPES = ("bert", "xlm-roberta")
# Model types whose positions start after the padding id (see e5.encoder.position_capacity).
_OFFSET_POSITIONS = ("xlm-roberta", "roberta")


@dataclass(frozen=True)
class PackedPass:
    """One pass's texts end to end on a device: `ids`, `positions` and `segments` (the text each token belongs
    to) have one entry a token; `cu_seqlens` (int32) the start of each text and the end of the last;
    `lengths` (int64) each text's tokens; `longest` the longest text; `grid` where each token sits in a
    [texts, longest] grid (its text's row, its place in that text), for attention padded per text.

    A pass of fixed sizes (`e5.graphs`) also has `padding`, True for the tokens past the texts' end: they
    belong to no text of `cu_seqlens`, sit in a last, empty text of the grid and are pooled into it, so that
    whatever a kernel leaves in them (a variable-length kernel does not write them) never reaches a real
    token: every other operation of a pass is per token."""

    ids: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    cu_seqlens: torch.Tensor
    lengths: torch.Tensor
    grid: torch.Tensor
    longest: int
    padding: torch.Tensor | None = None

    @property
    def texts(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def tokens(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class TextLayout:
    """`rows` of token ids end to end, in numpy: each row's `lengths`, and for every token its `ids`, the row it
    belongs to (`segments`) and its place in that row (`places`)."""

    lengths: np.ndarray
    ids: np.ndarray
    segments: np.ndarray
    places: np.ndarray

    @classmethod
    def of(cls, rows: list[list[int]]) -> "TextLayout":
        """Built in one go (no array per row); `ValueError` for no rows, or a row of no tokens."""
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        if len(rows) == 0 or int(lengths.min()) < 1:
            raise ValueError("a packed pass needs at least one row, and every row at least one token")
        total = int(lengths.sum())
        starts = np.cumsum(lengths) - lengths
        segments = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
        places = np.arange(total, dtype=np.int64) - starts[segments]
        ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=total)
        return cls(lengths, ids, segments, places)


def pack(rows: list[list[int]], position_offset: int = 0, device: torch.device | None = None) -> PackedPass:
    """`rows` of token ids end to end, with positions from `position_offset` restarting at every row.

    Built in numpy in one go (`TextLayout`) and copied to `device` from pinned memory on CUDA.
    """
    layout = TextLayout.of(rows)
    longest = int(layout.lengths.max())
    cu_seqlens = np.concatenate([[0], np.cumsum(layout.lengths)]).astype(np.int32)
    arrays = (layout.ids, layout.places + position_offset, layout.segments, cu_seqlens, layout.lengths,
              layout.segments * longest + layout.places)
    host = [torch.from_numpy(a) for a in arrays]
    if device is not None and device.type == "cuda":
        # Pinned host memory lets the copies run asynchronously with the previous pass.
        host = [t.pin_memory().to(device, non_blocking=True) for t in host]
    elif device is not None:
        host = [t.to(device) for t in host]
    return PackedPass(*host, longest=longest)


Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, PackedPass], torch.Tensor]


def padded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedPass) -> torch.Tensor:
    """Attention of each text over itself only, for [tokens, heads, head_dim] queries, keys and values: the
    texts scattered into a [texts, longest] grid, scaled_dot_product_attention with the padded keys masked,
    the real tokens gathered back. Padded query rows attend to real keys, so nothing there is NaN."""
    tokens, heads, head_dim = q.shape
    texts, longest, place = batch.texts, batch.longest, batch.grid
    if batch.padding is None and texts * longest == tokens:  # texts of one length: the row is the grid, no mask
        out = F.scaled_dot_product_attention(*(x.view(texts, longest, heads, head_dim).transpose(1, 2)
                                               for x in (q, k, v)))
        return out.transpose(1, 2).reshape(tokens, heads, head_dim)
    keep = torch.arange(longest, device=q.device)[None, :] < batch.lengths[:, None]

    def grid(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros((texts * longest, heads, head_dim))
        out[place] = x
        return out.view(texts, longest, heads, head_dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(grid(q), grid(k), grid(v), attn_mask=keep[:, None, None, :])
    return out.transpose(1, 2).reshape(texts * longest, heads, head_dim)[place]


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedPass) -> torch.Tensor:
    """FlashAttention's variable-length kernel on the flat row (CUDA sm_80+, float16/bfloat16, torch >= 2.10)."""
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn(q, k, v, batch.cu_seqlens, batch.cu_seqlens, batch.longest, batch.longest)


ATTENTIONS: dict[str, Attention] = {"padded": padded_attention, "varlen": varlen_attention}


def varlen_refusal(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why FlashAttention's varlen kernel cannot run here (None when it can): it needs CUDA at compute capability
    8.0 or later, float16 or bfloat16, and torch >= 2.10."""
    if device.type != "cuda":
        return f"the varlen kernel runs on CUDA only, not {device.type}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"the varlen kernel runs float16 and bfloat16, not {str(dtype).removeprefix('torch.')}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 0):
        return f"the varlen kernel needs compute capability 8.0 or later, and this GPU has {major}.{minor}"
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen (torch >= 2.10 has)"
    return None


def attention_for(device: torch.device, dtype: torch.dtype) -> tuple[str, str]:
    """The attention a packed pass uses here and why: the varlen kernel where it runs, else padded attention."""
    refusal = varlen_refusal(device, dtype)
    if refusal is None:
        return "varlen", "FlashAttention's varlen kernel"
    return "padded", f"attention padded per text, as {refusal}"


def spec_refusal(spec: ModelSpec) -> str | None:
    """Why `spec`'s checkpoint does not run packed (None when it may): packing covers the mean-pooled BERT and
    XLM-RoBERTa families. e5-mistral stays padded: its passes are its 7B linear layers' (padding there is the
    smaller cost), and packing it needs rotary positions, grouped-query and causal attention of its own."""
    if spec.family not in (Family.BERT, Family.XLM_ROBERTA) or spec.pooling is not Pooling.MEAN:
        return (f"packed passes run the {Family.BERT.value} and {Family.XLM_ROBERTA.value} checkpoints, not "
                f"{spec.name} ({spec.family.value})")
    return None


def packing_refusal(model: torch.nn.Module) -> str | None:
    """Why `model` cannot run packed (None when it can): a BERT or XLM-RoBERTa encoder with absolute positions."""
    config = model.config
    model_type = getattr(config, "model_type", "")
    if model_type not in PACKED_MODEL_TYPES:
        return f"packed passes run the {' and '.join(PACKED_MODEL_TYPES)} architectures, not {model_type or 'this one'}"
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return f"packed passes need absolute positions, not {config.position_embedding_type}"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "packed passes run encoders, not a decoder"
    if not hasattr(model, "embeddings") or not hasattr(model, "encoder"):
        return f"{type(model).__name__} has no embeddings and encoder to run packed"
    return None


def _fuse_qkv(attention: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """One [3 x hidden, hidden] weight and bias for query, key and value, which the three projections then view
    (the padded path keeps working on the same numbers, and no weight is held twice)."""
    projections = (attention.query, attention.key, attention.value)
    with torch.no_grad():
        weight = torch.cat([p.weight.detach() for p in projections])
        bias = torch.cat([p.bias.detach() for p in projections])
    size = projections[0].weight.shape[0]
    for i, projection in enumerate(projections):
        projection.weight = torch.nn.Parameter(weight[i * size:(i + 1) * size], requires_grad=False)
        projection.bias = torch.nn.Parameter(bias[i * size:(i + 1) * size], requires_grad=False)
    return weight, bias


@dataclass(frozen=True)
class _Layer:
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor
    attention_out: torch.nn.Linear
    attention_norm: torch.nn.LayerNorm
    up: torch.nn.Linear
    activation: Callable[[torch.Tensor], torch.Tensor]
    down: torch.nn.Linear
    output_norm: torch.nn.LayerNorm


class PackedModel:
    """A Hugging Face BERT or XLM-RoBERTa model run on packed passes, with its own parameters: last hidden states
    [tokens, hidden] for a `PackedPass`."""

    def __init__(self, model: torch.nn.Module, attention: str = "padded"):
        if (refusal := packing_refusal(model)) is not None:
            raise ValueError(refusal)
        self.model = model
        self.config = model.config
        self.attention_name = attention
        self.attention = ATTENTIONS[attention]
        config = model.config
        self.heads = int(config.num_attention_heads)
        self.head_dim = int(config.hidden_size) // self.heads
        self.position_offset = (int(getattr(config, "pad_token_id", 1) or 0) + 1
                                if config.model_type in _OFFSET_POSITIONS else 0)
        embeddings = model.embeddings
        self.words = embeddings.word_embeddings
        self.positions = embeddings.position_embeddings
        self.token_type = embeddings.token_type_embeddings.weight[0]  # every token is of type 0
        self.embedding_norm = embeddings.LayerNorm
        self.layers = []
        for layer in model.encoder.layer:
            weight, bias = _fuse_qkv(layer.attention.self)
            self.layers.append(_Layer(weight, bias, layer.attention.output.dense, layer.attention.output.LayerNorm,
                                      layer.intermediate.dense, layer.intermediate.intermediate_act_fn,
                                      layer.output.dense, layer.output.LayerNorm))

    def __call__(self, batch: PackedPass) -> torch.Tensor:
        # The order of the sums is the Hugging Face embeddings': (words + token type) + positions.
        x = self.embedding_norm(self.words(batch.ids) + self.token_type + self.positions(batch.positions))
        tokens = x.shape[0]
        for layer in self.layers:
            q, k, v = F.linear(x, layer.qkv_weight, layer.qkv_bias).view(tokens, 3, self.heads, self.head_dim).unbind(1)
            attended = self.attention(q, k, v, batch).reshape(tokens, -1)
            x = layer.attention_norm(layer.attention_out(attended) + x)
            x = layer.output_norm(layer.down(layer.activation(layer.up(x))) + x)
        return x


def mean_by_text(hidden: torch.Tensor, batch: PackedPass) -> torch.Tensor:
    """Each text's mean token state, accumulated in float32: [texts, hidden] (zeros for an empty text)."""
    sums = torch.zeros((batch.texts, hidden.shape[1]), dtype=torch.float32, device=hidden.device)
    sums.index_add_(0, batch.segments, hidden.to(torch.float32))
    return sums / batch.lengths.clamp(min=1).to(torch.float32)[:, None]


class PackedBackend:
    """An `e5.backend.Backend` that runs a pass padding-free: rows packed end to end, mean-pooled per text."""

    def __init__(self, model: torch.nn.Module, attention: str = "padded"):
        self.runner = PackedModel(model, attention)
        self.model = model
        self.config = model.config
        self.device = next(model.parameters()).device
        precision = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.name = Runtime(Framework.TORCH, precision, packed=True)

    @property
    def attention(self) -> str:
        return self.runner.attention_name

    def embed(self, rows: list[list[int]]) -> torch.Tensor:
        batch = pack(rows, self.runner.position_offset, self.device)
        return mean_by_text(self.runner(batch), batch)
