"""Arrays that reach Cog's JSON encoder without a walk over every number, as the shortest JSON numbers that
read back as the same float32 values.

coglet 0.23 turns a prediction's output into JSON in three steps (Cog's crates/coglet-python/src/output.rs):
`make_encodeable` visits every element of a list in Python, a dozen attribute and isinstance checks each,
but calls `tolist()` on a numpy array and keeps what it returns without looking inside; `encode_files`
then visits every element of every exact `list` (two ABC isinstance checks each) and passes a tuple
through whole; `json.dumps` writes lists and tuples alike as JSON arrays. A `JsonArray`, whose `tolist()`
gives tuples, so crosses both walks in C and comes out as JSON numbers.

Measured with a no-op predictor under coglet, 32 clients, one vector per response (bench/bench.py
--sections floor; req/s): 384 floats as a list 109, as a numpy array 326, as a JsonArray 503-680;
1,024 floats 45 / 159 / 521-546; 4,096 floats 12 / 45 / 209-215. Should a later coglet walk tuples too,
the JSON stays the same; only the speed goes.

`json.dumps` writes a float32 value widened to float64 with the 17 digits float64 needs (0.0320999994874);
`shortest_float32_values` gives, for each value, the float64 nearest its shortest decimal that still reads
back as the same float32 (0.0321), as text-embeddings-inference writes float32: a third of the characters
to write, send and parse, and the same vector for any client that reads float32.
"""

from __future__ import annotations

import numpy as np

# Significant digits that always name a float32 exactly (FLT_DECIMAL_DIG); the search stops there.
FLOAT32_DIGITS = 9
# The magnitudes that are shortened: 9 significant digits then need at most 10**21 as a scale.
SHORTENED_RANGE = (1e-13, 1e14)


def _rounded(wide: np.ndarray, magnitude: np.ndarray, digits: int) -> np.ndarray:
    """The float64 nearest each value rounded to `digits` significant digits (the scale, a power of ten, is
    exact in float64 within `SHORTENED_RANGE`)."""
    shift = digits - 1 - magnitude
    scale = 10.0 ** np.abs(shift)
    return np.where(shift >= 0, np.round(wide * scale) / scale, np.round(wide / scale) * scale)


def shortest_float32_values(values: np.ndarray) -> np.ndarray:
    """float64 values whose shortest decimal form is each float32 value's shortest round-trip form.

    Each value keeps the rounding to the fewest significant digits (1 to 9) that reads back as the same
    float32. A rounding that holds at d digits holds at d + 1 (the nearer decimal stays inside the float32's
    interval), so every value is tried at 6 digits first, then downwards from 1 where 6 held and upwards
    where it did not: about three passes over the values rather than nine. Values outside `SHORTENED_RANGE`
    stay as they are. Faithful by construction: float32(result) == values, element for element.
    """
    exact = np.asarray(values, dtype=np.float32)
    wide = exact.astype(np.float64)
    out = wide.copy()
    flat_exact, flat_wide, flat_out = exact.reshape(-1), wide.reshape(-1), out.reshape(-1)
    candidates = np.flatnonzero((np.abs(flat_wide) >= SHORTENED_RANGE[0]) & (np.abs(flat_wide) < SHORTENED_RANGE[1]))
    magnitude = np.floor(np.log10(np.abs(flat_wide[candidates])))

    def keep(where: np.ndarray, digits: int) -> np.ndarray:
        """Store the `digits` rounding of the values at positions `where` of `candidates` where it reads back
        exactly; the positions where it did not."""
        at = candidates[where]
        rounded = _rounded(flat_wide[at], magnitude[where], digits)
        held = rounded.astype(np.float32) == flat_exact[at]
        flat_out[at[held]] = rounded[held]
        return where[~held]

    everything = np.arange(len(candidates))
    longer = keep(everything, 6)
    shorter = np.setdiff1d(everything, longer, assume_unique=True)
    for digits in range(1, 6):  # held at 6: the fewest digits that also hold
        shorter = keep(shorter, digits)
    for digits in range(7, FLOAT32_DIGITS + 1):
        longer = keep(longer, digits)
    return out


class JsonArray(np.ndarray):
    """A float32 numpy array whose `tolist()` gives (nested) tuples of the shortest floats that read back as
    its values, instead of lists: shorter JSON, no per-element walk in coglet."""

    def tolist(self):  # noqa: D102 - the numbers, as tuples
        plain = self.view(np.ndarray)
        values = (shortest_float32_values(plain) if plain.dtype == np.float32 else plain).tolist()
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
