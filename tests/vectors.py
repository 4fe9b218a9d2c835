"""Vectors as a client reads them, for the tests: base64 and ubinary decoded, and row-wise cosines."""

from __future__ import annotations

import base64

import numpy as np


def decode_vector(text: str, encoding: str = "base64") -> np.ndarray:
    """One vector from its text: `base64`, little-endian float32 bytes; `ubinary`, its sign bits, unpacked."""
    raw = np.frombuffer(base64.b64decode(text), dtype="<f4" if encoding == "base64" else np.uint8)
    return raw if encoding == "base64" else np.unpackbits(raw).astype(np.float32)


def cosines(a, b) -> np.ndarray:
    """The cosine of each row of `a` with the same row of `b`, in float64."""
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
