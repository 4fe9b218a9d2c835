"""A job's output on disk: its Parquet schema, the durable parts of finished chunks, and the assembled file.

Each finished chunk is its own Parquet file under `OUTPUT.parts/`, written to a temporary name, synced, then
renamed, so a part is either whole or absent after SIGKILL; its metadata holds the input positions it covers.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..chunking import LongTexts
from .reading import BulkError

if TYPE_CHECKING:
    import numpy as np

METADATA_KEY = b"e5.bulk"


def output_schema(dimensions: int, long_texts: LongTexts = LongTexts.TRUNCATE) -> pa.Schema:
    """`id` (string), `embedding` (fixed-size list of float32) and `token_count` (tokens the model read); with
    long_texts chunks a row per window, which also holds `chunk` (its number in the text, from 0) and its
    character span `[start, end)` in the text."""
    embedding = ("embedding", pa.list_(pa.float32(), dimensions))
    if long_texts is LongTexts.CHUNKS:
        return pa.schema([("id", pa.string()), ("chunk", pa.int32()), ("start", pa.int64()), ("end", pa.int64()),
                          ("token_count", pa.int32()), embedding])
    return pa.schema([("id", pa.string()), embedding, ("token_count", pa.int32())])


def parts_dir(out: Path) -> Path:
    """Where a job's finished chunks wait until the output is assembled."""
    return out.with_name(out.name + ".parts")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, write: Callable[[Path], None]) -> None:
    """Write through `write(tmp)`, sync it, and rename it to `path`: after a kill `path` is whole or absent."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class Part:
    """A finished chunk on disk: input positions [start, end), rows written, bad rows and tokens."""

    path: Path
    start: int
    end: int
    rows: int
    bad_rows: int
    tokens: int


def write_part(directory: Path, index: int, table: pa.Table, start: int, end: int, bad_rows: int) -> Part:
    """Store one chunk's table as part `index`, with the input positions it covers in its metadata."""
    tokens = int(pc.sum(table["token_count"]).as_py() or 0)
    info = {"start": start, "end": end, "bad_rows": bad_rows, "tokens": tokens}
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(info).encode()})
    path = directory / f"part-{index:06d}.parquet"
    write_durably(path, lambda tmp: pq.write_table(table, tmp))
    return Part(path, start, end, table.num_rows, bad_rows, tokens)


def finished_parts(directory: Path) -> list[Part]:
    """The parts that continue each other from position 0; any after a gap, and temporary files, are removed."""
    for leftover in directory.glob(".*.tmp"):
        leftover.unlink()
    parts: list[Part] = []
    for path in sorted(directory.glob("part-*.parquet")):
        try:
            info = json.loads(pq.read_schema(path).metadata[METADATA_KEY])
        except Exception:  # noqa: BLE001 - unreadable: redo it and what follows
            info = None
        if info is None or info["start"] != (parts[-1].end if parts else 0):
            for later in sorted(directory.glob("part-*.parquet")):
                if later >= path:
                    later.unlink()
            break
        parts.append(Part(path, info["start"], info["end"], pq.read_metadata(path).num_rows, info["bad_rows"],
                          info["tokens"]))
    return parts


def finished_output(out: Path) -> dict | None:
    """What a finished output holds (`settings` of its job, `rows`, `bad_rows`, `tokens`); None when `out`
    does not exist."""
    if not out.exists():
        return None
    try:
        return json.loads((pq.read_schema(out).metadata or {})[METADATA_KEY])
    except Exception:  # noqa: BLE001 - not Parquet, or not ours
        raise BulkError(f"{out.name} exists and was not written by embed-file; choose another --out or delete it") \
            from None


def assemble(out: Path, directory: Path, parts: list[Part], settings: dict, schema: pa.Schema) -> None:
    """Copy every part into `out`, one row group each, then remove the parts (memory: one part at a time).

    The output's metadata holds the job's `settings` and its totals, which a later run reads back."""
    summary = {"settings": settings, "rows": sum(p.rows for p in parts),
               "bad_rows": sum(p.bad_rows for p in parts), "tokens": sum(p.tokens for p in parts)}
    schema = schema.with_metadata({METADATA_KEY: json.dumps(summary).encode()})

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            for part in parts:
                writer.write_table(pq.read_table(part.path).replace_schema_metadata(schema.metadata))

    write_durably(out, write)
    shutil.rmtree(directory)


def read_embeddings(path: Path | str) -> tuple[list[str], np.ndarray]:
    """The ids and an (rows, dims) float32 array of an embed-file output (a file, or a directory of them)."""
    import numpy as np

    table = pq.read_table(path, columns=["id", "embedding"])
    column = table["embedding"].combine_chunks()
    width = column.type.list_size
    return table["id"].to_pylist(), np.asarray(column.flatten().to_numpy(), dtype=np.float32).reshape(-1, width)
