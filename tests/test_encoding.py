"""Vector encodings: base64 of little-endian float32 and .npy bytes carry the float32 values exactly; ubinary
packs the sign bits as sentence-transformers does."""

import base64
import io
import struct

import numpy as np
import pytest
import torch

from e5.encoding import (
    EncodingFormat, as_float32, matrix_to_npy, pack_sign_bits, vectors_to_text,
)

# Values whose float32 bits are easy to check, and ones that no short decimal writes exactly.
AWKWARD = [0.0, -0.0, 1.0, -2.5, 1e-38, 3.4028234663852886e38, 0.1, -0.333333343267, 1.17549435e-38]


def test_base64_is_the_little_endian_float32_bytes_as_openai_sends_them():
    # struct "<f" is the reference for the byte layout; OpenAI's own client decodes with frombuffer("<f4").
    expected = base64.b64encode(struct.pack(f"<{len(AWKWARD)}f", *AWKWARD)).decode("ascii")
    assert vectors_to_text([AWKWARD], EncodingFormat.BASE64) == [expected]
    assert vectors_to_text([[1.0]], EncodingFormat.BASE64) == ["AACAPw=="]  # 0x3f800000, little-endian


def test_base64_decodes_bit_for_bit_to_the_float_output():
    vector = torch.randn(1024, generator=torch.Generator().manual_seed(0))
    floats = as_float32(vector)
    decoded = np.frombuffer(base64.b64decode(vectors_to_text(vector[None], EncodingFormat.BASE64)[0]), "<f4")
    assert decoded.tobytes() == vector.numpy().astype("<f4").tobytes()
    assert decoded.tolist() == floats.tolist() == vector.tolist()


def test_float_output_is_a_float32_array_with_torchs_values():
    matrix = torch.randn(3, 7, generator=torch.Generator().manual_seed(1))
    rows = as_float32(matrix)
    assert rows.dtype == np.dtype("<f4") and rows.shape == (3, 7)
    # The JSON numbers a writer makes of them are the ones torch's own tolist gives.
    assert rows.tolist() == matrix.tolist()
    assert all(type(x) is float for x in rows[0].tolist())


def test_npy_is_a_float32_matrix_in_row_order():
    matrix = torch.randn(5, 9, generator=torch.Generator().manual_seed(2))
    loaded = np.load(io.BytesIO(matrix_to_npy(matrix)), allow_pickle=False)
    assert loaded.dtype == np.dtype("<f4") and loaded.shape == (5, 9)
    assert loaded.tolist() == matrix.tolist()


def test_npy_refuses_anything_but_a_matrix():
    with pytest.raises(ValueError, match=r"needs a \[rows, dimensions\] matrix, not shape \[4\]"):
        matrix_to_npy([1.0, 2.0, 3.0, 4.0])


def test_text_formats_give_one_string_per_row():
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert vectors_to_text(matrix, EncodingFormat.BASE64) == [base64.b64encode(row.astype("<f4").tobytes()).decode()
                                                               for row in matrix]
    assert [base64.b64decode(t) for t in vectors_to_text(matrix, EncodingFormat.UBINARY)] == [b"\x60", b"\xe0"]
    assert EncodingFormat.BASE64.as_text and EncodingFormat.UBINARY.as_text
    assert not EncodingFormat.FLOAT.as_text and not EncodingFormat.NPY.as_text
    with pytest.raises(ValueError, match="as numbers"):
        vectors_to_text(matrix, EncodingFormat.FLOAT)


@pytest.mark.parametrize("dimensions", [384, 1024, 4096, 12])
def test_ubinary_is_sentence_transformers_bit_for_bit(dimensions):
    from sentence_transformers.util.quantization import quantize_embeddings

    vectors = np.random.default_rng(dimensions).standard_normal((9, dimensions)).astype(np.float32)
    vectors[0, :5] = 0.0  # zero is not above zero: a clear bit, as in sentence-transformers
    packed = pack_sign_bits(vectors)
    assert packed.dtype == np.uint8 and packed.shape == (9, (dimensions + 7) // 8)
    if dimensions % 8 == 0:  # every E5 width; sentence-transformers packs all rows as one stream of bits
        assert np.array_equal(packed, quantize_embeddings(vectors, precision="ubinary"))
    texts = vectors_to_text(vectors, EncodingFormat.UBINARY)
    assert [np.frombuffer(base64.b64decode(t), np.uint8).tolist() for t in texts] == packed.tolist()
    assert np.array_equal(np.unpackbits(packed, axis=1)[:, :dimensions], (vectors > 0).astype(np.uint8))


def test_as_float32_is_little_endian_on_any_host():
    big_endian = np.array([1.0, 2.0], dtype=">f4")
    assert as_float32(big_endian).dtype == np.dtype("<f4")
    assert as_float32(big_endian).tobytes() == struct.pack("<2f", 1.0, 2.0)
