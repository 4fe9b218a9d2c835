"""How vectors are written into a response: float32 arrays (JSON numbers), base64 text, or one .npy file.

`base64` is what OpenAI and text-embeddings-inference send for `encoding_format: "base64"`: the vector's
little-endian float32 bytes, standard alphabet with padding; it and `npy` carry the float32 values
themselves. `ubinary` is the vector's sign bits packed eight to a byte (as sentence-transformers' and vLLM's
binary embeddings, what Qdrant, Milvus and Vespa index for Hamming distance), base64 too: 32 times smaller.
"""

from __future__ import annotations

import base64
import io
from enum import Enum

import numpy as np

# Little-endian float32 whatever the host's byte order, so clients decode with `np.frombuffer(b, "<f4")`.
FLOAT32_LE = np.dtype("<f4")


class EncodingFormat(str, Enum):
    """The `encoding_format` a request asks for."""

    FLOAT = "float"
    BASE64 = "base64"
    UBINARY = "ubinary"
    NPY = "npy"

    @property
    def as_text(self) -> bool:
        """Vectors go out as base64 strings (in the response's `*_base64` fields), not numbers."""
        return self in (EncodingFormat.BASE64, EncodingFormat.UBINARY)


def as_float32(vectors) -> np.ndarray:
    """`vectors` (a CPU tensor, an array or nested lists) as a little-endian float32 array."""
    return np.asarray(vectors, dtype=FLOAT32_LE)


def matrix_to_npy(matrix) -> bytes:
    """A [rows, dimensions] matrix as the bytes of a float32 .npy file (rows in order, no pickle)."""
    matrix = as_float32(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"an .npy of vectors needs a [rows, dimensions] matrix, not shape {list(matrix.shape)}")
    buffer = io.BytesIO()
    np.save(buffer, matrix, allow_pickle=False)
    return buffer.getvalue()


def pack_sign_bits(vectors) -> np.ndarray:
    """[rows, dimensions] vectors as [rows, dimensions / 8] uint8: bit set where the value is above zero, first
    dimension in the highest bit; sentence-transformers' `quantize_embeddings(..., precision="ubinary")`.

    The sign does not change with normalising, so raw and unit vectors pack alike.
    """
    return np.packbits(np.asarray(vectors) > 0, axis=-1)


def vectors_to_text(matrix, encoding: EncodingFormat) -> list[str]:
    """Each row as base64 text: of its little-endian float32 bytes (`base64`) or of its packed sign bits (`ubinary`)."""
    if encoding is EncodingFormat.UBINARY:
        rows = pack_sign_bits(matrix)
    elif encoding is EncodingFormat.BASE64:
        rows = as_float32(matrix)
    else:
        raise ValueError(f"encoding_format {encoding.value} sends vectors as numbers, not text")
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
