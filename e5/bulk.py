"""Embedding a whole file: chunked reading, bad-row reports, Parquet parts that survive a kill, and resume.

A job writes each finished chunk as its own Parquet file under `OUTPUT.parts/` (written to a temporary
name, synced, then renamed, so a part is either whole or absent after SIGKILL) next to `job.json`, the
settings it was started with. A second run with the same settings skips the input rows the parts
already cover; at the end the parts are copied, one row group each, into `OUTPUT` and removed.
Needs pyarrow (`pip install -e '.[bulk]'`).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .chunking import LongTexts
from .encoder import Encoder
from .tokenizer import Tokenized
from .errors import RequestError
from .finite import check_finite
from .limits import LimitError, Limits
from .pooling import l2_normalize
from .prepare import Rows, TextInput, rows_for
from .prompts import InputType, resolve_task

if TYPE_CHECKING:
    import numpy as np

FORMATS = ("jsonl", "csv", "parquet", "text")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
            ".pq": "parquet", ".txt": "text", ".text": "text"}
# Rows per chunk, part file and row group: big enough that sorting by length within it keeps padding
# low, small enough that a kill loses little work and a chunk's vectors stay a few MB.
DEFAULT_CHUNK_ROWS = 2048
METADATA_KEY = b"e5.bulk"


class BulkError(RequestError):
    """A job that cannot start or continue; the message names the input or option and the rule."""


@dataclass(frozen=True)
class JobSettings:
    """Everything that decides the vectors of a job; a resume must match it exactly."""

    model: str
    precision: str
    input: str
    format: str
    input_type: str
    task: str | None
    normalize: bool
    truncate: bool
    text_field: str
    id_field: str
    long_texts: str = LongTexts.TRUNCATE.value
    chunk_overlap: int | None = None  # tokens neighbouring windows share; None: an eighth of a window

    def to_json(self) -> str:
        """The settings as one JSON object, as stored in `job.json` and the output's metadata."""
        return json.dumps(asdict(self), sort_keys=True)

    def differences(self, stored: dict) -> list[str]:
        """'name stored -> this run's' for each setting this run changes."""
        # A setting added since the job was stored has its default there.
        return [f"{f.name} {stored.get(f.name, f.default)!r} -> {getattr(self, f.name)!r}" for f in fields(self)
                if stored.get(f.name, f.default) != getattr(self, f.name)]


@dataclass(frozen=True)
class Record:
    """One input row: its position among all rows (from 0), where it is ('line 7'), its id and text."""

    position: int
    where: str
    id: str
    text: object


@dataclass
class Summary:
    """What a job did, over all its runs."""

    rows: int = 0
    bad_rows: int = 0
    tokens: int = 0
    resumed_at: int = 0
    already_done: bool = False


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


def job_settings(encoder: Encoder, input_path: Path, fmt: str, input_type: str = "passage", task: str | None = None,
                 normalize: bool = False, truncate: bool = True, text_field: str = "text",
                 id_field: str = "id", long_texts: str = "truncate", chunk_overlap: int | None = None) -> JobSettings:
    """The settings of a job run by `encoder`; checks `input_type`, `long_texts` and `task` before any work."""
    try:
        InputType(input_type)
    except ValueError:
        raise BulkError(f"--input-type must be 'query' or 'passage', not {input_type!r}") from None
    try:
        LongTexts(long_texts)
    except ValueError:
        raise BulkError(f"--long-texts must be 'truncate', 'chunks' or 'mean', not {long_texts!r}") from None
    resolve_task(task)  # an unknown preset fails now (UnknownTaskError), not after the first chunk
    return JobSettings(encoder.spec.name, encoder.precision, str(input_path.resolve()), fmt, input_type, task or None,
                       normalize, truncate, text_field, id_field, long_texts,
                       None if long_texts == LongTexts.TRUNCATE.value else chunk_overlap)


# --- reading -------------------------------------------------------------------------------

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


class _Missing:
    """The text of a row that has no text field (distinct from a null one)."""


MISSING = _Missing()


@dataclass(frozen=True)
class BadJson:
    """The text of a JSONL line that is not a JSON object."""

    reason: str


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


# --- embedding -----------------------------------------------------------------------------

def output_schema(dimensions: int, long_texts: str = LongTexts.TRUNCATE.value) -> pa.Schema:
    """`id` (string), `embedding` (fixed-size list of float32) and `token_count` (tokens the model read); with
    long_texts chunks a row per window, which also holds `chunk` (its number in the text, from 0) and its
    character span `[start, end)` in the text."""
    embedding = ("embedding", pa.list_(pa.float32(), dimensions))
    if long_texts == LongTexts.CHUNKS.value:
        return pa.schema([("id", pa.string()), ("chunk", pa.int32()), ("start", pa.int64()), ("end", pa.int64()),
                          ("token_count", pa.int32()), embedding])
    return pa.schema([("id", pa.string()), embedding, ("token_count", pa.int32())])


def embed_records(encoder: Encoder, settings: JobSettings, records: list[Record],
                  limits: Limits) -> tuple[pa.Table, list[str]]:
    """Embed the good rows of `records` as one token-budget job; returns their table and the bad rows' reasons."""
    problems: list[str] = []
    good: list[Record] = []
    for record in records:
        problem = row_problem(record, settings.text_field, limits)
        if problem:
            problems.append(problem)
        else:
            good.append(record)
    mode, kind = LongTexts(settings.long_texts), InputType(settings.input_type)
    # Cut with truncate on whatever --no-truncate says: an over-long row is then skipped alone, where
    # tokenising with truncate off would fail the whole chunk.
    tokenizer = encoder.text_tokenizer
    rows = rows_for(tokenizer, [TextInput(r.where, r.text, kind) for r in good], encoder.spec.prompt_style,
                    resolve_task(settings.task), mode, truncate=True, overlap=settings.chunk_overlap)
    if not settings.truncate and rows.truncated:
        cut = set(rows.truncated)
        problems += [f"{r.where}: " + tokenizer.too_long_message(settings.text_field, "--no-truncate")
                     for r in good if r.where in cut]
        keep = [i for i, record in enumerate(good) if record.where not in cut]
        good = [good[i] for i in keep]
        rows = Rows(Tokenized([rows.tokens.ids[i] for i in keep], [rows.tokens.counted_lengths[i] for i in keep],
                              [False] * len(keep)), list(range(len(keep))), [rows.spans[i] for i in keep], [],
                    len(keep))
    vectors = encoder.embed_ids(rows.tokens.ids)
    # A vector that is not finite is never written: the job stops at its row (`NonFiniteError` names it and
    # the cause), and the parts already finished stay for a resume.
    check_finite(vectors, lambda row: good[rows.owners[row]].where, encoder.non_finite_cause)
    lengths = [len(row) for row in rows.tokens.ids]
    if mode is LongTexts.MEAN:
        vectors = rows.per_input(vectors)
        check_finite(vectors, lambda at: good[at].where, encoder.non_finite_cause)
        lengths = [sum(lengths[row] for row in group) for group in rows.groups]
    if settings.normalize:
        vectors = l2_normalize(vectors)
    per_row = mode is LongTexts.CHUNKS
    columns = {"id": pa.array([good[i].id for i in rows.owners] if per_row else [r.id for r in good], type=pa.string()),
               "embedding": _embedding_column(vectors), "token_count": pa.array(lengths, type=pa.int32())}
    if per_row:
        first = {}  # each text's first row: its windows are consecutive rows, numbered from 0
        for row, owner in enumerate(rows.owners):
            first.setdefault(owner, row)
        columns["chunk"] = pa.array([row - first[owner] for row, owner in enumerate(rows.owners)], type=pa.int32())
        columns["start"] = pa.array([start for start, _ in rows.spans], type=pa.int64())
        columns["end"] = pa.array([end for _, end in rows.spans], type=pa.int64())
    schema = output_schema(encoder.dimensions, settings.long_texts)
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema), problems


def _embedding_column(vectors) -> pa.FixedSizeListArray:
    flat = pa.array(vectors.numpy().reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


# --- durable parts -------------------------------------------------------------------------

def parts_dir(out: Path) -> Path:
    """Where a job's finished chunks wait until the output is assembled."""
    return out.with_name(out.name + ".parts")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, write: Callable[[Path], None]) -> None:
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
    _write_durably(path, lambda tmp: pq.write_table(table, tmp))
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


def _check_same_job(settings: JobSettings, stored: dict, where: str) -> None:
    changed = settings.differences(stored)
    if changed:
        raise BulkError(f"{where} was written by a job with other settings ({'; '.join(changed)}); run again with "
                        "the same model and options, or choose another --out (or delete it to start over)")


def stored_job(out: Path) -> dict | None:
    """The settings a finished output was written with, None when `out` does not exist."""
    if not out.exists():
        return None
    try:
        metadata = pq.read_schema(out).metadata or {}
        return json.loads(metadata[METADATA_KEY])["settings"]
    except Exception:  # noqa: BLE001 - not Parquet, or not ours
        raise BulkError(f"{out.name} exists and was not written by embed-file; choose another --out or delete it") \
            from None


def assemble(out: Path, directory: Path, parts: list[Part], settings: JobSettings, dimensions: int) -> None:
    """Copy every part into `out`, one row group each, then remove the parts (memory: one part at a time)."""
    summary = {"settings": json.loads(settings.to_json()), "rows": sum(p.rows for p in parts),
               "bad_rows": sum(p.bad_rows for p in parts), "tokens": sum(p.tokens for p in parts)}
    schema = output_schema(dimensions, settings.long_texts).with_metadata({METADATA_KEY: json.dumps(summary).encode()})

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            for part in parts:
                writer.write_table(pq.read_table(part.path).replace_schema_metadata(schema.metadata))

    _write_durably(out, write)
    shutil.rmtree(directory)


# --- the job -------------------------------------------------------------------------------

def embed_file(encoder: Encoder, input_path: Path | str, out: Path | str, fmt: str | None = None,
               input_type: str = "passage", task: str | None = None, normalize: bool = False,
               truncate: bool = True, text_field: str = "text", id_field: str = "id",
               long_texts: str = "truncate", chunk_overlap: int | None = None,
               chunk_rows: int = DEFAULT_CHUNK_ROWS, progress: bool = True,
               report: Callable[[str], None] | None = None, limits: Limits | None = None) -> Summary:
    """Embed every row of `input_path` into the Parquet file `out`, continuing an interrupted run of the same job.

    Bad rows (by `limits`, the service's per-text limits) are passed to `report` (stderr by default) and
    skipped; a resume with other settings raises `BulkError`.
    """
    input_path, out = Path(input_path), Path(out)
    if not input_path.is_file():
        raise BulkError(f"input {input_path} does not exist or is not a file")
    if chunk_rows < 1:
        raise BulkError(f"--chunk-rows must be a positive number of rows, not {chunk_rows}")
    fmt = detect_format(input_path, fmt)
    settings = job_settings(encoder, input_path, fmt, input_type, task, normalize, truncate, text_field, id_field,
                            long_texts, chunk_overlap)
    stored = stored_job(out)
    if stored is not None:
        _check_same_job(settings, stored, out.name)
        finished = json.loads(pq.read_schema(out).metadata[METADATA_KEY])
        leftover = parts_dir(out)
        if leftover.exists():  # killed between the output's rename and the parts' removal
            shutil.rmtree(leftover)
        return Summary(finished["rows"], finished["bad_rows"], finished["tokens"], already_done=True)

    directory = parts_dir(out)
    job_file = directory / "job.json"
    if job_file.exists():
        _check_same_job(settings, json.loads(job_file.read_text()), f"{directory.name}/")
        parts = finished_parts(directory)
    else:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("part-*.parquet"):  # from a job whose job.json never became durable
            stale.unlink()
        _write_durably(job_file, lambda tmp: tmp.write_text(settings.to_json()))
        parts = []

    summary = Summary(sum(p.rows for p in parts), sum(p.bad_rows for p in parts), sum(p.tokens for p in parts),
                      resumed_at=parts[-1].end if parts else 0)
    say = report or _write_line
    limits = limits or Limits()
    bar = _progress_bar(count_rows(input_path, fmt), summary.resumed_at, progress)
    started, tokens_this_run = time.perf_counter(), 0
    try:
        records = read_records(input_path, fmt, text_field, id_field, start=summary.resumed_at)
        for chunk in chunks(records, chunk_rows):
            table, problems = embed_records(encoder, settings, chunk, limits)
            for problem in problems:
                say(f"skipped {problem}")
            part = write_part(directory, len(parts), table, chunk[0].position, chunk[-1].position + 1, len(problems))
            parts.append(part)
            summary.rows += part.rows
            summary.bad_rows += part.bad_rows
            summary.tokens += part.tokens
            tokens_this_run += part.tokens
            if bar is not None:
                bar.update(len(chunk))
                bar.set_postfix_str(f"{tokens_this_run / (time.perf_counter() - started):,.0f} tokens/s", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    assemble(out, directory, parts, settings, encoder.dimensions)
    return summary


def _write_line(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"e5: {line}", file=sys.stderr)


def _progress_bar(total: int, done: int, enabled: bool):
    """A tqdm bar on stderr counting texts (rate and ETA are tqdm's); None when disabled."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit=" texts", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def read_embeddings(path: Path | str) -> tuple[list[str], np.ndarray]:
    """The ids and an (rows, dims) float32 array of an embed-file output (a file, or a directory of them)."""
    import numpy as np

    table = pq.read_table(path, columns=["id", "embedding"])
    column = table["embedding"].combine_chunks()
    width = column.type.list_size
    return table["id"].to_pylist(), np.asarray(column.flatten().to_numpy(), dtype=np.float32).reshape(-1, width)
