"""JsonArray: short JSON numbers that read back as the same float32 values, through coglet's own output path,
without the walk."""

import dataclasses
import json
import re

import numpy as np

from e5.cog_output import FEWEST_DIGITS, SHORT_FLOATS_FROM, JsonArray, for_cog, short_float32_values
from predict import Output

# float32 values whose decimal forms are long or odd (tiny, subnormal, the largest, signed zero).
AWKWARD = np.array([0.1, -0.333333343267, 1e-38, 3.4028234663852886e38, -0.0, 1.17549435e-38, 1e-45, 7.0,
                    123456.79, -2.5e-7, 0.0320211309], dtype="<f4")


def _read_back(array) -> np.ndarray:
    return np.asarray(json.loads(json.dumps(for_cog(array).tolist())), dtype="<f4")


def _significant_digits(text: str) -> int:
    mantissa = re.sub(r"e.*", "", text.lstrip("-")).replace(".", "").lstrip("0").rstrip("0")
    return max(len(mantissa), 1)


def test_json_of_a_json_array_reads_back_as_the_same_float32_values_in_few_digits():
    matrix = np.random.default_rng(0).standard_normal((64, 384)).astype("<f4") / 20
    wide = np.random.default_rng(1).uniform(-1e6, 1e6, 4096).astype("<f4")
    for array in (AWKWARD, matrix, wide, np.tile(AWKWARD, SHORT_FLOATS_FROM // AWKWARD.size + 1)):
        assert np.array_equal(_read_back(array).view(np.uint32), array.view(np.uint32))  # bit for bit, -0.0 too
        # No more digits than the float32's shortest form (as numpy prints a float32), or than FEWEST_DIGITS.
        for value, kept in zip(array.reshape(-1), short_float32_values(array).reshape(-1)):
            if 1e-13 <= abs(value) < 1e14:
                assert _significant_digits(repr(float(kept))) <= max(FEWEST_DIGITS, _significant_digits(str(value)))
    assert json.dumps(short_float32_values(AWKWARD[[0, 1, 7, 10]]).tolist()) == "[0.1, -0.33333334, 7.0, 0.03202113]"
    assert len(json.dumps(for_cog(matrix).tolist())) < 0.7 * len(json.dumps(matrix.tolist()))
    assert for_cog(matrix).tolist() == tuple(map(tuple, short_float32_values(matrix).tolist()))
    # A small array is written widened, in one call: the same float32 values, as json.dumps writes them.
    assert for_cog(matrix[:2]).tolist() == tuple(map(tuple, matrix[:2].tolist()))


def test_for_cog_wraps_arrays_without_copying_and_leaves_the_rest():
    view = for_cog(AWKWARD)
    assert isinstance(view, JsonArray) and np.shares_memory(view, AWKWARD)
    assert for_cog(view) is view
    for value in ("AACAPw==", None, 3, 0.5, ["a"]):
        assert for_cog(value) is value


def test_the_output_hands_coglet_its_fields_as_they_are_without_copying_the_vectors():
    # coglet takes an output's model_dump() where it has one; dataclasses.asdict would deep-copy every array.
    out = Output(model="m", dimensions=11, token_count=3, truncated=[], query_embedding=for_cog(AWKWARD),
                 embeddings=for_cog(np.stack([AWKWARD, AWKWARD])), scores=for_cog(AWKWARD[:2]))
    fields = out.model_dump()
    assert list(fields) == [field.name for field in dataclasses.fields(Output)]
    assert all(fields[name] is getattr(out, name) for name in ("query_embedding", "embeddings", "scores"))
    assert json.loads(json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in fields.items()})) \
        == json.loads(json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v
                                  for k, v in dataclasses.asdict(out).items()}))
