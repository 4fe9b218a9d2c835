"""Loading a checkpoint and turning texts into pooled vectors."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import AutoModel, AutoTokenizer

from .batching import CPU_PASS_OVERHEAD_TOKENS, default_token_budget, token_budget_batches
from .devices import Placement, choose_placement
from .memory import HeapTrimmer
from .pooling import pool
from .quantize import (
    ONNX_FLOAT32_TOLERANCE,
    PROBE_TEXTS,
    QuantizeError,
    cosine_check,
    cpu_runtime,
    float32_backbone,
    int8_backbone,
    onnx_refusal,
    quantize_mode,
)
from .registry import ModelSpec
from .settings import Settings
from .weights import WeightsError, shown_path

log = logging.getLogger(__name__)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA's out-of-memory error and for the CPU allocator's equivalent."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


class TooLongError(ValueError):
    """An input over the model's token limit when truncation is off."""


@dataclass(frozen=True)
class Tokenized:
    """Token ids ready for the model, one list per text, plus what truncation did."""

    ids: list[list[int]]
    full_lengths: list[int]
    truncated: list[bool]

    @property
    def token_count(self) -> int:
        """Tokens that the model actually reads."""
        return sum(len(row) for row in self.ids)


def check_weights_dir(path: Path, settings: Settings | None = None) -> None:
    """Raise `WeightsError` unless `path` holds a config and safetensors weights."""
    if not path.is_dir():
        raise WeightsError(f"weights directory {shown_path(path, settings)} does not exist")
    if not (path / "config.json").is_file():
        raise WeightsError(f"{shown_path(path, settings)} has no config.json; it is not a Hugging Face model directory")
    if not any(path.glob("*.safetensors")):
        pickled = [p.name for p in path.glob("*.bin")]
        hint = f" (found pickled {', '.join(pickled)}, which is refused)" if pickled else ""
        raise WeightsError(f"{shown_path(path, settings)} has no .safetensors weights{hint}")


def private_tokenizer(tokenizer) -> Tokenizer:
    """A copy of `tokenizer`'s Rust tokenizer that never truncates or pads, owned by one encoder.

    Hugging Face's per-call `truncation=`/`max_length=` reconfigure the shared Rust tokenizer, which races
    between threads; this copy is configured once here and only read afterwards.
    """
    rust = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    rust.no_truncation()
    rust.no_padding()
    return rust


# Architectures whose positions start after the padding id (multilingual-e5-small is a BERT with an
# XLM-R tokenizer, so this follows the model's config, not the registry's family).
_OFFSET_POSITIONS = ("xlm-roberta", "roberta")


def position_capacity(spec: ModelSpec, config) -> int:
    """How many tokens the model's position table takes; RoBERTa-style positions start after the padding id."""
    capacity = int(getattr(config, "max_position_embeddings", spec.max_tokens) or spec.max_tokens)
    if getattr(config, "model_type", "") in _OFFSET_POSITIONS:
        capacity -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    return capacity


class Encoder:
    """A loaded checkpoint: tokenizer, model and the registry entry that says how to use them."""

    def __init__(self, spec: ModelSpec, tokenizer, model, placement: Placement, token_budget: int | None = None,
                 heap: HeapTrimmer | None = None):
        self.spec = spec
        self.heap = heap  # gives the activations' freed heap back to the OS now and then (see e5.memory)
        self.tokenizer = tokenizer
        self.model = model
        self.placement = placement
        self.int8_check = None  # an `Int8Check` when E5_QUANTIZE=int8 swapped in the int8 model
        self.onnx_max_abs_diff = None  # E5_CPU_RUNTIME=onnxruntime: largest difference to torch on the probes
        self.dimensions = int(model.config.hidden_size)
        self.token_budget = default_token_budget(placement.device.type, token_budget)
        eos = tokenizer.eos_token_id
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
        if spec.append_eos and eos is None:
            raise WeightsError(f"{spec.name} needs an EOS token but the tokenizer defines none")
        # Transformers 5 tokenizers no longer append EOS for e5-mistral; learn once
        # whether this one does, so EOS ends up there exactly once either way.
        self._append_eos = spec.append_eos and not self._tokenizer_adds_eos()
        self._rust = private_tokenizer(tokenizer)
        self._specials = self._rust.num_special_tokens_to_add(False)
        self.max_tokens = min(spec.max_tokens, position_capacity(spec, model.config))
        if self.dimensions != spec.dimensions:
            log.warning("%s: weights have %d dimensions, the registry says %d",
                        spec.name, self.dimensions, spec.dimensions)

    @classmethod
    def load(cls, spec: ModelSpec, weights_dir: Path, placement: Placement | None = None,
             quantize: str | None = None, runtime: str | None = None, settings: Settings | None = None) -> "Encoder":
        """Load tokenizer and model from a local Hugging Face directory (safetensors, no remote code).

        `quantize` is 'none' or 'int8' (CPU, see `e5.quantize`); `runtime` runs float32 on the CPU in 'torch',
        'onnxruntime' or 'auto' (ONNX Runtime where it can serve the model, else torch). By default `settings`
        (else the environment) decide them, with the device, dtype and token budget.
        """
        settings = settings or Settings.from_env()
        weights_dir = Path(weights_dir)
        check_weights_dir(weights_dir, settings)
        placement = placement or choose_placement(settings.device, settings.dtype)
        int8 = quantize_mode(settings.quantize if quantize is None else quantize) == "int8"
        requested = cpu_runtime(settings.cpu_runtime if runtime is None else runtime)
        device, dtype = placement.device, placement.dtype
        setting = "E5_QUANTIZE=int8" if int8 else "E5_CPU_RUNTIME=onnxruntime"
        # Asked only where ONNX Runtime is wanted: E5_CPU_RUNTIME=torch reads no headers and imports no onnx.
        wants_onnx = int8 or requested != "torch"
        refusal = onnx_refusal(spec, device, dtype, weights_dir, setting) if wants_onnx else None
        if refusal and (int8 or requested == "onnxruntime"):
            raise QuantizeError(refusal)
        if requested == "auto" and refusal and device.type == "cpu":
            log.info("%s runs float32 in torch: %s", spec.name, refusal)
        onnx_float32 = not int8 and (requested == "onnxruntime" or (requested == "auto" and not refusal))
        tokenizer = AutoTokenizer.from_pretrained(weights_dir, local_files_only=True, trust_remote_code=False)
        model = AutoModel.from_pretrained(
            weights_dir,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
            dtype=placement.dtype,
            # ONNX Runtime fuses attention only in an eager export; the float32 maths is the same.
            attn_implementation="eager" if int8 or onnx_float32 else "sdpa",
            # Straight from safetensors onto the GPU in its dtype: no float32 copy in host memory.
            device_map=str(placement.device) if placement.device.type == "cuda" else None,
        )
        model.to(placement.device).eval()
        encoder = cls(spec, tokenizer, model, placement, settings.token_budget, HeapTrimmer(settings.heap_trim_seconds))
        if int8:
            encoder._switch_to_int8(weights_dir, settings.cache_dir)
        elif onnx_float32:
            try:
                encoder._switch_to_onnx_float32(weights_dir, settings.cache_dir)
            except Exception as exc:
                if requested == "onnxruntime":
                    raise
                # E5_CPU_RUNTIME=auto: a build that fails (a read-only cache, say) costs speed, never the service.
                log.warning("%s: the ONNX Runtime float32 build failed (%s); it runs in torch instead "
                            "(E5_CPU_RUNTIME=torch skips the attempt)", spec.name, exc)
        return encoder

    def _switch_to_int8(self, weights_dir: Path, cache_dir: Path) -> None:
        """Swap the float32 model for its int8 ONNX build, and measure what that costs in accuracy."""
        reference = self.embed(PROBE_TEXTS)[0]
        self.model = int8_backbone(self.spec, weights_dir, self.model, cache_dir)
        self.int8_check = cosine_check(self.embed(PROBE_TEXTS)[0], reference)
        log.warning("%s runs in int8 (E5_QUANTIZE=int8): cosine to float32 on %d probe texts min %.4f, mean %.4f",
                    self.spec.name, self.int8_check.texts, self.int8_check.min_cosine, self.int8_check.mean_cosine)

    def _switch_to_onnx_float32(self, weights_dir: Path, cache_dir: Path) -> None:
        """Swap the torch model for its fused float32 ONNX build once its vectors match torch's on the probes."""
        reference = self.embed(PROBE_TEXTS)[0]
        torch_model = self.model
        self.model = float32_backbone(self.spec, weights_dir, torch_model, cache_dir)
        difference = float((self.embed(PROBE_TEXTS)[0] - reference).abs().max())
        if not difference <= ONNX_FLOAT32_TOLERANCE:  # also catches NaN
            self.model = torch_model
            raise QuantizeError(f"the float32 ONNX build of {self.spec.name} differs from torch by {difference:.1e} "
                                f"on the probe texts (at most {ONNX_FLOAT32_TOLERANCE:.0e} is allowed)")
        self.onnx_max_abs_diff = difference
        log.info("%s runs float32 in ONNX Runtime: largest difference to torch on %d probe texts %.1e",
                 self.spec.name, len(PROBE_TEXTS), self.onnx_max_abs_diff)

    @property
    def runtime(self) -> str:
        """What runs the model: 'torch', 'onnxruntime' (float32) or 'onnxruntime int8'."""
        if self.int8_check is not None:
            return "onnxruntime int8"
        return "onnxruntime" if self.onnx_max_abs_diff is not None else "torch"

    @property
    def pass_overhead_tokens(self) -> int | None:
        """What one more forward pass costs here in padded tokens (None on a GPU: passes are cut by budget only)."""
        if self.placement.device.type != "cpu":
            return None
        return CPU_PASS_OVERHEAD_TOKENS["torch" if self.runtime == "torch" else "onnxruntime"]

    def _tokenizer_adds_eos(self) -> bool:
        eos = self.tokenizer.eos_token_id
        ids = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        return eos is not None and bool(ids) and ids[-1] == eos

    def _encode(self, texts: list[str]) -> list[list[int]]:
        rows = [encoding.ids for encoding in self._rust.encode_batch(texts, add_special_tokens=True)]
        if self._append_eos:
            rows = [row + [self.tokenizer.eos_token_id] for row in rows]
        return rows

    def _encode_cut(self, text: str) -> list[int]:
        """`text` cut to the model's limit the way the tokenizer's own truncation cuts: content first, specials kept."""
        room = self.max_tokens - self._specials - (1 if self._append_eos else 0)
        encoding = self._rust.encode(text, add_special_tokens=False)
        encoding.truncate(room)  # a per-call object: nothing shared changes
        row = self._rust.post_process(encoding, None, add_special_tokens=True).ids
        return row + [self.tokenizer.eos_token_id] if self._append_eos else row

    def tokenize(self, texts: list[str], truncate: bool = True, labels: list[str] | None = None) -> Tokenized:
        """Token ids for each text, cut to the model's limit, or `TooLongError` naming the first over-long one.

        Safe to call from many threads at once: the tokenizer is never reconfigured per call.
        """
        ids = self._encode(texts)
        full_lengths = [len(row) for row in ids]
        over = [i for i, n in enumerate(full_lengths) if n > self.max_tokens]
        if over and not truncate:
            i = over[0]
            label = labels[i] if labels else f"texts[{i}]"
            raise TooLongError(
                f"{label} has {full_lengths[i]} tokens, more than the {self.max_tokens} that "
                f"{self.spec.name} accepts; shorten it or set truncate=true"
            )
        for i in over:
            ids[i] = self._encode_cut(texts[i])
        return Tokenized(ids, full_lengths, [n > self.max_tokens for n in full_lengths])

    @torch.inference_mode()
    def embed_ids(self, ids: list[list[int]], token_budget: int | None = None) -> torch.Tensor:
        """Pooled float32 vectors (not normalised) for token id lists, in the given order, on the CPU."""
        if not ids:
            return torch.empty((0, self.dimensions), dtype=torch.float32)
        self.check_fits(ids)
        order: list[int] = []
        pooled: list[torch.Tensor] = []
        for batch in token_budget_batches([len(row) for row in ids], token_budget or self.token_budget,
                                          pass_overhead_tokens=self.pass_overhead_tokens):
            for rows, vectors in self._forward_splitting(batch, ids):
                order.extend(rows)
                pooled.append(vectors)
        # Results stay on the device until every batch is queued: one copy back, no sync per batch.
        gathered = torch.cat(pooled).cpu()
        out = torch.empty_like(gathered)
        out[torch.tensor(order)] = gathered
        if self.heap is not None:
            self.heap.trim_if_due()
        return out

    def check_fits(self, ids: list[list[int]]) -> None:
        """`TooLongError` unless every row fits the model's position table: no out-of-range index reaches a device."""
        longest = max(map(len, ids), default=0)
        if longest > self.max_tokens:
            raise TooLongError(f"a row of {longest} tokens, more than the {self.max_tokens} that {self.spec.name} "
                               "accepts, reached the model; it was refused before the forward pass")

    def _forward_splitting(self, batch: list[int], ids: list[list[int]]) -> list[tuple[list[int], torch.Tensor]]:
        """Pool one batch; when the device runs out of memory, halve the batch and retry each half."""
        try:
            input_ids, mask = self._pad([ids[i] for i in batch])
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            return [(batch, pool(hidden, mask, self.spec.pooling))]
        except Exception as exc:
            if not is_out_of_memory(exc) or len(batch) == 1:
                raise
        hidden = input_ids = mask = None  # drop references so the allocator can reuse that memory
        if self.placement.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(batch) // 2
        log.warning("out of memory on a batch of %d texts; retrying as %d + %d", len(batch), half, len(batch) - half)
        return self._forward_splitting(batch[:half], ids) + self._forward_splitting(batch[half:], ids)

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        # Right padding keeps every text at the positions it has when embedded alone.
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, : len(row)] = 1
        device = self.placement.device
        if device.type == "cuda":
            # Pinned host memory lets the copy run asynchronously with the previous batch.
            return input_ids.pin_memory().to(device, non_blocking=True), mask.pin_memory().to(device, non_blocking=True)
        return input_ids, mask

    def embed(self, texts: list[str], truncate: bool = True) -> tuple[torch.Tensor, Tokenized]:
        """Embed already-formatted texts; returns float32 vectors and the tokenisation."""
        tokens = self.tokenize(texts, truncate=truncate)
        return self.embed_ids(tokens.ids), tokens
