"""The comparison engine: protocols, robustness, failures, resume, and the end-to-end `mfx compare`.

Most tests run on a small dataset made here from real images shipped with
scikit-image (a fundus photograph, an IHC histology slide, a fluorescence cell
image), tiled into crops, with fakes made by three deterministic manipulations
that leave different traces (nearest-neighbour upsampling, additive noise,
smoothing). Detectors are cheap: ``freq`` (registered by mfx) and a tiny
trainable probe registered at run time, so the engine's logic is tested in
seconds; the end-to-end test runs the real ``dski cnnspot univfd`` on the quick
offline benchmark.
"""

from __future__ import annotations

import csv
import json
import os
import types
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from medforensics_core.cli import cli
from medforensics_core.contract import Batch, ReferenceBank, SupportsDistributed
from medforensics_core.data.manifest import ManifestRow, write_manifest
from medforensics_core.engine.training import run_epoch
from medforensics_core.hookspecs import hookimpl
from medforensics_core.interfaces import Detector

CROP = 48
PER_MODALITY = 40
GENERATORS = ("upsample", "noise", "smooth")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- a small real-image dataset


def _real_sources() -> dict[str, np.ndarray]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    out = {}
    for modality, name in (("fundus", "retina.jpg"), ("histology", "ihc.png"), ("microscopy", "cell.png")):
        with Image.open(folder / name) as img:
            out[modality] = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return out


def _crops(image: np.ndarray, n: int) -> list[np.ndarray]:
    """``n`` non-overlapping crops from the central region (fundus borders are black)."""
    h, w = image.shape[:2]
    top, left = h // 8, w // 8
    per_row = (w * 3 // 4) // CROP
    return [image[top + (i // per_row) * CROP: top + (i // per_row + 1) * CROP,
                  left + (i % per_row) * CROP: left + (i % per_row + 1) * CROP] for i in range(n)]


def _fake(crop: np.ndarray, generator: str, seed: int) -> np.ndarray:
    x = torch.from_numpy(crop).permute(2, 0, 1)[None]
    if generator == "upsample":
        x = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    elif generator == "noise":
        x = x + torch.from_numpy(np.random.default_rng(seed).normal(0, 0.04, x.shape).astype(np.float32))
    else:
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
        k = (k[:, None] * k[None, :]) / 256
        x = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k.expand(3, 1, 5, 5).contiguous(), groups=3)
    return x[0].clamp(0, 1).permute(1, 2, 0).numpy()


def _split(index: int) -> str:
    return "train" if index % 10 < 6 else "val" if index % 10 == 6 else "test"


def build_small_dataset(root: Path) -> Path:
    """Write PNG crops + ``manifest.csv`` under ``root``; returns ``root``."""
    rows = []
    for modality, image in _real_sources().items():
        for i, crop in enumerate(_crops(image, PER_MODALITY)):
            generator = GENERATORS[i % len(GENERATORS)]
            for label, name, pixels in ((0, "real", crop), (1, generator, _fake(crop, generator, i))):
                path = Path(_split(i)) / modality / name / f"{i:03d}.png"
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((pixels * 255).round().astype(np.uint8)).save(root / path)
                rows.append(ManifestRow(path=str(path), label=label, modality=modality, generator=name,
                                        split=_split(i), source=f"{modality}:{i}"))
    write_manifest(rows, root / "manifest.csv")
    return root


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    return build_small_dataset(tmp_path_factory.mktemp("small-dataset"))


# --------------------------------------------------------------------------- runtime test detectors


@dataclass
class ProbeConfig:
    epochs: int = 40
    lr: float = 0.1
    batch_size: int = 16


class HighPassProbe(Detector, SupportsDistributed):
    """Logistic probe on image statistics (log Laplacian energy, its square, contrast), trained with run_epoch."""

    name: ClassVar[str] = "test-probe"
    description: ClassVar[str] = "test detector: logistic probe on Laplacian energy and contrast"
    config_class: ClassVar[type] = ProbeConfig
    presets: ClassVar[dict] = {"tiny": {"epochs": 30}}

    def __init__(self, config=None, *, preset=None, device="cpu"):
        super().__init__(config, preset=preset, device=device)
        self.model = torch.nn.Linear(3, 1)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        gray = image.mean(0)
        lap = 4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
        energy = torch.log(lap.abs().mean() + 1e-4) + 3.0
        return torch.stack([energy, energy**2, gray.std() * 5])

    def fit(self, train, val=None, ctx=None):
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)
        for epoch in range(ctx.epochs_for(self.config.epochs)):
            loader = ctx.loader(train, self.preprocess, self.config.batch_size, shuffle=True, epoch_offset=epoch)
            run_epoch(self.model, loader, optimizer, ctx)
        self.fitted = True
        return self

    @torch.no_grad()
    def predict_proba(self, batch: Batch) -> np.ndarray:
        return torch.sigmoid(self.model(batch.inputs.float())).reshape(-1).cpu().numpy()


class BrokenDetector(HighPassProbe):
    name: ClassVar[str] = "test-broken"
    description: ClassVar[str] = "test detector whose fit raises"

    def fit(self, train, val=None, ctx=None):
        raise RuntimeError("simulated failure in fit")


class InterruptedDetector(HighPassProbe):
    """Behaves like the probe, but is 'killed' (Ctrl-C) during fit while MFX_TEST_INTERRUPT is set."""

    name: ClassVar[str] = "test-interrupted"
    description: ClassVar[str] = "test detector interrupted while MFX_TEST_INTERRUPT is set"

    def fit(self, train, val=None, ctx=None):
        if os.environ.get("MFX_TEST_INTERRUPT"):
            raise KeyboardInterrupt
        return super().fit(train, val, ctx)


class BankProbe(HighPassProbe, ReferenceBank):
    """The probe plus a reference bank: a support image's features pull the scores of similar images."""

    name: ClassVar[str] = "test-bank"
    description: ClassVar[str] = "test detector with add_references (few-shot)"

    def __init__(self, config=None, *, preset=None, device="cpu"):
        super().__init__(config, preset=preset, device=device)
        self.references: list[tuple[torch.Tensor, int]] = []
        self.bank = None

    def add_references(self, images, labels, modalities, generators, sources=None):
        self.references += [(self.preprocess(img), int(lab)) for img, lab in zip(images, labels)]
        return len(self.references)

    @torch.no_grad()
    def predict_proba(self, batch):
        base = super().predict_proba(batch)
        if not self.references:
            return base
        bank = torch.stack([f for f, _ in self.references])
        labels = torch.tensor([float(lab) for _, lab in self.references])
        nearest = torch.cdist(batch.inputs.float(), bank).argmin(1)
        close = torch.cdist(batch.inputs.float(), bank).min(1).values < 0.5
        vote = labels[nearest].numpy()
        return np.where(close.numpy(), 0.5 * base + 0.5 * vote, base)


test_plugin = types.ModuleType("mfx_test_engine_plugin")


@hookimpl
def _register_detectors(register):
    for cls in (HighPassProbe, BrokenDetector, InterruptedDetector, BankProbe):
        register(cls)


test_plugin.register_detectors = _register_detectors


@pytest.fixture
def test_detectors(fresh_registry):
    fresh_registry.register_plugin(test_plugin, "mfx-test-engine")
    yield
    fresh_registry.unregister_plugin(test_plugin)


def run_mfx(*args: str, env: dict | None = None):
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=True)
    return result


def error_lines(output: str) -> list[str]:
    """The command's own error lines (log warnings from unrelated broken plugins are not the command's output)."""
    return [line for line in output.splitlines() if line.startswith("error:")]


def only_run_dir(root: Path) -> Path:
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    return folder


# --------------------------------------------------------------------------- tests


def test_in_domain_compare_writes_full_run_directory(small_dataset, test_detectors, tmp_path):
    result = run_mfx("compare", "freq", "test-probe", "--data", str(small_dataset), "--out", str(tmp_path),
                     "--n-boot", "200")
    assert result.exit_code == 0, result.output
    run = only_run_dir(tmp_path)
    report = json.loads((run / "report.json").read_text())
    for name in ("freq", "test-probe"):
        entry = report["detectors"][name]
        assert entry["status"] == "ok"
        assert set(entry["by_modality"]) == {"fundus", "histology", "microscopy"}
        assert set(entry["by_generator"]) == set(GENERATORS)
        assert entry["overall"]["n"] == report["data"]["n_test"]
        lo, hi = entry["overall"]["auc_ci"]
        assert lo <= entry["overall"]["auc"] <= hi
    # a radial spectrum separates these manipulations from real crops (measured 0.89 on this set)
    assert report["detectors"]["freq"]["overall"]["auc"] > 0.75
    assert len(report["paired"]) == 1 and report["paired"][0]["b"] in ("freq", "test-probe")
    for name in ("config.json", "environment.json", "scores.csv", "report.html", "metrics.csv", "mfx.log",
                 "checkpoints/freq.safetensors", "checkpoints/test-probe.safetensors"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["seed"] == 0 and config["detectors"]["test-probe"]["config"]["epochs"] == 40
    # whose code produced each row: the owning distribution and its version
    from importlib.metadata import version

    assert report["detectors"]["freq"]["distribution"] == "medforensics"
    assert report["detectors"]["freq"]["version"] == version("medforensics")
    assert report["detectors"]["test-probe"]["distribution"] == "runtime"  # registered in-process
    assert config["detectors"]["freq"]["distribution"] == "medforensics"
    with open(run / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * report["data"]["n_test"]
    probe_scores = np.array([float(r["score"]) for r in rows if r["detector"] == "test-probe"])
    labels = np.array([int(r["label"]) for r in rows if r["detector"] == "test-probe"])
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(labels, probe_scores) == pytest.approx(report["detectors"]["test-probe"]["overall"]["auc"])
    _check_forensic_conventions(run, report, rows)


def _check_forensic_conventions(run: Path, report: dict, rows: list[dict]) -> None:
    """TPR per generator at the validated threshold, TPR at 1%/5% FPR, histograms, example grid, file modes."""
    import os
    import stat

    from medforensics_core.metrics import threshold_at_fpr, tpr_at_fpr

    freq = report["detectors"]["freq"]
    assert freq["source"] == "trained" and freq["weights_status"] == "from-scratch"
    assert freq["threshold_rule"].startswith("5% FPR on the validation split")
    from medforensics_core.checkpoint import load_metadata  # mfx predict warns when it scores otherwise

    assert load_metadata(run / "checkpoints" / "freq.safetensors")["train_info"]["threshold_scoring"] == {
        "mode": "center"}
    labels = np.array([int(r["label"]) for r in rows if r["detector"] == "freq"])
    scores = np.array([float(r["score"]) for r in rows if r["detector"] == "freq"])
    generators = np.array([r["generator"] for r in rows if r["detector"] == "freq"])
    for generator, metrics in freq["by_generator"].items():
        fakes = scores[(generators == generator) & (labels == 1)]
        assert metrics["tpr"] == pytest.approx(float((fakes > freq["threshold"]).mean()))
    for fpr in (0.01, 0.05):
        value = freq["overall"][f"tpr_at_fpr_{fpr:g}"]
        cut = threshold_at_fpr(scores[labels == 0], fpr)  # at most fpr of the reals above the cut
        assert (scores[labels == 0] > cut).mean() <= fpr and value >= (scores[labels == 1] > cut).mean()
        assert value == pytest.approx(tpr_at_fpr(labels, scores, fpr))
    html = (run / "report.html").read_text()
    assert "histograms.png" in html and "<h2>Examples</h2>" in html and "fakes caught" in html
    caught = freq["examples"]["caught"]
    assert caught and all(item["label"] == 1 and item["score"] > freq["threshold"] for item in caught)
    assert all((run / item["overlay"]).is_file() for items in freq["examples"].values() for item in items)
    for name in ("report.json", "report.html", "scores.csv", "checkpoints/freq.safetensors"):
        mode = stat.S_IMODE(os.stat(run / name).st_mode)
        assert mode & stat.S_IRGRP, (name, oct(mode))  # readable by the group (mkstemp alone gives 0600)


def test_leave_one_generator_out_has_one_fold_per_generator(small_dataset, tmp_path):
    result = run_mfx("compare", "freq", "--data", str(small_dataset), "--out", str(tmp_path),
                     "--protocol", "leave-one-generator-out", "--n-boot", "100")
    assert result.exit_code == 0, result.output
    run = only_run_dir(tmp_path)
    report = json.loads((run / "report.json").read_text())
    by_generator = report["detectors"]["freq"]["by_generator"]
    assert set(by_generator) == set(GENERATORS)
    for generator in GENERATORS:
        fold = json.loads((run / "folds" / generator / "report.json").read_text())
        # each fold tests only the held-out generator's fakes against the test reals
        assert fold["data"]["generators"] == [generator]
        assert by_generator[generator]["auc"] == fold["detectors"]["freq"]["overall"]["auc"]
        config = json.loads((run / "config.json").read_text())
        assert config["options"]["protocol"] == "leave-one-generator-out"
    aucs = [by_generator[g]["auc"] for g in GENERATORS]
    assert report["detectors"]["freq"]["overall"]["auc"] == pytest.approx(np.mean(aucs))


def test_leave_one_generator_out_pairs_detectors_over_all_folds(small_dataset, tmp_path):
    """The fold-merged report tests the mean held-out AUC: delta is the mean of the folds' own differences."""
    result = run_mfx("compare", "freq", "npr", "--data", str(small_dataset), "--out", str(tmp_path),
                     "--protocol", "leave-one-generator-out", "--n-boot", "200", "--epochs", "1", "--preset", "tiny")
    assert result.exit_code == 0, result.output
    run = only_run_dir(tmp_path)
    report = json.loads((run / "report.json").read_text())
    (paired,) = report["paired"]
    a, b = paired["a"], paired["b"]
    folds = {g: json.loads((run / "folds" / g / "report.json").read_text())["detectors"] for g in GENERATORS}
    per_fold = {g: d[a]["overall"]["auc"] - d[b]["overall"]["auc"] for g, d in folds.items()}
    assert paired["per_fold"] == pytest.approx(per_fold)
    assert paired["delta"] == pytest.approx(np.mean(list(per_fold.values())))
    assert paired["ci"][0] <= paired["delta"] <= paired["ci"][1] and 0 < paired["p_value"] <= 1
    assert paired["wins"] == sum(d > 0 for d in per_fold.values()) and paired["runs"] == len(GENERATORS)
    assert "mean over" in result.output and "folds" in result.output


def test_robustness_perturbations_are_reported_per_perturbation(small_dataset, tmp_path):
    result = run_mfx("compare", "freq", "--data", str(small_dataset), "--out", str(tmp_path),
                     "--perturb", "jpeg:30,blur:2", "--perturb", "noise:0.05", "--n-boot", "100")
    assert result.exit_code == 0, result.output
    run = only_run_dir(tmp_path)
    report = json.loads((run / "report.json").read_text())
    assert set(report["perturbations"]) == {"jpeg:30", "blur:2", "noise:0.05"}
    clean = report["detectors"]["freq"]["overall"]["auc"]
    perturbed = {k: v["freq"]["overall"]["auc"] for k, v in report["perturbations"].items()}
    # blurring erases the spectral traces a spectrum classifier relies on
    assert perturbed["blur:2"] < clean
    with open(run / "scores.csv") as handle:
        labels = {r["perturbation"] for r in csv.DictReader(handle)}
    assert labels == {"", "jpeg:30", "blur:2", "noise:0.05"}
    # deterministic from the seed: a second run gives identical perturbed scores
    again = tmp_path / "again"
    assert run_mfx("compare", "freq", "--data", str(small_dataset), "--out", str(again),
                   "--perturb", "jpeg:30,blur:2,noise:0.05", "--n-boot", "100").exit_code == 0
    second = json.loads((only_run_dir(again) / "report.json").read_text())
    noisy = "noise:0.05"
    assert second["perturbations"][noisy]["freq"]["overall"] == report["perturbations"][noisy]["freq"]["overall"]


def test_cross_modality_trains_on_chosen_modalities_only(small_dataset, tmp_path):
    result = run_mfx("compare", "freq", "--data", str(small_dataset), "--out", str(tmp_path),
                     "--protocol", "cross-modality", "--train-modalities", "fundus,histology", "--n-boot", "50")
    assert result.exit_code == 0, result.output
    report = json.loads((only_run_dir(tmp_path) / "report.json").read_text())
    assert set(report["detectors"]["freq"]["by_modality"]) == {"microscopy"}
    bad = run_mfx("compare", "freq", "--data", str(small_dataset), "--out", str(tmp_path),
                  "--protocol", "cross-modality", "--train-modalities", "dermoscopy")
    assert bad.exit_code == 2 and "unknown modality dermoscopy" in bad.output and "Traceback" not in bad.output
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1  # refused before any run directory was made


def test_few_shot_adds_support_to_detectors_with_a_bank(small_dataset, test_detectors, tmp_path):
    result = run_mfx("compare", "test-bank", "freq", "--data", str(small_dataset), "--out", str(tmp_path),
                     "--protocol", "few-shot", "--holdout", "smooth", "--shots", "4", "--n-boot", "50")
    assert result.exit_code == 0, result.output
    report = json.loads((only_run_dir(tmp_path) / "report.json").read_text())
    assert set(report["detectors"]) == {"test-bank", "test-bank +4-shot", "freq"}
    assert report["data"]["generators"] == ["smooth"]
    before = report["detectors"]["test-bank"]["overall"]
    after = report["detectors"]["test-bank +4-shot"]["overall"]
    assert before["n"] == after["n"]
    assert after["fake_acc"] >= before["fake_acc"]


def test_failing_detector_is_reported_and_others_finish(small_dataset, test_detectors, tmp_path):
    result = run_mfx("compare", "test-broken", "freq", "--data", str(small_dataset), "--out", str(tmp_path),
                     "--n-boot", "50")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "simulated failure in fit" in result.output
    run = only_run_dir(tmp_path)
    report = json.loads((run / "report.json").read_text())
    assert report["detectors"]["test-broken"]["status"] == "failed"
    assert "simulated failure in fit" in report["detectors"]["test-broken"]["error"]
    assert report["detectors"]["freq"]["status"] == "ok"
    assert "Traceback" in (run / "mfx.log").read_text()  # the traceback lives in the log file only
    assert "FAILED" in result.output


def test_resume_after_interrupt_gives_the_same_report(small_dataset, test_detectors, tmp_path):
    straight = tmp_path / "straight"
    args = ["compare", "freq", "test-interrupted", "--data", str(small_dataset), "--n-boot", "200"]
    assert run_mfx(*args, "--out", str(straight)).exit_code == 0
    reference = json.loads((only_run_dir(straight) / "report.json").read_text())

    broken = tmp_path / "broken"
    interrupted = run_mfx(*args, "--out", str(broken), env={"MFX_TEST_INTERRUPT": "1"})
    assert interrupted.exit_code == 130 and "--resume" in interrupted.output
    run = only_run_dir(broken)
    assert (run / "results" / "freq.json").is_file() and not (run / "report.json").exists()
    # as an older mfx saved it: intervals over other clusters, counted under another key
    saved = json.loads((run / "results" / "freq.json").read_text())
    overall = saved["rows"]["freq"]["entry"]["overall"]
    overall["n_sources"], overall["auc_ci"] = overall.pop("n_clusters"), [0.0, 1.0]
    (run / "results" / "freq.json").write_text(json.dumps(saved))
    freq_written = (run / "results" / "freq.json").stat().st_mtime_ns

    resumed = run_mfx("compare", "--resume", str(run))
    assert resumed.exit_code == 0, resumed.output
    assert "finished in an earlier attempt" in resumed.output
    assert "test-interrupted: unfinished in the earlier attempt; restarting it from scratch" in resumed.output
    assert (run / "results" / "freq.json").stat().st_mtime_ns == freq_written  # not run again, its metrics recomputed
    report = json.loads((run / "report.json").read_text())
    for name in ("freq", "test-interrupted"):
        for view in ("overall", "by_modality", "by_generator"):
            assert report["detectors"][name][view] == reference["detectors"][name][view], (name, view)
    assert report["paired"] == reference["paired"]


def test_unknown_detector_is_one_line_before_any_work(tmp_path):
    result = run_mfx("compare", "dksi", "freq", "--data", str(tmp_path), "--out", str(tmp_path / "runs"))
    assert result.exit_code == 2
    assert "unknown detector 'dksi'" in result.output and "Did you mean 'dski'" in result.output
    assert "Traceback" not in result.output and len(error_lines(result.output)) == 1
    assert not (tmp_path / "runs").exists()


def test_checkpoint_of_another_detector_is_refused(small_dataset, test_detectors, tmp_path):
    checkpoint = tmp_path / "probe.safetensors"
    assert run_mfx("train", "test-probe", "--data", str(small_dataset), "-o", str(checkpoint)).exit_code == 0
    result = run_mfx("compare", "freq", "--checkpoint", f"freq={checkpoint}", "--data", str(small_dataset),
                     "--out", str(tmp_path / "runs"))
    assert result.exit_code == 2
    assert "checkpoint of detector 'test-probe', not 'freq'" in result.output
    assert "Traceback" not in result.output and len(error_lines(result.output)) == 1


def test_rich_progress_draws_on_a_terminal_and_nothing_otherwise():
    from rich.console import Console

    from medforensics_core.engine.progress import RichProgress

    terminal = Console(record=True, force_terminal=True, width=100)
    with RichProgress(terminal) as progress:
        assert list(progress(range(5), 5, "scoring probe")) == list(range(5))
    assert "scoring probe" in terminal.export_text()
    pipe = Console(record=True, force_terminal=False, width=100)
    with RichProgress(pipe) as progress:
        assert list(progress(iter("abc"), 3, "quiet")) == ["a", "b", "c"]
    assert "quiet" not in pipe.export_text()


def test_resume_refuses_other_detectors_than_recorded(small_dataset, tmp_path):
    first = run_mfx("compare", "freq", "--data", str(small_dataset), "--out", str(tmp_path), "--n-boot", "0")
    assert first.exit_code == 0
    run = only_run_dir(tmp_path)
    result = run_mfx("compare", "npr", "--resume", str(run))
    assert result.exit_code == 2 and "this run compares freq" in result.output and "Traceback" not in result.output
    missing = run_mfx("compare", "--resume", str(tmp_path / "nope"))
    assert missing.exit_code == 2 and "no such run directory" in missing.output
