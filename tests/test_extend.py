"""``mfx compare --extend RUN_DIR DETECTOR...``: a detector added to a finished comparison.

What a user relies on: the report of the extended copy is the report the comparison would have given had the
new detector been in it from the start (same folds, same test images, same paired tests), the detectors
already there are not trained again, and the run that was extended is left as it was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_compare import error_lines, only_run_dir, run_mfx, small_dataset, test_detectors  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LEAVE_ONE_OUT = ("--protocol", "leave-one-generator-out", "--holdout-by", "generator", "--n-boot", "100")


def _report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def test_extend_trains_only_the_new_detector_and_reports_as_if_compared_together(small_dataset, test_detectors,
                                                                                 tmp_path):
    data = ("--data", str(small_dataset))
    together = run_mfx("compare", "freq", "test-probe", *data, *LEAVE_ONE_OUT, "--out", str(tmp_path / "together"))
    assert together.exit_code == 0, together.output
    reference = _report(only_run_dir(tmp_path / "together"))
    first = run_mfx("compare", "freq", *data, *LEAVE_ONE_OUT, "--out", str(tmp_path / "first"))
    assert first.exit_code == 0, first.output
    source = only_run_dir(tmp_path / "first")
    kept = {p.relative_to(source): p.read_text() for p in source.glob("folds/*/results/freq.json")}
    assert len(kept) == len(reference["holdout"]["folds"]) >= 2

    extended = run_mfx("compare", "--extend", str(source), "test-probe", "--out", str(tmp_path / "extended"))
    assert extended.exit_code == 0, extended.output
    assert extended.output.count("freq: finished in an earlier attempt, kept") == len(kept)
    assert extended.output.count("test-probe: training (") == len(kept)
    assert "unfinished in the earlier attempt" not in extended.output  # the new detector never started before
    run = only_run_dir(tmp_path / "extended")
    report = _report(run)
    assert list(report["detectors"]) == ["freq", "test-probe"]
    for name in ("freq", "test-probe"):
        assert report["detectors"][name]["overall"] == reference["detectors"][name]["overall"]
    assert report["paired"] == reference["paired"]
    assert {p.relative_to(run): p.read_text() for p in run.glob("folds/*/results/freq.json")} == kept
    assert any("test-probe added by --extend" in note and "freq are that run's results" in note
               for note in report["notes"])
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["detectors"] == ["freq", "test-probe"]
    assert config["options"]["extends"][0]["kept"] == ["freq"]
    assert set(config["detectors"]) == {"freq", "test-probe"}
    assert config["detectors"]["freq"] == json.loads((source / "config.json").read_text())["detectors"]["freq"]
    assert not list(source.rglob("test-probe*"))  # the extended run is untouched
    assert _report(source)["detectors"].keys() == {"freq"}


def test_extend_refuses_what_would_not_be_one_comparison(small_dataset, test_detectors, tmp_path):
    base = run_mfx("compare", "freq", "--data", str(small_dataset), "--n-boot", "50", "--out", str(tmp_path / "a"))
    assert base.exit_code == 0, base.output
    source = only_run_dir(tmp_path / "a")
    changed = tmp_path / "changed-images"
    shutil.copytree(source, changed)
    report = _report(changed)
    report["data"]["images_sha256"] = "0" * 64  # what a rebuilt dataset with other pixels would have recorded
    (changed / "report.json").write_text(json.dumps(report))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(source, unfinished)
    (unfinished / "results" / "freq.json").unlink()  # as a run stopped while freq trained leaves it
    no_report = tmp_path / "no-report"
    shutil.copytree(source, no_report)
    (no_report / "report.json").unlink()
    out = ("--out", str(tmp_path / "x"))
    cases = [(("--extend", str(source), "freq"), "freq already compared"),
             (("--extend", str(source), "test-probe", "--set", "freq.max_iter=5"), "which is not added"),
             (("--extend", str(source), "test-probe", "--checkpoint", "freq=f.safetensors"), "which is not added"),
             (("--extend", str(source), "test-probe", "--seed", "3"), "not --seed"),
             (("--extend", str(source), "test-probe", "--merge", str(source)), "not both"),
             (("--extend", str(unfinished), "test-probe"), "freq did not finish"),
             (("--extend", str(no_report), "test-probe"), "is not finished"),
             (("--extend", str(changed), "test-probe"), "now holds other images"),
             (("--extend", str(source)), "name the detectors to add"),
             (("--extend", str(source), "--resume", str(source), "test-probe"), "not both"),
             (("--extend", str(tmp_path / "nowhere"), "test-probe"), "no such run directory")]
    for args, reason in cases:
        result = run_mfx("compare", *args, *out)
        assert result.exit_code == 2 and len(error_lines(result.output)) == 1, (args, result.output)
        assert reason in error_lines(result.output)[0] and "Traceback" not in result.output
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())  # nothing half-made
    # a refusal that comes only once the copy is resumed (here: the data is gone) leaves no copy either
    moved = tmp_path / "moved-data"
    shutil.copytree(small_dataset, moved)
    elsewhere = run_mfx("compare", "freq", "--data", str(moved), "--n-boot", "50", "--out", str(tmp_path / "b"))
    assert elsewhere.exit_code == 0, elsewhere.output
    next(moved.rglob("*.png")).unlink()  # an image lost after the run: found only when the copy's run opens the data
    result = run_mfx("compare", "--extend", str(only_run_dir(tmp_path / "b")), "test-probe", *out)
    assert result.exit_code == 2 and len(error_lines(result.output)) == 1, result.output
    assert "extended " in result.output  # the copy was made, then removed when its run refused to start
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_extend_of_a_multi_seed_run_trains_the_new_detector_once_per_seed(small_dataset, test_detectors, tmp_path):
    """``--seeds 3,4`` then ``--extend``: the same report, per-seed rows and seed-paired tests as naming both."""
    data = ("--data", str(small_dataset), "--seeds", "3,4", "--n-boot", "100")
    assert run_mfx("compare", "freq", "test-probe", *data, "--out", str(tmp_path / "together")).exit_code == 0
    reference = _report(only_run_dir(tmp_path / "together"))
    assert run_mfx("compare", "freq", *data, "--out", str(tmp_path / "first")).exit_code == 0
    extended = run_mfx("compare", "--extend", str(only_run_dir(tmp_path / "first")), "test-probe",
                       "--out", str(tmp_path / "extended"))
    assert extended.exit_code == 0, extended.output
    assert extended.output.count("test-probe: training (") == 2 and ": training (" not in \
        extended.output.replace("test-probe: training (", "")
    report = _report(only_run_dir(tmp_path / "extended"))
    assert report["seeds"] == [3, 4]
    for name in ("freq", "test-probe"):
        assert report["detectors"][name]["overall"] == reference["detectors"][name]["overall"]
    assert report["per_seed"] == reference["per_seed"] and report["paired"] == reference["paired"]
