"""A bulk job: its options, checked once, the settings a resume must match, and the run that embeds a file.

`embed_file` reads the input a chunk at a time (`reading`), embeds each chunk's good rows as one token-budget
job through the service's encoder, and stores it as a durable part (`parts`); a second run with the same
settings skips the input rows the parts already cover, and the last step assembles the output.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pyarrow as pa

from ..chunking import LongTexts
from ..errors import parse_choice
from ..collapse import collapse
from ..prepare import TextInput
from ..prompts import InputType, resolve_task
from .parts import assemble, finished_output, finished_parts, output_schema, parts_dir, write_durably, write_part
from .reading import DEFAULT_CHUNK_ROWS, BulkError, Record, chunks, count_rows, detect_format, read_records, \
    row_problem

if TYPE_CHECKING:
    from ..service import EmbeddingService


@dataclass(frozen=True)
class JobOptions:
    """How a job reads each row and what it makes of it; checked when made, so a bad option fails before any
    work (`BulkError` naming the option; an unknown task preset is an `UnknownTaskError`)."""

    input_type: InputType = InputType.PASSAGE
    task: str | None = None
    normalize: bool = False
    truncate: bool = True  # off: an over-long text is skipped as a bad row rather than cut
    text_field: str = "text"
    id_field: str = "id"
    long_texts: LongTexts = LongTexts.TRUNCATE

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_type", parse_choice(InputType, self.input_type, "--input-type", BulkError))
        object.__setattr__(self, "long_texts", parse_choice(LongTexts, self.long_texts, "--long-texts", BulkError))
        resolve_task(self.task)
        object.__setattr__(self, "task", self.task or None)

    def as_dict(self) -> dict:
        """The options as JSON values (enums by their value), as a job stores them."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: value.value if isinstance(value, Enum) else value for name, value in values.items()}


@dataclass(frozen=True)
class JobSettings:
    """Everything that decides the vectors of a job; a resume must match it exactly."""

    model: str
    precision: str
    input: str
    format: str
    options: JobOptions
    chunk_overlap: int | None = None  # tokens neighbouring windows share; None: an eighth of a window

    @classmethod
    def of(cls, service: EmbeddingService, input_path: Path, fmt: str, options: JobOptions) -> JobSettings:
        """The settings of a job that `service` runs over `input_path`."""
        windowed = options.long_texts is not LongTexts.TRUNCATE
        return cls(service.encoder.spec.name, service.encoder.precision, str(input_path.resolve()), fmt, options,
                   service.preprocessor.overlap if windowed else None)

    def as_dict(self) -> dict:
        """The settings as one flat JSON object, as stored in `job.json` and the output's metadata."""
        return {"model": self.model, "precision": self.precision, "input": self.input, "format": self.format,
                **self.options.as_dict(), "chunk_overlap": self.chunk_overlap}

    def differences(self, stored: dict) -> list[str]:
        """'name stored -> this run's' for each setting this run changes."""
        # A setting added since the job was stored has its default there.
        defaults = {**JobOptions().as_dict(), "chunk_overlap": None}
        return [f"{name} {stored.get(name, defaults.get(name))!r} -> {value!r}"
                for name, value in self.as_dict().items() if stored.get(name, defaults.get(name)) != value]

    def check_same_job(self, stored: dict, where: str) -> None:
        """`BulkError` naming what changed when `stored` (a job's stored settings) differ from these."""
        changed = self.differences(stored)
        if changed:
            raise BulkError(f"{where} was written by a job with other settings ({'; '.join(changed)}); run again "
                            "with the same model and options, or choose another --out (or delete it to start over)")


@dataclass
class Summary:
    """What a job did, over all its runs."""

    rows: int = 0
    bad_rows: int = 0
    tokens: int = 0
    resumed_at: int = 0
    already_done: bool = False


def embed_records(service: EmbeddingService, settings: JobSettings,
                  records: list[Record]) -> tuple[pa.Table, list[str]]:
    """Embed the good rows of `records` (by the service's per-text limits) as one token-budget job; returns
    their table and the bad rows' reasons."""
    encoder, options, preprocessor = service.encoder, settings.options, service.preprocessor
    problems: list[str] = []
    good: list[Record] = []
    for record in records:
        problem = row_problem(record, options.text_field, preprocessor.limits)
        if problem:
            problems.append(problem)
        else:
            good.append(record)
    # Cut with truncate on whatever --no-truncate says: an over-long row is then skipped alone, where
    # tokenising with truncate off would fail the whole chunk.
    rows = preprocessor.rows([TextInput(r.where, r.text, options.input_type) for r in good],
                             resolve_task(options.task), options.long_texts, truncate=True)
    if not options.truncate and rows.truncated:
        problems += [f"{where}: " + preprocessor.tokenizer.too_long_message(options.text_field, "--no-truncate")
                     for where in rows.truncated]
        rows, kept = rows.without_truncated()
        good = [good[i] for i in kept]
    # A vector that is not finite is never written: the job stops at its row (`NonFiniteError` names it and
    # the cause), and the parts already finished stay for a resume.
    collapsed = collapse(rows, encoder.embed_ids(rows.tokens.ids), options.normalize, encoder.non_finite_cause)
    lengths = [len(row) for row in rows.tokens.ids]
    if options.long_texts is LongTexts.MEAN:
        vectors = collapsed.vectors(range(len(good)))
        lengths = [sum(lengths[row] for row in group) for group in rows.groups]
    else:
        vectors = collapsed.row_vectors(slice(None))
    per_row = options.long_texts is LongTexts.CHUNKS
    columns = {"id": pa.array([good[i].id for i in rows.owners] if per_row else [r.id for r in good], type=pa.string()),
               "embedding": _embedding_column(vectors), "token_count": pa.array(lengths, type=pa.int32())}
    if per_row:
        first = {}  # each text's first row: its windows are consecutive rows, numbered from 0
        for row, owner in enumerate(rows.owners):
            first.setdefault(owner, row)
        columns["chunk"] = pa.array([row - first[owner] for row, owner in enumerate(rows.owners)], type=pa.int32())
        columns["start"] = pa.array([start for start, _ in rows.spans], type=pa.int64())
        columns["end"] = pa.array([end for _, end in rows.spans], type=pa.int64())
    schema = output_schema(encoder.dimensions, options.long_texts)
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema), problems


def _embedding_column(vectors) -> pa.FixedSizeListArray:
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def embed_file(service: EmbeddingService, input_path: Path | str, out: Path | str,
               options: JobOptions = JobOptions(), fmt: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
               progress: bool = True, report: Callable[[str], None] | None = None) -> Summary:
    """Embed every row of `input_path` into the Parquet file `out`, continuing an interrupted run of the same job.

    Bad rows (by the service's per-text limits) are passed to `report` (stderr by default) and skipped; a
    resume with other settings raises `BulkError`.
    """
    input_path, out = Path(input_path), Path(out)
    if not input_path.is_file():
        raise BulkError(f"input {input_path} does not exist or is not a file")
    if chunk_rows < 1:
        raise BulkError(f"--chunk-rows must be a positive number of rows, not {chunk_rows}")
    fmt = detect_format(input_path, fmt)
    settings = JobSettings.of(service, input_path, fmt, options)
    finished = finished_output(out)
    if finished is not None:
        settings.check_same_job(finished["settings"], out.name)
        leftover = parts_dir(out)
        if leftover.exists():  # killed between the output's rename and the parts' removal
            shutil.rmtree(leftover)
        return Summary(finished["rows"], finished["bad_rows"], finished["tokens"], already_done=True)

    directory = parts_dir(out)
    job_file = directory / "job.json"
    if job_file.exists():
        settings.check_same_job(json.loads(job_file.read_text()), f"{directory.name}/")
        parts = finished_parts(directory)
    else:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("part-*.parquet"):  # from a job whose job.json never became durable
            stale.unlink()
        write_durably(job_file, lambda tmp: tmp.write_text(json.dumps(settings.as_dict(), sort_keys=True)))
        parts = []

    summary = Summary(sum(p.rows for p in parts), sum(p.bad_rows for p in parts), sum(p.tokens for p in parts),
                      resumed_at=parts[-1].end if parts else 0)
    say = report or _write_line
    bar = _progress_bar(count_rows(input_path, fmt), summary.resumed_at, progress)
    started, tokens_this_run = time.perf_counter(), 0
    try:
        records = read_records(input_path, fmt, options.text_field, options.id_field, start=summary.resumed_at)
        for chunk in chunks(records, chunk_rows):
            table, problems = embed_records(service, settings, chunk)
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
    assemble(out, directory, parts, settings.as_dict(), output_schema(service.encoder.dimensions, options.long_texts))
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
