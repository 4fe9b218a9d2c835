"""The one family of errors this library raises on purpose, each message naming what is wrong and the rule.

- `RequestError`: the caller's input cannot be answered (an empty request, a text over a limit, an unknown
  preset, a bad option of a bulk job). The message names the input (`texts[3]`, `long_texts`) and the rule.
- `ServiceError`: the service cannot serve: its configuration (an `E5_*` value, an unknown model), its
  weights, its device, or a forward pass that failed. The message names the setting or file and the fix,
  never the host's internals.

Each is raised once, where the fault is found, with its own subclass (`LimitError`, `WeightsError`, ...),
and is never wrapped again on the way up: the predictor lets Cog report it as a failed prediction, and the
command line prints `e5: <message>` for any `E5Error`.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

Choice = TypeVar("Choice", bound=Enum)


class E5Error(Exception):
    """Any error this library raises on purpose."""


class RequestError(E5Error, ValueError):
    """A request the service cannot answer; the message names the input and the rule."""


class ServiceError(E5Error, RuntimeError):
    """The service cannot serve as configured; the message names the setting, file or device and the fix."""


def excerpt(value: object, limit: int = 40) -> str:
    """`repr(value)`, cut to `limit` characters with the full length said, so errors never echo a paste."""
    shown = repr(value)
    if len(shown) <= limit:
        return shown
    length = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{shown[:limit]}…{length}"


def parse_choice(kind: type[Choice], value: object, name: str, error: type[E5Error] = RequestError) -> Choice:
    """`value` as a member of the enum `kind`, else `error` naming the option (`name`) and every allowed value."""
    try:
        return kind(value)
    except ValueError:
        allowed = [repr(member.value) for member in kind]
        raise error(f"{name} must be {', '.join(allowed[:-1])} or {allowed[-1]}, not {excerpt(value)}") from None
