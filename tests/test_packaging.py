"""cog.yaml, the pins and CI agree with each other."""

from pathlib import Path

from conftest import REPO_ROOT


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_cog_yaml_builds_a_gpu_image_from_the_pinned_runtime_requirements():
    text = (REPO_ROOT / "cog.yaml").read_text()
    assert "gpu: true" in text
    assert "python_requirements: e5/requirements.txt" in text
    assert 'predict: "predict.py:Predictor"' in text


def test_every_runtime_requirement_is_pinned_and_torch_is_2_13():
    pins = _lines(REPO_ROOT / "e5" / "requirements.txt")
    assert all("==" in pin for pin in pins)
    assert "torch==2.13.0" in pins


def test_tests_install_the_runtime_pins_and_ci_runs_the_readme_command():
    assert "-r ../e5/requirements.txt" in _lines(REPO_ROOT / "tests" / "requirements.txt")
    assert "bash tests/run" in (REPO_ROOT / ".ci" / "run").read_text()
    assert "bash tests/run" in (REPO_ROOT / "README.md").read_text()


def test_the_readme_lists_every_checkpoint_and_task_preset():
    from e5.prompts import TASK_PRESETS
    from e5.registry import MODELS

    readme = (REPO_ROOT / "README.md").read_text()
    for name in MODELS:
        assert f"`{name}`" in readme
    for preset in TASK_PRESETS.values():
        assert f"| `{preset.name}` | {preset.instruction} |" in readme


def test_cog_yaml_allows_concurrent_predictions_and_serve_reads_the_same_number(tmp_path):
    from e5.__main__ import cog_max_concurrency

    # Above the benchmark's 32 clients: coglet frees a slot just after its answer goes out.
    assert cog_max_concurrency() == 64
    plain = tmp_path / "cog.yaml"
    plain.write_text('build:\n  gpu: true\npredict: "predict.py:Predictor"\n')
    assert cog_max_concurrency(plain) == 1


def test_dockerignore_keeps_tests_caches_and_tooling_out_but_not_what_the_image_needs():
    ignored = _lines(REPO_ROOT / ".dockerignore")
    for pattern in (".venv", "tests", "bench", ".git", "weights/*/.cache"):
        assert pattern in ignored
    for needed in ("e5", "predict.py", "cog.yaml", ".cog", "weights", "e5/requirements.txt"):
        assert needed not in ignored


def test_the_bulk_and_ray_extras_are_pinned_and_stay_out_of_the_image():
    runtime = _lines(REPO_ROOT / "e5" / "requirements.txt")
    for extra, needed in (("requirements-bulk.txt", "pyarrow=="), ("requirements-ray.txt", "ray[data]==")):
        pins = [line for line in _lines(REPO_ROOT / "e5" / extra) if not line.startswith("-r ")]
        assert all("==" in pin for pin in pins) and any(pin.startswith(needed) for pin in pins)
        assert not any(pin.split("==")[0].split("[")[0] in {r.split("==")[0] for r in runtime} for pin in pins)
    assert "-r ../e5/requirements-ray.txt" in _lines(REPO_ROOT / "tests" / "requirements.txt")
