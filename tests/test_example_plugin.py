"""The third-party plugin path, end to end: pip-install docs/examples/mfx-example-detector and use it.

This is what a plugin author does (issue #7): ``pip install -e`` a package that
declares ``[project.entry-points.mfx]``, then see its classes in ``mfx plugins``,
load it alone with ``MFX_LOAD_PLUGINS``, and name its detector in
``mfx compare``. Every step runs the real ``mfx`` console script in a
subprocess, so entry-point discovery is exercised exactly as users meet it.
The package is uninstalled afterwards, whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "examples" / "mfx-example-detector"
DISTRIBUTION = "mfx-example-detector"
EXAMPLE_NAMES = {("detector", "example"), ("noise_extractor", "example-laplacian"), ("generator", "example-spectral")}


def _mfx_executable() -> str:
    """The ``mfx`` console script of the interpreter running the tests."""
    beside = Path(sys.executable).with_name("mfx")
    found = str(beside) if beside.exists() else shutil.which("mfx")
    if found is None:
        pytest.skip("the mfx console script is not installed in this environment")
    return found


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MFX_LOAD_PLUGINS"}
    env.update({"HF_HUB_OFFLINE": "1", "MFX_ALLOW_DOWNLOAD": "0", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    env.update(extra)
    return env


def _run(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=_env(**env), cwd=REPO)


def _pip(*args: str) -> subprocess.CompletedProcess:
    # --no-deps and --no-build-isolation: nothing is fetched from any index (setuptools is already installed).
    return _run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args], timeout=180,
                PIP_NO_INDEX="1")


@pytest.fixture(scope="module")
def installed_example():
    """``pip install -e docs/examples/mfx-example-detector`` for this module; uninstalled at the end."""
    result = _pip("install", "--no-deps", "--no-build-isolation", "-q", "-e", str(EXAMPLE))
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
    try:
        yield _mfx_executable()
    finally:
        _pip("uninstall", "-y", "-q", DISTRIBUTION)


def _plugins_json(mfx: str, **env: str) -> dict:
    result = _run([mfx, "plugins", "--json"], **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_installed_plugin_appears_with_its_distribution(installed_example):
    listing = _plugins_json(installed_example)
    ours = {(row["kind"], row["name"]) for row in listing["registered"] if row["distribution"] == DISTRIBUTION}
    assert ours == EXAMPLE_NAMES
    assert any(row["name"] == "freq" for row in listing["registered"])  # built-ins are still there beside it
    assert not [p for p in listing["problems"] if p["distribution"] == DISTRIBUTION]
    example = next(row for row in listing["registered"] if row["name"] == "example")
    assert example["presets"] == ["full", "tiny"] and example["config"] == "ExampleConfig"


def test_load_plugins_variable_loads_only_the_example(installed_example):
    listing = _plugins_json(installed_example, MFX_LOAD_PLUGINS=DISTRIBUTION)
    assert {(row["kind"], row["name"]) for row in listing["registered"]} == EXAMPLE_NAMES
    assert {p["distribution"] for p in listing["plugins"]} == {DISTRIBUTION}


def test_example_package_own_tests_pass_against_the_installed_plugin(installed_example):
    result = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                  timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def _compare_ready() -> str | None:
    """Why ``mfx compare --quick`` cannot run in this tree yet, or None when it can."""
    import importlib

    from medforensics_core.cli import cli

    if "compare" not in cli.commands:
        return "`mfx compare` is not available yet in this tree"
    try:
        benchmark = importlib.import_module("medforensics_core.benchmark")
    except ImportError as exc:
        return f"the offline benchmark cannot be imported yet ({exc})"
    if not hasattr(benchmark, "default_dataset"):
        return "the offline benchmark (medforensics_core.benchmark.default_dataset) is not written yet"
    return None


def test_compare_runs_the_third_party_detector_beside_a_builtin(installed_example, tmp_path):
    """The short check that runs in every test session: ``mfx compare example freq --quick --epochs 1``."""
    reason = _compare_ready()
    if reason:
        pytest.skip(reason)
    result = _run([installed_example, "compare", "example", "freq", "--quick", "--epochs", "1", "--n-boot", "50",
                   "--out", str(tmp_path)], timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    reports = list(tmp_path.rglob("report.json"))
    assert len(reports) == 1, f"expected one report.json under {tmp_path}"
    report = json.loads(reports[0].read_text())
    detectors = report["detectors"]
    assert {"example", "freq"} <= set(detectors)
    assert all(detectors[name].get("status") == "ok" for name in ("example", "freq"))
    assert "example" in result.stdout


def _docblocks():
    """``tools/docblocks.py`` (runs a tutorial's marked blocks), loaded once per process."""
    import importlib.util

    if "mfx_docblocks" not in sys.modules:
        spec = importlib.util.spec_from_file_location("mfx_docblocks", REPO / "tools" / "docblocks.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["mfx_docblocks"]


@pytest.mark.slow
def test_write_a_plugin_tutorial_runs_as_written(installed_example, tmp_path):
    """The tutorial's commands, as written (its ``pip install`` is this module's fixture)."""
    reason = _compare_ready()
    if reason:
        pytest.skip(reason)
    page = REPO / "docs" / "tutorials" / "write-a-plugin.md"
    result = _docblocks().run_page(page, tmp_path, REPO, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "'example', 'example-laplacian', 'example-spectral'" in result.stdout
    reports = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("report.json")]
    compared = sorted(sorted(report["detectors"]) for report in reports)
    assert compared == [["dski", "example"], ["example", "freq"]]
    for report in reports:
        assert all(entry.get("status") == "ok" for entry in report["detectors"].values())
    assert (tmp_path / "spectral-bench" / "manifest.csv").is_file()  # the plugin's generator made a benchmark
