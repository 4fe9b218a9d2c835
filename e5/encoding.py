"""How vectors are written into a response: float32 arrays (JSON numbers), base64 of float32 bytes, or one .npy file.

`base64` is what OpenAI and text-embeddings-inference send for `encoding_format: "base64"`: the vector's
little-endian float32 bytes, standard alphabet with padding. All three carry the same float32 values.
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
    NPY = "npy"


def as_float32(vectors) -> np.ndarray:
    """`vectors` (a CPU tensor, an array or nested lists) as a little-endian float32 array."""
    return np.asarray(vectors, dtype=FLOAT32_LE)


def vector_to_base64(vector) -> str:
    """One vector as the base64 of its little-endian float32 bytes."""
    return base64.b64encode(as_float32(vector).tobytes()).decode("ascii")


def matrix_to_npy(matrix) -> bytes:
    """A [rows, dimensions] matrix as the bytes of a float32 .npy file (rows in order, no pickle)."""
    matrix = as_float32(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"an .npy of vectors needs a [rows, dimensions] matrix, not shape {list(matrix.shape)}")
    buffer = io.BytesIO()
    np.save(buffer, matrix, allow_pickle=False)
    return buffer.getvalue()


def encode_vector(vector, encoding: EncodingFormat) -> np.ndarray | str:
    """One vector for a JSON field: a float32 array, or base64 text; `npy` leaves single vectors as numbers.

    Arrays, not lists of Python floats: a JSON writer turns the whole array into numbers at once (float32 ->
    Python float is exact, so JSON carries the float32 values themselves), where a list costs a Python object
    per number on the way (Cog's server inspects each one: see `e5.cog_output`).
    """
    vector = as_float32(vector)
    if encoding is EncodingFormat.BASE64:
        return vector_to_base64(vector)
    return vector


def encode_rows(matrix, encoding: EncodingFormat) -> np.ndarray | list[str] | None:
    """The rows of a batch for the JSON `embeddings` field: a [rows, dimensions] float32 array, base64 texts,
    or None for `npy`, whose rows go in a file."""
    matrix = as_float32(matrix)
    if encoding is EncodingFormat.NPY:
        return None
    if encoding is EncodingFormat.BASE64:
        return [vector_to_base64(row) for row in matrix]
    return matrix
