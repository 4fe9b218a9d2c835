"""CUDA graphs for packed passes: each pass replays a recording made at load instead of issuing its kernels.

Issuing a pass from Python costs the host milliseconds whatever its rows (the modules' Python and about twenty
kernel launches a layer, with the GIL held), as long as a small pass takes on the GPU. A CUDA graph records
those launches once and replays them in one call. A recording has fixed shapes, so passes are recorded for a
ladder of buckets (`Bucket`: tokens, text slots, the longest text) and a pass replays the smallest bucket that
holds it (`bucket_for`); a pass larger than the largest runs as it always did.

A pass fills its bucket's buffers in place (`static_arrays`): its texts first; the tokens past their end
belong to no text of `cu_seqlens`, sit in a last, empty text of the attention grid and are pooled into it
(`e5.packed.PackedPass.padding`). A variable-length attention kernel does not write them, and whatever it
leaves there (NaN, say) stays there: no real token attends to them or is pooled with them, and every other
operation is per token. The text slots past the pass's texts are empty and pool to zeros never returned.

What records is injected (`Recorder`): a `CudaGraphRecorder` on a GPU; tests on the CPU pass one that runs
the same function again on the same buffers, which checks everything but the capture itself.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from .errors import ServiceError
from .packed import PackedBackend, PackedPass, TextLayout, mean_by_text
from .settings import CudaGraphs

log = logging.getLogger(__name__)

# The smallest bucket's tokens: below this a pass's launches, not its size, set its time on any GPU.
SMALLEST_BUCKET_TOKENS = 64
# A recorded pass's rows must agree with the same pass run as it always is (cosine per row).
GRAPH_MIN_COSINE = 0.9999


class GraphError(ServiceError):
    """E5_CUDA_GRAPHS=on where passes cannot be recorded: setup fails with the reason."""


@dataclass(frozen=True)
class Bucket:
    """The fixed shape of one recording: `tokens` in the flat row, `texts` slots, no text over `longest`."""

    tokens: int
    texts: int
    longest: int

    def holds(self, tokens: int, texts: int, longest: int) -> bool:
        return tokens <= self.tokens and texts <= self.texts and longest <= self.longest


def bucket_ladder(token_budget: int, max_rows: int, longest: int,
                  smallest: int = SMALLEST_BUCKET_TOKENS) -> tuple[Bucket, ...]:
    """Buckets doubling in tokens from `smallest` up to the pass budget (the last one the budget itself), each
    with as many text slots as a pass of its tokens can have (at most `max_rows`), texts up to `longest`."""
    if token_budget < 1 or max_rows < 1 or longest < 1:
        raise ValueError("a ladder needs a positive token budget, row count and text length")
    sizes = []
    tokens = min(smallest, token_budget)
    while tokens < token_budget:
        sizes.append(tokens)
        tokens *= 2
    sizes.append(token_budget)
    return tuple(Bucket(size, min(max_rows, size), min(longest, size)) for size in sizes)


def bucket_for(lengths: list[int], ladder: tuple[Bucket, ...]) -> Bucket | None:
    """The smallest bucket of `ladder` that holds a pass of texts of `lengths` tokens, or None (run it eager)."""
    tokens, texts, longest = sum(lengths), len(lengths), max(lengths, default=0)
    fitting = [bucket for bucket in ladder if bucket.holds(tokens, texts, longest)]
    return min(fitting, key=lambda bucket: (bucket.tokens, bucket.texts), default=None)


def static_arrays(rows: list[list[int]], bucket: Bucket, position_offset: int = 0) -> dict[str, np.ndarray]:
    """`rows` laid out in `bucket`'s fixed sizes, as `e5.packed.pack` lays them in their own (names are
    `PackedPass`'s fields): the texts in slots 0..len(rows)-1, empty slots after them, and one more, empty slot
    that the padding tokens (id 0, first position) are pooled into and attend in."""
    layout = TextLayout.of(rows)
    real, longest = int(layout.lengths.sum()), int(layout.lengths.max())
    if not bucket.holds(real, len(rows), longest):
        raise ValueError(f"a pass of {len(rows)} texts, {real} tokens, the longest {longest}, does not fit {bucket}")
    slot_lengths = np.zeros(bucket.texts + 1, dtype=np.int64)
    slot_lengths[:len(rows)] = layout.lengths
    segments = np.full(bucket.tokens, bucket.texts, dtype=np.int64)  # the last slot takes the padding tokens
    segments[:real] = layout.segments
    places = np.arange(bucket.tokens, dtype=np.int64) % bucket.longest  # padding: inside the empty slot
    places[:real] = layout.places
    ids = np.zeros(bucket.tokens, dtype=np.int64)
    ids[:real] = layout.ids
    cu_seqlens = np.concatenate([[0], np.cumsum(slot_lengths)]).astype(np.int32)
    padding = np.arange(bucket.tokens) >= real
    positions = np.where(padding, 0, places) + position_offset
    return {"ids": ids, "positions": positions, "segments": segments, "cu_seqlens": cu_seqlens,
            "lengths": slot_lengths, "grid": segments * bucket.longest + places, "padding": padding}


Replay = Callable[[], torch.Tensor]


class Recorder(Protocol):
    """Records `run` (a pass over fixed buffers) and gives what replays it, returning the same output tensor."""

    def __call__(self, run: Callable[[], torch.Tensor]) -> Replay: ...


class CudaGraphRecorder:
    """Records each `run` in a CUDA graph after two warm-up runs on a side stream (as torch.cuda.graphs asks);
    the graphs share one memory pool, so that the buckets, recorded largest first, take the largest's memory."""

    def __init__(self) -> None:
        self.pool = None
        self.graphs: list = []  # kept alive as long as their replays

    def __call__(self, run: Callable[[], torch.Tensor]) -> Replay:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = run()
        self.pool = self.pool or graph.pool()
        self.graphs.append(graph)

        def replay() -> torch.Tensor:
            graph.replay()
            return out

        return replay


class _Recording:
    """One bucket's buffers on the device and the replay that runs a pass over them."""

    def __init__(self, bucket: Bucket, backend: PackedBackend, recorder: Recorder):
        self.bucket = bucket
        self.device = backend.device
        self.position_offset = backend.runner.position_offset
        shapes = static_arrays([[0]], bucket, self.position_offset)
        tensors = {name: torch.from_numpy(array).to(self.device) for name, array in shapes.items()}
        self.tensors = tensors
        self.batch = PackedPass(tensors["ids"], tensors["positions"], tensors["segments"], tensors["cu_seqlens"],
                                tensors["lengths"], tensors["grid"], bucket.longest, tensors["padding"])
        runner = backend.runner
        self.replay = recorder(lambda: mean_by_text(runner(self.batch), self.batch))

    def embed(self, rows: list[list[int]]) -> torch.Tensor:
        for name, array in static_arrays(rows, self.bucket, self.position_offset).items():
            host = torch.from_numpy(array)
            if self.device.type == "cuda":  # pinned, so that the copy runs asynchronously with the last pass
                host = host.pin_memory()
            self.tensors[name].copy_(host, non_blocking=self.device.type == "cuda")
        # A copy of the rows asked, queued right behind the replay: the next replay of this bucket, or of another
        # whose recording reuses this one's memory in the shared pool, overwrites the recording's output.
        return self.replay()[:len(rows)].clone()


class GraphedBackend:
    """An `e5.backend.Backend` over a `PackedBackend`: a pass that fits a bucket of `ladder` replays that
    bucket's recording; a larger one runs packed as before. Recorded at construction, largest bucket first."""

    def __init__(self, packed: PackedBackend, ladder: tuple[Bucket, ...], recorder: Recorder):
        self.packed = packed
        self.name = packed.name
        self.config = packed.config
        self.model = packed.model
        self.device = packed.device
        self.ladder = ladder
        cuda = self.device.type == "cuda"
        before = torch.cuda.memory_reserved(self.device) if cuda else 0
        started = time.perf_counter()
        self.recordings = {bucket: _Recording(bucket, packed, recorder)
                           for bucket in sorted(ladder, key=lambda b: b.tokens, reverse=True)}
        if cuda:
            torch.cuda.synchronize(self.device)
        self.record_seconds = time.perf_counter() - started
        self.memory_bytes = (torch.cuda.memory_reserved(self.device) - before) if cuda else None

    @property
    def attention(self) -> str:
        return self.packed.attention

    def embed(self, rows: list[list[int]]) -> torch.Tensor:
        bucket = bucket_for([len(row) for row in rows], self.ladder)
        if bucket is None:
            return self.packed.embed(rows)
        return self.recordings[bucket].embed(rows)

    def describe(self) -> str:
        memory = "" if self.memory_bytes is None else f", {self.memory_bytes / 2**20:,.0f} MiB"
        sizes = [bucket.tokens for bucket in self.ladder]
        return (f"{len(self.ladder)} CUDA graphs ({min(sizes)}-{max(sizes)} tokens) recorded in "
                f"{self.record_seconds:.1f} s{memory}")


def choose_graphs(setting: CudaGraphs, device_type: str, packed: bool, attention: tuple[str, str]) -> tuple[bool, str]:
    """Whether packed passes are recorded, and why; `GraphError` where E5_CUDA_GRAPHS=on cannot be kept.
    `attention` is `e5.packed.attention_for`'s answer: a bucket's passes are recorded with FlashAttention's
    varlen kernel only, since attention padded per text would run over the bucket's whole grid of text slots
    by their longest, far more work than the launches it saves."""
    if setting is CudaGraphs.OFF:
        return False, "passes are not recorded (E5_CUDA_GRAPHS=off)"
    if device_type != "cuda":
        if setting is CudaGraphs.ON:
            raise GraphError(f"E5_CUDA_GRAPHS=on: CUDA graphs need a CUDA device, and this one is {device_type}; "
                             "unset E5_CUDA_GRAPHS")
        return False, "CUDA graphs are for CUDA devices"
    if setting is CudaGraphs.AUTO:
        return False, ("passes are not recorded until a GPU has confirmed CUDA graphs here (E5_CUDA_GRAPHS=on "
                       "records them)")
    if not packed:
        raise GraphError("E5_CUDA_GRAPHS=on: CUDA graphs record packed passes, and these are padded; set "
                         "E5_PACKING=on, or unset E5_CUDA_GRAPHS")
    if attention[0] != "varlen":
        raise GraphError(f"E5_CUDA_GRAPHS=on: CUDA graphs record passes with FlashAttention's varlen kernel, and "
                         f"here packed passes run {attention[1]}; unset E5_CUDA_GRAPHS")
    return True, "E5_CUDA_GRAPHS=on"


def graphed_twin(packed: PackedBackend, ladder: tuple[Bucket, ...], probe_rows: list[list[int]],
                 recorder: Recorder | None = None) -> tuple[PackedBackend | GraphedBackend, str]:
    """`packed` with its passes recorded for `ladder`, where every bucket's replay of `probe_rows` agrees with
    `packed` run as before (each row's cosine at least `GRAPH_MIN_COSINE`), else `packed` itself; with the
    sentence that says which and why."""
    try:
        with torch.inference_mode():
            graphed = GraphedBackend(packed, ladder, recorder or CudaGraphRecorder())
            cosines = [torch.nn.functional.cosine_similarity(recording.embed(rows).cpu(), packed.embed(rows).cpu(),
                                                             dim=1)
                       for bucket, recording in graphed.recordings.items()
                       for rows in [_fitting(probe_rows, bucket)]]
            least = float(torch.cat(cosines).min())  # NaN if any row is NaN (Python's min would drop it)
    except Exception as exc:  # a kernel that cannot be captured, no memory for the recordings ...
        refusal = f"{type(exc).__name__}: {exc}"
    else:
        if least >= GRAPH_MIN_COSINE:  # also false for NaN
            return graphed, (f"{graphed.describe()}; every bucket agrees with the unrecorded pass on the probe "
                             f"texts: min cosine {least:.6f}")
        refusal = f"a bucket's replay differs from the unrecorded pass (min cosine {least:.6f})"
    message = f"CUDA graphs refused, passes run unrecorded: {refusal}"
    log.warning("%s", message)
    return packed, message


def _fitting(rows: list[list[int]], bucket: Bucket) -> list[list[int]]:
    """As many of `rows` (cut to the bucket's longest) as the bucket holds, at least one."""
    taken: list[list[int]] = []
    tokens = 0
    for row in rows:
        row = row[:bucket.longest]
        if taken and (tokens + len(row) > bucket.tokens or len(taken) == bucket.texts):
            break
        taken.append(row[:bucket.tokens])
        tokens += len(taken[-1])
    return taken
