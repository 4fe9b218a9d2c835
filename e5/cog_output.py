"""Arrays that reach Cog's JSON encoder without a walk over every number, as short JSON numbers that read back
as the same float32 values.

coglet 0.23 turns a prediction's output into JSON in three steps (Cog's crates/coglet-python/src/output.rs):
`make_encodeable` visits every element of a list in Python, a dozen attribute and isinstance checks each,
but calls `tolist()` on a numpy array and keeps what it returns without looking inside; `encode_files`
then visits every element of every exact `list` (two ABC isinstance checks each) and passes a tuple
through whole; `json.dumps` writes lists and tuples alike as JSON arrays. A `JsonArray`, whose `tolist()`
gives tuples, so crosses both walks in C and comes out as JSON numbers.

Should a later coglet walk tuples too, the JSON stays the same; only the speed goes (what it saves:
docs/performance.md, "Cog's floor by vector width").

`json.dumps` writes a float32 value widened to float64 with the 17 digits float64 needs (0.03202113136649132);
`short_float32_values` gives, for each value, the float64 nearest a decimal of 7 to 9 digits that reads back
as the same float32 (0.03202113), as text-embeddings-inference writes float32 (its shortest form, at most 2%
shorter again): 60% of the characters to write, send and parse, and the same vector for a client that
reads float32.
"""

from __future__ import annotations

import numpy as np

# Significant digits that always name a float32 exactly (FLT_DECIMAL_DIG), and the fewest tried.
FLOAT32_DIGITS, FEWEST_DIGITS = 9, 7
# The magnitudes that are shortened: 9 significant digits then need at most 10**21 as a scale.
SHORTENED_RANGE = (1e-13, 1e14)
# Arrays of fewer values go out as float64 widened, in one C call: each numpy step of `short_float32_values`
# lets go of the GIL, and on a GPU host, where the batching thread holds it to launch kernels, the event loop
# then waits for it again at every step (on an H200 serving e5-large, 41% of the worker's samples sat in it
# for single 1,024-float vectors). From 8,192 values (8 vectors of 1,024) the shorter JSON pays: 64 x 1,024
# floats take 27 ms to shorten and write against 37 ms to write widened, in 60% of the characters.
SHORT_FLOATS_FROM = 8192
# 10**0 ... 10**22, each exact in float64: a value scaled by one and rounded is the nearest decimal's float64.
_EXACT_POWERS_OF_TEN = 10.0 ** np.arange(23)


def short_float32_values(values: np.ndarray) -> np.ndarray:
    """float64 values that print with at most 9 significant digits, 7 or 8 where they suffice, and read back as
    each float32 value exactly.

    Each value is rounded to 9 significant digits (which always name a float32 exactly), then 8, then 7, and
    keeps the fewest that still read back as the same float32. Rounding further (a float32 holds 7.2 digits)
    would find a shorter form for few values, about 2% of the characters on embeddings, at twice the cost.
    Values outside `SHORTENED_RANGE` stay as they are. Faithful by construction: float32(result) == values,
    element for element.
    """
    exact = np.asarray(values, dtype=np.float32)
    wide = exact.astype(np.float64)
    size = np.abs(wide)
    held = (size >= SHORTENED_RANGE[0]) & (size < SHORTENED_RANGE[1])
    magnitude = np.floor(np.log10(np.where(held, size, 1.0))).astype(np.int64)
    out = wide
    for digits in range(FLOAT32_DIGITS, FEWEST_DIGITS - 1, -1):
        shift = digits - 1 - magnitude  # within SHORTENED_RANGE, -13 <= shift <= 21
        scale = _EXACT_POWERS_OF_TEN[np.abs(shift)]
        rounded = np.where(shift >= 0, np.round(wide * scale) / scale, np.round(wide / scale) * scale)
        # A rounding that fails at d digits fails at fewer: the nearer decimal already left the float32's interval.
        held &= rounded.astype(np.float32) == exact
        out = np.where(held, rounded, out)
    return out


class JsonArray(np.ndarray):
    """A float32 numpy array whose `tolist()` gives (nested) tuples of short floats that read back as its
    values (`short_float32_values`), instead of lists: shorter JSON, no per-element walk in coglet."""

    def tolist(self):  # noqa: D102 - the numbers, as tuples
        plain = self.view(np.ndarray)
        short = plain.dtype == np.float32 and plain.size >= SHORT_FLOATS_FROM
        values = (short_float32_values(plain) if short else plain).tolist()
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
