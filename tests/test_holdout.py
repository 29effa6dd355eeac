"""Leave-one-out folds by generator, network and family: what reaches training, val and retrieval banks.

The dataset is the real-image set of ``test_compare`` (skimage fundus, IHC, cell crops with three
manipulations), its manifest given ``family``/``network`` columns the way a benchmark build writes
them: ``noise`` and ``smooth`` come from one shared network per modality (as ``sdedit`` reuses
``ddpm``'s denoiser), ``upsample`` from its own. One training fake and one val real are given the
source of a test real, as a manifest whose given splits cut through a source would.
"""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path
from typing import ClassVar

import pytest
from test_compare import HighPassProbe, build_small_dataset, error_lines, only_run_dir, run_mfx

from medforensics_core.data.manifest import read_manifest, write_manifest
from medforensics_core.engine.protocols import DataBundle, ProtocolOptions, make_folds
from medforensics_core.hookspecs import hookimpl

NETWORK = {"upsample": "{m}-sr", "noise": "{m}-unet", "smooth": "{m}-unet"}
FAMILY = {"upsample": "super-resolution", "noise": "diffusion", "smooth": "diffusion"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def networked(tmp_path_factory) -> Path:
    """The small dataset with family/network columns and two rows that straddle a test source."""
    root = build_small_dataset(tmp_path_factory.mktemp("networked"))
    rows = read_manifest(root / "manifest.csv").rows
    for row in rows:
        if row.label == 1:
            row.family, row.network = FAMILY[row.generator], NETWORK[row.generator].format(m=row.modality)
    shared = next(r for r in rows if r.split == "test" and r.label == 0).source
    next(r for r in rows if r.split == "train" and r.generator == "upsample").source = shared
    next(r for r in rows if r.split == "val" and r.label == 0).source = shared
    write_manifest(rows, root / "manifest.csv")
    return root / "manifest.csv"


def folds_of(manifest: Path, protocol: str = "leave-one-generator-out", **options):
    data = DataBundle(read_manifest(manifest), manifest)
    return data, make_folds(protocol, data, ProtocolOptions(**options))


def reaching_training(fold) -> list:
    """Every row a detector of this fold can learn from or put in a bank: train, val and few-shot support."""
    sets = [fold.train, fold.val, fold.support]
    return [row for images in sets if images is not None for row in images.rows]


def test_leave_one_network_out_keeps_held_out_networks_and_test_sources_away_from_training(networked):
    data, folds = folds_of(networked)  # --holdout-by network is the default
    assert [f.name for f in folds] == ["noise+smooth", "upsample"]
    for fold in folds:
        held = set(fold.holdout["networks"])
        assert fold.holdout["by"] == "network" and held
        test_sources = {r.source_key for r in fold.test.rows}
        seen = reaching_training(fold)
        assert len(seen) > 100
        assert not [r.path for r in seen if r.networks & held]
        assert not [r.path for r in seen if r.source_key in test_sources]
        # the test set: the held-out networks' fakes of the test split and every test real
        assert {r.generator for r in fold.test.rows if r.label == 1} == set(fold.holdout["generators"])
        assert all(r.networks <= held for r in fold.test.rows if r.label == 1)
        assert sum(r.label == 0 for r in fold.test.rows) == sum(r.label == 0 for r in data.split_rows("test").rows)
        # the straddling val real, and the straddling upsample fake where upsample is not held out anyway
        straddling = 1 if fold.name == "upsample" else 2
        assert f"{straddling} train/val image(s) share a source with a test image" in " ".join(fold.notes)
    # the other networks' fakes do train: nothing more is held out than asked
    noise_fold = folds[0]
    assert {r.generator for r in noise_fold.train.rows if r.label == 1} == {"upsample"}


def test_few_shot_support_comes_from_the_held_out_network_but_never_from_a_test_source(networked):
    _, (fold,) = folds_of(networked, "few-shot", holdout="smooth", shots=6)
    assert fold.name == "noise+smooth"
    support = fold.support.rows
    fakes = [r for r in support if r.label == 1]
    reals = [r for r in support if r.label == 0]
    # K references per class: the held-out network's fakes, and reals of the same modalities
    assert len(fakes) == 6 and {r.generator for r in fakes} <= {"noise", "smooth"}
    assert len(reals) == 6 and {r.modality for r in reals} <= {r.modality for r in fakes}
    test_sources = {r.source_key for r in fold.test.rows}
    assert not {r.source_key for r in support} & test_sources
    held = set(fold.holdout["networks"])
    assert not [r for r in [*fold.train.rows, *fold.val.rows] if r.networks & held]


def test_holdout_by_generator_and_family(networked):
    _, by_generator = folds_of(networked, holdout_by="generator")
    assert [f.name for f in by_generator] == ["noise", "smooth", "upsample"]
    noise = by_generator[0]
    # the v1 behaviour: smooth's fakes, made by the same network, stay in training, and the notes say so
    assert "smooth" in {r.generator for r in noise.train.rows}
    assert any("also made smooth, which stay in training" in n for n in noise.notes)
    _, by_family = folds_of(networked, holdout_by="family")
    assert [f.name for f in by_family] == ["diffusion", "super-resolution"]
    assert by_family[0].holdout["generators"] == ["noise", "smooth"]


def test_holdout_by_bad_input_is_one_line(networked, small_dataset, tmp_path):
    def refused(*args: str, reason: str) -> None:
        result = run_mfx("compare", "freq", "--out", str(tmp_path / "runs"), "--protocol", "leave-one-generator-out",
                         *args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and len(error_lines(result.output)) == 1, result.output
        assert reason in error_lines(result.output)[0]
        assert not (tmp_path / "runs").exists()

    refused("--data", str(networked), "--holdout-by", "model",
            reason="--holdout-by must be generator, network or family, not 'model'")
    # small_dataset's manifest has the columns, blank (no generator.json, no builder to fill them)
    refused("--data", str(small_dataset), "--holdout-by", "network", reason="no fake image in")
    refused("--data", str(small_dataset), "--holdout-by", "family", reason="the 'family' column is empty")
    # a manifest written by another tool, without the columns at all
    lines = (small_dataset / "manifest.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if name not in ("family", "network", "params")]
    (small_dataset / "other.csv").write_text("\n".join(",".join(line.split(",")[i] for i in keep) for line in lines))
    refused("--data", str(small_dataset / "other.csv"), "--holdout-by", "family", reason="has no 'family' column")
    partial = tmp_path / "partial.csv"
    rows = read_manifest(networked).rows
    blank = next(r for r in rows if r.generator == "smooth")
    blank.network = ""
    write_manifest(rows, partial)
    refused("--data", str(partial), reason=f"1 of {sum(r.label for r in rows)} fake images")
    refused("--data", str(partial), reason=blank.path)


def test_default_falls_back_to_generator_when_no_network_is_recorded(small_dataset):
    _, folds = folds_of(small_dataset / "manifest.csv")
    assert [f.name for f in folds] == ["noise", "smooth", "upsample"]
    assert all(f.holdout["by"] == "generator" for f in folds)
    assert "held out by generator" in folds[0].notes[0] and "records no network" in folds[0].notes[0]


# --------------------------------------------------------------------------- end to end: what fit() receives


@dataclasses.dataclass
class Seen:
    train: list
    val: list


class RecordingProbe(HighPassProbe):
    """The probe, recording the rows every ``fit`` call is given (its bank, if it had one, is built from them)."""

    name: ClassVar[str] = "test-recorder"
    description: ClassVar[str] = "test detector that records what it trains on"
    seen: ClassVar[list[Seen]] = []

    def fit(self, train, val=None, ctx=None):
        RecordingProbe.seen.append(Seen(list(train.rows), list(val.rows) if val is not None else []))
        return super().fit(train, val, ctx)


recorder_plugin = types.ModuleType("mfx_test_recorder_plugin")


@hookimpl
def _register_recorder(register):
    register(RecordingProbe)


recorder_plugin.register_detectors = _register_recorder


def test_compare_trains_each_fold_without_its_held_out_networks_or_test_sources(networked, fresh_registry, tmp_path):
    fresh_registry.register_plugin(recorder_plugin, "mfx-test-recorder")
    RecordingProbe.seen.clear()
    try:
        result = run_mfx("compare", "test-recorder", "--data", str(networked), "--out", str(tmp_path),
                         "--protocol", "leave-one-generator-out", "--n-boot", "50", "--epochs", "1")
    finally:
        fresh_registry.unregister_plugin(recorder_plugin)
    assert result.exit_code == 0, result.output
    run = only_run_dir(tmp_path)
    report = json.loads((run / "report.json").read_text())
    assert report["holdout"]["by"] == "network"
    folds = report["holdout"]["folds"]
    assert list(folds) == ["noise+smooth", "upsample"] and len(RecordingProbe.seen) == 2
    for (name, holdout), seen in zip(folds.items(), RecordingProbe.seen):
        fold_report = json.loads((run / "folds" / name / "report.json").read_text())
        test_paths = {r["path"] for r in _csv_rows(run / "folds" / name / "scores.csv")}
        test_sources = {r.source_key for r in read_manifest(networked).rows if r.path in test_paths}
        rows = seen.train + seen.val
        assert rows and not [r.path for r in rows if r.networks & set(holdout["networks"])]
        assert not [r.path for r in rows if r.source_key in test_sources]
        assert fold_report["bootstrap"]["resamples"] == "sources"  # no scan column: sources, and no scan note
        assert not any("test scans" in note for note in fold_report["notes"])
    entry = report["detectors"]["test-recorder"]
    assert set(entry["by_generator"]) == {"noise", "smooth", "upsample"}
    assert set(entry["by_holdout"]) == {"noise+smooth", "upsample"}
    html = (run / "report.html").read_text()
    assert "By held-out fold" in html and "noise+smooth" in html


def _csv_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return build_small_dataset(tmp_path_factory.mktemp("plain"))
