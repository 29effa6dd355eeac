"""The detector contract, the core/plugin boundary, the Python API and `mfx index` on every reference bank."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import medforensics_core as mfx
from medforensics_core.contract import Batch, ReferenceBank, SupportsDistributed
from medforensics_core.data.dataset import ImageSet
from medforensics_core.data.manifest import Manifest, read_manifest
from medforensics_core.engine.context import FitContext
from medforensics_core.engine.evaluate import score
from medforensics_core.interfaces import Detector
from medforensics_core.plugins import get_registry

REPO = Path(__file__).resolve().parents[1]
PACKAGE_ROOTS = [REPO / "medforensics_core", *sorted((REPO / "plugins").glob("mfx_*")),
                 *sorted((REPO / "baselines").glob("mfx_*"))]


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def test_no_package_imports_another_plugin_and_the_core_imports_none():
    """Plugins reach each other through the registry only; the core knows interfaces, never a plugin."""
    offences = []
    for root in PACKAGE_ROOTS:
        own = root.name
        for path in sorted(root.rglob("*.py")):
            for line, module in _imported_modules(path):
                top = module.split(".")[0]
                if top.startswith("mfx_") and top != own:
                    offences.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert len(PACKAGE_ROOTS) >= 9  # the core, 5 plugins, 4 baselines at least: the walk found the sources
    assert offences == []


def test_python_api_in_a_few_lines(quick_benchmark, tmp_path):
    assert mfx.__version__ and mfx.__version__ != "0+unknown"
    assert {"dski", "freq", "univfd-nn"} <= set(mfx.list_detectors())
    detector = mfx.create_detector("freq", preset="tiny", n_bins=24)
    assert detector.config.n_bins == 24 and not detector.fitted
    detector.fit(mfx.open_images(quick_benchmark, split="train"), None, FitContext())
    path = detector.save(tmp_path / "freq.safetensors")
    loaded = mfx.load_detector(path)  # the detector's name comes from the checkpoint
    assert type(loaded) is type(detector) and loaded.config.n_bins == 24
    test = read_manifest(Path(quick_benchmark) / "manifest.csv").split("test")
    files = [str(row.resolved(test.root)) for row in test.rows[:6]]
    image = mfx.read_image(files[0])
    assert image.shape[0] == 3 and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
    scores = mfx.score(loaded, files)
    expected = score(detector, ImageSet(Manifest(test.rows[:6], test.root)))
    np.testing.assert_allclose(scores, expected, atol=1e-9)


def test_capabilities_are_declared_and_listed():
    registry = get_registry()
    assert issubclass(registry.detector("dski"), ReferenceBank)
    assert issubclass(registry.detector("univfd-nn"), ReferenceBank)
    assert not issubclass(registry.detector("dski-no-mfrm"), ReferenceBank)
    assert not issubclass(registry.detector("freq"), ReferenceBank)
    for name in ("cnnspot", "npr", "univfd", "dski"):  # every built-in torch detector trains distributed
        assert issubclass(registry.detector(name), SupportsDistributed), name
    assert not issubclass(registry.detector("freq"), SupportsDistributed)  # scikit-learn: whole set per rank
    from medforensics_core.cli import cli

    result = CliRunner().invoke(cli, ["plugins", "--json", "--kind", "detector"])
    rows = {r["name"]: r for r in json.loads(result.output)["registered"]}
    # univfd-nn builds a bank, it trains nothing through the epoch loop: whole set per rank (it shares UnivFD's
    # features, not the probe's training, so it does not inherit the probe's distributed capability)
    assert rows["univfd-nn"]["capabilities"] == ["reference-bank"]
    assert rows["univfd"]["capabilities"] == ["distributed"]
    assert rows["freq"]["capabilities"] == []


def test_one_load_call_and_the_old_two_are_refused():
    with pytest.raises(TypeError, match="load_state"):
        type("Old", (Detector,), {"load_extra_state": lambda self, state: None})


def test_batches_carry_rows_to_predict_proba(quick_benchmark):
    """The engine hands predict_proba a Batch whose rows are the images' manifest rows."""
    seen: list[str] = []

    class Spy(Detector):
        name = "spy"

        def preprocess(self, image):
            return image.mean((1, 2))

        def fit(self, train, val=None, ctx=None):
            return self

        def predict_proba(self, batch):
            assert isinstance(batch, Batch)
            seen.extend(batch.modalities or ["<no rows>"] * len(batch))
            return np.full(len(batch), 0.5)

    images = ImageSet(read_manifest(Path(quick_benchmark) / "manifest.csv").split("test"))
    score(Spy(), images, batch_size=7)
    assert seen == [row.modality for row in images.rows]
    assert Spy().predict_proba(torch.zeros(2, 3)).shape == (2,)  # a bare tensor becomes a batch without rows
    assert seen[-2:] == ["<no rows>"] * 2


def test_index_add_changes_univfd_nn_scores_on_the_added_generator(quick_benchmark, tmp_path):
    """References of a generator univfd-nn never saw enter its bank: that generator's other fakes score higher."""
    from medforensics_core.cli import cli

    manifest = read_manifest(Path(quick_benchmark) / "manifest.csv")
    train = ImageSet(manifest.split("train"))
    generators = sorted({r.generator for r in train.rows if r.label == 1})
    held_out = generators[0]
    seen_train = train.subset([i for i, r in enumerate(train.rows) if r.generator != held_out])
    detector = get_registry().detector("univfd-nn")(preset="tiny").fit(seen_train, None,
                                                                         FitContext(cache_dir=tmp_path / "cache"))
    checkpoint = detector.save(tmp_path / "nn.safetensors")
    support = [r for r in train.rows if r.generator == held_out][:8]
    modality = support[0].modality
    support = [r for r in support if r.modality == modality]
    test = ImageSet(manifest.split("test"))
    target = test.subset([i for i, r in enumerate(test.rows) if r.generator == held_out and r.modality == modality])
    assert len(support) >= 2 and len(target) >= 2
    before = score(mfx.load_detector(checkpoint), target)
    adapted = tmp_path / "adapted.safetensors"
    result = CliRunner().invoke(cli, ["index", "add", str(checkpoint), *[str(r.resolved(train.root)) for r in support],
                                      "--label", "fake", "--generator", held_out, "--modality", modality,
                                      "-o", str(adapted)])
    assert result.exit_code == 0, result.output
    loaded = mfx.load_detector(adapted)
    assert len(loaded.bank) == len(detector.bank) + len(support)
    after = score(loaded, target)
    assert after.mean() > before.mean() and not np.allclose(after, before)
    shown = CliRunner().invoke(cli, ["index", "show", str(adapted), "--json"])
    groups = json.loads(shown.output)["groups"]
    assert {"label": "fake", "generator": held_out, "modality": modality, "count": len(support)} in groups


def test_index_refuses_a_detector_without_bank_in_one_line(quick_benchmark, tmp_path):
    from medforensics_core.cli import cli

    freq = mfx.create_detector("freq", preset="tiny").fit(mfx.open_images(quick_benchmark, split="val"), None,
                                                           FitContext())
    path = freq.save(tmp_path / "freq.safetensors")
    result = CliRunner().invoke(cli, ["index", "show", str(path)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "no reference bank" in result.output


def test_reports_follow_the_typed_schema(tmp_path):
    """A real run's report.json holds only the keys the schema declares, with the documented entry fields."""
    from medforensics_core.cli import cli
    from medforensics_core.report.schema import DetectorEntry, GroupMetrics, Report

    result = CliRunner().invoke(cli, ["compare", "freq", "--quick", "--n-boot", "0", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(next(tmp_path.glob("*/report.json")).read_text())
    assert set(report) - set(Report.__annotations__) == set()
    entry = report["detectors"]["freq"]
    assert set(entry) - set(DetectorEntry.__annotations__) == set() and entry["status"] == "ok"
    assert set(entry["overall"]) - set(GroupMetrics.__annotations__) == set()
    assert entry["trainable_params"] == 0  # freq's logistic regression is held as buffers, not parameters
