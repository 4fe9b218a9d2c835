"""What runs one forward pass: rows of token ids in, one pooled float32 vector a row out (`Backend`).

As text-embeddings-inference's `Backend` trait, a backend runs exactly the pass it is given; the encoder
(`e5.encoder`) keeps what is common to all of them: cutting passes, halving a pass the device has no memory
for, and recomputing in float32 the rows that overflow float16 or bfloat16. The loader (`e5.loader`) picks
the backends and reports why. Three implementations:

- `PaddedBackend` over a torch model (`e5.runtimes.TorchBackbone`): rows right-padded to the longest;
- `PaddedBackend` over ONNX Runtime's fused graph (`e5.onnx_runtime.OnnxBackbone`), padded alike;
- `e5.packed.PackedBackend`: the BERT and XLM-RoBERTa models padding-free, one flat row of real tokens.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .pass_plan import Runtime
from .pooling import pool
from .registry import Pooling
from .runtimes import Backbone


class Backend(Protocol):
    """One forward pass: `embed(rows)` gives a [rows, hidden] float32 tensor on the backend's device, without
    waiting for it (no host synchronisation), pooled as the model card says and not normalised."""

    name: Runtime  # what runs the pass: 'torch float32', 'onnxruntime int8', 'torch bfloat16 packed'
    config: object  # the checkpoint's config (hidden_size, max_position_embeddings ...)
    model: torch.nn.Module | None  # the torch model it runs, where there is one (copied for the float32 fallback)

    def embed(self, rows: list[list[int]]) -> torch.Tensor: ...


@dataclass(frozen=True)
class Padding:
    """Token rows as one right-padded batch on `device`: input ids (`pad_id` past each row's end) and mask."""

    pad_id: int
    device: torch.device

    def __call__(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        # Right padding keeps every text at the positions it has when embedded alone. Built in one go: the
        # mask from the lengths, the ids dropped into its true cells in row order, no tensor per row.
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        mask_array = np.arange(int(lengths.max())) < lengths[:, None]
        ids_array = np.full(mask_array.shape, self.pad_id, dtype=np.int64)
        ids_array[mask_array] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64,
                                            count=int(lengths.sum()))
        input_ids, mask = torch.from_numpy(ids_array), torch.from_numpy(mask_array.astype(np.int64))
        if self.device.type == "cuda":
            # Pinned host memory lets the copy run asynchronously with the previous batch.
            return (input_ids.pin_memory().to(self.device, non_blocking=True),
                    mask.pin_memory().to(self.device, non_blocking=True))
        return input_ids, mask


class PaddedBackend:
    """A `Backbone` (padded ids and mask in, hidden states out) run on right-padded rows and pooled."""

    def __init__(self, backbone: Backbone, padding: Padding, pooling: Pooling):
        self.backbone = backbone
        self.padding = padding
        self.pooling = pooling
        self.name: Runtime = backbone.name
        self.config = backbone.config
        self.model = getattr(backbone, "model", None)
        if not isinstance(self.model, torch.nn.Module):
            self.model = None

    def embed(self, rows: list[list[int]]) -> torch.Tensor:
        input_ids, mask = self.padding(rows)
        return pool(self.backbone(input_ids, mask), mask, self.pooling)
