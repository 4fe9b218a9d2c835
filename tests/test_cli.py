"""The command line, run as a user runs it."""

import json
import os
import subprocess
import sys

import pytest

from e5.registry import MODELS

from conftest import REPO_ROOT


# Starts servers, runs the benchmark or loads real weights: not in the fast subset.
pytestmark = pytest.mark.slow


def run_cli(*args, **env):
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-m", "e5", *args], cwd=REPO_ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_serve_without_weights_or_network_says_so_in_one_line(tmp_path):
    # HF_ENDPOINT points at a closed local port (conftest), so the hub is unreachable.
    done = run_cli("serve", "--model", "e5-base-v2", E5_WEIGHTS_ROOT=str(tmp_path))
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("e5: cannot download intfloat/e5-base-v2: the Hugging Face hub cannot be reached")
    assert "E5_WEIGHTS_DIR" in error and "python -m e5 serve --demo" in error


def test_embed_prints_the_response(checkpoints):
    done = run_cli("embed", "--model", "e5-mistral-7b-instruct", "--query", "how much protein",
                   "--passage", "46 grams a day", E5_WEIGHTS_DIR=str(checkpoints["mistral"]))
    assert done.returncode == 0, done.stderr
    response = json.loads(done.stdout)
    assert response["model"] == "e5-mistral-7b-instruct"
    assert -1.0 <= response["score"] <= 1.0 and len(response["query_embedding"]) == 32


def test_embed_takes_document_and_writes_the_npy_file_it_names(checkpoints, tmp_path):
    import numpy as np

    npy_file = tmp_path / "rows.npy"
    done = run_cli("embed", "--model", "e5-small-v2", "--document", "46 grams a day", "--text", "one", "--text", "two",
                   "--encoding-format", "npy", "--npy-file", str(npy_file), E5_WEIGHTS_DIR=str(checkpoints["bert"]))
    assert done.returncode == 0, done.stderr
    response = json.loads(done.stdout)
    assert response["embeddings"] is None and response["embeddings_file"] == str(npy_file)
    assert np.load(npy_file).shape == (2, 32) and len(response["passage_embedding"]) == 32


def test_embed_reports_request_errors_without_a_traceback(checkpoints):
    done = run_cli("embed", "--model", "e5-small-v2", E5_WEIGHTS_DIR=str(checkpoints["bert"]))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("e5: nothing to embed")
    assert "Traceback" not in done.stderr


def test_list_shows_every_checkpoint():
    done = run_cli("list")
    assert done.returncode == 0
    for name in MODELS:
        assert name in done.stdout


def test_schema_check_passes_on_the_committed_schema():
    assert run_cli("schema", "--check").returncode == 0


def test_embed_without_weights_names_the_fixes_in_one_line(tmp_path):
    done = run_cli("embed", "--model", "e5-large-v2", "--query", "q", E5_WEIGHTS_ROOT=str(tmp_path))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("e5: weights for e5-large-v2 are not in ") and "python -m e5 fetch e5-large-v2" in line


def test_a_bad_quantize_setting_is_one_line(monkeypatch, capsys, checkpoints):
    from e5.__main__ import main

    monkeypatch.setenv("E5_QUANTIZE", "int4")
    monkeypatch.setenv("E5_WEIGHTS_DIR", str(checkpoints["bert"]))
    assert main(["embed", "--model", "e5-small-v2", "--query", "q"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "e5: E5_QUANTIZE must be one of none, int8, not 'int4'"
