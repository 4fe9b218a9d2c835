"""Reading the E5_* environment settings, with one clear error per malformed value."""

from __future__ import annotations

import os


def env_positive_int(name: str, default: int, what: str = "whole number") -> int:
    """`name` as a positive integer, `default` when unset; `what` says what the number counts."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name} must be a positive {what}, not {value!r}")
    return int(value)


def env_flag(name: str, default: bool) -> bool:
    """`name` as on/off (1/0, true/false, yes/no), `default` when unset."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "on", "yes"):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"{name} must be on or off (1/0, true/false), not {value!r}")


def env_ms(name: str, default: float) -> float:
    """`name` as milliseconds between 0 and 1000, `default` when unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        ms = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number of milliseconds, not {value!r}") from None
    if not 0 <= ms <= 1000:
        raise ValueError(f"{name} must be between 0 and 1000 milliseconds, not {value!r}")
    return ms


def env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """`name` as one of `choices` (case-insensitive), `default` when unset."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value
