"""One frozen settings object, read once from the environment; each malformed value is a named error."""

import dataclasses
from pathlib import Path

import pytest

from e5.settings import PROJECT_ROOT, Settings, SettingsError


def test_unset_means_the_defaults():
    assert Settings.from_env({}) == Settings()
    defaults = Settings()
    assert defaults.weights_root == PROJECT_ROOT / "weights" and defaults.quantize == "none"
    assert defaults.token_budget is None and defaults.dynamic_batching and defaults.batch_wait_ms == 2.0
    assert defaults.heap_trim_seconds == 1.0 and not defaults.allow_download
    assert defaults.prediction_folder_seconds == 30.0


def test_every_variable_is_read():
    env = {"E5_MODEL": "e5-base-v2", "E5_WEIGHTS_DIR": "/w", "E5_WEIGHTS_ROOT": "/r", "E5_ALLOW_DOWNLOAD": "yes",
           "E5_DEVICE": "cpu", "E5_DTYPE": "bfloat16", "E5_QUANTIZE": "INT8", "E5_CACHE_DIR": "/c",
           "E5_TOKEN_BUDGET": "4096", "E5_DYNAMIC_BATCHING": "off", "E5_BATCH_WAIT_MS": "0.5", "E5_MAX_TEXTS": "7",
           "E5_MAX_CHARS": "70", "E5_MAX_TOKENS": "700", "E5_HEAP_TRIM_SECONDS": "off",
           "E5_VERIFY": "FULL", "E5_CPU_RUNTIME": "onnxruntime", "E5_PACKING": "On",
           "E5_PREDICTION_FOLDER_SECONDS": "2.5"}
    assert Settings.from_env(env) == Settings(
        model="e5-base-v2", weights_dir=Path("/w"), weights_root=Path("/r"), allow_download=True, device="cpu",
        dtype="bfloat16", quantize="int8", cache_dir=Path("/c"), token_budget=4096, dynamic_batching=False,
        batch_wait_ms=0.5, max_texts=7, max_chars=70, max_tokens=700, heap_trim_seconds=None,
        verify="full", cpu_runtime="onnxruntime", packing="on", prediction_folder_seconds=2.5)


def test_the_cache_follows_xdg_cache_home_unless_e5_cache_dir_is_set():
    assert Settings.from_env({"XDG_CACHE_HOME": "/x"}).cache_dir == Path("/x/e5")
    assert Settings.from_env({"XDG_CACHE_HOME": "/x", "E5_CACHE_DIR": "/c"}).cache_dir == Path("/c")
    assert Settings.from_env({}).cache_dir == Path.home() / ".cache" / "e5"


@pytest.mark.parametrize("name,value,message", [
    ("E5_TOKEN_BUDGET", "lots", "E5_TOKEN_BUDGET must be a positive number of tokens, not 'lots'"),
    ("E5_MAX_TEXTS", "0", "E5_MAX_TEXTS must be a positive whole number, not '0'"),
    ("E5_BATCH_WAIT_MS", "2000", "E5_BATCH_WAIT_MS must be between 0 and 1000 milliseconds, not '2000'"),
    ("E5_DYNAMIC_BATCHING", "maybe", "E5_DYNAMIC_BATCHING must be on or off (1/0, true/false), not 'maybe'"),
    ("E5_ALLOW_DOWNLOAD", "perhaps", "E5_ALLOW_DOWNLOAD must be on or off (1/0, true/false), not 'perhaps'"),
    ("E5_QUANTIZE", "fp4", "E5_QUANTIZE must be one of none, int8, not 'fp4'"),
    ("E5_DTYPE", "float8", "E5_DTYPE must be one of float32, float16, bfloat16, not 'float8'"),
    ("E5_HEAP_TRIM_SECONDS", "-1", "E5_HEAP_TRIM_SECONDS must be a number of seconds between 0 and 3600, or off, "
                                   "not '-1'"),
    ("E5_PREDICTION_FOLDER_SECONDS", "1h", "E5_PREDICTION_FOLDER_SECONDS must be a number of seconds between 0 "
                                           "and 3600, or off, not '1h'"),
    ("E5_VERIFY", "sha", "E5_VERIFY must be one of size, full, not 'sha'"),
    ("E5_PACKING", "yes", "E5_PACKING must be one of auto, on, off, not 'yes'"),
])
def test_a_malformed_value_names_the_variable_and_the_rule(name, value, message):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({name: value})
    assert str(err.value) == message


def test_the_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().model = "e5-base-v2"


def test_the_environment_is_read_where_the_service_is_loaded(monkeypatch, checkpoints):
    from e5.service import load_service

    monkeypatch.setenv("E5_WEIGHTS_DIR", str(checkpoints["bert"]))
    monkeypatch.setenv("E5_MODEL", "e5-small-v2")
    monkeypatch.setenv("E5_TOKEN_BUDGET", "300")
    monkeypatch.setenv("E5_MAX_TEXTS", "5")
    monkeypatch.setenv("E5_BATCH_WAIT_MS", "7")
    service = load_service(batching=True)
    assert service.encoder.token_budget == 300 and service.preprocessor.limits.max_texts == 5
    assert service.engine.max_wait == pytest.approx(0.007)
    service.engine.close()
