"""Running the forward passes that turn token ids into pooled vectors (`e5.loader` builds the encoder).

The encoder runs the passes it is given in its `e5.backend.Backend`s and keeps what is common to every
backend: the pass policy, halving a pass the device has no memory for, and recomputing in float32 the rows
that overflow float16 or bfloat16.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .backend import Backend, PaddedBackend, Padding
from .batching import PassPolicy, default_token_budget
from .devices import Placement
from .finite import (
    REDUCED_PRECISIONS, Float32Fallback, finite_rows, float32_copy, float32_size, non_finite_cause, overflow_warning,
    precision_of,
)
from .memory import HeapTrimmer
from .pass_plan import PassPlan, Runtime
from .registry import ModelSpec
from .runtimes import TorchBackbone
from .settings import Settings
from .tokenizer import CheckpointTokenizer, TextTokenizer, Tokenized, TooLongError
from .weights import WeightsError, weights_problem

if TYPE_CHECKING:
    from .load_report import LoadReport

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
    """A loaded checkpoint: tokenizer, the backend(s) that run its passes, and the registry entry that says
    how to use them (`e5.loader.load_encoder` makes one)."""

    def __init__(self, spec: ModelSpec, tokenizer: CheckpointTokenizer, backend: Backend, placement: Placement,
                 token_budget: int | None = None, heap: HeapTrimmer | None = None, plan: PassPlan | None = None,
                 large_backend: Backend | None = None, report: LoadReport | None = None):
        self.spec = spec
        self.heap = heap  # gives the activations' freed heap back to the OS now and then (see e5.memory)
        self.placement = placement
        # What runs the passes (`e5.backend.Backend`): `backend` the small ones (all of them without a
        # `large_backend`), `large_backend` the passes above the split of a measured `plan`.
        self.backend: Backend = backend
        self.large_backend = large_backend
        self.plan = plan
        self.report = report  # what the loader (e5.loader) chose, measured and checked, and why
        self._fallback = Float32Fallback()  # float32 for rows that overflow float16: settled on first need
        config = backend.config
        self.dimensions = int(config.hidden_size)
        self.token_budget = default_token_budget(placement.device.type, token_budget)
        self.max_tokens = min(spec.max_tokens, position_capacity(spec, config))
        # What prepare and bulk tokenise with; the encoder itself only runs passes of token ids.
        self.text_tokenizer = TextTokenizer(tokenizer, spec, self.max_tokens)
        self._tokenizer_dir = tokenizer.source
        self._tokenizer = None
        # How the float32 fallback (a padded torch model) pads its rows.
        self._padding = Padding(tokenizer.padding_id, placement.device)
        if self.dimensions != spec.dimensions:
            log.warning("%s: weights have %d dimensions, the registry says %d",
                        spec.name, self.dimensions, spec.dimensions)

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
    def backends(self) -> list[Backend]:
        """The backends that serve passes: one, or two where a measured plan splits them."""
        return [b for b in (self.backend, self.large_backend) if b is not None]

    @property
    def runtimes(self) -> list[Runtime]:
        """The runtimes that serve passes: one, or two where a measured plan splits them."""
        return [b.name for b in self.backends]

    @property
    def runtime(self) -> str:
        """What runs the model, in words: 'torch float32', 'onnxruntime int8', or a measured plan's description."""
        return self.plan.describe() if self.plan is not None else str(self.backend.name)

    @property
    def precision(self) -> str:
        """The precision vectors are computed in: 'int8', 'float32', 'bfloat16' ... (a plan may name two)."""
        return " and ".join(dict.fromkeys(runtime.precision for runtime in self.runtimes))

    @property
    def pass_policy(self) -> PassPolicy:
        """How this encoder's passes are cut: its token budget, whether the backend of large passes is packed (its
        budget then counts real tokens) and, on the CPU, what one more pass costs in padded tokens (measured by
        the plan, else per runtime); on a GPU padded passes are cut by the budget only."""
        overhead = None
        if self.placement.device.type == "cpu":
            overhead = (self.plan.overhead_tokens if self.plan is not None else
                        self.backend.name.pass_overhead_tokens)
        packed = (self.large_backend or self.backend).name.packed
        return PassPolicy(self.token_budget, overhead_tokens=overhead, packed=packed)

    def backend_for(self, rows: int, width: int) -> Backend:
        """The backend that runs a pass of `rows` x `width` padded tokens."""
        if self.large_backend is not None and self.plan.runtime_for(rows * width) == self.plan.large:
            return self.large_backend
        return self.backend

    def embed_ids(self, ids: list[list[int]], token_budget: int | None = None) -> torch.Tensor:
        """Pooled float32 vectors (not normalised) for token id lists, in the given order, on the CPU, in the
        passes the encoder's `pass_policy` cuts (with `token_budget` in place of its budget, if given): the one
        place passes are cut, for the batching engine's turns and for direct callers alike."""
        return self.issue(ids, token_budget).result()

    def issue(self, ids: list[list[int]], token_budget: int | None = None) -> "IssuedPasses":
        """`embed_ids` in two halves: the passes issued now, their vectors by `result()`. On a GPU the passes
        run while the caller prepares the next ones; on the CPU they have run by the time this returns."""
        policy = self.pass_policy
        if token_budget is not None:
            policy = replace(policy, token_budget=token_budget)
        return self.issue_passes(ids, policy.passes([len(row) for row in ids]))

    @property
    def asynchronous(self) -> bool:
        """Whether issued passes run while the host goes on (a GPU), so that issuing the next before collecting
        the last keeps the device busy; on the CPU a pass has run by the time it is issued."""
        return self.placement.device.type == "cuda"

    @torch.inference_mode()
    def issue_passes(self, ids: list[list[int]], passes: list[list[int]]) -> "IssuedPasses":
        """Issue exactly `passes` (lists of row indices of `ids`); a pass the device has no memory for is halved
        and retried. The vectors stay on the device until `result()`: one copy back, no sync per pass."""
        self.check_fits(ids)
        issued = IssuedPasses(self, ids)
        for batch in passes:
            for rows, vectors, backend in self._forward_splitting(batch, ids):
                issued.order.extend(rows)
                issued.pooled.append(vectors)
                issued.finite.append(finite_rows(vectors))  # on the device, like the vectors: no sync per pass
                issued.runs.append((len(rows), backend))
            if self.heap is not None:
                self.heap.trim_if_grown()  # rising shapes grow the heap a pass at a time (see e5.memory)
        issued.copy_back()
        return issued

    def check_fits(self, ids: list[list[int]]) -> None:
        """`TooLongError` unless every row fits the model's position table: no out-of-range index reaches a device."""
        longest = max(map(len, ids), default=0)
        if longest > self.max_tokens:
            raise TooLongError(f"a row of {longest} tokens, more than the {self.max_tokens} that {self.spec.name} "
                               "accepts, reached the model; it was refused before the forward pass")

    def _forward_splitting(self, batch: list[int], ids: list[list[int]], backend: Backend | None = None,
                           ) -> list[tuple[list[int], torch.Tensor, Backend]]:
        """Pool one batch in `backend` (by default the one `backend_for` its shape picks), with the backend that
        computed each piece; when the device runs out of memory, halve the batch and retry each half."""
        rows = [ids[i] for i in batch]
        runtime = self.backend_for(len(rows), max(map(len, rows))) if backend is None else backend
        try:
            return [(batch, runtime.embed(rows), runtime)]
        except Exception as exc:
            if not is_out_of_memory(exc) or len(batch) == 1:
                raise
        if self.placement.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(batch) // 2
        log.warning("out of memory on a batch of %d texts; retrying as %d + %d", len(batch), half, len(batch) - half)
        return (self._forward_splitting(batch[:half], ids, backend)
                + self._forward_splitting(batch[half:], ids, backend))

    def _recompute_non_finite(self, ids: list[list[int]], vectors: torch.Tensor, order: list[int],
                              finite: torch.Tensor, runs: list[tuple[int, Backend]]) -> None:
        """Recompute in float32, in place, the rows of `vectors` (in pass `order`; `runs` says what computed
        them) that `finite` marks and a float16 or bfloat16 runtime computed, and log what became of them."""
        reduced: list[int] = []  # positions in `vectors` of rows to recompute
        reduced_names: dict[str, None] = {}
        others: dict[str, int] = {}  # rows not finite at a precision that is not recomputed (float32, int8)
        start = 0
        for count, backend in runs:
            bad = torch.nonzero(~finite[start:start + count]).flatten().tolist()
            if bad and (precision := precision_of(backend)) in REDUCED_PRECISIONS:
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
        if fallback.backend is not None:
            recomputed = self._pooled_in(fallback.backend, [order[p] for p in reduced], ids)
            vectors[torch.tensor(reduced)] = recomputed
            still = int((~finite_rows(recomputed)).sum())
        # One line per call (an engine turn): the count says how many rows ran twice.
        log.warning("%s", overflow_warning(len(reduced), " and ".join(reduced_names), fallback, still))

    def _pooled_in(self, backend: Backend, rows: list[int], ids: list[list[int]]) -> torch.Tensor:
        """Pooled vectors of `ids[row]` for each of `rows`, in that order, on the CPU, computed in `backend` in
        the passes this encoder's policy cuts them into (padded: the fallback pads)."""
        out = torch.empty((len(rows), self.dimensions), dtype=torch.float32)
        position = {row: i for i, row in enumerate(rows)}
        for batch in replace(self.pass_policy, packed=False).passes([len(ids[row]) for row in rows]):
            for pieces, vectors, _ in self._forward_splitting([rows[i] for i in batch], ids, backend):
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
            served = self.backends
            float32 = next((b for b in served if precision_of(b) == "float32"), None)
            source = next((b for b in served if precision_of(b) in REDUCED_PRECISIONS and b.model is not None), None)
            if float32 is not None:
                fallback.backend = float32
            elif source is None:
                fallback.refusal = "there is no torch model to copy"
            else:
                try:
                    fallback.backend = PaddedBackend(TorchBackbone(float32_copy(source.model)), self._padding,
                                                     self.spec.pooling)
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
        return non_finite_cause([precision_of(b) for b in self.backends], self._fallback)

    def embed(self, texts: list[str], truncate: bool = True) -> tuple[torch.Tensor, Tokenized]:
        """Texts already prompted ('passage: ...') as float32 vectors, not normalised, and their tokenisation: the
        model alone, in process, as the library benchmark times it; requests go through `EmbeddingService`."""
        tokens = self.text_tokenizer.tokenize(texts, truncate)
        return self.embed_ids(tokens.ids), tokens


class IssuedPasses:
    """Passes an encoder has issued for `ids`, their vectors copied back in one copy queued behind them
    (`copy_back`). `result()` waits for that copy alone, not for passes issued after it (the host waits for
    the device there), recomputes in float32 the rows a float16 or bfloat16 pass gave that are not finite
    (`e5.finite`; a row still not finite is returned as it is, for the service to fail the request it belongs
    to, and no other), and puts the rows in the order of `ids`."""

    def __init__(self, encoder: Encoder, ids: list[list[int]]):
        self.encoder = encoder
        self.ids = ids
        self.order: list[int] = []
        self.pooled: list[torch.Tensor] = []
        self.finite: list[torch.Tensor] = []
        self.runs: list[tuple[int, Backend]] = []  # how many rows each piece holds, and what computed them
        self._vectors: torch.Tensor | None = None
        self._finite: torch.Tensor | None = None
        self._copied = None  # a CUDA event, recorded once the copy back is queued

    def copy_back(self) -> None:
        """Queue the one copy of the vectors and their finite flags to the host, right behind the passes."""
        if not self.pooled:
            return
        vectors = torch.cat(self.pooled) if len(self.pooled) > 1 else self.pooled[0]
        finite = torch.cat(self.finite) if len(self.finite) > 1 else self.finite[0]
        if vectors.device.type == "cuda":  # into pinned memory, asynchronously; the event marks its end
            self._vectors, self._finite = vectors.to("cpu", non_blocking=True), finite.to("cpu", non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()
        else:
            self._vectors, self._finite = vectors, finite

    @torch.inference_mode()
    def result(self) -> torch.Tensor:
        encoder = self.encoder
        if not self.ids:
            return torch.empty((0, encoder.dimensions), dtype=torch.float32)
        if self._copied is not None:
            self._copied.synchronize()
        vectors, finite_mask = self._vectors, self._finite
        if not bool(finite_mask.all()):
            encoder._recompute_non_finite(self.ids, vectors, self.order, finite_mask, self.runs)
        if self.order != list(range(len(self.ids))):
            ordered = torch.empty_like(vectors)
            ordered[torch.tensor(self.order)] = vectors
            vectors = ordered
        if encoder.heap is not None:
            encoder.heap.trim_if_due()
        return vectors
