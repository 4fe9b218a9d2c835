"""Loading a checkpoint into an `Encoder`: which runtime(s) serve it here, measured once per machine and cached.

On a GPU, or with the CPU's runtime pinned to torch, the model loads in torch and nothing is measured.
Elsewhere on the CPU (ONNX Runtime, int8, or nothing pinned) the load is planned:
- from the `e5.plan_cache` record of this machine, checkpoint, versions and settings, when there is one:
  only the runtimes the plan uses are loaded (the ONNX build from the cache, a torch model in the plan's
  precision), and nothing is timed or checked again;
- else measured: the ONNX build(s) are made in a child process first (`e5.onnx_build`), then checked
  against torch float32 on `PROBE_TEXTS`, and with nothing pinned every candidate runtime is timed on two
  probe passes for `e5.pass_plan` to split passes between; the record is written for the next boot.
Whatever the load does not keep is dropped and the freed heap given back before the encoder is returned.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch

from .batching import CPU_TOKEN_BUDGET
from .devices import Placement, choose_placement
from .encoder import Encoder, check_weights_dir
from .memory import HeapTrimmer
from .onnx_runtime import (
    PROBE_TEXTS, Int8Check, OnnxRuntimeError, cosine_check, onnx_backbones, onnx_model, onnx_refusal,
)
from .pass_plan import (
    BF16_MATMUL_GATE, ONNX_FLOAT32, ONNX_INT8, TORCH_BFLOAT16, TORCH_FLOAT32, Engine, PassPlan, Runtime, fit_cost,
)
from .pass_timing import Measurements
from .plan_cache import LoadRecord, PlanCache, PlanKey, now, plan_key
from .pooling import pool
from .registry import ModelSpec
from .runtimes import TORCH, Backbone, RuntimeChoice, TorchBackbone, choose_runtime
from .settings import CpuRuntime, Quantize, Settings
from .tokenizer import CheckpointTokenizer

log = logging.getLogger(__name__)

# The widest rows of the load-time runtime plan's batch probe (`probe_passes`).
PROBE_BATCH_WIDTH = 512


@dataclass(frozen=True)
class LoadReport:
    """What a load chose and why: `choice` (`choose_runtime`'s decision), `record` (the CPU's measured or
    cached plan and checks; None where nothing is measured: a GPU, or torch pinned), and where the plan
    came from (`source`)."""

    choice: RuntimeChoice
    record: LoadRecord | None = None
    source: str = "nothing measured"

    @property
    def onnx_max_abs_diff(self) -> float | None:
        """ONNX Runtime float32's largest difference to torch on `PROBE_TEXTS`, where it serves."""
        return self.record.onnx_max_abs_diff if self.record else None

    @property
    def bf16_min_cosine(self) -> float | None:
        """The bfloat16 model's least cosine to float32 on `PROBE_TEXTS`, where it serves."""
        if self.record is None or TORCH_BFLOAT16 not in self.record.runtimes:
            return None
        return self.record.bf16_min_cosine

    @property
    def int8_check(self) -> Int8Check | None:
        """The int8 vectors' cosine to float32 on `PROBE_TEXTS`, with E5_QUANTIZE=int8."""
        record = self.record
        if record is None or record.int8_min_cosine is None:
            return None
        return Int8Check(record.int8_texts, record.int8_min_cosine, record.int8_mean_cosine)

    def why(self) -> str:
        """Why these runtimes serve, with the accuracy checks and the record's notes, in one line."""
        plan = self.record.plan if self.record else None
        why = plan.reason if plan is not None else self.choice.reason
        checks = []
        if self.onnx_max_abs_diff is not None:
            checks.append(f"ONNX Runtime float32 within {self.onnx_max_abs_diff:.1e} of torch")
        if self.bf16_min_cosine is not None:
            checks.append(f"bfloat16 min cosine to float32 {self.bf16_min_cosine:.6f}")
        if (int8 := self.int8_check) is not None:
            checks.append(f"int8 cosine to float32 min {int8.min_cosine:.4f}, mean {int8.mean_cosine:.4f}")
        if checks:
            why += f"; on {len(PROBE_TEXTS)} probe texts: " + ", ".join(checks)
        return "; ".join([why, *(self.record.notes if self.record else ())])


def load_encoder(spec: ModelSpec, weights_dir: Path, settings: Settings,
                 placement: Placement | None = None, quantize: Quantize | str | None = None,
                 runtime: CpuRuntime | str | None = None, measurements: Measurements | None = None) -> Encoder:
    """Load tokenizer and model from a local Hugging Face directory (safetensors, no remote code).

    `quantize` (`Quantize.NONE`/`INT8`) and `runtime` (`CpuRuntime.TORCH`/`ONNXRUNTIME`/`AUTO`) override
    `settings`, which also give the device, dtype, token budget and cache.
    `measurements` replaces what the CPU's plan measures and decides by (tests).
    """
    weights_dir = Path(weights_dir)
    check_weights_dir(weights_dir, settings)
    placement = placement or choose_placement(settings.device, settings.dtype)
    quantize = Quantize(settings.quantize if quantize is None else quantize)
    runtime = CpuRuntime(settings.cpu_runtime if runtime is None else runtime)
    device, dtype = placement.device, placement.dtype
    # Asked only where ONNX Runtime may serve: E5_CPU_RUNTIME=torch reads no headers and imports no onnx.
    refusal = (onnx_refusal(spec, device, dtype, weights_dir)
               if quantize == Quantize.INT8 or runtime != CpuRuntime.TORCH else None)
    choice = choose_runtime(device.type, settings.dtype is not None, quantize, runtime, refusal)
    log.info("%s: %s (%s)", spec.name, choice.runtime, choice.reason)
    heap = HeapTrimmer(settings.heap_trim_seconds)
    if choice.runtime == TORCH and not choice.measure:
        model = torch_model(weights_dir, placement.dtype, placement.device)
        encoder = Encoder(spec, checkpoint_tokenizer(weights_dir), TorchBackbone(model), placement,
                          settings.token_budget, heap, report=LoadReport(choice))
        del model
    else:
        encoder = _planned(spec, weights_dir, placement, settings, quantize, runtime, choice, heap,
                           measurements or Measurements())
    gc.collect()
    heap.trim()  # what the checks and probes used, given back before the first request
    return encoder


def checkpoint_tokenizer(weights_dir: Path) -> CheckpointTokenizer:
    """The checkpoint's tokenizer through Hugging Face (whose wrapper is dropped once its Rust tokenizer is taken)."""
    from transformers import AutoTokenizer

    return CheckpointTokenizer.from_hugging_face(
        AutoTokenizer.from_pretrained(weights_dir, local_files_only=True, trust_remote_code=False))


def checkpoint_config(weights_dir: Path) -> SimpleNamespace:
    """The checkpoint's config.json as attributes (`hidden_size`, `max_position_embeddings` ...), read without
    transformers: a warm boot whose plan runs only ONNX Runtime never imports it (1.2 s on two cores)."""
    return SimpleNamespace(**json.loads((Path(weights_dir) / "config.json").read_text()))


def _planned(spec: ModelSpec, weights_dir: Path, placement: Placement, settings: Settings,
             quantize: Quantize, runtime: CpuRuntime, choice: RuntimeChoice, heap: HeapTrimmer,
             measurements: Measurements) -> Encoder:
    """The CPU's encoder as this machine's cached record says, else measured (and the record written)."""
    key = plan_key(weights_dir, f"dtype {settings.dtype and settings.dtype.value}, quantize {quantize.value}, "
                               f"cpu_runtime {runtime.value}, token_budget {settings.token_budget}",
                   torch.get_num_threads())
    cache = PlanCache(settings.cache_dir, spec.name)
    record, why = (None, "E5_REMEASURE=1") if settings.remeasure else cache.read(key)
    if record is not None:
        try:
            tokenizer = CheckpointTokenizer.from_file(cache.tokenizer_path(key))
            backbones = _from_record(record, spec, weights_dir, placement, settings)
            source = f"the plan {why}"
        except Exception as exc:  # whatever makes a cached record or file unusable: measure again
            why = f"the cached plan could not be used ({type(exc).__name__}: {exc})"
            record = None
    if record is None:
        log.warning("%s: measuring this CPU's runtimes: %s (E5_CACHE_DIR keeps the result)", spec.name, why)
        tokenizer = checkpoint_tokenizer(weights_dir)
        backbones, record = _measure(spec, weights_dir, tokenizer, placement, settings, choice, key, measurements)
        problem = cache.write(record, tokenizer)
        source = f"measured in {record.measure_seconds:.1f} s" + (
            f"; not cached ({problem}): the next boot measures again" if problem else f", cached in {cache.path(key)}")
    plan = record.plan
    report = LoadReport(choice, record, source)
    small = backbones[plan.small] if plan else next(iter(backbones.values()))
    large = backbones[plan.large] if plan and plan.large else None
    encoder = Encoder(spec, tokenizer, small, placement, settings.token_budget, heap, plan, large, report)
    # A warning so that it reaches Cog's setup log: what serves, where the plan came from, and why.
    log.warning("%s on the CPU: %s (%s). Why: %s", spec.name, encoder.runtime, source, report.why())
    return encoder


def torch_model(weights_dir: Path, dtype: torch.dtype, device: torch.device):
    """The checkpoint as a torch model in `dtype` on `device`, ready to serve (SDPA attention, no BERT pooler)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(
        weights_dir, local_files_only=True, trust_remote_code=False, use_safetensors=True, dtype=dtype,
        attn_implementation="sdpa",
        # Straight from safetensors onto the GPU in its dtype: no float32 copy in host memory.
        device_map=str(device) if device.type == "cuda" else None,
    )
    if getattr(model, "pooler", None) is not None:
        # E5 pools the token states itself: BERT's pooler (a dense layer and tanh per row) would run on every
        # pass for nothing (4% of the worker's CPU serving single passages). Dropped after loading, so the
        # checkpoint's pooler weights load as expected and the load report stays quiet.
        model.pooler = None
    return model.to(device).eval()


def _from_record(record: LoadRecord, spec: ModelSpec, weights_dir: Path, placement: Placement,
                 settings: Settings) -> dict[Runtime, Backbone]:
    """The runtimes a cached record names, loaded and nothing else: nothing is timed or checked."""
    config = checkpoint_config(weights_dir)
    backbones: dict[Runtime, Backbone] = {}
    for name in record.runtimes:
        if name.engine is Engine.ONNXRUNTIME:
            backbones[name] = onnx_model(spec, weights_dir, config, settings.cache_dir, name.precision)
        else:
            backbones[name] = TorchBackbone(torch_model(weights_dir, getattr(torch, name.precision), placement.device))
    return backbones


def _measure(spec: ModelSpec, weights_dir: Path, tokenizer: CheckpointTokenizer, placement: Placement,
             settings: Settings, choice: RuntimeChoice, key: PlanKey,
             measurements: Measurements) -> tuple[dict[Runtime, Backbone], LoadRecord]:
    """Build, check and (with nothing pinned) time the CPU's candidate runtimes; the runtimes kept and the
    record (the probes run through a scratch encoder of torch float32, dropped afterwards)."""
    started = time.perf_counter()
    onnx: dict[Runtime, Backbone] = {}
    if choice.runtime in (ONNX_FLOAT32, ONNX_INT8):
        # int8 is timed against the float32 build, made by the same export.
        precisions = ("float32", "int8") if choice.runtime == ONNX_INT8 else ("float32",)
        config = checkpoint_config(weights_dir)
        try:
            # Before the torch model loads: the build's memory peak is its own process's, not added to ours.
            onnx = onnx_backbones(spec, weights_dir, config, settings.cache_dir, precisions)
        except Exception as exc:
            if not choice.fallback_to_torch:
                raise
            # E5_CPU_RUNTIME=auto: a build that fails (a read-only cache, say) costs speed, never the service.
            log.warning("%s: the ONNX Runtime float32 build failed (%s); it runs in torch instead "
                        "(E5_CPU_RUNTIME=torch skips the attempt)", spec.name, exc)
    torch_float32 = TorchBackbone(torch_model(weights_dir, torch.float32, placement.device))
    encoder = Encoder(spec, tokenizer, torch_float32, placement, settings.token_budget)
    reference = probe_vectors(encoder)
    candidates: dict[Runtime, Backbone] = {TORCH_FLOAT32: torch_float32}
    default = TORCH_FLOAT32
    checks: dict = {}
    notes: list[str] = []
    if ONNX_FLOAT32 in onnx:
        difference = float((probe_vectors(encoder, onnx[ONNX_FLOAT32]) - reference).abs().max())
        if difference <= measurements.onnx_float32_tolerance:  # also false for NaN
            candidates[ONNX_FLOAT32] = onnx[ONNX_FLOAT32]
            default = ONNX_FLOAT32
            checks["onnx_max_abs_diff"] = difference
            log.info("%s: ONNX Runtime float32's largest difference to torch on the probe texts %.1e",
                     spec.name, difference)
        else:
            message = (f"the float32 ONNX build of {spec.name} differs from torch by {difference:.1e} on the probe "
                       f"texts (at most {measurements.onnx_float32_tolerance:.0e} is allowed)")
            if not choice.fallback_to_torch and choice.runtime == ONNX_FLOAT32:
                raise OnnxRuntimeError(message)
            log.warning("%s; it runs in torch float32 instead", message)
    plan = None
    if choice.runtime == ONNX_INT8:
        int8 = onnx[ONNX_INT8]
        check = cosine_check(probe_vectors(encoder, int8), reference)
        checks.update(int8_min_cosine=check.min_cosine, int8_mean_cosine=check.mean_cosine, int8_texts=check.texts)
        # Against what would serve without E5_QUANTIZE: the float32 runtimes, and bfloat16 where it passes.
        _add_bfloat16(encoder, weights_dir, candidates, default, measurements)
        notes.append(_int8_speed(encoder, int8, candidates, measurements))
        kept = {ONNX_INT8: int8}
    elif choice.measure:
        plan, bf16_cosine = _plan(encoder, weights_dir, candidates, default, measurements)
        if bf16_cosine is not None and TORCH_BFLOAT16 in plan.runtimes:
            checks["bf16_min_cosine"] = bf16_cosine
        kept = {name: candidates[name] for name in plan.runtimes}
    else:
        kept = {default: candidates[default]}
    record = LoadRecord(key, tuple(kept), plan, notes=tuple(notes), measured_at=now(),
                        measure_seconds=round(time.perf_counter() - started, 2), **checks)
    return kept, record


def _plan(encoder: Encoder, weights_dir: Path, candidates: dict[Runtime, Backbone], default: Runtime,
          measurements: Measurements) -> tuple[PassPlan, float | None]:
    """Time each runtime this CPU can serve the model in on the two probe passes and split passes between them.

    The candidates: the float32 runtimes loaded (ONNX Runtime where it passed its check, torch), and torch
    bfloat16 where a bf16 matmul runs `BF16_MATMUL_GATE` times faster than float32 here and its vectors stay
    within `measurements.bf16_min_cosine` of float32 on the probe texts.
    """
    bf16_cosine, note = _add_bfloat16(encoder, weights_dir, candidates, default, measurements)
    small, large = probe_passes(encoder)
    timings = measurements.timings(candidates, {"small": small, "large": large})
    costs = [fit_cost(name, (small[0].numel(), timings[name]["small"]), (large[0].numel(), timings[name]["large"]))
             for name in candidates]
    plan = measurements.choose_plan(costs, default, small[0].numel(), large[0].numel())
    return replace(plan, reason="; ".join([plan.reason, *filter(None, [note])])), bf16_cosine


def _add_bfloat16(encoder: Encoder, weights_dir: Path, candidates: dict[Runtime, Backbone], default: Runtime,
                  measurements: Measurements) -> tuple[float | None, str | None]:
    """Add torch bfloat16 to `candidates` where a bf16 matmul runs `BF16_MATMUL_GATE` times faster than float32
    here and its vectors stay within `measurements.bf16_min_cosine` of `default`'s on the probe texts; its
    min cosine, or why it was not added."""
    speedup = measurements.bf16_matmul_speedup()
    if speedup < BF16_MATMUL_GATE:
        return None, (f"bfloat16 not tried: a bf16 matmul runs at {speedup:.2f}x float32 on this CPU "
                      f"(at least {BF16_MATMUL_GATE}x needed, as AMX gives)")
    bf16 = TorchBackbone(torch_model(weights_dir, torch.bfloat16, torch.device("cpu")))
    cosine = float(torch.nn.functional.cosine_similarity(
        probe_vectors(encoder, bf16), probe_vectors(encoder, candidates[default]), dim=1).min())
    if cosine < measurements.bf16_min_cosine:
        return None, (f"bfloat16 refused: min cosine to float32 on the probe texts {cosine:.6f}, "
                      f"below {measurements.bf16_min_cosine}")
    candidates[TORCH_BFLOAT16] = bf16  # the caller keeps what it uses
    return cosine, None


def _int8_speed(encoder: Encoder, int8: Backbone, others: dict[Runtime, Backbone], measurements: Measurements) -> str:
    """How int8 compares in speed with the fastest of `others` (what serves without E5_QUANTIZE) on the probe
    passes, in one sentence; a warning in the log where int8 is not faster on a batch."""
    small, large = probe_passes(encoder)
    timings = measurements.timings({ONNX_INT8: int8, **others}, {"small": small, "large": large})
    tokens = large[0].numel()

    def fastest(shape: str) -> str:
        return min(others, key=lambda name: timings[name][shape])

    short_ratio = timings[fastest("small")]["small"] / timings[ONNX_INT8]["small"]
    batch_ratio = timings[fastest("large")]["large"] / timings[ONNX_INT8]["large"]
    sentence = (f"int8 runs a short query at {short_ratio:.2f}x and a batch of {tokens} tokens at {batch_ratio:.2f}x "
                f"the speed of the fastest runtime without it here ({fastest('small')}, {fastest('large')})")
    if batch_ratio < 1.0:
        log.warning("%s: E5_QUANTIZE=int8 is not faster on this CPU than serving without it: %s. It serves int8 as "
                    "asked; unset E5_QUANTIZE for the default's vectors at that speed", encoder.spec.name, sentence)
    return sentence


def probe_passes(encoder: Encoder) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The load-time plan's two probe passes (padded ids and mask): a short query alone, and the largest pass
    `encoder` cuts by default: the CPU's token budget (a larger E5_TOKEN_BUDGET is not probed beyond it) in
    rows of the model's full width (at most `PROBE_BATCH_WIDTH`).

    Full width, because how runtimes compare changes with it: on an AMD EPYC (no AMX) ONNX Runtime float32
    ran multilingual-e5-small's 8 x 64 tokens in 0.86x torch's time but 4 x 512 in 1.24x, so a plan probed
    on narrow rows would send long passes to the slower runtime.
    """
    rows = encoder.text_tokenizer.encode(PROBE_TEXTS)
    stream = [token for row in rows for token in row]
    width = min(PROBE_BATCH_WIDTH, encoder.max_tokens)
    count = max(1, min(encoder.token_budget, CPU_TOKEN_BUDGET) // width)
    batch = [(stream * (1 + count * width // len(stream)))[i * width: (i + 1) * width] for i in range(count)]
    return encoder.pad(rows[:1]), encoder.pad(batch)


def probe_vectors(encoder: Encoder, backbone: Backbone | None = None) -> torch.Tensor:
    """Pooled vectors of `PROBE_TEXTS` from `backbone` (default: the encoder's own), for the load-time checks."""
    input_ids, mask = encoder.pad(encoder.text_tokenizer.encode(PROBE_TEXTS))
    with torch.inference_mode():
        return pool((backbone or encoder.backbone)(input_ids, mask), mask, encoder.spec.pooling)
