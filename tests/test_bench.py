"""The benchmark's smoke run: every section runs end to end and its checks hold (no timing is asserted)."""

import json
import subprocess
import sys

from conftest import REPO_ROOT


def test_the_benchmark_runs_every_section_and_loses_no_request(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "bench/bench.py", "--quick", "--clients", "1,4", "--gpu-device", "cpu", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())

    library = report["library"]
    assert library["parity_min_cosine"] > 0.99999  # same vectors as sentence-transformers
    assert all(r["tokens_per_second"] > 0 and r["ratio_to_peer"] > 0 for r in library["runners"].values())
    assert "vs peer" in proc.stdout

    for clients in ("1", "4"):
        level = report["http"]["clients"][clients]
        assert level["on"]["failures"] == level["off"]["failures"] == 0
        assert level["no-op"]["requests_per_second"] > 0
        assert level["speedup"] > 0
    assert report["http"]["bare_call_p50_ms"] > 0

    bulk = report["bulk"]
    assert bulk["runners"]["embed-file (in process)"]["ratio_to_library"] > 0
    assert all(r["tokens_per_second"] > 0 for r in bulk["runners"].values()) and len(bulk["runners"]) == 4
    assert bulk["peak_rss"]["texts"] == 200 and bulk["peak_rss"]["bytes"] > 100 * 2**20  # a loaded model at least

    assert set(report["gpu"]["models"]) == {"e5-small-v2@128", "e5-small-v2@512"}
