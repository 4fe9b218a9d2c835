"""ONNX Runtime on the CPU: the fused float32 graph (the CPU default where it serves the model) and opt-in int8.

Both are built once per checkpoint by `e5.onnx_build`, in a child process, and kept under `E5_CACHE_DIR`;
`OnnxBackbone` runs one. int8 (`E5_QUANTIZE=int8`): the recipe, measured on all-MiniLM-L6-v2 on this project's
CPU machines (2 cores, AVX-512 VNNI): export with eager attention (ONNX Runtime's BERT optimizer cannot fuse an
SDPA export), fuse, then `quantize_dynamic` with per-channel, full-range, signed int8 weights. The FFN output
projection of the first half of the layers stays float32: its inputs carry a few outlier channels (absolute
values around 20 against a median near 1) that int8 would flatten. Against float32 that measured about
2.2-2.6x the speed at min cosine 0.988 and mean 0.992; quantising everything was faster (2.5x) but fell to min
0.977, and torch's own dynamic int8 reached only 1.6-1.7x. Where the load measures (`e5.loader`), it checks the
loss on `PROBE_TEXTS` and times int8 against what would serve without it (`Int8Check`, the load's record).

The same fused graph without quantising is the default float32 path on the CPU (`E5_CPU_RUNTIME=auto`,
as text-embeddings-inference runs ONNX Runtime on CPUs): vectors equal to torch's within float rounding,
at a fraction of torch's per-operator cost on short inputs. Where it cannot run (e5-mistral, a GPU, a
model over 2 GiB, onnxruntime missing) or its build fails, `auto` stays on torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import ServiceError
from .onnx_build import MODEL_FILE, RECIPE_VERSION, build_in_subprocess
from .pass_plan import Framework, Runtime
from .registry import Family, ModelSpec
from .threads import threads_started_named
from .weights import checkpoint_fingerprint

log = logging.getLogger(__name__)

INT8_FAMILIES = (Family.BERT, Family.XLM_ROBERTA)
# Protobuf caps one ONNX file at 2 GiB; the graph itself needs a little room beside the weights.
ONNX_FILE_LIMIT = 2**31 - 2**26
# Largest difference to torch's vectors on the probe texts that the float32 ONNX build may show.
ONNX_FLOAT32_TOLERANCE = 1e-4

# Texts of everyday length and topic for the self-check at load time.
PROBE_TEXTS = [
    "query: how much protein should a female eat",
    "passage: As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 "
    "is 46 grams per day. But, as you can see from this chart, you'll need to increase that if you're "
    "expecting or training for a marathon.",
    "query: summit define",
    "passage: Definition of summit for English Language Learners: the highest point of a mountain.",
    "query: why is the sky blue",
    "passage: Sunlight is scattered by the molecules of the air; blue light is scattered more than red "
    "because it travels as shorter, smaller waves.",
    "query: rust borrow checker cannot borrow as mutable",
    "passage: The train to Lisbon leaves at 7:40 from platform 3; tickets bought on board cost 20% more.",
    "query: ok",
    "passage: Preheat the oven to 180 degrees. Mix the pumpkin puree with eggs, sugar and spices, pour "
    "into the crust and bake for 50 minutes until the centre is set.",
    "query: wann fährt der nächste Zug nach Berlin",
    "passage: 东京是日本的首都，也是世界上人口最多的都市圈之一。",
]


class OnnxRuntimeError(ServiceError):
    """ONNX Runtime, asked for by a setting (E5_QUANTIZE=int8, E5_CPU_RUNTIME=onnxruntime), cannot serve here,
    or its float32 build disagrees with torch."""


@dataclass(frozen=True)
class Int8Check:
    """Cosine of int8 against float32 vectors on `PROBE_TEXTS`, measured when the model loads."""

    texts: int
    min_cosine: float
    mean_cosine: float


def onnx_refusal(spec: ModelSpec, device: torch.device, dtype: torch.dtype, weights_dir: Path | None = None,
                 ) -> str | None:
    """Why ONNX Runtime cannot serve `spec` here, as what it does or needs ('runs on the CPU only (...)'),
    for `choose_runtime` to phrase for the setting the user set; None when it can."""
    if device.type != "cpu":
        return f"runs on the CPU only (this device is {device.type}, where the model already runs in bf16/fp16)"
    if spec.family not in INT8_FAMILIES:
        families = ", ".join(f.value for f in INT8_FAMILIES)
        return f"supports the {families} checkpoints, not {spec.name} ({spec.family.value})"
    if dtype != torch.float32:
        return f"starts from float32 weights, not {str(dtype).removeprefix('torch.')} (E5_DTYPE)"
    size = float32_bytes(weights_dir) if weights_dir is not None else 0
    if size > ONNX_FILE_LIMIT:
        return (f"holds at most 2 GiB of weights in one ONNX file, and {spec.name}'s take {size / 2**30:.2f} GiB "
                "in float32")
    # Whether they are installed, not imported: importing onnx costs 0.7 s of a warm boot that never uses it.
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        return f"needs {' and '.join(missing)}, which are not installed (pip install -e .)"
    return None


def float32_bytes(weights_dir: Path) -> int:
    """Bytes the checkpoint's tensors take in float32, read from its safetensors headers (no weights loaded)."""
    total = 0
    for path in sorted(Path(weights_dir).glob("*.safetensors")):
        with path.open("rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        total += sum(4 * math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    return total


def _cache_key(weights_dir: Path) -> str:
    import onnxruntime

    text = f"{RECIPE_VERSION}|{onnxruntime.__version__}|{checkpoint_fingerprint(weights_dir)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class OnnxBackbone:
    """A `e5.runtimes.Backbone` in ONNX Runtime: one session over a fused graph, float32 or int8 (`name`)."""

    def __init__(self, path: Path, config, threads: int, name: Runtime):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # ORT's CPU arena keeps every region it grows for a new peak shape and never gives it back: a served
        # model's RSS rose 4-6% over a soak after warm-up. Without it buffers come from malloc, which the
        # engine's heap trimming returns; it cost ~4% of batch throughput on MiniLM, within this machine's noise.
        options.enable_cpu_mem_arena = False
        with threads_started_named("e5-onnxruntime"):  # its pool, told apart from the thread that loaded it
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.config = config
        self.path = path
        self.name = name
        self._inputs = {i.name for i in self.session.get_inputs()}

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        (hidden,) = self.session.run(["last_hidden_state"], feeds)
        return torch.from_numpy(hidden)


def build_dir(spec: ModelSpec, weights_dir: Path, cache_dir: Path, precision: str) -> Path:
    """Where the `precision` ONNX build of `weights_dir` lives in `cache_dir` (a directory; see e5.onnx_build)."""
    return cache_dir / f"{spec.name}-{precision}-{_cache_key(weights_dir)}"


def onnx_backbones(spec: ModelSpec, weights_dir: Path, config, cache_dir: Path,
                   precisions: tuple[str, ...]) -> dict[Runtime, "OnnxBackbone"]:
    """The ONNX models of `weights_dir` in `precisions` ("float32", "int8"), by runtime name; those not yet in
    `cache_dir` are built in one child process first (about 15 s for multilingual-e5-small)."""
    paths = {precision: build_dir(spec, weights_dir, cache_dir, precision) for precision in precisions}
    missing = {precision: path for precision, path in paths.items() if not (path / MODEL_FILE).is_file()}
    if missing:
        cache_dir.mkdir(parents=True, exist_ok=True)  # an unusable cache fails here, not in the child
        log.info("onnx: building %s", ", ".join(map(str, missing.values())))
        build_in_subprocess(weights_dir, missing, torch.get_num_threads())
    return {Runtime(Framework.ONNXRUNTIME, precision): onnx_model(spec, weights_dir, config, cache_dir, precision)
            for precision in precisions}


def onnx_model(spec: ModelSpec, weights_dir: Path, config, cache_dir: Path, precision: str) -> "OnnxBackbone":
    """The `precision` build of `weights_dir` already in `cache_dir`; FileNotFoundError when it is not there."""
    path = build_dir(spec, weights_dir, cache_dir, precision) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {precision} ONNX build at {path}")
    return OnnxBackbone(path, config, torch.get_num_threads(), Runtime(Framework.ONNXRUNTIME, precision))


def cosine_check(int8_vectors: torch.Tensor, float32_vectors: torch.Tensor) -> Int8Check:
    """Summarise the per-text cosine between int8 and float32 vectors."""
    cos = torch.nn.functional.cosine_similarity(int8_vectors, float32_vectors, dim=1)
    return Int8Check(len(cos), float(cos.min()), float(cos.mean()))
