"""JsonArray: the same JSON as a list of floats, through coglet's own output path, without the walk."""

import dataclasses
import json

import numpy as np

from e5.cog_output import JsonArray, for_cog
from predict import Output

# float32 values whose decimal forms are long or odd, so a changed value would show in the JSON.
AWKWARD = np.array([0.1, -0.333333343267, 1e-38, 3.4028234663852886e38, -0.0, 1.17549435e-38], dtype="<f4")


def test_json_of_a_json_array_equals_the_json_of_its_list():
    matrix = np.random.default_rng(0).standard_normal((3, 5)).astype("<f4")
    for array in (AWKWARD, matrix):
        assert json.dumps(for_cog(array).tolist()) == json.dumps(array.tolist())
    assert for_cog(matrix).tolist() == tuple(map(tuple, matrix.tolist()))


def test_for_cog_wraps_arrays_without_copying_and_leaves_the_rest():
    view = for_cog(AWKWARD)
    assert isinstance(view, JsonArray) and np.shares_memory(view, AWKWARD)
    assert for_cog(view) is view
    for value in ("AACAPw==", None, 3, 0.5, ["a"]):
        assert for_cog(value) is value


def test_the_output_dataclass_keeps_the_array_type_through_asdict():
    # coglet turns an output dataclass into a dict with dataclasses.asdict, which deep-copies array fields.
    out = Output(model="m", dimensions=6, token_count=3, truncated=[], query_embedding=for_cog(AWKWARD),
                 embeddings=for_cog(np.stack([AWKWARD, AWKWARD])), scores=for_cog(AWKWARD[:2]))
    fields = dataclasses.asdict(out)
    assert all(isinstance(fields[name], JsonArray) for name in ("query_embedding", "embeddings", "scores"))

