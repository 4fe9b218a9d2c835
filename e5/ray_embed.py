"""Scale-out on Ray Data: one model per actor, Parquet in and out, on a laptop or a cluster alike.

    import ray
    from e5.ray_embed import EmbedBatches, read_input

    ds = read_input("corpus.parquet", "parquet").repartition(target_num_rows_per_block=2048)
    ds.map_batches(EmbedBatches, fn_constructor_kwargs={"model": "e5-large-v2"}, batch_format="pyarrow",
                   batch_size=2048, compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1,
                   ).write_parquet("embeddings/")

Needs the Ray extra (`pip install -e '.[ray]'`).
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import pyarrow as pa

from .bulk import (DEFAULT_CHUNK_ROWS, MISSING, BulkError, Record, detect_format, embed_records, job_settings,
                   require_column)
from .settings import PROJECT_ROOT as REPO_ROOT

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

    def __init__(self, model: str | None = None, input_type: str = "passage", task: str | None = None,
                 normalize: bool = False, truncate: bool = True, text_field: str = "text", id_field: str = "id",
                 input_path: str = "", fmt: str = "parquet", long_texts: str = "truncate"):
        from .service import load_service

        service = load_service(model)
        self.encoder = service.encoder
        self.settings = job_settings(self.encoder, Path(input_path or "."), fmt, input_type, task, normalize,
                                     truncate, text_field, id_field, long_texts, service.chunk_overlap)
        self.limits = service.limits

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Embed one batch; its table holds a row per good input row."""
        texts = batch.column(self.settings.text_field).to_pylist() if self.settings.text_field in batch.column_names \
            else [MISSING] * batch.num_rows
        ids = batch.column(self.settings.id_field).to_pylist()
        records = [Record(i, f"id {ident}", str(ident), text) for i, (ident, text) in enumerate(zip(ids, texts))]
        table, problems = embed_records(self.encoder, self.settings, records, self.limits)
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
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
             runtime_env={"env_vars": env}, ignore_reinit_error=True, log_to_driver=True)


def embed_file_ray(input_path: str, out: str, model: str | None = None, fmt: str | None = None,
                   input_type: str = "passage", task: str | None = None, normalize: bool = False,
                   truncate: bool = True, text_field: str = "text", id_field: str = "id",
                   long_texts: str = "truncate", batch_rows: int = DEFAULT_CHUNK_ROWS, concurrency: int = 1, num_gpus: float = 0,
                   cpus_per_actor: float = 1, address: str | None = None, num_cpus: int | None = None) -> int:
    """Embed `input_path` into the Parquet directory `out` with `concurrency` actors; returns the rows written.

    Each actor holds `cpus_per_actor` CPUs and `num_gpus` GPUs; without `address` a local cluster of
    `num_cpus` CPUs (default: all) is started. Leave the cluster one CPU beyond the actors' for Ray's file listing.
    """
    import pyarrow.parquet as pq
    import ray.data

    fmt = detect_format(Path(input_path), fmt)
    if Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise BulkError(f"{out} exists and is not empty; --ray writes a fresh directory, choose another --out")
    init_ray(address, num_cpus)
    ds = read_input(input_path, fmt)
    names = ds.schema().names
    if id_field not in names:
        raise BulkError(f"--ray needs an id column, and {Path(input_path).name} has no {id_field!r} "
                        f"(it has {', '.join(map(repr, names))}); name it with --id-field, or embed without --ray "
                        "(which numbers the lines)")
    require_column(Path(input_path), names, text_field)
    kwargs = {"model": model, "input_type": input_type, "task": task, "normalize": normalize, "truncate": truncate,
              "text_field": text_field, "id_field": id_field, "input_path": str(input_path), "fmt": fmt,
              "long_texts": long_texts}
    # Streaming (no shuffle): a block per batch, so a single large file still feeds every actor.
    ds = ds.repartition(target_num_rows_per_block=batch_rows)
    ds.map_batches(EmbedBatches, fn_constructor_kwargs=kwargs, batch_format="pyarrow", batch_size=batch_rows,
                   compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=cpus_per_actor,
                   num_gpus=num_gpus).write_parquet(out, ray_remote_args={"num_cpus": IO_CPUS})
    return sum(pq.read_metadata(p).num_rows for p in Path(out).glob("*.parquet"))
