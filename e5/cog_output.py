"""Arrays that reach Cog's JSON encoder without a walk over every number.

coglet 0.23 turns a prediction's output into JSON in three steps (Cog's crates/coglet-python/src/output.rs):
`make_encodeable` visits every element of a list in Python, a dozen attribute and isinstance checks each,
but calls `tolist()` on a numpy array and keeps what it returns without looking inside; `encode_files`
then visits every element of every exact `list` (two ABC isinstance checks each) and passes a tuple
through whole; `json.dumps` writes lists and tuples alike as JSON arrays. A `JsonArray`, whose `tolist()`
gives tuples, so crosses both walks in C and comes out as the same JSON numbers.

Measured with a no-op predictor under coglet, 32 clients, one vector per response (bench/bench.py
--sections floor; req/s): 384 floats as a list 109, as a numpy array 326, as a JsonArray 503-680;
1,024 floats 45 / 159 / 521-546; 4,096 floats 12 / 45 / 209-215. Should a later coglet walk tuples too,
the JSON stays the same; only the speed goes.
"""

from __future__ import annotations

import numpy as np


class JsonArray(np.ndarray):
    """A numpy array whose `tolist()` gives (nested) tuples instead of lists: the same JSON, no per-element walk."""

    def tolist(self):  # noqa: D102 - the numbers numpy gives, as tuples
        values = np.ndarray.tolist(self)
        if self.ndim == 1:
            return tuple(values)
        if self.ndim == 2:
            return tuple(map(tuple, values))
        return values


def for_cog(value):
    """`value` ready for coglet: a numpy array as a `JsonArray` view (no copy); anything else as it is."""
    if isinstance(value, np.ndarray) and not isinstance(value, JsonArray):
        return value.view(JsonArray)
    return value
