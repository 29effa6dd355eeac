"""``mfx predict`` scores the whole image by tiles, explains with heat maps, and reads the modality from the file.

The detector is a tiny DSKI trained (in seconds) to see a planted
manipulation: 24x24 patches of uniform noise pasted into 64 px crops of
pydicom's real ``CT_small.dcm`` (30 epochs). A 128 px scan with such a patch in a corner is
then flagged by whole-image tiles, while the centre crop (what a comparison
scores) never sees the patch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from medforensics_core.cli import cli
from medforensics_core.contract import Batch

PATCH = 24
CROP = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ct_image() -> torch.Tensor:
    from pydicom.data import get_testdata_file

    from medforensics_core.data.readers import read_image

    return read_image(get_testdata_file("CT_small.dcm")).tensor


def plant(image: torch.Tensor, y: int, x: int, rng: np.random.Generator) -> torch.Tensor:
    """Paste a PATCH x PATCH square of uniform noise (the "manipulation") at (y, x)."""
    out = image.clone()
    out[:, y:y + PATCH, x:x + PATCH] = torch.from_numpy(rng.random((PATCH, PATCH))).float()
    return out


def save_png(image: torch.Tensor, path: Path) -> Path:
    PIL.Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def patch_checkpoint(tmp_path_factory) -> Path:
    """A tiny DSKI trained on 64 px CT crops, half of them with a planted noise patch."""
    from medforensics_core.data.dataset import ImageSet
    from medforensics_core.data.manifest import Manifest, ManifestRow
    from medforensics_core.engine.context import FitContext
    from medforensics_core.plugins import get_registry

    folder = tmp_path_factory.mktemp("patch-train")
    rng = np.random.default_rng(0)
    ct = ct_image()
    rows = []
    for i in range(200):
        y, x = (int(v) for v in rng.integers(0, ct.shape[-1] - CROP, 2))
        crop = ct[:, y:y + CROP, x:x + CROP]
        label = i % 2
        if label:
            crop = plant(crop, *(int(v) for v in rng.integers(0, CROP - PATCH, 2)), rng)
        save_png(crop, folder / f"{i:03d}.png")
        rows.append(ManifestRow(path=f"{i:03d}.png", label=label, modality="ct",
                                generator="noise-patch" if label else "real"))
    images = ImageSet(Manifest(rows, folder))
    detector = get_registry().detector("dski")(preset="tiny")
    detector.fit(images.subset(range(160)), images.subset(range(160, 200)), FitContext(seed=0, epochs=30))
    path = folder / "dski-patch.safetensors"
    detector.save(path)
    return path


def test_whole_image_tiles_find_a_corner_patch_the_centre_crop_misses(patch_checkpoint, tmp_path):
    rng = np.random.default_rng(7)
    scan = save_png(plant(ct_image(), 0, 0, rng), tmp_path / "corner-patch.png")  # 128 px, patch at top-left
    explain = tmp_path / "heat"
    result = CliRunner().invoke(cli, ["predict", "dski", str(scan), "--checkpoint", str(patch_checkpoint),
                                      "--threshold", "0.5", "--modality", "ct", "--explain", str(explain), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    prediction = out["predictions"][0]
    assert out["scoring"]["tile_size"] == CROP and out["scoring"]["aggregate"] == "max"
    assert prediction["tiles"]["n"] == 9  # 128 px, 64 px tiles, stride 32: 3 x 3
    assert prediction["score"] > 0.5 > prediction["centre_score"], prediction
    assert prediction["verdict"] == "fake"
    top = prediction["tiles"]["top"][0]
    assert top["y"] <= 0 and top["x"] <= 0 and top["y"] + top["height"] >= PATCH and top["x"] + top["width"] >= PATCH
    overlay = Path(prediction["overlay"])
    assert overlay.parent == explain and overlay.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the centre crop alone, as asked: the same image is called real
    centre = CliRunner().invoke(cli, ["predict", "dski", str(scan), "--checkpoint", str(patch_checkpoint),
                                      "--threshold", "0.5", "--modality", "ct", "--crop", "center", "--json"])
    assert json.loads(centre.output)["predictions"][0]["verdict"] == "real"


def test_ct_and_mr_dicom_explained_with_modality_from_the_tag(patch_checkpoint, tmp_path):
    from pydicom.data import get_testdata_file

    files = [get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")]
    explain = tmp_path / "explain"
    result = CliRunner().invoke(cli, ["predict", "dski", "--checkpoint", str(patch_checkpoint), "--explain",
                                      str(explain), "--json", *files])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["weights"] == "random-init" and out["threshold"] == pytest.approx(out["threshold"])
    assert out["threshold_source"]
    by_name = {Path(p["path"]).name: p for p in out["predictions"]}
    assert by_name["CT_small.dcm"]["modality"] == "ct" and by_name["MR_small.dcm"]["modality"] == "mri"
    assert "Modality tag 'MR'" in by_name["MR_small.dcm"]["modality_source"]
    for prediction in by_name.values():
        assert prediction["tiles"]["n"] >= 1 and prediction["tiles"]["top"]
        assert Path(prediction["overlay"]).is_file()
    assert sorted(p.name for p in explain.iterdir()) == ["CT_small_dcm.png", "MR_small_dcm.png"]
    # terminal output: the random-init banner and the threshold are printed
    text = CliRunner().invoke(cli, ["predict", "dski", "--checkpoint", str(patch_checkpoint), *files])
    assert text.exit_code == 0, text.output
    assert "RANDOM-INIT WEIGHTS" in text.output and "threshold" in text.output


def test_modality_override_and_unknown_value(patch_checkpoint, tmp_path):
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    args = ["predict", "dski", "--checkpoint", str(patch_checkpoint), "--crop", "center", "--json", ct]
    mapped = json.loads(CliRunner().invoke(cli, [*args, "--modality", "MR"]).output)
    assert mapped["predictions"][0]["modality"] == "mri" and mapped["predictions"][0]["modality_source"] == "--modality"
    wrong = CliRunner().invoke(cli, [*args, "--modality", "xyz"])
    assert wrong.exit_code == 2 and "Traceback" not in wrong.output
    assert "accepted:" in wrong.output and "mri" in wrong.output and "ct" in wrong.output


def test_cli_and_python_api_give_the_same_score_for_a_16_bit_dicom(patch_checkpoint):
    """The 12-bit CT is never quantised to 8 bits: CLI and direct API calls agree to float precision."""
    from pydicom.data import get_testdata_file

    from medforensics_core.data.readers import read_image
    from medforensics_core.engine.tiles import TileConfig, TileScorer
    from medforensics_core.plugins import get_registry

    ct = get_testdata_file("CT_small.dcm")
    detector = get_registry().detector("dski").load(patch_checkpoint)
    image = read_image(ct).tensor
    with torch.inference_mode():
        api_centre = float(detector.predict_proba(Batch.of(detector.preprocess(image)[None], modalities=["ct"]))[0])
    api_tiles = TileScorer(detector, TileConfig()).score(image, "ct").score
    out = json.loads(CliRunner().invoke(cli, ["predict", "dski", "--checkpoint", str(patch_checkpoint), "--json",
                                              ct]).output)["predictions"][0]
    assert out["centre_score"] == pytest.approx(api_centre, abs=1e-6)
    assert out["score"] == pytest.approx(api_tiles, abs=1e-6)
    import medforensics_core as mfx  # the public Python API: same file, same scores as the command line

    assert mfx.score(detector, ct, crop="center")[0] == pytest.approx(out["centre_score"], abs=1e-6)
    assert mfx.score(detector, ct, crop="tiles")[0] == pytest.approx(out["score"], abs=1e-6)
    eight_bit = (image * 255).round() / 255
    with torch.inference_mode():
        quantised = float(detector.predict_proba(Batch.of(detector.preprocess(eight_bit)[None], modalities=["ct"]))[0])
    assert quantised != pytest.approx(api_centre, abs=1e-6)  # 8-bit would have been a different input


def test_nothing_scored_and_unwritable_explain_dir_fail_in_one_line(patch_checkpoint, tmp_path):
    from pydicom.data import get_testdata_file

    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["predict", "dski", "--checkpoint", str(patch_checkpoint)]
    none = CliRunner().invoke(cli, [*base, str(empty)])
    assert none.exit_code == 1 and "no image was scored" in none.output and "Traceback" not in none.output
    junk = tmp_path / "junk.png"
    junk.write_text("not a png")
    only_bad = CliRunner().invoke(cli, [*base, str(junk), "--json"])
    assert only_bad.exit_code == 1 and "junk.png" in only_bad.output
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = CliRunner().invoke(cli, [*base, "--explain", str(blocker / "out"), get_testdata_file("CT_small.dcm")])
    assert unwritable.exit_code == 2 and "cannot write the --explain overlays" in unwritable.output
    if os.geteuid() != 0:  # root writes into read-only folders
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o500)
        denied = CliRunner().invoke(cli, [*base, "--explain", str(readonly), get_testdata_file("CT_small.dcm")])
        assert denied.exit_code == 2 and "cannot write" in denied.output


def test_a_tiny_image_is_one_line_in_predict_and_index_add_and_the_others_go_on(patch_checkpoint, tmp_path):
    """A 1x1 PNG beside a real CT: predict scores the CT and skips the PNG; index add (--on-bad skip) adds the CT.
    Before: DSKI's circular pad raised on the PNG ("unexpected error" in predict, a traceback in index add)."""
    from pydicom.data import get_testdata_file

    tiny = tmp_path / "one.png"
    PIL.Image.new("L", (1, 1), 128).save(tiny)
    ct = get_testdata_file("CT_small.dcm")
    scored = CliRunner().invoke(cli, ["predict", "--checkpoint", str(patch_checkpoint), str(tiny), ct, "--json"])
    assert scored.exit_code == 0, scored.output
    verdict = json.loads(scored.stdout)
    assert [p["path"] for p in verdict["predictions"]] == [ct]
    assert verdict["bad"] == [{"path": str(tiny), "reason": "image too small to score (1x1 px; every side needs at "
                                                            "least 8 px)"}]
    added = CliRunner().invoke(cli, ["index", "add", str(patch_checkpoint), str(tiny), ct, "--label", "real",
                                     "--modality", "ct", "--on-bad", "skip", "-o", str(tmp_path / "more.safetensors")])
    assert added.exit_code == 0 and "Traceback" not in added.output, added.output
    assert "added 1 real reference(s)" in " ".join(added.output.split()) and "too small" in added.output


def test_blank_images_and_frames_get_no_verdict(patch_checkpoint, tmp_path):
    """A flat image carries no evidence: a blank PNG is skipped with its reason, and a two-page TIFF stack whose
    second page is blank is scored on its first page only (the blank page listed, the file kept)."""
    blank = tmp_path / "blank.png"
    PIL.Image.new("L", (96, 96), 0).save(blank)
    ct = ct_image()[0, :96, :96]
    pages = [PIL.Image.fromarray((ct.numpy() * 255).round().astype(np.uint8)), PIL.Image.new("L", (96, 96), 40)]
    stack = tmp_path / "stack.tif"
    pages[0].save(stack, save_all=True, append_images=pages[1:])
    result = CliRunner().invoke(cli, ["predict", "--checkpoint", str(patch_checkpoint), str(blank), str(stack),
                                      "--json"])
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.stdout)
    assert [(p["path"], p["frame"]) for p in verdict["predictions"]] == [(str(stack), 0)]
    assert {b["path"]: b["reason"].split(":")[0] for b in verdict["bad"]} == {
        str(blank): "blank image (every pixel the same value)",
        f"{stack} (frame 1)": "blank image (every pixel the same value)"}


def test_an_interrupted_predict_still_reports_the_files_it_scored(patch_checkpoint, tmp_path, monkeypatch):
    """Ctrl-C on the third file: the first two are in the JSON (marked interrupted), the exit status is 130."""
    from medforensics_core.engine import predict as engine_predict

    files = real_ct_crops(tmp_path / "scans", 4)
    real_score_file, calls = engine_predict._score_file, []

    def interrupted_on_the_third(path, *args):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_score_file(path, *args)

    monkeypatch.setattr(engine_predict, "_score_file", interrupted_on_the_third)
    result = CliRunner().invoke(cli, ["predict", "--checkpoint", str(patch_checkpoint), *map(str, files), "--json"])
    assert result.exit_code == 130
    verdict = json.loads(result.stdout[:result.stdout.rindex("}") + 1])
    assert verdict["interrupted"] is True and [p["path"] for p in verdict["predictions"]] == list(map(str, files[:2]))


def test_readers_own_complaints_stay_off_the_terminal_unless_verbose(patch_checkpoint):
    """pydicom logs a failed decoder with its whole traceback; mfx prints its own one line for the file instead
    (``-v`` shows the library's words too)."""
    import subprocess
    import sys

    from pydicom.data import get_testdata_file

    lossy = get_testdata_file("JPEG-lossy.dcm")  # 12-bit JPEG Extended: no installed decoder takes it
    run = [sys.executable, "-c", "from medforensics_core.cli import main; main()"]
    quiet = subprocess.run(run + ["predict", "--checkpoint", str(patch_checkpoint), lossy], capture_output=True,
                           text=True, timeout=300)
    assert quiet.returncode != 0 and "cannot decode DICOM pixel data" in quiet.stdout + quiet.stderr
    assert "Traceback" not in quiet.stdout + quiet.stderr
    loud = subprocess.run(run + ["-v", "predict", "--checkpoint", str(patch_checkpoint), lossy], capture_output=True,
                          text=True, timeout=300)
    assert "Traceback" in loud.stdout + loud.stderr


def test_tile_grid_covers_the_image_and_bounds_the_tile_count():
    from medforensics_core.engine.tiles import TileConfig, origins, tile_grid

    assert origins(128, 64, 32) == [0, 32, 64]
    assert origins(100, 64, 32) == [0, 32, 36]  # last tile flush with the edge
    assert origins(50, 64, 32) == [0]
    corners, stride = tile_grid(640, 640, 64, TileConfig(max_tiles=150))
    assert len(corners) <= 150 and stride > 32
    assert max(y for y, _ in corners) == 640 - 64 and max(x for _, x in corners) == 640 - 64
    _, stride = tile_grid(4000, 4000, 64, TileConfig(max_tiles=400))
    assert stride == 64  # never longer than a tile: every pixel is still looked at


def test_training_cache_keeps_16_bit_dicom_as_float_and_8_bit_as_bytes(tmp_path):
    """The decode cache shared by training and comparisons returns exactly what the reader returned."""
    from pydicom.data import get_testdata_file

    from medforensics_core.data.dataset import ImageSet
    from medforensics_core.data.manifest import Manifest, ManifestRow
    from medforensics_core.data.readers import read_image

    ct = get_testdata_file("CT_small.dcm")
    png = save_png(ct_image(), tmp_path / "ct8.png")
    images = ImageSet(Manifest([ManifestRow(path=ct, label=0, modality="ct", generator="real"),
                                ManifestRow(path=str(png), label=0, modality="ct", generator="real")], tmp_path))
    assert images._cache[0].dtype == torch.float32 and images._cache[1].dtype == torch.uint8
    assert torch.equal(images.image(0), read_image(ct).tensor)
    assert torch.equal(images.image(1), read_image(png).tensor)


def test_modality_names_from_dicom_tags_nifti_headers_and_file_names(tmp_path):
    import nibabel
    import nibabel.testing

    from medforensics_core.data import modality as M
    from medforensics_core.errors import MfxError

    expected = {"CT": "ct", "MR": "mri", "CR": "xray", "DX": "xray", "XA": "xray", "MG": "xray", "US": "ultrasound",
                "NM": "nuclear", "PT": "pet", "SM": "histopathology", "OP": "fundus"}
    for tag, name in expected.items():
        found = M.from_dicom_tag(tag)
        assert found.name == name and tag in found.source
    assert M.from_dicom_tag("") is None and M.from_dicom_tag("ZZ") is None
    assert M.resolve({"format": "dicom", "modality": "MR"}, "x.dcm", None, known=["ct", "mri"]).name == "mri"
    assert M.resolve({"format": "png"}, "x.png", None).name == "unknown"
    assert M.normalise("mr") == "mri" and M.normalise("CT") == "ct" and M.normalise("dermoscopy", ["dermoscopy"])
    try:
        M.normalise("xyz", ["ct"])
    except MfxError as exc:
        assert "accepted:" in str(exc) and "mri" in str(exc) and "CT" in str(exc)
    else:
        raise AssertionError("an unknown modality must fail")
    # NIfTI: header description first, then the BIDS suffix of the file name
    image = nibabel.load(str(Path(nibabel.testing.data_path) / "anatomical.nii"))
    described = nibabel.Nifti1Image(np.asarray(image.dataobj), image.affine)
    described.header["descrip"] = b"CT head, HU"
    nibabel.save(described, tmp_path / "volume.nii")
    assert M.from_nifti(tmp_path / "volume.nii").name == "ct"
    plain = nibabel.Nifti1Image(np.asarray(image.dataobj), image.affine)
    nibabel.save(plain, tmp_path / "sub-01_T1w.nii.gz")
    found = M.from_nifti(tmp_path / "sub-01_T1w.nii.gz")
    assert found.name == "mri" and "file name" in found.source


def real_ct_crops(folder: Path, count: int, side: int = 96) -> list[Path]:
    """``count`` crops of pydicom's real CT_small, at random places, saved as 8-bit PNGs (real pixels only)."""
    rng = np.random.default_rng(7)
    ct = ct_image()
    folder.mkdir()
    paths = []
    for i in range(count):
        y, x = (int(v) for v in rng.integers(0, ct.shape[-1] - side, 2))
        paths.append(save_png(ct[:, y:y + side, x:x + side], folder / f"real-{i:02d}.png"))
    return paths


def test_calibrate_fixes_the_threshold_on_given_reals_as_predict_scores_them(patch_checkpoint, tmp_path):
    """The new threshold is the rule ``mfx compare`` uses, on these reals' tile scores; predict then keeps to it."""
    import hashlib

    import medforensics_core as mfx
    from medforensics_core.metrics import threshold_at_fpr

    reals = real_ct_crops(tmp_path / "reals", 24)
    before = hashlib.sha256(patch_checkpoint.read_bytes()).hexdigest()
    out = tmp_path / "calibrated.safetensors"
    result = CliRunner().invoke(cli, ["calibrate", "--checkpoint", str(patch_checkpoint), str(tmp_path / "reals"),
                                      "-o", str(out)])  # modality from the files, as mfx.score reads it
    assert result.exit_code == 0, result.output
    original = mfx.load_detector(patch_checkpoint)
    tile_scores = mfx.score(original, reals, crop="tiles")  # 96 px reals, 64 px tiles: four tiles, their max
    calibrated = mfx.load_detector(out)
    info = calibrated.train_info
    assert info["threshold"] == pytest.approx(threshold_at_fpr(tile_scores, 0.05), abs=1e-6)
    assert info["threshold_scoring"] == {"mode": "tiles", "aggregate": "max", "tile_size": CROP, "stride": 0.5}
    assert info["threshold_rule"].startswith("5% FPR on 24 real frames of 24 files given to mfx calibrate")
    assert info["thresholds_replaced"] == [{"threshold": 0.5, "rule": "default 0.5 (the checkpoint holds no "
                                                                   "validated threshold)"}]  # the fixture had none
    assert np.array_equal(mfx.score(calibrated, reals, crop="tiles"), tile_scores)  # the model itself is unchanged
    in_python = mfx.load_detector(patch_checkpoint)
    assert mfx.calibrate(in_python, reals) == info["threshold"]  # the Python API: the same rule, the same scoring
    assert in_python.train_info["threshold_rule"] == info["threshold_rule"]
    assert hashlib.sha256(patch_checkpoint.read_bytes()).hexdigest() == before
    predicted = json.loads(CliRunner().invoke(cli, ["predict", "--checkpoint", str(out), str(tmp_path / "reals"),
                                                    "--json"]).output)
    assert predicted["threshold"] == info["threshold"]
    assert predicted["threshold_source"].startswith("checkpoint: 5% FPR on 24 real frames")
    assert predicted["threshold_warning"] is None
    assert sum(p["verdict"] == "fake" for p in predicted["predictions"]) <= 1  # floor(5 % of 24)
    centre = json.loads(CliRunner().invoke(cli, ["predict", "--checkpoint", str(out), str(reals[0]), "--json",
                                                 "--crop", "center"]).output)
    assert f"{CROP} px tiles" in centre["threshold_warning"] and "mfx calibrate" in centre["threshold_warning"]


def test_calibrate_on_a_dataset_folder_leaves_its_fakes_out(patch_checkpoint, tmp_path):
    """Pointed at a split folder of the 0_real/1_fake layout, calibrate fixes the threshold on the reals alone (as
    if given the 0_real folder) and says how many fakes it left out; a folder of fakes only is refused."""
    import medforensics_core as mfx

    split = tmp_path / "val" / "ct" / "noise-patch"
    split.mkdir(parents=True)
    real_ct_crops(split / "0_real", 24)
    (split / "1_fake").mkdir()
    rng = np.random.default_rng(3)
    for i, real in enumerate(sorted((split / "0_real").iterdir())[:12]):
        image = mfx.read_image(real)
        save_png(plant(image, *(int(v) for v in rng.integers(0, 96 - PATCH, 2)), rng), split / "1_fake" / f"f{i}.png")
    out = tmp_path / "from-split.safetensors"
    result = CliRunner().invoke(cli, ["calibrate", "--checkpoint", str(patch_checkpoint), str(tmp_path / "val"),
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "left out 12 file(s) under 1_fake folders" in " ".join(result.output.split())
    reals_only = mfx.calibrate(mfx.load_detector(patch_checkpoint), [split / "0_real"])
    assert mfx.load_detector(out).train_info["threshold"] == reals_only
    assert mfx.load_detector(out).train_info["threshold_rule"].startswith("5% FPR on 24 real frames of 24 files")
    fakes = CliRunner().invoke(cli, ["calibrate", "--checkpoint", str(patch_checkpoint), str(split / "1_fake"),
                                     "-o", str(tmp_path / "fakes.safetensors")])
    assert fakes.exit_code != 0 and "sit under a 1_fake folder" in fakes.output and "Traceback" not in fakes.output


def test_fakes_by_layout_are_found_in_any_case_as_the_indexer_reads_them():
    from medforensics_core.engine.calibrate import fake_by_layout

    assert fake_by_layout(Path("val/ct/gan/1_fake/a.png")) and fake_by_layout(Path("val/ct/gan/1_Fake/a.png"))
    assert not fake_by_layout(Path("val/ct/gan/0_real/a.png")) and not fake_by_layout(Path("val/ct/1_fakes/a.png"))


def test_calibrate_refuses_too_few_reals_and_an_existing_output_in_one_line(patch_checkpoint, tmp_path):
    real_ct_crops(tmp_path / "few", 5)
    out = tmp_path / "calibrated.safetensors"
    few = CliRunner().invoke(cli, ["calibrate", "--checkpoint", str(patch_checkpoint), str(tmp_path / "few"),
                                   "-o", str(out)])
    assert few.exit_code != 0 and "5 real frame(s) scored" in few.output and "at least 20" in few.output
    assert "Traceback" not in few.output and not out.exists()
    one = str(sorted((tmp_path / "few").iterdir())[0])
    (tmp_path / "junk.png").write_text("not an image")
    repeated = CliRunner().invoke(cli, ["calibrate", "--checkpoint", str(patch_checkpoint), *[one] * 20,
                                        str(tmp_path / "junk.png"), "-o", str(out)])  # one file 20 times: one image
    assert repeated.exit_code != 0 and "1 real frame(s) scored" in repeated.output and not out.exists()
    assert "skipped" in repeated.output and "junk.png" in repeated.output  # why so few: the bad file is listed
    import hashlib

    before = hashlib.sha256(patch_checkpoint.read_bytes()).hexdigest()
    again = CliRunner().invoke(cli, ["calibrate", "--checkpoint", str(patch_checkpoint), str(tmp_path / "few"),
                                     "-o", str(patch_checkpoint)])
    assert again.exit_code != 0 and "already exists" in again.output and "Traceback" not in again.output
    assert hashlib.sha256(patch_checkpoint.read_bytes()).hexdigest() == before
    nowhere = CliRunner().invoke(cli, ["calibrate", "--checkpoint", str(patch_checkpoint), str(tmp_path / "few"),
                                       "-o", str(tmp_path / "no-such-folder" / "x.safetensors")])
    assert nowhere.exit_code != 0 and "cannot write there" in nowhere.output and "Traceback" not in nowhere.output


def test_predict_warns_when_the_threshold_was_fixed_under_another_scoring(patch_checkpoint, tmp_path):
    """A compare threshold (centre crops, no scoring recorded) under tiles warns; --threshold, or odd metadata, not
    a traceback."""
    from pydicom.data import get_testdata_file

    from medforensics_core.engine.compare.detector_run import threshold_scoring_warning
    from medforensics_core.plugins import get_registry

    detector = get_registry().detector("dski").load(patch_checkpoint)
    ct = get_testdata_file("CT_small.dcm")

    def predict_with(train_info, *extra):
        detector.train_info = train_info
        path = detector.save(tmp_path / f"ck-{len(list(tmp_path.iterdir()))}.safetensors")
        result = CliRunner().invoke(cli, ["predict", "--checkpoint", str(path), ct, "--json", *extra])
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output
        return json.loads(result.stdout)  # log lines go to stderr

    compare_made = {"threshold": 0.4, "threshold_rule": "5% FPR on the validation split (40 real, 40 fake)"}
    assert "centre crop" in predict_with(compare_made)["threshold_warning"]
    assert predict_with(compare_made, "--crop", "center")["threshold_warning"] is None
    assert predict_with(compare_made, "--threshold", "0.5")["threshold_warning"] is None
    assert predict_with({**compare_made, "threshold_scoring": "garbage"}, "--crop", "center")["threshold_warning"] \
        is None  # unreadable: taken as compare's centre crop, logged
    assert predict_with(None)["threshold"] == 0.5  # a null train_info is no information, not a crash
    tiles = {"mode": "tiles", "aggregate": "max", "tile_size": CROP, "stride": 0.5}
    assert threshold_scoring_warning({**compare_made, "threshold_scoring": tiles})  # a report says so
    assert threshold_scoring_warning(compare_made) == []


def test_a_detector_that_takes_any_size_scores_tiles_as_its_centre_so_no_warning():
    """NPR and freq see the whole image in one tile: their compare threshold holds under predict's default."""
    from medforensics_core.engine.calibrate import scoring_mismatch
    from medforensics_core.engine.tiles import CENTRE_SCORING, TileConfig, input_size, scoring_of
    from medforensics_core.plugins import get_registry

    freq = get_registry().detector("freq")(preset="tiny")
    assert input_size(freq) is None
    assert scoring_of(freq, TileConfig()) == CENTRE_SCORING
    freq.train_info = {"threshold": 0.4}  # as mfx compare leaves it
    assert scoring_mismatch(freq, TileConfig()) is None
