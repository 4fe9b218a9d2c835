"""Running the forward passes that turn token ids into pooled vectors (`e5.loader` builds the encoder)."""

from __future__ import annotations

import itertools
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .batching import PassPolicy, default_token_budget
from .devices import Placement
from .finite import (
    REDUCED_PRECISIONS, Float32Fallback, finite_rows, float32_copy, float32_size, non_finite_cause,
    overflow_warning, precision_of,
)
from .memory import HeapTrimmer
from .pass_plan import PassPlan, Runtime
from .pass_timing import Measurements
from .pooling import pool
from .registry import ModelSpec
from .runtimes import Backbone, TorchBackbone
from .settings import CpuRuntime, Quantize, Settings
from .tokenizer import CheckpointTokenizer, TextTokenizer, Tokenized, TooLongError
from .weights import WeightsError, weights_problem

if TYPE_CHECKING:
    from .loader import LoadReport

log = logging.getLogger(__name__)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA's out-of-memory error and for the CPU allocator's equivalent."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


def check_weights_dir(path: Path, settings: Settings | None = None) -> None:
    """Raise `WeightsError` unless `path` holds a config and safetensors weights (see `weights_problem`)."""
    if (problem := weights_problem(path, settings)) is not None:
        raise WeightsError(problem)


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
    """A loaded checkpoint: tokenizer, the runtime(s) that run its model, and the registry entry that says
    how to use them."""

    def __init__(self, spec: ModelSpec, tokenizer: CheckpointTokenizer, backbone: Backbone, placement: Placement,
                 token_budget: int | None = None, heap: HeapTrimmer | None = None, plan: PassPlan | None = None,
                 large_backbone: Backbone | None = None, report: LoadReport | None = None):
        self.spec = spec
        self.heap = heap  # gives the activations' freed heap back to the OS now and then (see e5.memory)
        self.placement = placement
        # What runs the model (`e5.runtimes.Backbone`): `backbone` the small passes (all of them without a
        # `large_backbone`), `large_backbone` the passes above the split of a measured `plan`.
        self.backbone: Backbone = backbone
        self.large_backbone = large_backbone
        self.plan = plan
        self.report = report  # what the loader (e5.loader) chose, measured and checked, and why
        self._fallback = Float32Fallback()  # float32 for rows that overflow float16: settled on first need
        config = backbone.config
        self.dimensions = int(config.hidden_size)
        self.token_budget = default_token_budget(placement.device.type, token_budget)
        self.max_tokens = min(spec.max_tokens, position_capacity(spec, config))
        # What prepare and bulk tokenise with; the encoder itself only runs passes of token ids.
        self.text_tokenizer = TextTokenizer(tokenizer, spec, self.max_tokens)
        self._tokenizer_dir = tokenizer.source
        self._tokenizer = None
        self._pad_id = self.text_tokenizer.pad_id
        if self.dimensions != spec.dimensions:
            log.warning("%s: weights have %d dimensions, the registry says %d",
                        spec.name, self.dimensions, spec.dimensions)

    @classmethod
    def load(cls, spec: ModelSpec, weights_dir: Path, placement: Placement | None = None,
             quantize: Quantize | None = None, runtime: CpuRuntime | None = None,
             settings: Settings | None = None, measurements: Measurements | None = None) -> "Encoder":
        """`e5.loader.load_encoder`: the checkpoint in `weights_dir`, in the runtime(s) chosen for this machine,
        with `settings` (default: read from the environment here, as the library's entry points do)."""
        from .loader import load_encoder

        return load_encoder(spec, weights_dir, settings or Settings.from_env(), placement, quantize, runtime,
                            measurements)

    @property
    def tokenizer(self):
        """The checkpoint's Hugging Face tokenizer, loaded on first use for tests and benchmarks; serving
        tokenises with `text_tokenizer` only."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_dir, local_files_only=True,
                                                            trust_remote_code=False)
        return self._tokenizer

    @property
    def runtimes(self) -> list[Runtime]:
        """The names of the runtimes that serve passes: one, or two where a measured plan splits them."""
        return [b.name for b in (self.backbone, self.large_backbone) if b is not None]

    @property
    def runtime(self) -> str:
        """What runs the model, in words: 'torch float32', 'onnxruntime int8', or a measured plan's description."""
        return self.plan.describe() if self.plan is not None else self.backbone.name

    @property
    def precision(self) -> str:
        """The precision vectors are computed in: 'int8', 'float32', 'bfloat16' ... (a plan may name two)."""
        return " and ".join(dict.fromkeys(runtime.precision for runtime in self.runtimes))

    @property
    def pass_policy(self) -> PassPolicy:
        """How this encoder's passes are cut: its token budget and, on the CPU, what one more pass costs in padded
        tokens (measured by the plan, else per runtime); on a GPU passes are cut by the budget only."""
        overhead = None
        if self.placement.device.type == "cpu":
            overhead = (self.plan.overhead_tokens if self.plan is not None else
                        Runtime.named(self.backbone.name).pass_overhead_tokens)
        return PassPolicy(self.token_budget, overhead_tokens=overhead)

    def backbone_for(self, rows: int, width: int) -> Backbone:
        """The runtime that runs a pass of `rows` x `width` padded tokens."""
        if self.large_backbone is not None and self.plan.runtime_for(rows * width) == self.plan.large:
            return self.large_backbone
        return self.backbone

    def embed_ids(self, ids: list[list[int]], token_budget: int | None = None) -> torch.Tensor:
        """Pooled float32 vectors (not normalised) for token id lists, in the given order, on the CPU, in the
        passes the encoder's `pass_policy` cuts (with `token_budget` in place of its budget, if given)."""
        policy = self.pass_policy
        if token_budget is not None:
            policy = replace(policy, token_budget=token_budget)
        return self.run_passes(ids, policy.passes([len(row) for row in ids]))

    @torch.inference_mode()
    def run_passes(self, ids: list[list[int]], passes: list[list[int]]) -> torch.Tensor:
        """Pooled float32 vectors of `ids` in their order, on the CPU, running exactly `passes` (lists of row
        indices); a pass the device has no memory for is halved and retried. Rows a float16 or bfloat16 pass
        gives that are not finite are recomputed in float32 (`e5.finite`); a row that is still not finite is
        returned as it is, for the service to fail the request it belongs to, and no other."""
        if not ids:
            return torch.empty((0, self.dimensions), dtype=torch.float32)
        self.check_fits(ids)
        order: list[int] = []
        pooled: list[torch.Tensor] = []
        finite: list[torch.Tensor] = []
        runs: list[tuple[int, Backbone]] = []  # how many rows each piece holds, and what computed them
        for batch in passes:
            for rows, vectors, backbone in self._forward_splitting(batch, ids):
                order.extend(rows)
                pooled.append(vectors)
                finite.append(finite_rows(vectors))  # on the device, like the vectors: no sync per pass
                runs.append((len(rows), backbone))
            if self.heap is not None:
                self.heap.trim_if_grown()  # rising shapes grow the heap a pass at a time (see e5.memory)
        # Results stay on the device until every pass is queued: one copy back, no sync per pass.
        vectors = (torch.cat(pooled) if len(pooled) > 1 else pooled[0]).cpu()
        finite_mask = (torch.cat(finite) if len(finite) > 1 else finite[0]).cpu()
        if not bool(finite_mask.all()):
            self._recompute_non_finite(ids, vectors, order, finite_mask, runs)
        if order != list(range(len(ids))):
            ordered = torch.empty_like(vectors)
            ordered[torch.tensor(order)] = vectors
            vectors = ordered
        if self.heap is not None:
            self.heap.trim_if_due()
        return vectors

    def check_fits(self, ids: list[list[int]]) -> None:
        """`TooLongError` unless every row fits the model's position table: no out-of-range index reaches a device."""
        longest = max(map(len, ids), default=0)
        if longest > self.max_tokens:
            raise TooLongError(f"a row of {longest} tokens, more than the {self.max_tokens} that {self.spec.name} "
                               "accepts, reached the model; it was refused before the forward pass")

    def _forward_splitting(self, batch: list[int], ids: list[list[int]], backbone: Backbone | None = None,
                           ) -> list[tuple[list[int], torch.Tensor, Backbone]]:
        """Pool one batch in `backbone` (by default the one `backbone_for` its shape picks), with the runtime
        that computed each piece; when the device runs out of memory, halve the batch and retry each half."""
        try:
            input_ids, mask = self.pad([ids[i] for i in batch])
            runtime = self.backbone_for(*input_ids.shape) if backbone is None else backbone
            hidden = runtime(input_ids, mask)
            return [(batch, pool(hidden, mask, self.spec.pooling), runtime)]
        except Exception as exc:
            if not is_out_of_memory(exc) or len(batch) == 1:
                raise
        hidden = input_ids = mask = None  # drop references so the allocator can reuse that memory
        if self.placement.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(batch) // 2
        log.warning("out of memory on a batch of %d texts; retrying as %d + %d", len(batch), half, len(batch) - half)
        return (self._forward_splitting(batch[:half], ids, backbone)
                + self._forward_splitting(batch[half:], ids, backbone))

    def _recompute_non_finite(self, ids: list[list[int]], vectors: torch.Tensor, order: list[int],
                              finite: torch.Tensor, runs: list[tuple[int, Backbone]]) -> None:
        """Recompute in float32, in place, the rows of `vectors` (in pass `order`; `runs` says what computed
        them) that `finite` marks and a float16 or bfloat16 runtime computed, and log what became of them."""
        reduced: list[int] = []  # positions in `vectors` of rows to recompute
        reduced_names: dict[str, None] = {}
        others: dict[str, int] = {}  # rows not finite at a precision that is not recomputed (float32, int8)
        start = 0
        for count, backbone in runs:
            bad = torch.nonzero(~finite[start:start + count]).flatten().tolist()
            if bad and (precision := precision_of(backbone)) in REDUCED_PRECISIONS:
                reduced += [start + i for i in bad]
                reduced_names[precision] = None
            elif bad:
                others[precision] = others.get(precision, 0) + len(bad)
            start += count
        for precision, count in others.items():
            log.warning("%s", overflow_warning(count, precision, None))
        if not reduced:
            return
        fallback = self._float32_fallback()
        still = 0
        if fallback.backbone is not None:
            recomputed = self._pooled_in(fallback.backbone, [order[p] for p in reduced], ids)
            vectors[torch.tensor(reduced)] = recomputed
            still = int((~finite_rows(recomputed)).sum())
        # One line per call (an engine turn): the count says how many rows ran twice.
        log.warning("%s", overflow_warning(len(reduced), " and ".join(reduced_names), fallback, still))

    def _pooled_in(self, backbone: Backbone, rows: list[int], ids: list[list[int]]) -> torch.Tensor:
        """Pooled vectors of `ids[row]` for each of `rows`, in that order, on the CPU, computed in `backbone` in
        the passes this encoder's policy cuts them into."""
        out = torch.empty((len(rows), self.dimensions), dtype=torch.float32)
        position = {row: i for i, row in enumerate(rows)}
        for batch in self.pass_policy.passes([len(ids[row]) for row in rows]):
            for pieces, vectors, _ in self._forward_splitting([rows[i] for i in batch], ids, backbone):
                out[torch.tensor([position[row] for row in pieces])] = vectors.cpu()
        return out

    def _float32_fallback(self) -> Float32Fallback:
        """The float32 runtime for rows a float16 or bfloat16 pass could not hold, settled on first need: a
        float32 runtime this encoder already serves with (a measured plan's), else a float32 copy of its torch
        model, kept for later; on a device without room for that copy, the reason instead (for good)."""
        fallback = self._fallback
        with fallback.lock:
            if fallback.settled:
                return fallback
            served = [b for b in (self.backbone, self.large_backbone) if b is not None]
            float32 = next((b for b in served if precision_of(b) == "float32"), None)
            source = next((b for b in served if precision_of(b) in REDUCED_PRECISIONS
                           and isinstance(getattr(b, "model", None), torch.nn.Module)), None)
            if float32 is not None:
                fallback.backbone = float32
            elif source is None:
                fallback.refusal = "there is no torch model to copy"
            else:
                try:
                    fallback.backbone = TorchBackbone(float32_copy(source.model))
                    log.warning("%s: made a float32 copy of the model (%s) to recompute rows that overflow %s",
                                self.spec.name, float32_size(source.model), precision_of(source))
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    fallback.refusal = (f"{self.placement.device} has no room for a {float32_size(source.model)} "
                                        "float32 copy of the model")
                    if self.placement.device.type == "cuda":
                        torch.cuda.empty_cache()
        return fallback

    def non_finite_cause(self) -> str:
        """Why a vector this encoder returned is not finite (`e5.finite.non_finite_cause`), for the error that
        fails its request."""
        return non_finite_cause([precision_of(b) for b in (self.backbone, self.large_backbone) if b is not None],
                                self._fallback)

    def pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token rows as one right-padded batch on the encoder's device: input ids and attention mask."""
        # Right padding keeps every text at the positions it has when embedded alone. Built in one go: the
        # mask from the lengths, the ids dropped into its true cells in row order, no tensor per row.
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        mask_array = np.arange(int(lengths.max())) < lengths[:, None]
        ids_array = np.full(mask_array.shape, self._pad_id, dtype=np.int64)
        ids_array[mask_array] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64,
                                            count=int(lengths.sum()))
        input_ids, mask = torch.from_numpy(ids_array), torch.from_numpy(mask_array.astype(np.int64))
        device = self.placement.device
        if device.type == "cuda":
            # Pinned host memory lets the copy run asynchronously with the previous batch.
            return input_ids.pin_memory().to(device, non_blocking=True), mask.pin_memory().to(device, non_blocking=True)
        return input_ids, mask

    def tokenize(self, texts: list[str], truncate: bool = True, labels: list[str] | None = None) -> Tokenized:
        """`TextTokenizer.tokenize` of this encoder's tokenizer: ids cut to the model's limit."""
        return self.text_tokenizer.tokenize(texts, truncate, labels)

    def embed(self, texts: list[str], truncate: bool = True) -> tuple[torch.Tensor, Tokenized]:
        """Embed already-formatted texts; returns float32 vectors and the tokenisation."""
        tokens = self.tokenize(texts, truncate=truncate)
        return self.embed_ids(tokens.ids), tokens
