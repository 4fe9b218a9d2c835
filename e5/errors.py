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


class E5Error(Exception):
    """Any error this library raises on purpose."""


class RequestError(E5Error, ValueError):
    """A request the service cannot answer; the message names the input and the rule."""


class ServiceError(E5Error, RuntimeError):
    """The service cannot serve as configured; the message names the setting, file or device and the fix."""
