"""Embedding a whole file: chunked reading, bad-row reports, Parquet parts that survive a kill, and resume.

    from e5 import load_service
    from e5.bulk import JobOptions, embed_file

    embed_file(load_service(), "corpus.jsonl", "embeddings.parquet", JobOptions(normalize=True))

- `reading`: the input's format, its rows (`Record`: where, id, text) and why a row cannot be embedded;
- `parts`: the output's schema, a finished chunk as a durable part under `OUTPUT.parts/`, and the assembly
  of the parts into `OUTPUT`;
- `job`: `JobOptions` (checked once), `JobSettings` (what a resume must match, kept in `job.json`) and
  `embed_file`, which runs a job and continues an interrupted one.

Needs pyarrow (`pip install -e '.[bulk]'`).
"""

from .job import JobOptions, JobSettings, Summary, embed_file, embed_records
from .parts import output_schema, parts_dir, read_embeddings
from .reading import DEFAULT_CHUNK_ROWS, FORMATS, BulkError, Record, detect_format

__all__ = ["DEFAULT_CHUNK_ROWS", "FORMATS", "BulkError", "JobOptions", "JobSettings", "Record", "Summary",
           "detect_format", "embed_file", "embed_records", "output_schema", "parts_dir", "read_embeddings"]
