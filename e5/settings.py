"""Every E5_* setting, read once from the environment into one frozen `Settings`.

`load_service` (and each CLI command) calls `Settings.from_env()` once and passes the object down;
no other module reads E5_* variables, and constructors take plain values. Each malformed value
is one clear error that names the variable and what it must be.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Mapping

from .cog_tools.folders import DEFAULT_KEEP_SECONDS
from .errors import ServiceError
from .limits import DEFAULT_MAX_CHARS, DEFAULT_MAX_TEXTS, DEFAULT_MAX_TOKENS, DEFAULT_MAX_WINDOWS, Limits
from .memory import DEFAULT_TRIM_SECONDS

# The checkout (or install) holding the e5 package, predict.py, weights/ and .cog/: defined here only.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def child_pythonpath() -> str:
    """PYTHONPATH for a child Python (the ONNX builder, local Ray actors) that imports e5 from this checkout."""
    return os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))


class Quantize(str, Enum):
    """E5_QUANTIZE: float weights, or int8 through ONNX Runtime (CPU, opt-in)."""

    NONE = "none"
    INT8 = "int8"


class CpuRuntime(str, Enum):
    """E5_CPU_RUNTIME: what runs float32 on the CPU; `auto` measures at load where nothing else is pinned."""

    AUTO = "auto"
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"


class Packing(str, Enum):
    """E5_PACKING: padding-free passes for the BERT and XLM-RoBERTa checkpoints (e5.packed). `auto`: a candidate
    the CPU's measured plan times like the others, padded on CUDA until a GPU has confirmed the packed path;
    `on`: every pass packed (in torch), checked against the padded path at load; `off`: every pass padded."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class CudaGraphs(str, Enum):
    """E5_CUDA_GRAPHS: `auto` leaves packed passes unrecorded until a GPU has confirmed the recorded path
    (e5.graphs); `on` records them on a CUDA device (packed passes needed: E5_PACKING=on); `off` never."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class DType(str, Enum):
    """E5_DTYPE: the precision the model runs in (unset: per device)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


VERIFY_LEVELS = ("size", "full")  # what setup checks against a manifest: sizes, or sizes and every byte's sha256
DEFAULT_BATCH_WAIT_MS = 2.0
_ON = ("1", "true", "on", "yes")
_OFF = ("0", "false", "off", "no")


@dataclass(frozen=True)
class Settings:
    """The service's configuration; the defaults are what an unset variable means."""

    model: str | None = None  # E5_MODEL: registry name; else the one baked under weights/, else the default
    weights_dir: Path | None = None  # E5_WEIGHTS_DIR: load this Hugging Face directory instead
    weights_root: Path = PROJECT_ROOT / "weights"  # E5_WEIGHTS_ROOT: where weights/<name>/ live
    allow_download: bool = False  # E5_ALLOW_DOWNLOAD: setup may fetch a missing checkpoint
    device: str | None = None  # E5_DEVICE: cpu, cuda, cuda:1 (default: CUDA when present)
    dtype: DType | None = None  # E5_DTYPE (default: per device)
    quantize: Quantize = Quantize.NONE  # E5_QUANTIZE
    cpu_runtime: CpuRuntime = CpuRuntime.AUTO  # E5_CPU_RUNTIME, for float32 on the CPU
    packing: Packing = Packing.AUTO  # E5_PACKING: padding-free passes (BERT and XLM-RoBERTa)
    cuda_graphs: CudaGraphs = CudaGraphs.AUTO  # E5_CUDA_GRAPHS: packed passes recorded on a GPU (e5.graphs)
    # E5_CACHE_DIR: ONNX builds and the CPU's measured plans (else $XDG_CACHE_HOME/e5, as Hugging Face's caches)
    cache_dir: Path = Path.home() / ".cache" / "e5"
    remeasure: bool = False  # E5_REMEASURE: measure the CPU's plan at this boot even where one is cached
    token_budget: int | None = None  # E5_TOKEN_BUDGET: padded tokens per pass (default: per device)
    dynamic_batching: bool = True  # E5_DYNAMIC_BATCHING
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS  # E5_BATCH_WAIT_MS
    max_texts: int = DEFAULT_MAX_TEXTS  # E5_MAX_TEXTS
    max_chars: int = DEFAULT_MAX_CHARS  # E5_MAX_CHARS
    max_tokens: int = DEFAULT_MAX_TOKENS  # E5_MAX_TOKENS
    max_windows: int = DEFAULT_MAX_WINDOWS  # E5_MAX_WINDOWS: windows per request with long_texts chunks or mean
    chunk_overlap: int | None = None  # E5_CHUNK_OVERLAP: tokens neighbouring windows share (default 1/8 window)
    heap_trim_seconds: float | None = DEFAULT_TRIM_SECONDS  # E5_HEAP_TRIM_SECONDS: seconds, or off
    verify: str = "size"  # E5_VERIFY: one of VERIFY_LEVELS
    # E5_PREDICTION_FOLDER_SECONDS: how long coglet's folder of a finished prediction stays (e5/cog_tools/folders.py)
    prediction_folder_seconds: float | None = DEFAULT_KEEP_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read every E5_* variable of `environ` (default `os.environ`); `SettingsError` names a malformed one."""
        env = _Env(os.environ if environ is None else environ)
        defaults = cls()
        return cls(
            model=env.text("E5_MODEL"),
            weights_dir=env.path("E5_WEIGHTS_DIR"),
            weights_root=env.path("E5_WEIGHTS_ROOT") or defaults.weights_root,
            allow_download=env.flag("E5_ALLOW_DOWNLOAD", defaults.allow_download),
            device=env.text("E5_DEVICE"),
            dtype=env.member("E5_DTYPE", DType, None),
            quantize=env.member("E5_QUANTIZE", Quantize, defaults.quantize, lower=True),
            cpu_runtime=env.member("E5_CPU_RUNTIME", CpuRuntime, defaults.cpu_runtime, lower=True),
            packing=env.member("E5_PACKING", Packing, defaults.packing, lower=True),
            cuda_graphs=env.member("E5_CUDA_GRAPHS", CudaGraphs, defaults.cuda_graphs, lower=True),
            cache_dir=env.path("E5_CACHE_DIR") or _under(env.path("XDG_CACHE_HOME"), "e5") or defaults.cache_dir,
            remeasure=env.flag("E5_REMEASURE", defaults.remeasure),
            token_budget=env.positive_int("E5_TOKEN_BUDGET", None, "number of tokens"),
            dynamic_batching=env.flag("E5_DYNAMIC_BATCHING", defaults.dynamic_batching),
            batch_wait_ms=env.milliseconds("E5_BATCH_WAIT_MS", defaults.batch_wait_ms),
            max_texts=env.positive_int("E5_MAX_TEXTS", defaults.max_texts),
            max_chars=env.positive_int("E5_MAX_CHARS", defaults.max_chars),
            max_tokens=env.positive_int("E5_MAX_TOKENS", defaults.max_tokens),
            max_windows=env.positive_int("E5_MAX_WINDOWS", defaults.max_windows),
            chunk_overlap=env.count("E5_CHUNK_OVERLAP", defaults.chunk_overlap, "number of tokens"),
            heap_trim_seconds=env.seconds_or_off("E5_HEAP_TRIM_SECONDS", defaults.heap_trim_seconds),
            verify=env.choice("E5_VERIFY", VERIFY_LEVELS, defaults.verify, lower=True),
            prediction_folder_seconds=env.seconds_or_off("E5_PREDICTION_FOLDER_SECONDS",
                                                         defaults.prediction_folder_seconds),
        )

    @property
    def limits(self) -> Limits:
        """The per-request limits."""
        return Limits(self.max_texts, self.max_chars, self.max_tokens, self.max_windows)


def _under(directory: Path | None, name: str) -> Path | None:
    return directory / name if directory is not None else None


class SettingsError(ServiceError, ValueError):
    """An E5_* variable with a value it cannot take; the message names it and the rule."""


class _Env:
    """Typed reads of one environment mapping; blank counts as unset."""

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ

    def raw(self, name: str) -> str:
        return self.environ.get(name, "").strip()

    def text(self, name: str) -> str | None:
        return self.raw(name) or None

    def path(self, name: str) -> Path | None:
        value = self.raw(name)
        return Path(value) if value else None

    def choice(self, name: str, choices: tuple[str, ...], default: str | None, lower: bool = False) -> str | None:
        value = self.raw(name).lower() if lower else self.raw(name)
        if not value:
            return default
        if value not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, not {self.raw(name)!r}")
        return value

    def member(self, name: str, kind: type[Enum], default: Enum | None, lower: bool = False):
        value = self.choice(name, tuple(member.value for member in kind), None, lower)
        return default if value is None else kind(value)

    def positive_int(self, name: str, default: int | None, what: str = "whole number") -> int | None:
        value = self.raw(name)
        if not value:
            return default
        if not value.isdigit() or int(value) < 1:
            raise SettingsError(f"{name} must be a positive {what}, not {value!r}")
        return int(value)

    def count(self, name: str, default: int | None, what: str = "whole number") -> int | None:
        value = self.raw(name)
        if not value:
            return default
        if not value.isdigit():
            raise SettingsError(f"{name} must be a {what} (0 or more), not {value!r}")
        return int(value)

    def seconds_or_off(self, name: str, default: float | None) -> float | None:
        value = self.raw(name).lower()
        if value in _OFF + ("none",):
            return None
        if not value:
            return default
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds <= 3600:
            raise SettingsError(f"{name} must be a number of seconds between 0 and 3600, or off, not {self.raw(name)!r}")
        return seconds

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name).lower()
        if not value:
            return default
        if value in _ON:
            return True
        if value in _OFF:
            return False
        raise SettingsError(f"{name} must be on or off (1/0, true/false), not {value!r}")

    def milliseconds(self, name: str, default: float) -> float:
        value = self.raw(name)
        if not value:
            return default
        try:
            ms = float(value)
        except ValueError:
            raise SettingsError(f"{name} must be a number of milliseconds, not {value!r}") from None
        if not 0 <= ms <= 1000:
            raise SettingsError(f"{name} must be between 0 and 1000 milliseconds, not {value!r}")
        return ms
