"""``mfx data check`` on a folder seeded with every kind of bad file, next to real good ones."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import nibabel
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image
from pydicom.data import get_testdata_file

from medforensics_core.cli import cli
from medforensics_core.data.dataset import ImageSet
from medforensics_core.data.manifest import ManifestRow, Manifest, write_manifest
from medforensics_core.errors import BadInputError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

WIDE = {"COLUMNS": "250"}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path) -> None:
    """A 60-byte PNG whose (valid, CRC-checked) IHDR claims 30000x30000 8-bit grey pixels."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + png_chunk(b"IEND", b""))


# name -> the part of the reason `mfx data check` must give
BAD_FILES = {
    "empty.png": "empty file (0 bytes)",
    "truncated.png": "truncated or corrupt PNG data",
    "random.jpg": "unknown format",
    "page.png": "HTML, not an image",
    "bomb.png": "header says 30000x30000",
    "plan.dcm": "DICOM without pixel data",
    "nan.tif": "all NaN/inf",
    "nan.nii.gz": "all NaN/inf",
}


@pytest.fixture
def seeded(tmp_path) -> Path:
    folder = tmp_path / "mixed"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "good.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "good_ct.dcm")
    shutil.copy(os.path.join(NIBABEL_DATA, "example4d.nii.gz"), folder / "good_mri.nii.gz")
    (folder / "empty.png").write_bytes(b"")
    good_bytes = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(good_bytes[: len(good_bytes) // 2])
    (folder / "random.jpg").write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (folder / "page.png").write_text("<!DOCTYPE html>\n<html><head><title>Not found</title></head></html>")
    bomb_png(folder / "bomb.png")
    shutil.copy(get_testdata_file("rtplan.dcm"), folder / "plan.dcm")
    tifffile.imwrite(folder / "nan.tif", np.full((16, 16), np.nan, dtype=np.float32))
    nibabel.save(nibabel.Nifti1Image(np.full((8, 8, 4), np.nan, np.float32), np.eye(4)), folder / "nan.nii.gz")
    (folder / "notes.txt").write_text("a file that is not an image is listed, not read")
    return folder


def test_check_names_every_bad_file_with_its_reason(seeded):
    assert (seeded / "bomb.png").stat().st_size < 100
    result = CliRunner().invoke(cli, ["data", "check", str(seeded)], env=WIDE)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    bad_lines = {name: line for line in result.output.splitlines() for name in BAD_FILES if f"/{name}: " in line}
    for name, reason in BAD_FILES.items():
        assert name in bad_lines, f"{name} not reported:\n{result.output}"
        assert reason in bad_lines[name], bad_lines[name]
    for good in ("good.png", "good_ct.dcm", "good_mri.nii.gz"):
        assert f"/{good}: " not in result.output
    assert "8 bad file(s) of 11" in result.output
    assert "notes.txt" in result.output


def test_check_json_lists_the_same_files(seeded):
    result = CliRunner().invoke(cli, ["data", "check", str(seeded), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)  # the log (a 4-D NIfTI read at its first volume) goes to stderr
    reasons = {Path(issue["path"]).name: issue["reason"] for issue in report["bad"]}
    assert set(reasons) == set(BAD_FILES)
    assert all(BAD_FILES[name] in reason for name, reason in reasons.items())
    assert report["checked"] == 11 and [Path(p).name for p in report["ignored"]] == ["notes.txt"]


def test_check_stops_at_first_bad_with_on_bad_fail(seeded):
    result = CliRunner().invoke(cli, ["data", "check", str(seeded), "--on-bad", "fail", "--json"])
    assert result.exit_code == 1
    assert len(json.loads(result.stdout)["bad"]) == 1


def test_check_of_a_clean_manifest_exits_zero_and_catches_changed_files(seeded, tmp_path):
    rows = [ManifestRow(path=name, label=i % 2, source=name) for i, name in
            enumerate(["good.png", "good_ct.dcm", "good_mri.nii.gz#3"])]
    from medforensics_core.data.manifest import sha256_file

    for row in rows:
        row.sha256 = sha256_file(seeded / row.path.split("#")[0])
    write_manifest(rows, seeded / "clean.csv")
    ok = CliRunner().invoke(cli, ["data", "check", str(seeded / "clean.csv")], env=WIDE)
    assert ok.exit_code == 0, ok.output
    assert "all 3 image(s) read cleanly" in ok.output
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(seeded / "good.png")  # changed after indexing
    changed = CliRunner().invoke(cli, ["data", "check", str(seeded / "clean.csv"), "--json"])
    assert changed.exit_code == 1
    assert json.loads(changed.stdout)["bad"][0]["reason"].startswith("sha256 differs")
    unhashed = CliRunner().invoke(cli, ["data", "check", str(seeded / "clean.csv"), "--no-hash"])
    assert unhashed.exit_code == 0


def test_check_notes_scans_in_two_splits_without_failing(seeded):
    """A patient (scan) with images in train and test is said, as a note: MedForensics-mini cuts its few scans by
    region on purpose, so it is not refused; the exit status stays 0."""
    rows = [ManifestRow(path="good.png", label=0, split="train", source="a", scan="patient-1"),
            ManifestRow(path="good_ct.dcm", label=1, split="test", source="b", scan="patient-1"),
            ManifestRow(path="good_mri.nii.gz#3", label=0, split="test", source="c", scan="patient-2")]
    write_manifest(rows, seeded / "scans.csv")
    result = CliRunner().invoke(cli, ["data", "check", str(seeded / "scans.csv")], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "note: 1 of 2 scans have images in more than one split (e.g. patient-1 in test, train)" in result.output
    rows[1].scan = "patient-3"
    write_manifest(rows, seeded / "scans.csv")
    clean = json.loads(CliRunner().invoke(cli, ["data", "check", str(seeded / "scans.csv"), "--json"]).stdout)
    assert clean["notes"] == [] and clean["bad_count"] == 0


def test_check_of_a_missing_path_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["data", "check", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "not found" in result.output and "Traceback" not in result.output


def test_imageset_follows_on_bad_with_these_readers(seeded):
    names = ["good.png", "page.png", "good_ct.dcm", "bomb.png"]
    manifest = Manifest([ManifestRow(path=n, label=i % 2) for i, n in enumerate(names)], seeded)
    images = ImageSet(manifest, on_bad="skip")
    assert [r.path for r in images.rows] == ["good.png", "good_ct.dcm"]
    assert [Path(p).name for p, _ in images.skipped] == ["page.png", "bomb.png"]
    assert images[1][0].shape == (3, 128, 128)
    with pytest.raises(BadInputError, match="HTML, not an image"):
        ImageSet(manifest, on_bad="fail")
