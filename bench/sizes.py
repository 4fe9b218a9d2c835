"""Response sizes: one batch of texts (2,048 by default) in each `encoding_format`, through Cog's server.

Starts `python -m e5 serve --demo` (the real all-MiniLM-L6-v2, 384 dimensions) unless --url names a running
server, sends the same batch as `float`, `base64`, `ubinary` and `npy`, and prints the bytes of each HTTP
response body and of its `output`, checks that every format carries the same float32 values (ubinary: their
sign bits), and prints what the same batch would weigh at 1,024 and 4,096 dimensions (float scaled by the
measured bytes per number; the others by their exact sizes). Sizes, not timings: a busy machine does not
change them.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import sys
import urllib.request
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Server  # noqa: E402

FORMATS = ("float", "base64", "ubinary", "npy")
NPY_HEADER = 128  # numpy's .npy header for a 2-D float32 array is padded to 128 bytes


def batch(count: int) -> list[str]:
    """`count` short distinct texts: the response size depends on the vectors, not on the texts."""
    return [f"passage number {i} about protein intake" for i in range(count)]


def output_span(body: bytes) -> int:
    """Bytes of the `output` value exactly as the server wrote it inside the response body."""
    text = body.decode("utf-8")
    start = text.index('"output":') + len('"output":')
    _, end = json.JSONDecoder().raw_decode(text, start)
    return len(text[start:end].encode("utf-8"))


def float32_rows(output: dict, encoding: str) -> np.ndarray:
    """The batch's vectors as a float32 matrix, decoded as a client would."""
    if encoding == "npy":
        with urllib.request.urlopen(output["embeddings_file"], timeout=60) as f:
            return np.load(io.BytesIO(f.read()), allow_pickle=False)
    if encoding == "base64":
        return np.stack([np.frombuffer(base64.b64decode(v), "<f4") for v in output["embeddings_base64"]])
    if encoding == "ubinary":  # sign bits only: +1 where the float is above zero, else 0
        bits = np.stack([np.frombuffer(base64.b64decode(v), np.uint8) for v in output["embeddings_base64"]])
        return np.unpackbits(bits, axis=1)[:, :output["dimensions"]].astype("<f4")
    return np.asarray(output["embeddings"], "<f4")


def measure(base: str, texts: list[str]) -> dict:
    """One request per format; bytes of each body and output, and the .npy file's own size."""
    sizes, rows = {}, {}
    for encoding in FORMATS:
        r = requests.post(f"{base}/predictions", json={"input": {"texts": texts, "encoding_format": encoding}},
                          timeout=600)
        r.raise_for_status()
        body = r.json()
        if body.get("status") != "succeeded":
            raise RuntimeError(f"{encoding}: {body.get('error')}")
        output = body["output"]
        rows[encoding] = float32_rows(output, encoding)
        sizes[encoding] = {"body_bytes": len(r.content), "output_bytes": output_span(r.content),
                           "dimensions": output["dimensions"]}
        if encoding == "npy":
            sizes[encoding]["npy_file_bytes"] = rows[encoding].nbytes + NPY_HEADER
    for encoding in ("base64", "npy"):
        if rows[encoding].tobytes() != rows["float"].tobytes():
            raise RuntimeError(f"{encoding} does not carry the float output's float32 values")
    if rows["ubinary"].tobytes() != (rows["float"] > 0).astype("<f4").tobytes():
        raise RuntimeError("ubinary does not carry the float output's sign bits")
    return sizes


def projected(sizes: dict, count: int, dimensions: int) -> dict:
    """The same batch's output bytes at `dimensions`: float from the measured bytes per number."""
    measured_dims = sizes["float"]["dimensions"]
    numbers = count * measured_dims
    overhead = sizes["base64"]["output_bytes"] - count * (4 * math.ceil(4 * measured_dims / 3) + 3)
    per_number = (sizes["float"]["output_bytes"] - overhead) / numbers
    base64_vector = 4 * math.ceil(4 * dimensions / 3)
    ubinary_vector = 4 * math.ceil(dimensions / 8 / 3)
    npy_file = NPY_HEADER + 4 * count * dimensions
    return {
        "float": round(overhead + per_number * count * dimensions),
        "base64": overhead + count * (base64_vector + 3),  # quotes and a comma per vector
        "ubinary": overhead + count * (ubinary_vector + 3),
        "npy": overhead + len('"data:application/octet-stream;base64,"') + 4 * math.ceil(npy_file / 3),
        "npy_file": npy_file,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--url", help="a running server (default: start `python -m e5 serve --demo`)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 16 texts")
    parser.add_argument("--out", help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    count = 16 if args.quick else args.texts
    server = None if args.url else Server("demo", {})
    try:
        sizes = measure(args.url or server.base, batch(count))
    finally:
        if server is not None:
            server.stop()

    dims = sizes["float"]["dimensions"]
    print(f"one batch of {count:,} texts, {dims} dimensions, measured through Cog's server:")
    print(f"{'format':8} {'body bytes':>14} {'output bytes':>14} {'vs float':>9}")
    for encoding in FORMATS:
        s = sizes[encoding]
        print(f"{encoding:8} {s['body_bytes']:>14,} {s['output_bytes']:>14,} "
              f"{s['output_bytes'] / sizes['float']['output_bytes']:>8.2f}x")
    print(f"npy file itself: {sizes['npy']['npy_file_bytes']:,} bytes (float32 data: {4 * count * dims:,})")
    report = {"texts": count, "measured": sizes, "projected": {}}
    for target in (1024, 4096):
        p = report["projected"][str(target)] = projected(sizes, count, target)
        print(f"projected at {target} dimensions: float {p['float']:,}, base64 {p['base64']:,}, "
              f"ubinary {p['ubinary']:,}, npy {p['npy']:,} output bytes (the .npy file: {p['npy_file']:,})")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
