"""The documentation builds strictly, and the tutorials run as written.

``mkdocs build --strict`` fails on a broken link, a missing page or an API
reference to a module that does not import, so building it here catches what a
reader would hit. Each tutorial's blocks marked ``<!-- mfx:test -->`` run in
order in a fresh folder (see ``tools/docblocks.py``); the plugin tutorial runs
in ``test_example_plugin.py``, where its package is installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _docblocks():
    if "mfx_docblocks" in sys.modules:
        return sys.modules["mfx_docblocks"]
    spec = importlib.util.spec_from_file_location("mfx_docblocks", REPO / "tools" / "docblocks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


docblocks = _docblocks()

# Tutorials whose marked blocks run here (write-a-plugin.md runs in test_example_plugin.py). The ones that
# train DSKI and CNN baselines end to end take minutes on two CPU cores: they carry the ``slow`` mark.
TUTORIALS = ["quickstart.md", "own-data.md", "few-shot.md", "gpu.md"]
SLOW_TUTORIALS = {"quickstart.md", "few-shot.md"}


def _mkdocs() -> list[str]:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("the docs extra is not installed (pip install -e '.[docs]')")
    return [sys.executable, "-m", "mkdocs"]


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    env = docblocks.tutorial_env({"NO_MKDOCS_2_WARNING": "1"})
    result = subprocess.run([*_mkdocs(), "build", "--strict", "--quiet", "--site-dir", str(site)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return site


def test_site_builds_strictly_with_every_page(built_site):
    for page in ("index.html", "tutorials/quickstart/index.html", "reference/cli/index.html",
                 "reference/plugins/index.html", "reference/api/interfaces/index.html"):
        assert (built_site / page).is_file(), page


def test_plugin_directory_is_generated_from_the_registry(built_site):
    from medforensics_core.plugins import plugin_rows

    html = (built_site / "reference" / "plugins" / "index.html").read_text(encoding="utf-8")
    assert "mfx:plugin-table" not in html  # the hook replaced the marker
    # Built-in plugins only: a third-party one may be installed or removed by another test meanwhile.
    builtin = [row for row in plugin_rows() if row["distribution"] == "medforensics"]
    assert {"dski", "cnnspot", "univfd", "npr", "freq"} <= {row["name"] for row in builtin}
    for row in builtin:
        assert f"<code>{row['name']}</code>" in html, row["name"]


def test_cli_reference_lists_every_command_plugin_commands_included(built_site):
    import click

    from medforensics_core.cli import cli

    html = (built_site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    names = cli.list_commands(click.Context(cli))  # built-in commands plus those plugins add
    assert {"compare", "data", "plugins"} <= set(names)
    for name in names:
        assert f"mfx {name}" in html, name
    assert "Sentinel.UNSET" not in html


def test_api_reference_renders_docstrings(built_site):
    html = (built_site / "reference" / "api" / "interfaces" / "index.html").read_text(encoding="utf-8")
    assert "predict_proba" in html and "scikit-learn-like surface" in html
    assert ":meth:" not in html and ":class:" not in html  # Sphinx roles rendered as plain code


def test_site_loads_nothing_from_other_hosts(built_site):
    """The docs read offline: no web fonts, no scripts or styles from a CDN."""
    for page in built_site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        for needle in ("fonts.googleapis", "fonts.gstatic", "cdn.jsdelivr", "unpkg.com"):
            assert needle not in text, f"{page.relative_to(built_site)} loads {needle}"


def test_every_tutorial_has_commands_that_are_tested():
    for name in [*TUTORIALS, "write-a-plugin.md"]:
        page = DOCS / "tutorials" / name
        assert page.is_file(), name
        if name != "gpu.md":  # the GPU page's main commands need a GPU; its offline check is tested
            assert docblocks.marked_blocks(page), f"{name} has no <!-- mfx:test --> block"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TUTORIALS else n
                                  for n in TUTORIALS])
def test_tutorial_runs_as_written(name, tmp_path):
    page = DOCS / "tutorials" / name
    if not docblocks.marked_blocks(page):
        pytest.skip(f"{name} has no runnable block")
    result = docblocks.run_page(page, tmp_path, REPO, timeout=1800)
    assert result.returncode == 0, (f"{name}: a marked block failed\n--- stdout\n{result.stdout[-4000:]}\n"
                                    f"--- stderr\n{result.stderr[-6000:]}")


def test_readme_python_example_runs(quick_benchmark, tmp_path):
    """The README's five-line Python API example runs as written and prints one score per test image."""
    import re

    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"<!-- mfx:test -->\n```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1 and len(blocks[0].strip().splitlines()) == 5
    result = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env=docblocks.tutorial_env({}))
    assert result.returncode == 0, result.stderr[-3000:]
    n_test = sum(1 for line in (Path(quick_benchmark) / "manifest.csv").read_text().splitlines()[1:]
                 if ",test," in line)
    printed = result.stdout.replace("[", " ").replace("]", " ").split()
    assert len(printed) == n_test and all(0.0 <= float(v) <= 1.0 for v in printed)
