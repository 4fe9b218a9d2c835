"""Cog's own HTTP server (coglet) for this predictor: its command and its environment.

`python -m e5 serve` execs coglet with `coglet_argv` and `coglet_env`, as a built image runs it (the tests
and benchmarks start it the same way, through `tests/server_process.py`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from ..settings import PROJECT_ROOT as REPO_ROOT


def coglet_argv(host: str, python: str = sys.executable) -> list[str]:
    """The command that starts Cog's HTTP server (coglet) with `python`."""
    return [python, "-m", "cog.server.http", "--host", host]


def coglet_env(predictor: str, port: int, base: dict[str, str], python: str = sys.executable) -> dict[str, str]:
    """`base` plus what coglet needs to serve `predictor` ("file.py:Class") on `port` as a built image would."""
    return {
        **base,
        "COG_PREDICT_TYPE_STUB": predictor,
        "PORT": str(port),
        # A built image sets this from @concurrent(max=...) on run() (or cog.yaml's concurrency.max); so do we.
        "COG_MAX_CONCURRENCY": base.get("COG_MAX_CONCURRENCY") or str(cog_max_concurrency()),
        # coglet starts its worker as `python` from PATH: make that this interpreter.
        "PATH": f"{Path(python).parent}{os.pathsep}{base.get('PATH', '')}",
    }


def cog_max_concurrency(config: Path = REPO_ROOT / "cog.yaml") -> int:
    """The COG_MAX_CONCURRENCY that `cog build` bakes into the image: cog.yaml's deprecated `concurrency.max`
    when set (it takes precedence), else `@concurrent(max=...)` on the predictor's run(), else 1."""
    import yaml  # PyYAML comes with cog, which serving needs anyway

    settings = yaml.safe_load(config.read_text()) or {}
    configured = (settings.get("concurrency") or {}).get("max")
    if configured is not None:
        return int(configured)
    predictor = settings.get("run") or settings.get("predict")
    if not predictor:
        return 1
    module_file, class_name = predictor.split(":")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    spec = importlib.util.spec_from_file_location(f"_cog_predictor_{Path(module_file).stem}",
                                                  config.parent / module_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    runner = getattr(module, class_name)
    method = getattr(runner, "run", None) or getattr(runner, "predict")
    return int(getattr(method, "__cog_concurrent_max__", 1))
