"""What the CPU's load-time measurement decided, kept in E5_CACHE_DIR so that a warm boot measures nothing.

A `LoadRecord` holds the runtimes a checkpoint serves in on this machine, the pass plan that splits passes
between them, and the accuracy checks taken when it was measured. It is stored as JSON beside the ONNX
builds, under a `PlanKey` of everything that decides it: the CPU (model and the instruction sets that set
its speed), the thread count, the checkpoint's files, the library versions and the settings. Any change
there measures again, and the log says which part changed; E5_REMEASURE=1 measures again regardless.

Measuring multilingual-e5-small's plan took 11 s of a 22 s warm boot on 2 cores, and its result could
differ from boot to boot where two runtimes are within the plan's margin; read from here it is the same
plan every time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .onnx_build import RECIPE_VERSION
from .pass_plan import PassPlan, Runtime
from .settings import Settings
from .weights import checkpoint_fingerprint

log = logging.getLogger(__name__)

# Bumped when what is measured, or how, changes: older records are then measured again.
PLAN_VERSION = "4"
# The instruction sets that decide which runtime and precision are fastest (bf16 and int8 units, vector width).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile",
               "fma", "f16c")


def cpu_identity(cpuinfo: str | None = None) -> tuple[str, str]:
    """(model name, the `SPEED_FLAGS` it has) from /proc/cpuinfo (or `cpuinfo`); ("unknown", "") elsewhere."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return fields.get("model name", "unknown"), " ".join(flag for flag in SPEED_FLAGS if flag in flags)


@dataclass(frozen=True)
class PlanSettings:
    """The settings a CPU load's measurement depends on, by their values (E5_DTYPE unset is None)."""

    dtype: str | None
    quantize: str
    cpu_runtime: str
    packing: str
    token_budget: int | None

    @classmethod
    def of(cls, settings: Settings) -> "PlanSettings":
        return cls(settings.dtype and settings.dtype.value, settings.quantize.value, settings.cpu_runtime.value,
                   settings.packing.value, settings.token_budget)


@dataclass(frozen=True)
class PlanKey:
    """Everything a CPU load's measurement depends on; a record is used only under an equal key."""

    cpu: str
    cpu_flags: str
    threads: int
    checkpoint: str
    versions: str
    settings: PlanSettings

    def digest(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def differences(self, other: "PlanKey") -> list[str]:
        """What differs from `other`, one phrase a field ("threads 4 -> 2", "token_budget None -> 4096")."""
        def changed(new, old, apart: tuple[str, ...] = ()) -> list[str]:
            return [f"{field.name} {getattr(old, field.name)!r} -> {getattr(new, field.name)!r}"
                    for field in dataclasses.fields(new)
                    if field.name not in apart and getattr(new, field.name) != getattr(old, field.name)]

        return [*changed(self, other, apart=("settings",)), *changed(self.settings, other.settings)]


def library_versions() -> str:
    """The versions of what computes the vectors and of the recipes that build and measure them (read from the
    installed packages' metadata: importing transformers to ask would cost a warm boot 0.9 s)."""
    from importlib import metadata

    import torch

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "none"

    return f"torch {torch.__version__}, transformers {installed('transformers')}, " \
           f"onnxruntime {installed('onnxruntime')}, onnx recipe {RECIPE_VERSION}, plan {PLAN_VERSION}"


def plan_key(weights_dir: Path, settings: PlanSettings, threads: int, cpuinfo: str | None = None,
             versions: str | None = None) -> PlanKey:
    """The key of a load of `weights_dir` with these settings on this machine."""
    cpu, flags = cpu_identity(cpuinfo)
    return PlanKey(cpu, flags, threads, checkpoint_fingerprint(weights_dir),
                   library_versions() if versions is None else versions, settings)


@dataclass(frozen=True)
class LoadRecord:
    """What a CPU load measured: the runtimes that serve, their pass plan (None for one runtime without a
    measured plan), and the checks and timings, in words and figures, for the log and the load report."""

    key: PlanKey
    runtimes: tuple[Runtime, ...]
    plan: PassPlan | None = None
    onnx_max_abs_diff: float | None = None
    bf16_min_cosine: float | None = None
    packed_min_cosine: float | None = None
    int8_min_cosine: float | None = None
    int8_mean_cosine: float | None = None
    int8_texts: int | None = None
    notes: tuple[str, ...] = ()
    measured_at: str = ""
    measure_seconds: float = 0.0

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LoadRecord":
        data = json.loads(text)
        data["key"] = PlanKey(**{**data["key"], "settings": PlanSettings(**data["key"]["settings"])})
        data["runtimes"] = tuple(Runtime(**runtime) for runtime in data["runtimes"])
        data["notes"] = tuple(data.get("notes", ()))
        if (plan := data.get("plan")) is not None:
            large = plan.pop("large")
            data["plan"] = PassPlan(Runtime(**plan.pop("small")), None if large is None else Runtime(**large), **plan)
        return cls(**data)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class PlanCache:
    """The records of one checkpoint name in `cache_dir`: `<name>-plan-<key digest>.json`."""

    def __init__(self, cache_dir: Path, name: str):
        self.cache_dir = Path(cache_dir)
        self.name = name

    def path(self, key: PlanKey) -> Path:
        return self.cache_dir / f"{self.name}-plan-{key.digest()}.json"

    def tokenizer_path(self, key: PlanKey) -> Path:
        """Where the checkpoint's tokenizer is kept as its Rust JSON, beside the record."""
        return self.cache_dir / f"{self.name}-tokenizer-{key.digest()}.json"

    def read(self, key: PlanKey) -> tuple[LoadRecord | None, str]:
        """The record under `key`, or None and why there is none (what changed since the newest other record
        of this checkpoint name, or that the file is unreadable)."""
        path = self.path(key)
        try:
            record = LoadRecord.from_json(path.read_text())
        except FileNotFoundError:
            return None, self._why_missing(key)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            return None, f"the cached plan {path} is unreadable ({type(exc).__name__}: {exc})"
        if record.key != key:
            return None, f"the cached plan {path} was measured for another key: {'; '.join(key.differences(record.key))}"
        return record, f"measured {record.measured_at}, cached in {path}"

    def _why_missing(self, key: PlanKey) -> str:
        others = []
        for path in self.cache_dir.glob(f"{self.name}-plan-*.json"):
            try:
                others.append((path.stat().st_mtime, LoadRecord.from_json(path.read_text()).key))
            except (OSError, ValueError, TypeError, KeyError):
                continue
        same_checkpoint = [item for item in others if item[1].checkpoint == key.checkpoint] or others
        if not same_checkpoint:
            return "no plan measured yet for this checkpoint here"
        newest = max(same_checkpoint, key=lambda item: item[0])[1]
        return "the cached plan was measured with " + "; ".join(key.differences(newest))

    def write(self, record: LoadRecord, tokenizer=None) -> str | None:
        """Store `record` (and `tokenizer`, a `CheckpointTokenizer`), each file atomically and the record last;
        the reason it could not be stored (the service runs on, measuring again at the next boot), else None."""
        files = tokenizer.to_files(self.tokenizer_path(record.key)) if tokenizer is not None else {}
        files[self.path(record.key)] = record.to_json()
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            for path, text in files.items():
                # A name of its own per writer: two servers booting on one cache never mix their bytes.
                with tempfile.NamedTemporaryFile("w", dir=self.cache_dir, prefix=f".{path.name}-",
                                                 delete=False) as out:
                    out.write(text)
                os.replace(out.name, path)
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None
