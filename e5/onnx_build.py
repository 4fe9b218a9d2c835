"""Building the fused ONNX graph of a checkpoint (float32, or int8 for E5_QUANTIZE=int8), in a process of its own.

`build_in_subprocess` runs `build` in a child Python, so the exporter's buffers, its tracing state and the
heap it grows all end with that process: the server never holds them. Built in the serving process, the
export left multilingual-e5-small's worker at 3.4 GB resident after READY (4.3 GB peak), and the torch model
it had traced then ran 4.6x slower in the load-time plan's timing than the same model loaded afresh.

Within the builder, memory is kept to a small multiple of the model:
- the word-embedding table (250,037 x 384 floats, 82% of multilingual-e5-small) is swapped for a few rows
  while the graph is traced and fused, then written into the fused build's data file straight from the
  tensor (int8 is quantised from that build, as its quantised table needs the real values);
- the fusion passes see the graph with its weights as external data, so their shape inference copies the
  graph, not the weights (in memory they peaked at 3.6 GB for a 470 MB model);
- the result is one `model.onnx` beside its weights in `model.onnx.data`, written without a serialised copy.

The recipe (eager attention, ONNX Runtime's BERT fusions, int8 per-channel signed weights with the first
half of the FFN output projections left in float32) is described in `e5.onnx_runtime`.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

# Part of every build's and plan's key: raise it when the export, fusion or quantisation changes what a build
# holds, so that older builds are made again.
RECIPE_VERSION = "2"
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
PRECISIONS = ("float32", "int8")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The parameter whose table is swapped for a stand-in while tracing, and its name in the graph.
_WORD_TABLE = "model.embeddings.word_embeddings.weight"

log = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """The ONNX build failed; the message carries the builder's last lines of output."""


def float32_layers_kept(num_layers: int) -> list[int]:
    """Layers whose FFN output projection stays float32 in int8: the first half (0, 1, 2 of MiniLM's 6)."""
    return list(range((num_layers + 1) // 2))


def build_in_subprocess(weights_dir: Path, outputs: dict[str, Path], threads: int, timeout: float = 1800) -> None:
    """Build each precision of `outputs` ("float32", "int8") for `weights_dir` into its directory (made
    atomically) in a child Python; `BuildError` with the child's last lines of output when it fails."""
    from .settings import child_pythonpath

    env = {**os.environ, "PYTHONPATH": child_pythonpath()}
    command = [sys.executable, "-m", "e5.onnx_build", str(weights_dir), "--threads", str(threads)]
    for precision, out_dir in outputs.items():
        command += [f"--{precision}", str(out_dir)]
    what = " and ".join(outputs)
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"the {what} ONNX build of {weights_dir} took over {timeout:.0f} s") from exc
    if done.returncode != 0 or not all((out / MODEL_FILE).is_file() for out in outputs.values()):
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise BuildError(f"the {what} ONNX build of {weights_dir} failed (exit {done.returncode}): {tail}")


def build(weights_dir: Path, outputs: dict[str, Path]) -> None:
    """Export and fuse the checkpoint in `weights_dir` once, and write each precision of `outputs` ("float32",
    "int8" quantised) into its directory, which appears only when complete (a half-written build is never
    picked up)."""
    import torch
    from transformers import AutoModel

    unknown = set(outputs) - set(PRECISIONS)
    if unknown or not outputs:
        raise ValueError(f"precisions must be among {', '.join(PRECISIONS)}, not {sorted(outputs)}")
    model = AutoModel.from_pretrained(weights_dir, local_files_only=True, trust_remote_code=False,
                                      use_safetensors=True, dtype=torch.float32, attn_implementation="eager").eval()
    config = model.config
    table = model.embeddings.word_embeddings.weight.detach()
    # More rows than the position table, which the fusion tells the word table from by size.
    rows = min(len(table), int(getattr(config, "max_position_embeddings", 512)) + 8)
    model.embeddings.word_embeddings.weight = torch.nn.Parameter(table[:rows].clone(), requires_grad=False)
    parent = next(iter(outputs.values())).parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".onnx-build-") as tmp:
        work = Path(tmp)
        _export(model, work / "exported.onnx")
        del model
        gc.collect()
        fused = _fuse(work, config)
        float32 = work / "float32"
        float32.mkdir()
        _save(fused, float32)
        del fused
        gc.collect()
        _restore_table(float32, table)
        del table
        if "int8" in outputs:
            int8 = work / "int8"
            int8.mkdir()
            _quantise(float32, int8, config)
            _publish(int8, outputs["int8"])
        if "float32" in outputs:
            _publish(float32, outputs["float32"])


def _publish(built: Path, destination: Path) -> None:
    """Move a finished build into place in one step; another process's finished build there is kept."""
    try:
        os.replace(built, destination)
    except OSError:
        if not (destination / MODEL_FILE).is_file():
            raise


def _last_hidden_state(model):
    """The model as a module of keyword arguments only: transformers 5 models take positional tensors for other
    parameters."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    return LastHiddenState()


def _export(model, path: Path) -> None:
    import torch

    sample = torch.ones(2, 8, dtype=torch.long)
    with warnings.catch_warnings():
        # The tracer warns about Python-level branches on shapes; the graph is checked against torch
        # at load, so the warnings would only alarm setup logs.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _last_hidden_state(model), (sample, torch.ones_like(sample), torch.zeros_like(sample)), str(path),
            dynamo=False, opset_version=17, do_constant_folding=True, input_names=list(_INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes={name: {0: "batch", 1: "sequence"} for name in (*_INPUTS, "last_hidden_state")})


def _fuse(work: Path, config):
    """ONNX Runtime's BERT fusions (attention, layer norms, GELU) over the exported graph, weights external."""
    import onnx
    from onnxruntime.transformers import optimizer

    exported = onnx.load(str(work / "exported.onnx"))
    onnx.save(exported, str(work / "external.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="external.data", size_threshold=1024)
    del exported
    graph = onnx.load(str(work / "external.onnx"), load_external_data=False)
    # The fusions read weights through relative external-data paths: resolve them in `work`.
    here = os.getcwd()
    os.chdir(work)
    try:
        # opt_level 0: ONNX Runtime's own pre-pass would load every weight; the fused graph is the same
        # (88 nodes, the same operators, on multilingual-e5-small).
        fused = optimizer.optimize_model(graph, model_type="bert", num_heads=config.num_attention_heads,
                                         hidden_size=config.hidden_size, opt_level=0)
        log.info("onnx: fused operators %s", fused.get_fused_operator_statistics())
        fused.topological_sort()
        onnx.load_external_data_for_model(fused.model, str(work))
    finally:
        os.chdir(here)
    return fused.model


def _restore_table(build: Path, table) -> None:
    """Put the real word-embedding table where the traced stand-in is: its bytes appended to the build's data
    file straight from the tensor (no serialised copy), and the graph's initializer pointed at them."""
    import onnx

    model = onnx.load(str(build / MODEL_FILE), load_external_data=False)
    (initializer,) = [t for t in model.graph.initializer if t.name == _WORD_TABLE] or [None]
    if initializer is None:
        raise BuildError(f"the word-embedding table {_WORD_TABLE} was not found in the fused graph")
    values = table.contiguous().numpy()
    if initializer.data_type != onnx.TensorProto.FLOAT or values.dtype.str != "<f4":
        raise BuildError(f"the word-embedding table is {values.dtype}, expected little-endian float32")
    with open(build / DATA_FILE, "ab") as data:
        offset = (data.tell() + 4095) // 4096 * 4096  # aligned, as onnx aligns the tensors it writes
        data.write(b"\0" * (offset - data.tell()))
        values.tofile(data)
    del initializer.dims[:]
    initializer.dims.extend(values.shape)
    del initializer.external_data[:]
    for name, value in (("location", DATA_FILE), ("offset", str(offset)), ("length", str(values.nbytes))):
        entry = initializer.external_data.add()
        entry.key, entry.value = name, value
    initializer.data_location = onnx.TensorProto.EXTERNAL
    onnx.save(model, str(build / MODEL_FILE))


def _save(model, result: Path) -> None:
    """`model` as `MODEL_FILE` with its weights in `DATA_FILE` (ONNX Runtime's save declares the fused
    operators' domain, which the quantiser's shape inference needs)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    OnnxModel.save(model, str(result / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                   size_threshold=1024)


def _quantise(float32: Path, int8: Path, config) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = [f"/model/encoder/layer.{i}/output/dense/MatMul" for i in float32_layers_kept(config.num_hidden_layers)]
    names = {node.name for node in onnx.load(str(float32 / MODEL_FILE), load_external_data=False).graph.node}
    missing = [name for name in keep if name not in names]
    if missing:  # never quantise the sensitive layers by accident because a name changed
        raise BuildError(f"int8 export: expected nodes not found in the graph: {', '.join(missing)}")
    quantize_dynamic(str(float32 / MODEL_FILE), str(int8 / MODEL_FILE), per_channel=True, reduce_range=False,
                     weight_type=QuantType.QInt8, nodes_to_exclude=keep, use_external_data_format=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a checkpoint's fused ONNX graph (run by the loader).")
    parser.add_argument("weights_dir", type=Path)
    for precision in PRECISIONS:
        parser.add_argument(f"--{precision}", type=Path, metavar="DIR", help=f"write the {precision} build here")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    build(args.weights_dir, {p: getattr(args, p) for p in PRECISIONS if getattr(args, p) is not None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
