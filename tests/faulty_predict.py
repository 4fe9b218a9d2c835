"""The real predictor with faults injected into its model's forward pass, for the end-to-end fault tests.

A text holding a marker word triggers a fault in every forward pass that carries it, wherever it sits
in a shared batch:

- `oomalways`: the device runs out of memory at every batch size, even one text alone;
- `oomwide`: the device runs out of memory on any pass of more than one text (splitting recovers it);
- `slowpass`: the pass sleeps `E5_FAULT_SLOW_S` seconds (default 3), a long prediction to cancel or drain.

Everything else (Cog, prompts, limits, dynamic batching, splitting on out-of-memory) is production code.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from predict import Predictor  # noqa: E402

OUT_OF_MEMORY_MARKER = "oomalways"
WIDE_OUT_OF_MEMORY_MARKER = "oomwide"
SLOW_MARKER = "slowpass"
SLOW_PASS_LOG = "[fault] slow pass"


class _FaultyForward(torch.nn.Module):
    """Wraps a backend; decodes each row to find the markers, then behaves as the marker says."""

    def __init__(self, backend, tokenizer, slow_seconds: float):
        self.backend = backend
        self.name, self.config, self.model = backend.name, backend.config, backend.model
        self.tokenizer = tokenizer
        self.slow_seconds = slow_seconds

    def embed(self, ids: list[list[int]]) -> torch.Tensor:
        rows = [self.tokenizer.decode(row, skip_special_tokens=True).replace(" ", "") for row in ids]
        if any(SLOW_MARKER in row for row in rows):
            print(f"{SLOW_PASS_LOG} of {len(rows)} rows", flush=True)  # the tests count these in the server log
            time.sleep(self.slow_seconds)
        if any(OUT_OF_MEMORY_MARKER in row for row in rows) or (
                len(rows) > 1 and any(WIDE_OUT_OF_MEMORY_MARKER in row for row in rows)):
            raise torch.OutOfMemoryError(f"CUDA out of memory on {len(rows)} rows (injected)")
        return self.backend.embed(ids)


class FaultyPredictor(Predictor):
    def setup(self) -> None:
        super().setup()
        encoder = self.service.encoder
        encoder.backend = _FaultyForward(encoder.backend, encoder.tokenizer,
                                          float(os.environ.get("E5_FAULT_SLOW_S", "3")))
