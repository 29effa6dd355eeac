"""``mfx train``, ``mfx evaluate``, ``mfx predict`` and the end-to-end ``mfx compare dski cnnspot univfd --quick``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from medforensics_core.cli import cli
from medforensics_core.decision import verdict
from test_compare import build_small_dataset, error_lines, only_run_dir  # shared real-image test dataset


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_small_dataset(tmp_path_factory.mktemp("cli-run-data"))


@pytest.fixture(scope="module")
def freq_checkpoint(dataset, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "freq.safetensors"
    result = CliRunner().invoke(cli, ["train", "freq", "--data", str(dataset), "-o", str(path)])
    assert result.exit_code == 0, result.output
    assert "trained freq" in result.output
    return path


def real_medical_files(folder: Path) -> dict[str, Path]:
    """Real DICOM (single- and multi-frame) and NIfTI files shipped with pydicom, pydicom-data and nibabel."""
    import nibabel.testing
    from pydicom.data import get_testdata_file

    files = {"ct": Path(get_testdata_file("CT_small.dcm")), "cine": Path(get_testdata_file("emri_small.dcm")),
             "nifti": Path(nibabel.testing.data_path) / "anatomical.nii"}
    folder.mkdir(parents=True, exist_ok=True)
    copied = {}
    for key, path in files.items():
        copied[key] = folder / path.name
        shutil.copy(path, copied[key])
    return copied


def test_evaluate_reproduces_compare_with_the_trained_checkpoint(dataset, freq_checkpoint, tmp_path):
    """train + evaluate and compare share one training function and one scoring loop: same numbers."""
    runner = CliRunner()
    evaluated = runner.invoke(cli, ["evaluate", "freq", "--checkpoint", str(freq_checkpoint), "--data", str(dataset),
                                    "--out", str(tmp_path / "eval"), "--n-boot", "100"])
    assert evaluated.exit_code == 0, evaluated.output
    compared = runner.invoke(cli, ["compare", "freq", "--data", str(dataset), "--out", str(tmp_path / "cmp"),
                                   "--n-boot", "100"])
    assert compared.exit_code == 0, compared.output
    a = json.loads((tmp_path / "eval" / "report.json").read_text())["detectors"]["freq"]
    b = json.loads((only_run_dir(tmp_path / "cmp") / "report.json").read_text())["detectors"]["freq"]
    assert a["overall"] == b["overall"] and a["by_generator"] == b["by_generator"]
    assert a["train_seconds"] is None and a["source"] == "loaded" and a["checkpoint"] == str(freq_checkpoint)
    assert a["threshold"] == b["threshold"] and a["threshold_rule"].startswith("5% FPR on the validation split")
    assert a["precision"] == b["precision"] == "fp32"  # the baselines' official code runs fp32
    flat = " ".join(evaluated.output.split())  # the detector line wraps at the console width
    assert "loaded from checkpoint" in flat and "train 0.0 s" not in flat


def test_workers_reproduce_compare_scores_and_are_noted(dataset, freq_checkpoint, tmp_path):
    """``--workers 2`` scores exactly as the main process does; config.json keeps the option (what ``--resume``
    reads back) and the report says what it changes; a negative count is one clean line."""
    runner = CliRunner()
    runs = {}
    for workers in ("0", "2"):
        result = runner.invoke(cli, ["evaluate", "freq", "--checkpoint", str(freq_checkpoint), "--data", str(dataset),
                                     "--out", str(tmp_path / workers), "--n-boot", "0", "--workers", workers])
        assert result.exit_code == 0, result.output
        runs[workers] = json.loads((tmp_path / workers / "report.json").read_text())
    assert runs["2"]["detectors"]["freq"]["overall"] == runs["0"]["detectors"]["freq"]["overall"]
    assert (tmp_path / "2" / "scores.csv").read_text() == (tmp_path / "0" / "scores.csv").read_text()
    assert json.loads((tmp_path / "2" / "config.json").read_text())["options"]["workers"] == 2
    assert any("2 worker processes" in note for note in runs["2"]["notes"])
    assert not any("worker processes" in note for note in runs["0"]["notes"])
    refused = runner.invoke(cli, ["evaluate", "freq", "--checkpoint", str(freq_checkpoint), "--workers", "-1"])
    assert refused.exit_code == 2 and "--workers" in refused.output and "Traceback" not in refused.output


def test_evaluate_other_split_and_refused_checkpoint(dataset, freq_checkpoint, tmp_path):
    result = CliRunner().invoke(cli, ["evaluate", "freq", "--checkpoint", str(freq_checkpoint), "--data", str(dataset),
                                      "--split", "val", "--out", str(tmp_path / "val"), "--n-boot", "0",
                                      "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "val" / "report.json").read_text())
    assert report["detectors"]["freq"]["precision"] == "bf16" and "precision=bf16" in result.output
    n_val = sum(1 for line in (dataset / "manifest.csv").read_text().splitlines() if ",val," in line)
    assert report["data"]["n_test"] == n_val
    wrong = CliRunner().invoke(cli, ["evaluate", "npr", "--checkpoint", str(freq_checkpoint), "--data", str(dataset)])
    assert wrong.exit_code == 2 and "checkpoint of detector 'freq', not 'npr'" in wrong.output
    assert "Traceback" not in wrong.output


def test_predict_scores_every_frame_of_real_dicom_and_nifti(freq_checkpoint, dataset, tmp_path):
    files = real_medical_files(tmp_path / "inputs")
    png = next((dataset / "test").rglob("*.png"))
    shutil.copy(png, tmp_path / "inputs" / "crop.png")
    result = CliRunner().invoke(cli, ["predict", "freq", "--checkpoint", str(freq_checkpoint),
                                      str(tmp_path / "inputs"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    frames: dict[str, list] = {}
    for p in out["predictions"]:
        frames.setdefault(Path(p["path"]).name, []).append(p["frame"])
        assert 0.0 <= p["score"] <= 1.0 and p["verdict"] == verdict(p["score"], out["threshold"])
    assert frames["emri_small.dcm"] == list(range(10))          # a 10-frame MR cine: one score per frame
    assert frames["anatomical.nii"] == list(range(25))          # every slice of the volume
    assert frames["CT_small.dcm"] == [None] and frames["crop.png"] == [None]
    assert out["bad"] == []


def test_predict_bad_files_skip_or_fail(freq_checkpoint, tmp_path):
    files = real_medical_files(tmp_path / "in")
    bad = tmp_path / "in" / "report.png"
    bad.write_text("<!DOCTYPE html><html><body>not an image</body></html>")
    args = ["predict", "freq", "--checkpoint", str(freq_checkpoint), str(files["ct"]), str(bad),
            str(tmp_path / "missing.dcm")]
    skipped = CliRunner().invoke(cli, args)
    assert skipped.exit_code == 0, skipped.output
    assert "skipped" in skipped.output and "Traceback" not in skipped.output
    # long temporary paths wrap inside the rich table, so check the names through --json
    as_json = json.loads(CliRunner().invoke(cli, [*args, "--json"]).output)
    assert [Path(p["path"]).name for p in as_json["predictions"]] == ["CT_small.dcm"]
    assert sorted(Path(b["path"]).name for b in as_json["bad"]) == ["missing.dcm", "report.png"]
    failed = CliRunner().invoke(cli, ["predict", "freq", "--checkpoint", str(freq_checkpoint), str(files["ct"]),
                                      str(bad), "--on-bad", "fail"])
    assert failed.exit_code == 2
    assert "report.png" in failed.output and "Traceback" not in failed.output
    assert len(error_lines(failed.output)) == 1


def test_compare_dski_cnnspot_univfd_quick_end_to_end(quick_benchmark, tmp_path):
    """The headline command on the quick offline benchmark (tiny presets, one epoch)."""
    result = CliRunner().invoke(cli, ["compare", "dski", "cnnspot", "univfd", "--quick", "--epochs", "1",
                                      "--out", str(tmp_path), "--n-boot", "200"])
    assert result.exit_code == 0, result.output
    run = only_run_dir(tmp_path)
    report = json.loads((run / "report.json").read_text())
    assert report["preset"] == "tiny" and report["data"]["path"] == str(quick_benchmark)
    for name in ("dski", "cnnspot", "univfd"):
        entry = report["detectors"][name]
        assert entry["status"] == "ok", entry.get("error")
        for view, groups in (("by_modality", report["data"]["modalities"]),
                             ("by_generator", report["data"]["generators"])):
            assert set(entry[view]) == set(groups)
            for group in entry[view].values():
                for metric in ("auc", "ap", "acc"):
                    assert group[metric] is not None
                if group["n_clusters"] == 1:  # a modality cut from one scan file: no interval to give
                    assert group["auc_ci"] is None and group["ap_ci"] is None
                    continue
                assert group["auc_ci"][0] - 1e-9 <= group["auc"] <= group["auc_ci"][1] + 1e-9
                assert group["ap_ci"] is not None
    assert {p["b"] for p in report["paired"]} | {report["paired"][0]["a"]} == {"dski", "cnnspot", "univfd"}
    boot = report["bootstrap"]  # the benchmark's scan column: intervals resample scan files, not crops
    assert boot["resamples"] == "scans" and boot["n_scans"] <= boot["n_clusters"] < boot["n_sources"]
    assert report["detectors"]["dski"]["overall"]["n_clusters"] == boot["n_clusters"]
    assert any(f"{boot['n_clusters']} test scans" in note for note in report["notes"])
    assert any("test scans also gave training images" in note for note in report["notes"])  # cut by region
    stages = report["detectors"]["dski"]
    assert all(0 <= stages[key] <= 1 for key in ("stage1_auc", "retrieval_auc", "fused_auc"))
    assert stages["fused_auc"] == pytest.approx(stages["overall"]["auc"], abs=1e-4)
    assert "stage1_auc" not in report["detectors"]["cnnspot"]
    html = (run / "report.html").read_text()
    assert all(name in html for name in ("dski", "cnnspot", "univfd"))
    for plot in ("roc.png", "by_modality.png"):
        assert (run / plot).stat().st_size > 1000


def test_test_split_missing_a_label_is_reported_not_a_crash(dataset, freq_checkpoint, tmp_path):
    """A modality whose test images are all real, and a test split with no fakes at all: n/a, not a crash."""
    lines = (dataset / "manifest.csv").read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    only_real_test = [l for l in rows if not (",test," in l and l.split(",")[1] == "1")]
    partial = [l for l in rows if not (",test," in l and ",microscopy," in l and l.split(",")[1] == "1")]
    for name, kept in (("partial", partial), ("reals", only_real_test)):
        (dataset / f"{name}.csv").write_text(header + "".join(kept))
        out = tmp_path / name
        result = CliRunner().invoke(cli, ["evaluate", "freq", "--checkpoint", str(freq_checkpoint),
                                          "--data", str(dataset / f"{name}.csv"), "--out", str(out), "--n-boot", "50"])
        assert result.exit_code == 0, result.output
        assert "n/a" in result.output
        entry = json.loads((out / "report.json").read_text())["detectors"]["freq"]
        assert entry["by_modality"]["microscopy"]["auc"] is None
        assert entry["by_modality"]["microscopy"]["real_acc"] is not None
        if name == "reals":
            assert entry["overall"]["auc"] is None and entry["overall"]["n_fake"] == 0
        else:
            assert entry["by_modality"]["fundus"]["auc"] is not None


def test_predict_streams_a_2000_frame_dicom_one_frame_at_a_time(freq_checkpoint, tmp_path, monkeypatch):
    """A 2,000-frame MR cine is scored frame by frame: never more than a couple of decoded frames alive."""
    import gc
    import weakref

    import pydicom
    from pydicom.data import get_testdata_file

    from medforensics_core.engine import predict as predict_module

    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))  # 10 frames of 64x64, 16-bit, uncompressed
    ds.PixelData = ds.PixelData * 200
    ds.NumberOfFrames = 2000
    cine = tmp_path / "cine-2000.dcm"
    ds.save_as(cine)
    alive: list[weakref.ref] = []
    most = []
    original = predict_module.iter_frames

    def watched(path, **kwargs):
        for index, loaded in original(path, **kwargs):
            if index % 100 == 99:  # a full collection per frame would dominate the test's time
                gc.collect()
                most.append(sum(ref() is not None for ref in alive))
            alive.append(weakref.ref(loaded.tensor))
            yield index, loaded

    monkeypatch.setattr(predict_module, "iter_frames", watched)
    result = CliRunner().invoke(cli, ["predict", "freq", "--checkpoint", str(freq_checkpoint), str(cine), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [p["frame"] for p in out["predictions"]] == list(range(2000))
    assert {p["modality"] for p in out["predictions"]} == {"mri"}
    assert len(most) == 20 and max(most) <= 2  # earlier frames were released, not collected in a list
