"""A Cog predictor that does no work: the floor of what Cog's HTTP path costs per request.

The benchmark serves it next to the real predictor, so the latency this project adds can be told apart
from what coglet and the client add. It answers every request with one vector of NOOP_DIMS floats (384 by
default) in `embeddings`, as the real predictor answers one text, handed to coglet as NOOP_OUTPUT says:
`list` (Python floats, which coglet inspects one by one), `numpy` (a float32 array) or `json-array` (the
float32 array as this project hands it over, e5.cog_output.JsonArray).
"""

import os
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
from cog import BaseModel, BaseRunner, concurrent

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from e5.cog_output import for_cog  # noqa: E402

DIMS = int(os.environ.get("NOOP_DIMS", "384"))
OUTPUT = os.environ.get("NOOP_OUTPUT", "list")
MATRIX = np.linspace(-1, 1, DIMS, dtype=np.float32)[None]  # [1, DIMS], values with long decimal forms


def _embeddings():
    if OUTPUT == "list":
        return MATRIX.tolist()
    if OUTPUT == "numpy":
        return MATRIX.copy()
    return for_cog(MATRIX.copy())


class Output(BaseModel):
    embeddings: Optional[Any] = None


class Predictor(BaseRunner):
    @concurrent(max=64)
    async def run(self, texts: Optional[list[str]] = None) -> Output:
        return Output(embeddings=_embeddings())
