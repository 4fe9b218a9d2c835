"""Reading a job's input: its format, its rows with ids and where each is, and why a row cannot be embedded."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from ..errors import RequestError
from ..limits import LimitError, Limits

FORMATS = ("jsonl", "csv", "parquet", "text")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
            ".pq": "parquet", ".txt": "text", ".text": "text"}
# Rows per chunk, part file and row group: big enough that sorting by length within it keeps padding
# low, small enough that a kill loses little work and a chunk's vectors stay a few MB.
DEFAULT_CHUNK_ROWS = 2048


class BulkError(RequestError):
    """A job that cannot start or continue; the message names the input or option and the rule."""


@dataclass(frozen=True)
class Record:
    """One input row: its position among all rows (from 0), where it is ('line 7'), its id and text."""

    position: int
    where: str
    id: str
    text: object


class _Missing:
    """The text of a row that has no text field (distinct from a null one)."""


MISSING = _Missing()


@dataclass(frozen=True)
class BadJson:
    """The text of a JSONL line that is not a JSON object."""

    reason: str


def detect_format(path: Path, given: str | None = None) -> str:
    """`given`, else the format named by the file's suffix; `BulkError` when neither says."""
    if given:
        if given not in FORMATS:
            raise BulkError(f"--format must be one of {', '.join(FORMATS)}, not {given!r}")
        return given
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise BulkError(f"cannot tell the format of {path.name} from its suffix; pass --format "
                        f"({', '.join(FORMATS)})")
    return fmt


def count_rows(path: Path, fmt: str) -> int:
    """Rows in the input, for the progress bar's total (one fast pass; Parquet from its footer)."""
    if fmt == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            return max(0, sum(1 for _ in csv.reader(f)) - 1)
    lines = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def read_records(path: Path, fmt: str, text_field: str = "text", id_field: str = "id",
                 start: int = 0) -> Iterator[Record]:
    """Every row of the input from position `start`, with its id (`id_field`, else its line or row number)."""
    reader = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet, "text": _read_text}[fmt]
    return reader(path, text_field, id_field, start)


def _record(position: int, where: str, number: int, row: dict, text_field: str, id_field: str) -> Record:
    ident = row.get(id_field)
    return Record(position, where, str(number) if ident is None else str(ident), row.get(text_field, MISSING))


def _read_jsonl(path: Path, text_field: str, id_field: str, start: int) -> Iterator[Record]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for position, line in enumerate(f):
            if position < start:
                continue
            where = f"line {position + 1}"
            try:
                row = json.loads(line)
            except ValueError as exc:
                yield Record(position, where, str(position + 1), BadJson(str(exc).split(":")[0]))
                continue
            if not isinstance(row, dict):
                yield Record(position, where, str(position + 1), BadJson(f"a JSON {type(row).__name__}, not an object"))
                continue
            yield _record(position, where, position + 1, row, text_field, id_field)


def _read_text(path: Path, text_field: str, id_field: str, start: int) -> Iterator[Record]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        for position, line in enumerate(f):
            if position >= start:
                yield Record(position, f"line {position + 1}", str(position + 1), line.rstrip("\r\n"))


def _read_csv(path: Path, text_field: str, id_field: str, start: int) -> Iterator[Record]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        require_column(path, reader.fieldnames or [], text_field)
        line = reader.line_num + 1
        for position, row in enumerate(reader):
            # A quoted field may span lines: name the line the record starts on.
            if position >= start:
                yield _record(position, f"line {line}", line, row, text_field, id_field)
            line = reader.line_num + 1


def _read_parquet(path: Path, text_field: str, id_field: str, start: int) -> Iterator[Record]:
    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    require_column(path, names, text_field)
    columns = [text_field] + ([id_field] if id_field in names and id_field != text_field else [])
    position = 0
    for batch in parquet.iter_batches(batch_size=DEFAULT_CHUNK_ROWS, columns=columns):
        if position + batch.num_rows <= start:
            position += batch.num_rows
            continue
        skip = max(0, start - position)
        rows = batch.slice(skip).to_pylist()
        for i, row in enumerate(rows, position + skip):
            yield _record(i, f"row {i + 1}", i + 1, row, text_field, id_field)
        position += batch.num_rows


def require_column(path: Path, names: list[str], text_field: str) -> None:
    """The file's columns hold the text column, or the caller hears which columns there are."""
    if text_field not in names:
        raise BulkError(f"{path.name} has no column {text_field!r} (it has {', '.join(map(repr, names))}); "
                        "name the text column with --text-field")


def chunks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    """`records` in lists of `size` (the last may be shorter)."""
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def row_problem(record: Record, text_field: str, limits: Limits) -> str | None:
    """Why `record` cannot be embedded ('line 7: text is empty ...'), or None when it can."""
    text = record.text
    if isinstance(text, BadJson):
        return f"{record.where}: not a JSON object ({text.reason})"
    if text is MISSING:
        return f"{record.where}: no {text_field!r} field"
    if text is None:
        return f"{record.where}: {text_field} is null"
    try:
        limits.check_text(f"{record.where}: {text_field}", text)
    except LimitError as exc:
        return str(exc)
    return None
