"""A Cog predictor that does no work: the floor of what Cog's HTTP path costs per request.

The benchmark serves it next to the real predictor, so the latency this project adds can be
told apart from what coglet and the client add. Same input and a same-sized output (384 floats).
"""

from typing import Optional

from cog import BaseModel, BaseRunner

VECTOR = [0.125] * 384


class Output(BaseModel):
    embeddings: Optional[list[float]] = None


class Predictor(BaseRunner):
    async def run(self, texts: Optional[list[str]] = None) -> Output:
        return Output(embeddings=VECTOR)
