"""Scale-out on Ray Data: one model per actor, Parquet in and out, on a laptop or a cluster alike.

    import ray
    from e5.bulk import JobOptions
    from e5.ray_embed import EmbedBatches, read_input

    ds = read_input("corpus.parquet", "parquet").repartition(target_num_rows_per_block=2048)
    ds.map_batches(EmbedBatches, fn_constructor_kwargs={"model": "e5-large-v2", "options": JobOptions()},
                   batch_format="pyarrow", batch_size=2048, compute=ray.data.ActorPoolStrategy(size=4),
                   num_gpus=1).write_parquet("embeddings/")

or, from a file to a directory of Parquet files, `embed_file_ray` (what `embed-file --ray` runs).

Needs the Ray extra (`pip install -e '.[ray]'`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa

from .bulk.job import JobOptions, JobSettings, embed_records
from .bulk.reading import DEFAULT_CHUNK_ROWS, MISSING, BulkError, Record, detect_format, require_column
from .settings import child_pythonpath

# Passed on to the actors, which may start on another machine with another environment.
FORWARDED_ENV = ("E5_", "HF_")
# Reading and writing are light next to the model: those tasks take no CPU slot, so they still run
# while the actors hold the cluster's CPUs. (Ray's own file listing still takes one: leave it one.)
IO_CPUS = 0


class EmbedBatches:
    """A callable class for `Dataset.map_batches`: loads the model once per actor, embeds pyarrow batches.

    Rows come back as `bulk.output_schema` says (a row per window with long_texts chunks); bad rows are
    reported on the actor's stderr (Ray forwards it to the driver) by id and left out.
    """

    def __init__(self, model: str | None = None, options: JobOptions = JobOptions(), input_path: str = "",
                 fmt: str = "parquet"):
        from .service import load_service

        self.service = load_service(model)
        self.settings = JobSettings.of(self.service, Path(input_path or "."), fmt, options)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Embed one batch; its table holds a row per good input row."""
        options = self.settings.options
        texts = batch.column(options.text_field).to_pylist() if options.text_field in batch.column_names \
            else [MISSING] * batch.num_rows
        ids = batch.column(options.id_field).to_pylist()
        records = [Record(i, f"id {ident}", str(ident), text) for i, (ident, text) in enumerate(zip(ids, texts))]
        table, problems = embed_records(self.service, self.settings, records)
        for problem in problems:
            print(f"e5: skipped {problem}", file=sys.stderr, flush=True)
        return table


def read_input(path: str, fmt: str):
    """A Ray dataset over `path` (a file or a directory, local or remote) in `fmt`."""
    import ray.data

    readers = {"parquet": ray.data.read_parquet, "csv": ray.data.read_csv, "text": ray.data.read_text,
               "jsonl": partial(ray.data.read_json, lines=True)}
    return readers[fmt](path, num_cpus=IO_CPUS)


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to the cluster at `address`, or start a local one (no dashboard), passing E5_* and HF_* on."""
    import ray

    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    if address is None:
        # Local actors import e5 from this checkout; on a cluster, install it on the nodes
        # or pass runtime_env={"working_dir": ...} yourself.
        env["PYTHONPATH"] = child_pythonpath()
    ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
             runtime_env={"env_vars": env}, ignore_reinit_error=True, log_to_driver=True)


@dataclass(frozen=True)
class RayCluster:
    """Where a Ray job runs: `concurrency` actors of `cpus_per_actor` CPUs and `num_gpus` GPUs each, on the
    cluster at `address`, or without one on a local cluster of `num_cpus` CPUs (default: all). Leave the
    cluster one CPU beyond the actors' for Ray's file listing."""

    concurrency: int = 1
    num_gpus: float = 0
    cpus_per_actor: float = 1
    address: str | None = None
    num_cpus: int | None = None


def embed_file_ray(input_path: str, out: str, options: JobOptions = JobOptions(), model: str | None = None,
                   fmt: str | None = None, batch_rows: int = DEFAULT_CHUNK_ROWS,
                   cluster: RayCluster = RayCluster()) -> int:
    """Embed `input_path` into the Parquet directory `out` on `cluster`, a model per actor; returns the rows
    written."""
    import pyarrow.parquet as pq
    import ray.data

    fmt = detect_format(Path(input_path), fmt)
    if Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise BulkError(f"{out} exists and is not empty; --ray writes a fresh directory, choose another --out")
    init_ray(cluster.address, cluster.num_cpus)
    ds = read_input(input_path, fmt)
    names = ds.schema().names
    if options.id_field not in names:
        raise BulkError(f"--ray needs an id column, and {Path(input_path).name} has no {options.id_field!r} "
                        f"(it has {', '.join(map(repr, names))}); name it with --id-field, or embed without --ray "
                        "(which numbers the lines)")
    require_column(Path(input_path), names, options.text_field)
    kwargs = {"model": model, "options": options, "input_path": str(input_path), "fmt": fmt}
    # Streaming (no shuffle): a block per batch, so a single large file still feeds every actor.
    ds = ds.repartition(target_num_rows_per_block=batch_rows)
    ds.map_batches(EmbedBatches, fn_constructor_kwargs=kwargs, batch_format="pyarrow", batch_size=batch_rows,
                   compute=ray.data.ActorPoolStrategy(size=cluster.concurrency), num_cpus=cluster.cpus_per_actor,
                   num_gpus=cluster.num_gpus).write_parquet(out, ray_remote_args={"num_cpus": IO_CPUS})
    return sum(pq.read_metadata(p).num_rows for p in Path(out).glob("*.parquet"))
