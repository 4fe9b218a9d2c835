"""Vector encodings: base64 of little-endian float32 and .npy bytes carry the float32 values exactly."""

import base64
import io
import struct

import numpy as np
import pytest
import torch

from e5.encoding import EncodingFormat, as_float32, encode_rows, encode_vector, matrix_to_npy, vector_to_base64

# Values whose float32 bits are easy to check, and ones that no short decimal writes exactly.
AWKWARD = [0.0, -0.0, 1.0, -2.5, 1e-38, 3.4028234663852886e38, 0.1, -0.333333343267, 1.17549435e-38]


def test_base64_is_the_little_endian_float32_bytes_as_openai_sends_them():
    # struct "<f" is the reference for the byte layout; OpenAI's own client decodes with frombuffer("<f4").
    expected = base64.b64encode(struct.pack(f"<{len(AWKWARD)}f", *AWKWARD)).decode("ascii")
    assert vector_to_base64(AWKWARD) == expected
    assert vector_to_base64([1.0]) == "AACAPw=="  # 0x3f800000, little-endian


def test_base64_decodes_bit_for_bit_to_the_float_output():
    vector = torch.randn(1024, generator=torch.Generator().manual_seed(0))
    floats = encode_vector(vector, EncodingFormat.FLOAT)
    decoded = np.frombuffer(base64.b64decode(encode_vector(vector, EncodingFormat.BASE64)), "<f4")
    assert decoded.tobytes() == vector.numpy().astype("<f4").tobytes()
    assert decoded.tolist() == floats.tolist() == vector.tolist()


def test_float_output_is_a_float32_array_with_torchs_values():
    matrix = torch.randn(3, 7, generator=torch.Generator().manual_seed(1))
    rows, vector = encode_rows(matrix, EncodingFormat.FLOAT), encode_vector(matrix[0], EncodingFormat.FLOAT)
    assert rows.dtype == vector.dtype == np.dtype("<f4") and rows.shape == (3, 7) and vector.shape == (7,)
    # The JSON numbers a writer makes of them are the ones torch's own tolist gives.
    assert rows.tolist() == matrix.tolist() and vector.tolist() == matrix[0].tolist()
    assert all(type(x) is float for x in vector.tolist())


def test_npy_is_a_float32_matrix_in_row_order():
    matrix = torch.randn(5, 9, generator=torch.Generator().manual_seed(2))
    loaded = np.load(io.BytesIO(matrix_to_npy(matrix)), allow_pickle=False)
    assert loaded.dtype == np.dtype("<f4") and loaded.shape == (5, 9)
    assert loaded.tolist() == matrix.tolist()


def test_npy_refuses_anything_but_a_matrix():
    with pytest.raises(ValueError, match=r"needs a \[rows, dimensions\] matrix, not shape \[4\]"):
        matrix_to_npy([1.0, 2.0, 3.0, 4.0])


def test_each_format_shapes_the_batch_and_the_single_vectors():
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert encode_rows(matrix, EncodingFormat.FLOAT).tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert encode_rows(matrix, EncodingFormat.BASE64) == [vector_to_base64(matrix[0]), vector_to_base64(matrix[1])]
    assert encode_rows(matrix, EncodingFormat.NPY) is None  # the rows go in the .npy file instead
    assert encode_vector(matrix[1], EncodingFormat.NPY).tolist() == [3.0, 4.0, 5.0]  # single vectors stay numbers


def test_as_float32_is_little_endian_on_any_host():
    big_endian = np.array([1.0, 2.0], dtype=">f4")
    assert as_float32(big_endian).dtype == np.dtype("<f4")
    assert as_float32(big_endian).tobytes() == struct.pack("<2f", 1.0, 2.0)
