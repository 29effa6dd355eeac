"""Folder indexers, group-aware splits, ``open_dataset`` and ``mfx data index`` on temp folders."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image
from pydicom.data import get_testdata_file

from medforensics_core.cli import cli
from medforensics_core.data import open_dataset, read_image
from medforensics_core.data.indexers import detect_layout, index_folder
from medforensics_core.data.manifest import ManifestRow, read_manifest, sha256_file, write_manifest
from medforensics_core.data.splits import assign_splits, split_summary
from medforensics_core.errors import BadInputError, MfxError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 12), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def medforensics_tree(root: Path, *, with_splits: bool, per_folder: int = 6) -> None:
    seed = 0
    splits = ("train", "test") if with_splits else ("",)
    for split in splits:
        for modality in ("CT", "fundus"):
            for generator in ("ddpm", "stylegan"):
                for label in ("0_real", "1_fake"):
                    for i in range(per_folder):
                        seed += 1
                        png(root / split / modality / generator / label / f"{split}img{i}.png", seed)


def test_medforensics_layout_with_split_folders(tmp_path):
    medforensics_tree(tmp_path, with_splits=True)
    (tmp_path / "README.txt").write_text("about this dataset")
    (tmp_path / "train" / "CT" / "ddpm" / "1_fake" / "notes.txt").write_text("not an image")
    assert detect_layout(tmp_path) == "medforensics"
    result = index_folder(tmp_path)
    assert len(result.rows) == 2 * 2 * 2 * 2 * 6
    row = next(r for r in result.rows if r.path == "train/CT/ddpm/1_fake/trainimg3.png")
    assert (row.label, row.modality, row.generator, row.split) == (1, "CT", "ddpm", "train")
    assert row.sha256 == sha256_file(tmp_path / row.path)
    real = next(r for r in result.rows if r.path == "test/fundus/stylegan/0_real/testimg0.png")
    assert (real.label, real.generator, real.split) == (0, "real", "test")
    assert [p.name for p in result.ignored] == ["notes.txt"]
    assert all(r.label == (0 if "/0_real/" in r.path else 1) for r in result.rows)


def test_medforensics_layout_without_splits_gets_group_splits(tmp_path):
    medforensics_tree(tmp_path, with_splits=False, per_folder=10)
    result = index_folder(tmp_path)
    assert result.layout == "medforensics" and {r.split for r in result.rows} == {""}
    # a real image and its fakes share a name, hence a source: CT:img3 holds 0_real and 1_fake of both generators
    assert len({r.source for r in result.rows}) == 2 * 10
    rows = assign_splits(result.rows, val=0.1, test=0.2, seed=0)
    summary = split_summary(rows)
    assert set(summary) == {"train", "val", "test"}
    assert all(counts[0] > 0 and counts[1] > 0 for counts in summary.values())
    assert sum(summary["test"].values()) == pytest.approx(0.2 * len(rows), abs=8)


def test_family_and_network_come_from_generator_json_and_survive_a_round_trip(tmp_path):
    medforensics_tree(tmp_path, with_splits=False, per_folder=2)
    (tmp_path / "CT" / "ddpm" / "generator.json").write_text('{"family": "diffusion", "network": "CT-unet"}')
    rows = index_folder(tmp_path).rows
    ct_ddpm = [r for r in rows if r.modality == "CT" and r.generator == "ddpm"]
    assert len(ct_ddpm) == 2 and {(r.family, r.network) for r in ct_ddpm} == {("diffusion", "CT-unet")}
    # reals of that folder, and fakes of folders without the file, keep the columns blank
    assert {(r.family, r.network) for r in rows if r not in ct_ddpm} == {("", "")}
    write_manifest(rows, tmp_path / "m.csv")
    header = (tmp_path / "m.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["path", "label", "modality", "generator", "family", "network"]
    again = read_manifest(tmp_path / "m.csv")
    assert [(r.path, r.family, r.network) for r in again.rows] == [(r.path, r.family, r.network) for r in rows]
    assert {"family", "network"} <= set(again.columns)


def test_a_manifest_without_family_or_network_reads_them_blank(tmp_path):
    (tmp_path / "old.csv").write_text("path,label,generator,source\na.png,0,real,s1\nb.png,1,ddpm,s1\n")
    manifest = read_manifest(tmp_path / "old.csv")
    assert [(r.family, r.network, r.networks) for r in manifest.rows] == [("", "", frozenset())] * 2
    assert "network" not in manifest.columns and "family" not in manifest.split("").columns
    assert ManifestRow(path="x", label=1, network="CT-ae + CT-ldm").networks == {"CT-ae", "CT-ldm"}


def test_a_broken_generator_json_is_one_error_naming_the_file(tmp_path):
    medforensics_tree(tmp_path, with_splits=False, per_folder=1)
    (tmp_path / "CT" / "ddpm" / "generator.json").write_text('{"family": 3}')
    with pytest.raises(BadInputError, match=r"generator\.json.*strings"):
        index_folder(tmp_path)
    (tmp_path / "CT" / "ddpm" / "generator.json").write_text("{not json")
    with pytest.raises(BadInputError, match="unreadable generator file"):
        index_folder(tmp_path)


def test_cnndetection_layout_with_and_without_class(tmp_path):
    for i in range(3):
        png(tmp_path / "progan" / "airplane" / "0_real" / f"{i:05d}.png", i)
        png(tmp_path / "progan" / "airplane" / "1_fake" / f"{i:05d}.png", 10 + i)
        png(tmp_path / "whichfaceisreal" / "0_real" / f"{i:05d}.png", 20 + i)
        png(tmp_path / "whichfaceisreal" / "1_fake" / f"{i:05d}.png", 30 + i)
    assert detect_layout(tmp_path) == "cnndetection"
    result = index_folder(tmp_path, modality="natural")
    assert len(result.rows) == 12 and {r.modality for r in result.rows} == {"natural"}
    fake = next(r for r in result.rows if r.path == "progan/airplane/1_fake/00001.png")
    assert fake.generator == "progan" and fake.params_dict()["object_class"] == "airplane"
    assert {r.generator for r in result.rows if r.label == 1} == {"progan", "whichfaceisreal"}


def test_two_level_layout_is_told_apart_by_folder_names(tmp_path):
    png(tmp_path / "gen" / "stylegan" / "bedroom" / "1_fake" / "a.png", 1)
    png(tmp_path / "gen" / "stylegan" / "bedroom" / "0_real" / "a.png", 2)
    png(tmp_path / "med" / "MR" / "ldm" / "1_fake" / "a.png", 3)
    png(tmp_path / "med" / "MR" / "ldm" / "0_real" / "a.png", 4)
    assert detect_layout(tmp_path / "gen") == "cnndetection"
    assert detect_layout(tmp_path / "med") == "medforensics"
    forced = index_folder(tmp_path / "med", layout="cnndetection")
    assert {r.generator for r in forced.rows} == {"MR", "real"}


def test_unknown_layouts_are_one_line_errors(tmp_path):
    png(tmp_path / "flat" / "a.png", 0)
    with pytest.raises(BadInputError, match="no 0_real/1_fake folders found.*expected ROOT/") as info:
        index_folder(tmp_path / "flat")
    assert "\n" not in str(info.value)
    png(tmp_path / "deep" / "a" / "b" / "c" / "d" / "0_real" / "x.png", 1)
    with pytest.raises(BadInputError, match="unknown folder layout: 0_real/1_fake found under a/b/c/d"):
        detect_layout(tmp_path / "deep")
    png(tmp_path / "cnn_train" / "train" / "airplane" / "0_real" / "x.png", 2)
    with pytest.raises(BadInputError, match="split folders need <modality>/<generator> below them"):
        detect_layout(tmp_path / "cnn_train")
    with pytest.raises(BadInputError, match="folder not found"):
        index_folder(tmp_path / "missing")


def test_dicom_source_is_the_study_and_volumes_expand_to_slices(tmp_path):
    ct = get_testdata_file("CT_small.dcm")
    real = tmp_path / "CT" / "sdedit" / "0_real"
    fake = tmp_path / "CT" / "sdedit" / "1_fake"
    real.mkdir(parents=True)
    fake.mkdir(parents=True)
    shutil.copy(ct, real / "slice_a.dcm")
    shutil.copy(ct, real / "IM0002")  # extension-less DICOM, found by its preamble
    shutil.copy(os.path.join(NIBABEL_DATA, "anatomical.nii"), fake / "vol.nii")
    result = index_folder(tmp_path, expand_frames=True, frame_step=5)
    study = pydicom.dcmread(ct, stop_before_pixels=True).StudyInstanceUID
    dicom_rows = [r for r in result.rows if r.label == 0]
    assert {r.source for r in dicom_rows} == {f"dicom:{study}"} and len(dicom_rows) == 2
    volume_rows = [r for r in result.rows if r.label == 1]
    assert [r.path for r in volume_rows] == [f"CT/sdedit/1_fake/vol.nii#{i}" for i in range(0, 25, 5)]
    assert {r.source for r in volume_rows} == {"CT:vol"}
    manifest_root = tmp_path
    assert read_image(volume_rows[1].resolved(manifest_root)).meta["frame"] == 5


def test_split_keeps_every_source_in_one_split_and_is_deterministic():
    rows = []
    for source in range(40):
        for copy in range(1 + source % 4):  # groups of 1..4 rows, reals and fakes mixed in some
            label = (source + copy) % 2 if source % 3 else source % 2
            rows.append(ManifestRow(path=f"s{source}_{copy}.png", label=label, modality="CT" if source % 5 else "MR",
                                    generator="real" if label == 0 else "gan", source=f"src{source}"))
    first = assign_splits(rows, val=0.15, test=0.25, seed=3)
    splits_of = defaultdict(set)
    for row in first:
        splits_of[row.source].add(row.split)
    assert all(len(s) == 1 for s in splits_of.values())
    assert [r.split for r in assign_splits(rows, val=0.15, test=0.25, seed=3)] == [r.split for r in first]
    assert [r.split for r in assign_splits(rows, val=0.15, test=0.25, seed=4)] != [r.split for r in first]
    summary = split_summary(first)
    assert all(summary[s][0] > 0 and summary[s][1] > 0 for s in ("train", "val", "test"))
    assert all(r.split == "" for r in rows)  # the input is not modified


def test_a_scan_column_links_its_sources_for_splits_and_intervals_and_survives_a_round_trip(tmp_path):
    """Sources cut from one scan (the manifest's ``scan``: a file, series or patient) form one cluster,
    transitively, so a patient never straddles two splits and intervals resample it whole. Without a
    scan column the clusters are the sources, as before."""
    from medforensics_core.data.manifest import bootstrap_clusters

    rows = []
    for source in range(60):
        for label in (0, 1):  # a real region and the fake made from it share the source
            rows.append(ManifestRow(path=f"s{source}_{label}.png", label=label, generator="gan" if label else "real",
                                    modality="CT", source=f"src{source}", scan=f"patient{source // 4}"))
    rows.append(ManifestRow(path="odd.png", label=1, generator="gan", modality="CT", source="src0", scan="patient99"))
    clusters = bootstrap_clusters(rows)
    cluster_of = dict(zip((r.path for r in rows), clusters))
    assert cluster_of["s0_0.png"] == cluster_of["s3_1.png"] == cluster_of["odd.png"]  # patient0 and, via src0, 99
    assert cluster_of["s0_0.png"] != cluster_of["s4_0.png"]
    assert len(set(clusters)) == 15
    blank = [dataclasses.replace(r, scan="") for r in rows]
    assert bootstrap_clusters(blank) == [r.source_key for r in blank]

    split = assign_splits(rows, val=0.2, test=0.3, seed=1)
    splits_of = defaultdict(set)
    for row in split:
        splits_of[row.scan].add(row.split)
    assert all(len(s) == 1 for s in splits_of.values()) and {r.split for r in split} == {"train", "val", "test"}
    patient_of = {r.path: r.scan for r in rows}
    scattered = defaultdict(set)
    for row in assign_splits(blank, val=0.2, test=0.3, seed=1):
        scattered[patient_of[row.path]].add(row.split)
    assert any(len(s) > 1 for s in scattered.values())  # without the column, patients straddle splits
    back = read_manifest(write_manifest(split, tmp_path / "m.csv"))
    assert [r.scan for r in back.rows] == [r.scan for r in split] and "scan" in back.columns


def test_folds_sharing_one_draw_give_a_scan_the_same_cluster_in_every_fold():
    """A fake whose own source is the smallest key of its scan in one fold only: computed fold by fold, the
    shared reals of that scan would be one cluster id in one fold and another in the next."""
    from types import SimpleNamespace

    from medforensics_core.data.manifest import bootstrap_clusters
    from medforensics_core.engine.compare.fold_merge import shared_clusters

    reals = [ManifestRow(path=f"r{i}.png", label=0, source=f"p{i}", scan="P") for i in (1, 2)]
    fakes = {"g1": ManifestRow(path="a.png", label=1, source="a_fake", scan="P"),
             "g2": ManifestRow(path="z.png", label=1, source="z_fake", scan="P")}
    folds = [SimpleNamespace(test=SimpleNamespace(rows=[*reals, fake])) for fake in fakes.values()]
    per_fold = [bootstrap_clusters(fold.test.rows)[0] for fold in folds]
    assert per_fold[0] != per_fold[1]  # what went wrong: ids follow the rows each fold holds
    cluster_of = shared_clusters(folds)
    assert len({cluster_of[r.path] for fold in folds for r in fold.test.rows}) == 1


def test_split_keeps_given_splits_and_rejects_bad_fractions():
    rows = [ManifestRow(path=f"{i}.png", label=i % 2, split="test" if i < 4 else "", source=f"s{i}")
            for i in range(20)]
    out = assign_splits(rows, val=0.0, test=0.3, seed=0)
    assert [r.split for r in out[:4]] == ["test"] * 4
    assert "val" not in {r.split for r in out}
    from medforensics_core.errors import MfxError

    with pytest.raises(MfxError, match="must leave images for training"):
        assign_splits(rows, val=0.5, test=0.5)


def test_open_dataset_accepts_csv_folder_and_layout(tmp_path):
    medforensics_tree(tmp_path / "data", with_splits=False, per_folder=5)
    on_the_fly = open_dataset(tmp_path / "data")
    assert len(on_the_fly) == 40 and {r.split for r in on_the_fly.rows} <= {"train", "val", "test"}
    assert on_the_fly.path_of(on_the_fly.rows[0]).is_file()
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "index", str(tmp_path / "data"), "--seed", "1"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    written = read_manifest(tmp_path / "data" / "manifest.csv")
    assert len(written) == 40
    assert len(open_dataset(tmp_path / "data")) == 40
    assert len(open_dataset(tmp_path / "data" / "manifest.csv")) == 40


def test_a_fifo_named_like_an_image_is_not_indexed_and_does_not_hang(tmp_path):
    """Hashing a FIFO would wait for a writer for ever: it is passed over like any file that is not an image."""
    medforensics_tree(tmp_path / "data", with_splits=False, per_folder=2)
    fifo = tmp_path / "data" / "CT" / "ddpm" / "0_real" / "pipe.png"
    os.mkfifo(fifo)
    result = index_folder(tmp_path / "data")
    assert len(result.rows) == 16 and fifo in result.ignored
    (tmp_path / "data" / "stray.png").write_bytes((tmp_path / "data" / "CT" / "ddpm" / "0_real" / "img0.png")
                                                  .read_bytes())
    said = CliRunner().invoke(cli, ["data", "index", str(tmp_path / "data")], env={"COLUMNS": "300"}).output
    assert f"not indexed {fifo}: not a regular file" in said
    assert f"not indexed {tmp_path / 'data' / 'stray.png'}: outside a 0_real/1_fake folder" in said


def test_a_run_on_a_folder_without_splits_says_how_mfx_cut_it(tmp_path):
    """Evaluating a folder with no split level scores its test split only: the report says so, with the counts
    (before, "train 0 / test 10 images" was all a user saw of 44)."""
    medforensics_tree(tmp_path / "data", with_splits=False, per_folder=5)
    assert open_dataset(tmp_path / "data").splits_made.startswith("by source")
    assert open_dataset(tmp_path / "data").split("test").splits_made == ""  # a sub-manifest is not re-described
    result = CliRunner().invoke(cli, ["compare", "freq", "--data", str(tmp_path / "data"), "--preset", "tiny",
                                      "--n-boot", "50", "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    report = next((tmp_path / "runs").glob("*/report.json")).read_text()
    assert "the dataset has no splits of its own: mfx cut it by source" in report
    counted = open_dataset(tmp_path / "data")
    assert f"test {len(counted.split('test'))} images" in report


def test_cli_index_writes_manifest_and_counts_table(tmp_path):
    medforensics_tree(tmp_path / "data", with_splits=True, per_folder=2)
    out = tmp_path / "elsewhere" / "m.csv"
    result = CliRunner().invoke(cli, ["data", "index", str(tmp_path / "data"), "-o", str(out)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert len(manifest) == 32 and all(manifest.path_of(r).is_file() for r in manifest.rows)
    assert manifest.rows[0].path.startswith("../data/")
    lines = [line for line in result.output.splitlines() if "fundus" in line and "stylegan" in line]
    assert any("train" in line and "fake" in line and line.rstrip().rstrip("│").strip().endswith("2")
               for line in lines)
    assert "medforensics layout, detected" in result.output
    bad = CliRunner().invoke(cli, ["data", "index", str(tmp_path / "nowhere")])
    assert bad.exit_code != 0 and "folder not found" in bad.output and "Traceback" not in bad.output


def _dicom_copy(source: str, target: Path, **tags: str) -> None:
    """A real DICOM file with some header tags rewritten (another study of a patient, an anonymised ID...)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(source)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(target)


def _hashed(patient: str) -> str:
    import hashlib

    return "patient:" + hashlib.sha256(patient.encode()).hexdigest()[:12]


def test_scan_by_patient_keeps_a_patients_studies_together_and_blanks_placeholder_ids(tmp_path):
    ct, mr = get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")
    real = tmp_path / "data" / "CT" / "ldm" / "0_real"
    _dicom_copy(ct, real / "ct_study1.dcm")                                           # patient 1CT1, study A
    _dicom_copy(ct, real / "ct_study2.dcm", StudyInstanceUID="1.2.826.0.1.99.1")     # patient 1CT1, study B
    _dicom_copy(mr, real / "mr.dcm")                                                  # patient 4MR1
    for i in range(6):  # other patients, so the splitter has groups to spread
        _dicom_copy(ct, real / f"other{i}.dcm", StudyInstanceUID=f"1.2.826.0.1.98.{i}", PatientID=f"P{i:03d}")
    _dicom_copy(ct, real / "anon.dcm", StudyInstanceUID="1.2.826.0.1.97.1", PatientID="ANONYMOUS")
    _dicom_copy(ct, real / "zeros.dcm", StudyInstanceUID="1.2.826.0.1.97.2", PatientID="0000")
    _dicom_copy(ct, real / "blank.dcm", StudyInstanceUID="1.2.826.0.1.97.3", PatientID="")
    png(tmp_path / "data" / "CT" / "ldm" / "1_fake" / "ct_study1.png", 1)

    plain = index_folder(tmp_path / "data")
    assert all(r.scan == "" for r in plain.rows)  # the default leaves scan blank
    assert [n for n in plain.notes if "scan" in n or "placeholder" in n] == []
    result = index_folder(tmp_path / "data", scan_by="patient")
    scan_of = {Path(r.path).name: r.scan for r in result.rows}
    assert scan_of["ct_study1.dcm"] == scan_of["ct_study2.dcm"] == _hashed("1CT1")
    assert scan_of["mr.dcm"] == _hashed("4MR1") and scan_of["other0.dcm"] == _hashed("P000")
    assert not any("1CT1" in r.scan for r in result.rows)  # the identifier itself never reaches the manifest
    for name in ("anon.dcm", "zeros.dcm", "blank.dcm"):  # placeholders, no ID
        assert scan_of[name] == "", name
    assert scan_of["ct_study1.png"] == _hashed("1CT1")  # the fake saved under its real's name: the real's patient
    assert any("ANONYMOUS" in note and "0000" in note and "placeholder" in note for note in result.notes)
    assert any(note.startswith("3 of 13 images have no scan") for note in result.notes)
    sources = {r.source for r in result.rows if r.scan == _hashed("1CT1")}
    assert len(sources) == 2  # two studies: two sources, one scan
    for seed in range(5):
        splits = assign_splits(result.rows, val=0.2, test=0.3, seed=seed)
        assert len({r.split for r in splits if r.scan == _hashed("1CT1")}) == 1

    out = tmp_path / "m.csv"
    cli_run = CliRunner().invoke(cli, ["data", "index", str(tmp_path / "data"), "-o", str(out), "--scan-by", "patient"],
                                 env={"COLUMNS": "200"})
    assert cli_run.exit_code == 0, cli_run.output
    assert "placeholder" in cli_run.output
    assert {r.scan for r in read_manifest(out).rows} >= {_hashed("1CT1"), _hashed("4MR1")}


def test_one_patient_id_on_every_study_is_an_anonymisers_constant_not_a_patient(tmp_path):
    ct = get_testdata_file("CT_small.dcm")
    real = tmp_path / "CT" / "ldm" / "0_real"
    for i in range(4):
        _dicom_copy(ct, real / f"s{i}.dcm", StudyInstanceUID=f"1.2.826.0.1.96.{i}", PatientID="SITE-01")
    _dicom_copy(ct, real / "anon.dcm", StudyInstanceUID="1.2.826.0.1.96.9", PatientID="ANONYMOUS")
    result = index_folder(tmp_path, scan_by="patient")
    # the constant is judged on the studies with a usable ID: a placeholder beside it does not hide it
    assert all(r.scan == "" for r in result.rows)  # linking them all would leave one group: one split, no interval
    assert any("SITE-01" in note and "all 4 studies" in note for note in result.notes)
    with pytest.raises(MfxError, match="scan-by"):
        index_folder(tmp_path, scan_by="series")


def test_two_studies_of_one_patient_are_one_patient(tmp_path):
    """Under three studies a shared ID is taken at its word: a patient with two studies is common."""
    ct = get_testdata_file("CT_small.dcm")
    real = tmp_path / "CT" / "ldm" / "0_real"
    for i in range(2):
        _dicom_copy(ct, real / f"s{i}.dcm", StudyInstanceUID=f"1.2.826.0.1.95.{i}", PatientID="P7")
    result = index_folder(tmp_path, scan_by="patient")
    assert {r.scan for r in result.rows} == {_hashed("P7")} and not result.notes


def test_a_fake_saved_as_png_under_its_dicom_reals_name_takes_the_reals_study(tmp_path):
    """``1_fake/x.png`` (or a DICOM fake with a new study UID) made from ``0_real/x.dcm``: one group, so the splitter
    never puts the real in training and its fake in the test set. A name whose DICOM reals belong to two studies
    is ambiguous and left alone, with a note."""
    ct = get_testdata_file("CT_small.dcm")
    root = tmp_path / "data"
    for i in range(8):
        _dicom_copy(ct, root / "CT" / "ldm" / "0_real" / f"scan{i}.dcm", StudyInstanceUID=f"1.2.826.0.1.96.{i}")
        png(root / "CT" / "ldm" / "1_fake" / f"scan{i}.png", i)   # same generator folder
        png(root / "CT" / "gan" / "1_fake" / f"scan{i}.png", 50 + i)  # another generator folder, same name
    png(root / "CT" / "ldm" / "1_fake" / "unrelated.png", 99)
    # a generator that writes DICOM with a study UID of its own: still its real's study
    _dicom_copy(ct, root / "CT" / "sr" / "1_fake" / "scan0.dcm", StudyInstanceUID="1.2.826.0.1.94.1")
    _dicom_copy(ct, root / "CT" / "ldm" / "0_real" / "twice" / "a.dcm", StudyInstanceUID="1.2.826.0.1.95.1")
    _dicom_copy(ct, root / "CT" / "gan" / "0_real" / "twice" / "a.dcm", StudyInstanceUID="1.2.826.0.1.95.2")
    png(root / "CT" / "gan" / "1_fake" / "twice" / "a.png", 7)

    result = index_folder(root)
    source_of = {r.path: r.source for r in result.rows}
    for i in range(8):
        study = f"dicom:1.2.826.0.1.96.{i}"
        assert source_of[f"CT/ldm/0_real/scan{i}.dcm"] == study
        assert source_of[f"CT/ldm/1_fake/scan{i}.png"] == source_of[f"CT/gan/1_fake/scan{i}.png"] == study
    assert source_of["CT/sr/1_fake/scan0.dcm"] == "dicom:1.2.826.0.1.96.0"
    assert source_of["CT/ldm/1_fake/unrelated.png"] == "CT:unrelated"
    assert source_of["CT/gan/1_fake/twice/a.png"] == "CT:twice/a"  # two studies answer to that name
    assert any(n.startswith("17 fake image(s) or frame(s) named like a DICOM real") for n in result.notes)
    assert any("several studies" in n and "CT:twice/a" in n for n in result.notes)
    for seed in range(5):
        split_of = {r.path: r.split for r in assign_splits(result.rows, val=0.2, test=0.3, seed=seed)}
        for i in range(8):
            assert len({split_of[f"CT/{g}/{k}/scan{i}.{e}"]
                        for g, k, e in (("ldm", "0_real", "dcm"), ("ldm", "1_fake", "png"), ("gan", "1_fake", "png"))}) == 1

    out = tmp_path / "m.csv"
    run = CliRunner().invoke(cli, ["data", "index", str(root), "-o", str(out)], env={"COLUMNS": "200"})
    assert run.exit_code == 0, run.output
    assert "take that real's study" in run.output
