"""Loading a checkpoint, and running the forward passes that turn token ids into pooled vectors."""

from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from .batching import CPU_PASS_OVERHEAD_TOKENS, CPU_TOKEN_BUDGET, PassPolicy, default_token_budget
from .devices import Placement, choose_placement
from .finite import (
    REDUCED_PRECISIONS, Float32Fallback, finite_rows, float32_copy, float32_size, non_finite_cause,
    overflow_warning, precision_of,
)
from .memory import HeapTrimmer
from .pass_plan import (
    BF16_MATMUL_GATE, BF16_MIN_COSINE, ONNX_FLOAT32, TORCH_BFLOAT16, TORCH_FLOAT32, PassPlan, choose_plan, fit_cost,
)
from .pooling import pool
from .onnx_runtime import (
    ONNX_FLOAT32_TOLERANCE, PROBE_TEXTS, QuantizeError, cosine_check, float32_backbone, int8_backbone, onnx_refusal,
)
from .registry import ModelSpec
from .runtimes import ONNX_INT8, TORCH, Backbone, RuntimeChoice, TorchBackbone, choose_runtime
from .settings import CpuRuntime, Quantize, Settings
from .tokenizer import TextTokenizer, Tokenized, TooLongError
from .weights import WeightsError, weights_problem

log = logging.getLogger(__name__)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA's out-of-memory error and for the CPU allocator's equivalent."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


# Guards the first creation of an encoder's `Float32Fallback` (rare: only when a pass first overflows).
_FALLBACK_LOCK = threading.Lock()

# The widest rows of the load-time runtime plan's batch probe (`Encoder._probe_passes`).
PROBE_BATCH_WIDTH = 512


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

    def __init__(self, spec: ModelSpec, tokenizer, model, placement: Placement, token_budget: int | None = None,
                 heap: HeapTrimmer | None = None):
        self.spec = spec
        self.heap = heap  # gives the activations' freed heap back to the OS now and then (see e5.memory)
        self.tokenizer = tokenizer
        self.placement = placement
        # What runs the model (`e5.runtimes.Backbone`): `backbone` the small passes (all of them without a
        # `large_backbone`), `large_backbone` the passes above the split a measured plan (`plan_passes`) found.
        if getattr(model, "pooler", None) is not None:
            # E5 pools the token states itself: BERT's pooler (a dense layer and tanh per row) would run on
            # every pass for nothing (4% of the worker's CPU serving single passages). Dropped after loading,
            # so the checkpoint's pooler weights load as expected and the load report stays quiet.
            model.pooler = None
        self.backbone: Backbone = TorchBackbone(model)
        self.large_backbone: Backbone | None = None
        self.plan: PassPlan | None = None
        self.choice: RuntimeChoice | None = None  # what `choose_runtime` decided at load, and why
        self.int8_check = None  # with E5_QUANTIZE=int8: the int8 vectors' cosine to float32 on the probe texts
        self.onnx_max_abs_diff = None  # with ONNX Runtime float32: its largest difference to torch on the probes
        self.bf16_min_cosine: float | None = None  # when a bfloat16 model serves: its cosine to float32 on the probes
        self.dimensions = int(model.config.hidden_size)
        self.token_budget = default_token_budget(placement.device.type, token_budget)
        self.max_tokens = min(spec.max_tokens, position_capacity(spec, model.config))
        # What prepare and bulk tokenise with; the encoder itself only runs passes of token ids.
        self.text_tokenizer = TextTokenizer(tokenizer, spec, self.max_tokens)
        self._pad_id = self.text_tokenizer.pad_id
        if self.dimensions != spec.dimensions:
            log.warning("%s: weights have %d dimensions, the registry says %d",
                        spec.name, self.dimensions, spec.dimensions)

    @classmethod
    def load(cls, spec: ModelSpec, weights_dir: Path, placement: Placement | None = None,
             quantize: Quantize | None = None, runtime: CpuRuntime | None = None,
             settings: Settings | None = None) -> "Encoder":
        """Load tokenizer and model from a local Hugging Face directory (safetensors, no remote code).

        `quantize` is `Quantize.NONE` or `INT8` (CPU, see `e5.onnx_runtime`); `runtime` runs float32 on the CPU in
        `CpuRuntime.TORCH`, `ONNXRUNTIME` or `AUTO` (measured at load). Both are checked once, by `Settings`;
        their string values ('int8', 'torch') compare equal and work too. By default `settings` (else the
        environment) decide them, with the device, dtype and token budget.
        """
        settings = settings or Settings.from_env()
        weights_dir = Path(weights_dir)
        check_weights_dir(weights_dir, settings)
        placement = placement or choose_placement(settings.device, settings.dtype)
        # Checked once, by Settings (or typed by the caller): Quantize and CpuRuntime members, or their values.
        quantize = settings.quantize if quantize is None else quantize
        runtime = settings.cpu_runtime if runtime is None else runtime
        device, dtype = placement.device, placement.dtype
        setting = "E5_QUANTIZE=int8" if quantize == Quantize.INT8 else "E5_CPU_RUNTIME=onnxruntime"
        # Asked only where ONNX Runtime may serve: E5_CPU_RUNTIME=torch reads no headers and imports no onnx.
        refusal = (onnx_refusal(spec, device, dtype, weights_dir, setting)
                   if quantize == Quantize.INT8 or runtime != CpuRuntime.TORCH else None)
        choice = choose_runtime(device.type, settings.dtype is not None, quantize, runtime, refusal)
        onnx = choice.runtime != TORCH
        tokenizer = AutoTokenizer.from_pretrained(weights_dir, local_files_only=True, trust_remote_code=False)
        model = AutoModel.from_pretrained(
            weights_dir,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
            dtype=placement.dtype,
            # ONNX Runtime fuses attention only in an eager export; the float32 maths is the same.
            attn_implementation="eager" if onnx else "sdpa",
            # Straight from safetensors onto the GPU in its dtype: no float32 copy in host memory.
            device_map=str(placement.device) if placement.device.type == "cuda" else None,
        )
        model.to(placement.device).eval()
        encoder = cls(spec, tokenizer, model, placement, settings.token_budget, HeapTrimmer(settings.heap_trim_seconds))
        encoder.choice = choice
        log.info("%s: %s (%s)", spec.name, choice.runtime, choice.reason)
        if choice.runtime == ONNX_INT8:
            encoder._switch_to_int8(weights_dir, settings.cache_dir)
        elif choice.runtime == ONNX_FLOAT32:
            try:
                encoder._switch_to_onnx_float32(weights_dir, settings.cache_dir)
            except Exception as exc:
                if not choice.fallback_to_torch:
                    raise
                # E5_CPU_RUNTIME=auto: a build that fails (a read-only cache, say) costs speed, never the service.
                log.warning("%s: the ONNX Runtime float32 build failed (%s); it runs in torch instead "
                            "(E5_CPU_RUNTIME=torch skips the attempt)", spec.name, exc)
        # With nothing pinned (E5_DTYPE, E5_CPU_RUNTIME, E5_QUANTIZE), the CPU's passes go to whichever runtime
        # and precision measure fastest here, bfloat16 included where this CPU accelerates it.
        if choice.measure:
            encoder.plan_passes(model)
        return encoder

    def _switch_to_int8(self, weights_dir: Path, cache_dir: Path) -> None:
        """Swap the float32 model for its int8 ONNX build, and measure what that costs in accuracy."""
        reference = self.embed(PROBE_TEXTS)[0]
        self.backbone = int8_backbone(self.spec, weights_dir, self.backbone.model, cache_dir)
        self.int8_check = cosine_check(self.embed(PROBE_TEXTS)[0], reference)
        log.warning("%s runs in int8 (E5_QUANTIZE=int8): cosine to float32 on %d probe texts min %.4f, mean %.4f",
                    self.spec.name, self.int8_check.texts, self.int8_check.min_cosine, self.int8_check.mean_cosine)

    def _switch_to_onnx_float32(self, weights_dir: Path, cache_dir: Path) -> None:
        """Swap the torch model for its fused float32 ONNX build once its vectors match torch's on the probes."""
        reference = self.embed(PROBE_TEXTS)[0]
        torch_backbone = self.backbone
        self.backbone = float32_backbone(self.spec, weights_dir, torch_backbone.model, cache_dir)
        difference = float((self.embed(PROBE_TEXTS)[0] - reference).abs().max())
        if not difference <= ONNX_FLOAT32_TOLERANCE:  # also catches NaN
            self.backbone = torch_backbone
            raise QuantizeError(f"the float32 ONNX build of {self.spec.name} differs from torch by {difference:.1e} "
                                f"on the probe texts (at most {ONNX_FLOAT32_TOLERANCE:.0e} is allowed)")
        self.onnx_max_abs_diff = difference
        log.info("%s runs float32 in ONNX Runtime: largest difference to torch on %d probe texts %.1e",
                 self.spec.name, len(PROBE_TEXTS), self.onnx_max_abs_diff)

    def plan_passes(self, torch_model) -> PassPlan:
        """Time each runtime this CPU can serve the model in on two probe passes and keep what `choose_plan` picks.

        The candidates: the float32 runtime loaded (ONNX Runtime, else torch), torch float32 (`torch_model`,
        when ONNX Runtime serves), and torch bfloat16 where a bf16 matmul runs `BF16_MATMUL_GATE` times
        faster than float32 here and its vectors stay within `BF16_MIN_COSINE` of float32 on the probe texts.
        Runtimes the plan does not use are dropped, so at most two copies of the weights stay.
        """
        default = self.backbone.name  # the float32 runtime loaded: ONNX Runtime, else torch
        candidates: dict[str, Backbone] = {default: self.backbone}
        if default != TORCH_FLOAT32:
            torch_model.set_attn_implementation("sdpa")  # eager attention was for the ONNX export only
            candidates[TORCH_FLOAT32] = TorchBackbone(torch_model)
        notes = []
        speedup = bf16_matmul_speedup()
        if speedup < BF16_MATMUL_GATE:
            notes.append(f"bfloat16 not tried: a bf16 matmul runs at {speedup:.2f}x float32 on this CPU "
                         f"(at least {BF16_MATMUL_GATE}x needed, as AMX gives)")
        else:
            bf16_model = copy.deepcopy(torch_model).to(torch.bfloat16)
            bf16_model.set_attn_implementation("sdpa")
            bf16 = TorchBackbone(bf16_model)
            cosine = float(torch.nn.functional.cosine_similarity(
                self._probe_vectors(bf16), self._probe_vectors(self.backbone), dim=1).min())
            if cosine >= BF16_MIN_COSINE:
                candidates[TORCH_BFLOAT16] = bf16
                self.bf16_min_cosine = cosine
            else:
                notes.append(f"bfloat16 refused: min cosine to float32 on the probe texts {cosine:.6f}, "
                             f"below {BF16_MIN_COSINE}")
        small, large = self._probe_passes()
        timings = _alternating_timings(candidates, {"small": small, "large": large})
        costs = [fit_cost(name, (small[0].numel(), timings[name]["small"]), (large[0].numel(), timings[name]["large"]))
                 for name in candidates]
        plan = choose_plan(costs, default, small[0].numel(), large[0].numel())
        self.plan = replace(plan, reason="; ".join([plan.reason, *notes]))
        self.backbone = candidates[plan.small]
        self.large_backbone = candidates[plan.large] if plan.large else None
        if TORCH_BFLOAT16 not in plan.runtimes:
            self.bf16_min_cosine = None
        log.warning("%s on the CPU: %s. Why: %s%s", self.spec.name, plan.describe(), self.plan.reason,
                    f"; bfloat16 min cosine to float32 on the probe texts {self.bf16_min_cosine:.6f}"
                    if self.bf16_min_cosine is not None else "")
        return self.plan

    def _probe_passes(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """A short query alone, and the largest pass the encoder cuts by default: the CPU's token budget (a larger
        E5_TOKEN_BUDGET is not probed beyond it) in rows of the model's full width (at most `PROBE_BATCH_WIDTH`).

        Full width, because how runtimes compare changes with it: on an AMD EPYC (no AMX) ONNX Runtime float32
        ran multilingual-e5-small's 8 x 64 tokens in 0.86x torch's time and 4 x 512 in 1.24x; probed at 8 x 64,
        the plan sent long passes to ONNX Runtime, which then embedded 64 texts of 16-500 tokens at 0.86x
        torch's speed.
        """
        rows = self.text_tokenizer.encode(PROBE_TEXTS)
        stream = [token for row in rows for token in row]
        width = min(PROBE_BATCH_WIDTH, self.max_tokens)
        count = max(1, min(self.token_budget, CPU_TOKEN_BUDGET) // width)
        batch = [(stream * (1 + count * width // len(stream)))[i * width: (i + 1) * width] for i in range(count)]
        return self._pad(rows[:1]), self._pad(batch)

    def _probe_vectors(self, backbone: Backbone) -> torch.Tensor:
        input_ids, mask = self._pad(self.text_tokenizer.encode(PROBE_TEXTS))
        with torch.inference_mode():
            return pool(backbone(input_ids, mask), mask, self.spec.pooling)

    @property
    def runtimes(self) -> list[str]:
        """The names of the runtimes that serve passes: one, or two where a measured plan splits them."""
        return [b.name for b in (self.backbone, self.large_backbone) if b is not None]

    @property
    def runtime(self) -> str:
        """What runs the model, in words: 'torch float32', 'onnxruntime int8', or a measured plan's description."""
        return self.plan.describe() if self.plan is not None else self.backbone.name

    @property
    def precision(self) -> str:
        """The precision vectors are computed in: 'int8', 'float32', 'bfloat16' ... (a plan may name two)."""
        return " and ".join(dict.fromkeys(name.split()[-1] for name in self.runtimes))

    @property
    def pass_policy(self) -> PassPolicy:
        """How this encoder's passes are cut: its token budget and, on the CPU, what one more pass costs in padded
        tokens (measured by the plan, else per runtime); on a GPU passes are cut by the budget only."""
        overhead = None
        if self.placement.device.type == "cpu":
            overhead = (self.plan.overhead_tokens if self.plan is not None else
                        CPU_PASS_OVERHEAD_TOKENS["torch" if isinstance(self.backbone, TorchBackbone) else "onnxruntime"])
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
            input_ids, mask = self._pad([ids[i] for i in batch])
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
        with _FALLBACK_LOCK:  # made here, not at load: most encoders never need one
            fallback = getattr(self, "_fallback", None)
            if fallback is None:
                fallback = self._fallback = Float32Fallback()
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
                                getattr(self, "_fallback", None))

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
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


def pass_seconds(backbone: Backbone, input_ids: torch.Tensor, mask: torch.Tensor, calls: int,
                 warm_up: bool = True) -> float:
    """The median seconds of `calls` forward passes of `backbone` on one padded batch (after one warm-up call)."""
    timings = []
    with torch.inference_mode():
        for _ in range(calls + warm_up):
            started = time.perf_counter()
            backbone(input_ids, mask)
            timings.append(time.perf_counter() - started)
    timings = sorted(timings[warm_up:])
    return timings[len(timings) // 2]


def _alternating_timings(models: dict, passes: dict, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Median seconds of each model on each probe pass, the models taking turns in every round so that the
    machine's drift (up to 30% here) falls on all of them alike; short passes take the median of 3 calls."""
    for model in models.values():  # warm-up: first calls allocate and plan
        for input_ids, mask in passes.values():
            pass_seconds(model, input_ids, mask, calls=1)
    seconds: dict[str, dict[str, list[float]]] = {name: {shape: [] for shape in passes} for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            for shape, (input_ids, mask) in passes.items():
                calls = 3 if input_ids.numel() < 64 else 1
                seconds[name][shape].append(pass_seconds(model, input_ids, mask, calls=calls, warm_up=False))
    return {name: {shape: sorted(v)[len(v) // 2] for shape, v in by.items()} for name, by in seconds.items()}


def bf16_matmul_speedup(rows: int = 256, inner: int = 384, cols: int = 1536, calls: int = 5) -> float:
    """How many times faster a bfloat16 matmul of an encoder layer's shape runs than float32 on this CPU.

    About 3-5x with AMX (550-1,076 against 174-201 GFLOP/s at 2 threads); below 1 on CPUs without bf16
    units (AMD EPYC 7003, AVX2), where a bfloat16 model ran 7x slower than float32.
    """
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(rows, inner, generator=generator), torch.randn(inner, cols, generator=generator)

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        x @ y  # warm-up
        timings = []
        for _ in range(calls):
            started = time.perf_counter()
            x @ y
            timings.append(time.perf_counter() - started)
        return min(timings)

    return best(a, b) / best(a.bfloat16(), b.bfloat16())
