"""Loading a checkpoint into an `Encoder`: which backend(s) run its passes here, measured once per machine and cached.

On a GPU, or with the CPU's runtime pinned to torch, the model loads in torch and nothing is measured.
Elsewhere on the CPU (ONNX Runtime, int8, or nothing pinned) the load is planned:
- from the `e5.plan_cache` record of this machine, checkpoint, versions and settings, when there is one:
  only the runtimes the plan uses are loaded (the ONNX build from the cache, a torch model in the plan's
  precision, run padded or packed as the plan says), and nothing is timed or checked again;
- else measured: the ONNX build(s) are made in a child process first (`e5.onnx_build`), then checked
  against torch float32 on `PROBE_TEXTS`, and with nothing pinned every candidate runtime is timed on two
  probe passes for `e5.pass_plan` to split passes between; the record is written for the next boot.
A packed torch runtime (`e5.packed`, as E5_PACKING and `choose_packing` allow) serves only once its vectors
agree with the padded path's at the same precision on `PROBE_TEXTS` (`packed_twin`); where they do not,
passes stay padded and the log says why (with E5_PACKING=on, setup fails instead).
Whatever the load does not keep is dropped and the freed heap given back before the encoder is returned.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

from .backend import Backend, PaddedBackend, Padding
from .batching import CPU_TOKEN_BUDGET, DEFAULT_MAX_BATCH, default_token_budget
from .devices import Placement, choose_placement
from .encoder import Encoder, check_weights_dir, position_capacity
from .graphs import bucket_ladder, choose_graphs, graphed_twin
from .load_report import LoadReport
from .memory import HeapTrimmer
from .onnx_runtime import PROBE_TEXTS, OnnxRuntimeError, cosine_check, onnx_backbones, onnx_model, onnx_refusal
from .packed import PackedBackend, attention_for, spec_refusal
from .pass_plan import (
    BF16_MATMUL_GATE, ONNX_FLOAT32, ONNX_INT8, TORCH_BFLOAT16, TORCH_FLOAT32, Framework, PassPlan, Runtime, fit_cost,
)
from .pass_timing import CoreWatch, Measurements
from .plan_cache import LoadRecord, PlanCache, PlanKey, PlanSettings, now, plan_key
from .registry import ModelSpec
from .runtimes import (
    TORCH, PackingChoice, PackingError, PackingMode, RuntimeChoice, TorchBackbone, choose_packing, choose_runtime,
)
from .settings import CpuRuntime, Packing, Quantize, Settings
from .threads import run_on_own_thread
from .tokenizer import CheckpointTokenizer, TextTokenizer

log = logging.getLogger(__name__)

# The widest rows of the load-time runtime plan's batch probe (`probe_passes`).
PROBE_BATCH_WIDTH = 512


def load_encoder(spec: ModelSpec, weights_dir: Path, settings: Settings | None = None,
                 placement: Placement | None = None, quantize: Quantize | str | None = None,
                 runtime: CpuRuntime | str | None = None, measurements: Measurements | None = None,
                 packing: Packing | str | None = None) -> Encoder:
    """Load tokenizer and model from a local Hugging Face directory (safetensors, no remote code).

    `settings` give the device, dtype, runtime, packing, token budget and cache (default: read from the
    environment here, as the library's entry points do); `quantize` (`Quantize.NONE`/`INT8`), `runtime`
    (`CpuRuntime.TORCH`/`ONNXRUNTIME`/`AUTO`) and `packing` (`Packing.AUTO`/`ON`/`OFF`) override them.
    `measurements` replaces what the CPU's plan measures and decides by (tests).

    The load runs on a thread of its own that ends with it, so that its probe passes leave no OpenMP pool
    beside the one of the thread that will serve (`e5.threads`).
    """
    return run_on_own_thread(lambda: _load(spec, weights_dir, settings, placement, quantize, runtime, measurements,
                                           packing), "e5-load")


def _load(spec: ModelSpec, weights_dir: Path, settings: Settings | None, placement: Placement | None,
          quantize: Quantize | str | None, runtime: CpuRuntime | str | None, measurements: Measurements | None,
          packing: Packing | str | None) -> Encoder:
    settings = settings if settings is not None else Settings.from_env()
    weights_dir = Path(weights_dir)
    check_weights_dir(weights_dir, settings)
    placement = placement or choose_placement(settings.device, settings.dtype)
    quantize = Quantize(settings.quantize if quantize is None else quantize)
    runtime = CpuRuntime(settings.cpu_runtime if runtime is None else runtime)
    settings = replace(settings, quantize=quantize, cpu_runtime=runtime,
                       packing=Packing(settings.packing if packing is None else packing))
    device, dtype = placement.device, placement.dtype
    # Asked only where ONNX Runtime may serve: E5_CPU_RUNTIME=torch reads no headers and imports no onnx.
    refusal = (onnx_refusal(spec, device, dtype, weights_dir)
               if quantize == Quantize.INT8 or runtime != CpuRuntime.TORCH else None)
    choice = choose_runtime(device.type, settings.dtype is not None, quantize, runtime, refusal, settings.packing)
    packing_choice = choose_packing(settings.packing, device.type, choice.measure, spec_refusal(spec))
    graphs, graphs_why = choose_graphs(settings.cuda_graphs, device.type, packing_choice.mode is PackingMode.ONLY,
                                       attention_for(device, dtype))
    log.info("%s: %s (%s); %s; %s", spec.name, choice.runtime, choice.reason, packing_choice.reason, graphs_why)
    heap = HeapTrimmer(settings.heap_trim_seconds)
    if choice.runtime == TORCH and not choice.measure:
        tokenizer = checkpoint_tokenizer(weights_dir)
        padded = padded_torch(spec, weights_dir, tokenizer, placement, placement.dtype)
        backend, note = padded, packing_choice.reason
        if packing_choice.mode is PackingMode.ONLY:  # nothing is measured, so packing is all or nothing
            backend, note, _ = packed_twin(spec, tokenizer, padded, placement, measurements or Measurements(),
                                           required=True)
        if graphs:
            backend, graphs_why = recorded_twin(spec, tokenizer, backend, settings, measurements or Measurements())
        report = LoadReport(choice, packing_choice, packed_note=note,
                            graphs_note=graphs_why if device.type == "cuda" else None)
        encoder = Encoder(spec, tokenizer, backend, placement, settings.token_budget, heap, report=report)
        # A warning so that it reaches Cog's setup log: what serves and why (on a GPU, whether passes are packed).
        log.warning("%s on %s: %s. Why: %s", spec.name, device.type, encoder.runtime, report.why())
        del padded, backend
    else:
        encoder = _planned(spec, weights_dir, placement, settings, choice, packing_choice, heap,
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


def _planned(spec: ModelSpec, weights_dir: Path, placement: Placement, settings: Settings, choice: RuntimeChoice,
             packing: PackingChoice, heap: HeapTrimmer, measurements: Measurements) -> Encoder:
    """The CPU's encoder as this machine's cached record says, else measured (and the record written)."""
    key = plan_key(weights_dir, PlanSettings.of(settings), torch.get_num_threads())
    cache = PlanCache(settings.cache_dir, spec.name)
    record, why = (None, "E5_REMEASURE=1") if settings.remeasure else cache.read(key)
    if record is not None:
        try:
            tokenizer = CheckpointTokenizer.from_file(cache.tokenizer_path(key))
            backends = _from_record(record, spec, weights_dir, tokenizer, placement, settings)
            source = f"the plan {why}"
        except Exception as exc:  # whatever makes a cached record or file unusable: measure again
            why = f"the cached plan could not be used ({type(exc).__name__}: {exc})"
            record = None
    if record is None:
        log.warning("%s: measuring this CPU's runtimes: %s (E5_CACHE_DIR keeps the result)", spec.name, why)
        tokenizer = checkpoint_tokenizer(weights_dir)
        watch = CoreWatch(measurements.core_use)
        backends, record = _measure(spec, weights_dir, tokenizer, placement, settings, choice, packing, key,
                                    replace(measurements, timings=watch.wrap(measurements.timings)))
        # Timings taken on busy cores serve this boot only: cached, one noisy boot would set the plan for good.
        problem = measurements.busy(watch.total) or cache.write(record, tokenizer)
        source = f"measured in {record.measure_seconds:.1f} s" + (
            f"; not cached ({problem}): the next boot measures again" if problem else f", cached in {cache.path(key)}")
    plan = record.plan
    report = LoadReport(choice, packing, record, source)
    small = backends[plan.small] if plan else next(iter(backends.values()))
    large = backends[plan.large] if plan and plan.large else None
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


def padded_torch(spec: ModelSpec, weights_dir: Path, tokenizer: CheckpointTokenizer, placement: Placement,
                 dtype: torch.dtype) -> PaddedBackend:
    """The checkpoint's torch model in `dtype` on the placement's device, run on padded passes."""
    model = torch_model(weights_dir, dtype, placement.device)
    return PaddedBackend(TorchBackbone(model), Padding(tokenizer.padding_id, placement.device), spec.pooling)


def packed_twin(spec: ModelSpec, tokenizer: CheckpointTokenizer, padded: PaddedBackend, placement: Placement,
                measurements: Measurements, required: bool = False) -> tuple[Backend, str, float | None]:
    """`padded`'s torch model run packed (`e5.packed`), where its vectors agree with `padded`'s on
    `PROBE_TEXTS` (each row's cosine at least `measurements.packed_min_cosine`), else `padded` itself; with the
    sentence that says which and why, and the least cosine where the packed one serves.

    `PackingError` instead of `padded` when packing is `required` (E5_PACKING=on).
    """
    attention, attention_why = attention_for(placement.device, next(padded.model.parameters()).dtype)
    rows = TextTokenizer(tokenizer, spec, spec.max_tokens).encode(PROBE_TEXTS)
    try:
        packed = (measurements.packed_backend or PackedBackend)(padded.model, attention)
        with torch.inference_mode():
            cosine = float(torch.nn.functional.cosine_similarity(
                packed.embed(rows).cpu(), padded.embed(rows).cpu(), dim=1).min())
    except Exception as exc:  # a config packing does not cover, a kernel this device or torch lacks ...
        refusal = f"{type(exc).__name__}: {exc}"
    else:
        if cosine >= measurements.packed_min_cosine:  # also false for NaN
            return packed, (f"{packed.name} ({attention_why}) agrees with the padded path on {len(rows)} probe "
                            f"texts: min cosine {cosine:.6f}"), cosine
        refusal = (f"its vectors differ from the padded path's on {len(rows)} probe texts (min cosine {cosine:.6f}, "
                   f"at least {measurements.packed_min_cosine} needed)")
    if required:
        raise PackingError(f"E5_PACKING=on: {spec.name} cannot run packed here: {refusal}; unset E5_PACKING")
    message = f"packed passes refused, {padded.name} stays padded: {refusal}"
    log.warning("%s: %s", spec.name, message)
    return padded, message, None


def recorded_twin(spec: ModelSpec, tokenizer: CheckpointTokenizer, packed: PackedBackend, settings: Settings,
                  measurements: Measurements) -> tuple[Backend, str]:
    """`packed` with its passes recorded in CUDA graphs for a ladder of buckets up to its pass budget
    (`e5.graphs`), where every bucket replays `PROBE_TEXTS` as `packed` runs them, else `packed` itself; with
    the sentence that says which and why."""
    ladder = bucket_ladder(default_token_budget(packed.device.type, settings.token_budget), DEFAULT_MAX_BATCH,
                           min(spec.max_tokens, position_capacity(spec, packed.config)))
    rows = TextTokenizer(tokenizer, spec, spec.max_tokens).encode(PROBE_TEXTS)
    return graphed_twin(packed, ladder, rows, measurements.graph_recorder)


def _from_record(record: LoadRecord, spec: ModelSpec, weights_dir: Path, tokenizer: CheckpointTokenizer,
                 placement: Placement, settings: Settings) -> dict[Runtime, Backend]:
    """The runtimes a cached record names, loaded and nothing else: nothing is timed or checked."""
    config = checkpoint_config(weights_dir)
    padding = Padding(tokenizer.padding_id, placement.device)
    models: dict[str, torch.nn.Module] = {}  # one torch model a precision, whether run padded, packed or both
    backends: dict[Runtime, Backend] = {}
    for name in record.runtimes:
        if name.framework is Framework.ONNXRUNTIME:
            onnx = onnx_model(spec, weights_dir, config, settings.cache_dir, name.precision)
            backends[name] = PaddedBackend(onnx, padding, spec.pooling)
            continue
        if name.precision not in models:
            models[name.precision] = torch_model(weights_dir, getattr(torch, name.precision), placement.device)
        model = models[name.precision]
        if name.packed:
            backends[name] = PackedBackend(model, attention_for(placement.device, getattr(torch, name.precision))[0])
        else:
            backends[name] = PaddedBackend(TorchBackbone(model), padding, spec.pooling)
    return backends


def _measure(spec: ModelSpec, weights_dir: Path, tokenizer: CheckpointTokenizer, placement: Placement,
             settings: Settings, choice: RuntimeChoice, packing: PackingChoice, key: PlanKey,
             measurements: Measurements) -> tuple[dict[Runtime, Backend], LoadRecord]:
    """Build, check and (with nothing pinned) time the CPU's candidate runtimes; the runtimes kept and the
    record (the probes run through a scratch encoder of torch float32, dropped afterwards)."""
    started = time.perf_counter()
    padding = Padding(tokenizer.padding_id, placement.device)
    onnx: dict[Runtime, Backend] = {}
    if choice.runtime in (ONNX_FLOAT32, ONNX_INT8):
        # int8 is timed against the float32 build, made by the same export.
        precisions = ("float32", "int8") if choice.runtime == ONNX_INT8 else ("float32",)
        config = checkpoint_config(weights_dir)
        try:
            # Before the torch model loads: the build's memory peak is its own process's, not added to ours.
            onnx = {name: PaddedBackend(backbone, padding, spec.pooling) for name, backbone in
                    onnx_backbones(spec, weights_dir, config, settings.cache_dir, precisions).items()}
        except Exception as exc:
            if not choice.fallback_to_torch:
                raise
            # E5_CPU_RUNTIME=auto: a build that fails (a read-only cache, say) costs speed, never the service.
            log.warning("%s: the ONNX Runtime float32 build failed (%s); it runs in torch instead "
                        "(E5_CPU_RUNTIME=torch skips the attempt)", spec.name, exc)
    torch_float32 = padded_torch(spec, weights_dir, tokenizer, placement, torch.float32)
    encoder = Encoder(spec, tokenizer, torch_float32, placement, settings.token_budget)
    reference = probe_vectors(encoder)
    candidates: dict[Runtime, Backend] = {TORCH_FLOAT32: torch_float32}
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
    packed_cosines: dict[Runtime, float] = {}
    if choice.runtime == ONNX_INT8:
        int8 = onnx[ONNX_INT8]
        check = cosine_check(probe_vectors(encoder, int8), reference)
        checks.update(int8_min_cosine=check.min_cosine, int8_mean_cosine=check.mean_cosine, int8_texts=check.texts)
        # Against what would serve without E5_QUANTIZE: the float32 runtimes, and bfloat16 where it passes.
        _add_bfloat16(encoder, spec, weights_dir, tokenizer, candidates, default, measurements)
        notes.append(_int8_speed(encoder, int8, candidates, measurements))
        kept = {ONNX_INT8: int8}
    else:
        bf16_cosine, bf16_note = None, None
        if choice.measure:
            bf16_cosine, bf16_note = _add_bfloat16(encoder, spec, weights_dir, tokenizer, candidates, default,
                                                   measurements)
        if packing.mode is not PackingMode.OFF:
            packed_cosines, refusals = _add_packed(spec, tokenizer, candidates, placement, measurements,
                                                   only=packing.mode is PackingMode.ONLY)
            notes += refusals
            if packing.mode is PackingMode.ONLY:
                default = TORCH_FLOAT32.as_packed()
        if choice.measure:
            plan = _plan(encoder, candidates, default, measurements, bf16_note)
            if bf16_cosine is not None and any(name.precision == "bfloat16" for name in plan.runtimes):
                checks["bf16_min_cosine"] = bf16_cosine
            kept = {name: candidates[name] for name in plan.runtimes}
        else:
            kept = {default: candidates[default]}
    if served_packed := [cosine for name, cosine in packed_cosines.items() if name in kept]:
        checks["packed_min_cosine"] = min(served_packed)  # of the packed runtimes that serve, not all checked
    record = LoadRecord(key, tuple(kept), plan, notes=tuple(notes), measured_at=now(),
                        measure_seconds=round(time.perf_counter() - started, 2), **checks)
    return kept, record


def _plan(encoder: Encoder, candidates: dict[Runtime, Backend], default: Runtime, measurements: Measurements,
          note: str | None = None) -> PassPlan:
    """Time each runtime in `candidates` on the two probe passes and split passes between them (`note`, why
    bfloat16 is not among them, joins the plan's reason).

    The candidates: the float32 runtimes loaded (ONNX Runtime where it passed its check, torch), torch bfloat16
    where `_add_bfloat16` admitted it, and each torch precision run packed where `_add_packed` admitted it.
    """
    small, large = probe_passes(encoder)
    timings = measurements.timings(candidates, {"small": small, "large": large})
    small_tokens, large_tokens = _tokens(small), _tokens(large)
    costs = [fit_cost(name, (small_tokens, timings[name]["small"]), (large_tokens, timings[name]["large"]))
             for name in candidates]
    plan = measurements.choose_plan(costs, default, small_tokens, large_tokens)
    return replace(plan, reason="; ".join([plan.reason, *filter(None, [note])]))


def _add_bfloat16(encoder: Encoder, spec: ModelSpec, weights_dir: Path, tokenizer: CheckpointTokenizer,
                  candidates: dict[Runtime, Backend], default: Runtime,
                  measurements: Measurements) -> tuple[float | None, str | None]:
    """Add torch bfloat16 to `candidates` where a bf16 matmul runs `BF16_MATMUL_GATE` times faster than float32
    here and its vectors stay within `measurements.bf16_min_cosine` of `default`'s on the probe texts; its
    min cosine, or why it was not added."""
    speedup = measurements.bf16_matmul_speedup()
    if speedup < BF16_MATMUL_GATE:
        return None, (f"bfloat16 not tried: a bf16 matmul runs at {speedup:.2f}x float32 on this CPU "
                      f"(at least {BF16_MATMUL_GATE}x needed, as AMX gives)")
    bf16 = padded_torch(spec, weights_dir, tokenizer, encoder.placement, torch.bfloat16)
    cosine = float(torch.nn.functional.cosine_similarity(
        probe_vectors(encoder, bf16), probe_vectors(encoder, candidates[default]), dim=1).min())
    if cosine < measurements.bf16_min_cosine:
        return None, (f"bfloat16 refused: min cosine to float32 on the probe texts {cosine:.6f}, "
                      f"below {measurements.bf16_min_cosine}")
    candidates[TORCH_BFLOAT16] = bf16  # the caller keeps what it uses
    return cosine, None


def _add_packed(spec: ModelSpec, tokenizer: CheckpointTokenizer, candidates: dict[Runtime, Backend],
                placement: Placement, measurements: Measurements, only: bool) -> tuple[dict[Runtime, float], list[str]]:
    """Add each padded torch candidate's packed twin (`packed_twin`: the same model, checked against it) to
    `candidates`, and with `only` (E5_PACKING=on) drop the padded ones; the least cosine of each one added, and
    why any was refused."""
    cosines: dict[Runtime, float] = {}
    refusals: list[str] = []
    for name in [name for name in candidates if name.framework is Framework.TORCH and not name.packed]:
        backend, note, cosine = packed_twin(spec, tokenizer, candidates[name], placement, measurements, required=only)
        if cosine is None:
            refusals.append(note)
            continue
        candidates[backend.name] = backend
        cosines[backend.name] = cosine
        if only:
            del candidates[name]
    return cosines, refusals


def _int8_speed(encoder: Encoder, int8: Backend, others: dict[Runtime, Backend], measurements: Measurements) -> str:
    """How int8 compares in speed with the fastest of `others` (what serves without E5_QUANTIZE) on the probe
    passes, in one sentence; a warning in the log where int8 is not faster on a batch."""
    small, large = probe_passes(encoder)
    timings = measurements.timings({ONNX_INT8: int8, **others}, {"small": small, "large": large})
    tokens = _tokens(large)

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


def _tokens(rows: list[list[int]]) -> int:
    return sum(map(len, rows))


def probe_passes(encoder: Encoder) -> tuple[list[list[int]], list[list[int]]]:
    """The load-time plan's two probe passes (rows of token ids): a short query alone, and the largest pass
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
    return rows[:1], batch


def probe_vectors(encoder: Encoder, backend: Backend | None = None) -> torch.Tensor:
    """Pooled vectors of `PROBE_TEXTS` from `backend` (default: the encoder's own), on the CPU, for the load-time
    checks."""
    with torch.inference_mode():
        return (backend or encoder.backend).embed(encoder.text_tokenizer.encode(PROBE_TEXTS)).cpu()
