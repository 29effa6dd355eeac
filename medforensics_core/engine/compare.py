"""``mfx compare``: train (or load) several detectors on the same data, score them on the same images, report.

Fairness is structural: one decoded dataset shared by every detector, one
protocol cutting it into folds, one seed re-applied before each detector, one
budget, one scoring loop (``engine.evaluate.score_with_timing``) with each
detector's own preprocessing. A detector that raises is reported as FAILED (its
traceback goes to the run's log file) and the others still finish. Results are
saved per detector as soon as each one finishes, so ``--resume`` skips them.

``mfx train`` and ``mfx evaluate`` are this module's building blocks run on
their own (:func:`train_detector`, :func:`run_compare` with a checkpoint).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from ..data.manifest import Manifest, read_manifest
from ..errors import CheckpointError, MfxError
from ..interfaces import Detector, Perturbation
from . import distributed
from .context import FitContext, ProgressFn, no_progress
from .device import peak_memory_mb, resolve_device, seed_everything
from .evaluate import DEFAULT_EVAL_BATCH, score_with_timing
from .protocols import DataBundle, Fold, ProtocolOptions, make_folds
from .resume import ResultStore
from .rundir import RunDir, environment, new_run_dir, reset_peak_memory

log = logging.getLogger(__name__)
run_log = logging.getLogger("mfx.run")  # the run's log file only (tracebacks never reach the terminal)
run_log.propagate = False

CONFIG_FILE = "config.json"
LOG_FILE = "mfx.log"
SCORE_COLUMNS = ("detector", "perturbation", "path", "label", "modality", "generator", "score")


# --------------------------------------------------------------------------- options and plan


@dataclasses.dataclass
class CompareOptions:
    """Every option of a comparison; saved in ``config.json`` and reloaded verbatim by ``--resume``."""

    detectors: list[str]
    data: str | None = None
    protocol: str = "in-domain"
    preset: str | None = None
    device: str = "auto"
    seed: int = 0
    epochs: int | None = None
    budget_minutes: float | None = None
    checkpoints: dict[str, str] = dataclasses.field(default_factory=dict)
    overrides: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    perturb: list[str] = dataclasses.field(default_factory=list)
    out: str = "runs"
    on_bad: str = "fail"
    quick: bool = False
    train_modalities: list[str] = dataclasses.field(default_factory=list)
    shots: int = 5
    holdout: str | None = None
    test_split: str = "test"
    batch_size: int = DEFAULT_EVAL_BATCH
    n_boot: int = 1000
    label: str = "compare"
    command: str = ""
    run_dir: str | None = None  # write exactly here (mfx evaluate --out) instead of a new folder under ``out``

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CompareOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclasses.dataclass
class DetectorSpec:
    """A detector to run: registered class, preset, ``--set`` overrides and an optional checkpoint."""

    name: str
    cls: type[Detector]
    preset: str
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)
    checkpoint: str | None = None

    def config(self) -> Any:
        return self.cls.make_config(self.preset, **self.overrides)

    def build(self, device: torch.device) -> Detector:
        return self.cls(self.config(), preset=self.preset, device=device)

    def load(self, device: torch.device, path: str | None = None) -> Detector:
        return self.cls.load(path or self.checkpoint, device=device)


@dataclasses.dataclass
class RunPlan:
    """A comparison with everything resolved and checked before any work starts."""

    options: CompareOptions
    specs: list[DetectorSpec]
    data_path: Path
    preset: str
    perturbations: list[Perturbation]


def resolve_data(data: str | None, quick: bool = False) -> tuple[Path, bool]:
    """The dataset path and whether it is the offline benchmark (used when ``--data`` is not given)."""
    if data:
        path = Path(data).expanduser()
        if not path.exists():
            raise MfxError(f"{path}: dataset not found (give a folder, a folder holding manifest.csv, or a manifest)")
        return path, False
    from rich.console import Console

    from ..benchmark import default_dataset
    from .progress import RichProgress

    # a first run builds the benchmark (minutes): show each stage's progress on stderr (nothing when reused)
    with RichProgress(Console(stderr=True)) as progress:
        return Path(default_dataset(quick=quick, progress=progress)), True


def open_manifest(path: Path) -> Manifest:
    """A manifest from a CSV, a folder holding ``manifest.csv``, or a folder layout (via ``data.open_dataset``)."""
    try:
        from ..data import open_dataset
    except ImportError:  # the data layer predates open_dataset: plain manifests only
        return read_manifest(path / "manifest.csv" if path.is_dir() else path)
    return open_dataset(path)


def parse_perturbations(specs: Sequence[str]) -> list[Perturbation]:
    """``["jpeg:50,blur:1.5"]`` -> perturbation objects from the registry (strength after the colon)."""
    from ..plugins import get_registry

    found: list[Perturbation] = []
    for item in ",".join(specs).split(","):
        item = item.strip()
        if not item:
            continue
        name, _, strength = item.partition(":")
        cls = get_registry().perturbation(name.strip())
        try:
            found.append(cls(float(strength)) if strength else cls())
        except ValueError:
            raise MfxError(f"--perturb {item!r}: strength must be a number (e.g. {name}:{cls.default_strength:g})") \
                from None
    return found


def checkpoint_detector_name(path: str | Path) -> str | None:
    """The detector a checkpoint belongs to, read from its header without loading tensors."""
    import json

    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        meta = json.loads(header.get("mfx", "{}"))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise CheckpointError(f"{path}: not a readable mfx checkpoint ({type(exc).__name__}: {exc})") from None
    return meta.get("detector")


def check_checkpoint(detector: str, path: str | Path) -> None:
    """Refuse, in one line and before any work, a checkpoint written by another detector."""
    owner = checkpoint_detector_name(path)
    if owner != detector:
        raise CheckpointError(f"{path}: checkpoint of detector {owner!r}, not {detector!r}")


def plan_run(options: CompareOptions) -> RunPlan:
    """Check names, presets, overrides, checkpoints and perturbations; resolve the data. No training yet."""
    from ..plugins import get_registry

    if not options.detectors:
        raise MfxError("name at least one detector (see `mfx plugins --kind detector`)")
    duplicates = sorted({d for d in options.detectors if options.detectors.count(d) > 1})
    if duplicates:
        raise MfxError(f"detector(s) named twice: {', '.join(duplicates)}")
    classes = {name: get_registry().detector(name) for name in options.detectors}
    for name in [*options.checkpoints, *options.overrides]:
        if name not in classes:
            raise MfxError(f"--checkpoint/--set names detector {name!r}, which is not compared "
                           f"({', '.join(options.detectors)})")
    for name, path in options.checkpoints.items():
        check_checkpoint(name, path)
    perturbations = parse_perturbations(options.perturb)
    data_path, is_benchmark = resolve_data(options.data, options.quick)
    preset = options.preset or ("tiny" if is_benchmark else "full")
    specs = [DetectorSpec(name, cls, preset, dict(options.overrides.get(name, {})), options.checkpoints.get(name))
             for name, cls in classes.items()]
    for spec in specs:
        if spec.checkpoint is None:
            spec.config()  # an unknown preset or key fails here, in one line
    return RunPlan(options, specs, data_path, preset, perturbations)


# --------------------------------------------------------------------------- one detector


def make_context(options: CompareOptions, device: torch.device, rank: int = 0, world_size: int = 1,
                 progress: ProgressFn = no_progress, work_dir: Path | None = None) -> FitContext:
    """A fresh context per detector, so each one gets the whole budget."""
    budget = options.budget_minutes * 60 if options.budget_minutes is not None else None
    return FitContext(device=device, seed=options.seed, epochs=options.epochs, budget_seconds=budget,
                      progress=progress, rank=rank, world_size=world_size, work_dir=work_dir)


def fit_context(cls: type[Detector], ctx: FitContext) -> FitContext:
    """The context a detector's ``fit`` sees under torchrun.

    Only a detector that declares ``distributed_fit = True`` (its training loop
    is ``engine.training.run_epoch``, which averages gradients across ranks)
    trains on shards. Any other detector trains on the full training set on
    every rank — identical, seeded runs — because training it on a shard
    without gradient synchronisation would silently give rank 0 a model fitted
    to 1/N of the data. Scoring is always sharded.
    """
    if ctx.distributed and not getattr(cls, "distributed_fit", False):
        return dataclasses.replace(ctx, world_size=1)
    return ctx


def train_detector(spec: DetectorSpec, train, val, ctx: FitContext) -> tuple[Detector, float]:
    """Seed, build and fit one detector; returns it with its training time in seconds."""
    seed_everything(ctx.seed)
    detector = spec.build(ctx.device)
    start = time.perf_counter()
    detector.fit(train, val, fit_context(spec.cls, ctx))
    detector.fitted = True
    return detector, time.perf_counter() - start


def obtain_detector(spec: DetectorSpec, fold: Fold, ctx: FitContext,
                    checkpoint_dir: RunDir | None) -> tuple[Detector, float, str | None]:
    """Load the given checkpoint, or train and save one (rank 0 saves, the other ranks load that file)."""
    if spec.checkpoint:
        return spec.load(ctx.device), 0.0, spec.checkpoint
    detector, seconds = train_detector(spec, fold.train, fold.val, ctx)
    if checkpoint_dir is None:
        return detector, seconds, None
    path = checkpoint_dir.file(f"checkpoints/{spec.name}.safetensors")
    if ctx.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        detector.save(path)
    distributed.barrier(ctx.world_size)
    if ctx.rank != 0:  # every rank scores with rank 0's model
        detector = spec.load(ctx.device, str(path))
    return detector, seconds, str(path)


def trainable_params(detector: Detector) -> int | None:
    if "trainable_params" in detector.train_info:
        return int(detector.train_info["trainable_params"])
    modules = detector.modules()
    if not modules:
        return None
    return sum(p.numel() for m in modules.values() for p in m.parameters() if p.requires_grad)


class PerturbedImages(torch.utils.data.Dataset):
    """A test set seen through one perturbation, applied once, deterministically from the run's seed.

    Perturbed images are kept as 8-bit, like the decoded originals (the same
    quantisation a saved PNG would have), and are shared by every detector.
    """

    def __init__(self, images, perturbation: Perturbation, seed: int):
        self.rows, self.labels = images.rows, images.labels
        self._cache = [self._apply(images.image(i), perturbation, seed, i) for i in range(len(images))]

    @staticmethod
    def _apply(image: torch.Tensor, perturbation: Perturbation, seed: int, index: int) -> torch.Tensor:
        rng = np.random.default_rng([seed, index])
        return (perturbation(image, rng).clamp(0, 1) * 255).round().to(torch.uint8)

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, index: int) -> torch.Tensor:
        return self._cache[index].float() / 255.0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.image(index), int(self.labels[index])


def _summary(images, scores: np.ndarray, options: CompareOptions) -> dict[str, Any]:
    from ..metrics import summarize

    return summarize(images.labels, scores, modalities=[r.modality for r in images.rows],
                     generators=[r.generator for r in images.rows], n_boot=options.n_boot, seed=options.seed)


def _entry(detector: Detector, spec: DetectorSpec, train_seconds: float, speed: float, checkpoint: str | None,
           summary: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {"status": "ok", "error": None, "preset": detector.preset or spec.preset,
            "weights": detector.weights_info(), "warnings": list(detector.warnings()),
            "train_seconds": round(train_seconds, 3), "infer_images_per_s": round(speed, 2),
            "peak_memory_mb": round(peak_memory_mb(device), 1), "trainable_params": trainable_params(detector),
            "checkpoint": checkpoint, "train_info": dict(detector.train_info), **summary}


def add_references(detector: Detector, support, ctx: FitContext) -> None:
    """Give a detector with a reference bank (``add_references``) the few-shot support images."""
    images = torch.stack([support.image(i) for i in range(len(support))])
    detector.add_references(images, support.labels.tolist(), [r.modality for r in support.rows],
                            [r.generator for r in support.rows])


def run_detector(spec: DetectorSpec, fold: Fold, plan: RunPlan, ctx: FitContext, fold_dir: RunDir | None,
                 perturbed: dict[str, PerturbedImages]) -> dict[str, Any]:
    """Train/load, score clean and perturbed test images (and few-shot support); one saved result."""
    options = plan.options
    reset_peak_memory(ctx.device)
    detector, train_seconds, checkpoint = obtain_detector(spec, fold, ctx, fold_dir)
    scores, speed = score_with_timing(detector, fold.test, ctx, batch_size=options.batch_size)
    rows = {spec.name: {"scores": {"": scores.tolist()}}}
    for label, images in perturbed.items():
        rows[spec.name]["scores"][label] = score_with_timing(detector, images, ctx,
                                                             batch_size=options.batch_size)[0].tolist()
    entry = _entry(detector, spec, train_seconds, speed, checkpoint, _summary(fold.test, scores, options), ctx.device)
    rows[spec.name]["entry"] = entry
    if fold.support is not None and hasattr(detector, "add_references"):
        add_references(detector, fold.support, ctx)
        shot_scores, _ = score_with_timing(detector, fold.test, ctx, batch_size=options.batch_size)
        shot_entry = dict(entry, **_summary(fold.test, shot_scores, options), checkpoint=None)
        rows[f"{spec.name} +{len(fold.support)}-shot"] = {"entry": shot_entry, "scores": {"": shot_scores.tolist()}}
    return {"status": "ok", "rows": rows}


def failed_result(spec: DetectorSpec, exc: BaseException) -> dict[str, Any]:
    reason = f"{type(exc).__name__}: {exc}".strip()
    entry = {"status": "failed", "error": reason, "preset": spec.preset, "weights": "", "warnings": [],
             "train_seconds": None, "infer_images_per_s": None, "peak_memory_mb": None,
             "trainable_params": None, "checkpoint": None}
    return {"status": "failed", "rows": {spec.name: {"entry": entry, "scores": {}}}}


# --------------------------------------------------------------------------- one fold


@dataclasses.dataclass
class Session:
    """Where and how this process runs: device, ranks, progress, terminal (``None`` on non-zero ranks)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    progress: ProgressFn = no_progress
    console: Console | None = None
    log_path: Path | None = None
    resumed: bool = False

    def say(self, message: str) -> None:
        if self.console is not None and self.rank == 0:
            self.console.print(message)


def run_fold(plan: RunPlan, fold: Fold, fold_dir: RunDir, session: Session) -> dict[str, dict[str, Any]]:
    """Every detector on one fold; finished detectors of an earlier attempt are taken from disk."""
    store = ResultStore(fold_dir, writable=session.rank == 0)
    if any(spec.checkpoint is None for spec in plan.specs):
        _ = fold.val  # decode up front: a bad file stops the run here, not inside a detector
        if len(fold.train) == 0:
            raise MfxError(f"{plan.data_path}: no training images for this protocol (fold {fold.name or 'all'})")
    test_paths = [r.path for r in fold.test.rows]
    perturbed = {p.label(): PerturbedImages(fold.test, p, plan.options.seed) for p in plan.perturbations}
    results: dict[str, dict[str, Any]] = {}
    prefix = f"\\[{fold.name}] " if fold.name else ""
    for spec in plan.specs:
        saved = store.finished(spec.name, test_paths)
        if saved is not None:
            session.say(f"{prefix}[dim]{spec.name}: finished in an earlier attempt, kept[/]")
            results[spec.name] = saved
            continue
        if session.resumed and spec.checkpoint is None:
            session.say(f"{prefix}{spec.name}: unfinished in the earlier attempt; restarting it from scratch "
                        "(detectors keep no per-epoch checkpoints)")
        session.say(f"{prefix}[bold]{spec.name}[/]: {'loading checkpoint' if spec.checkpoint else 'training'} "
                    f"({spec.preset} preset)")
        ctx = make_context(plan.options, session.device, session.rank, session.world_size, session.progress,
                           fold_dir.path)
        try:
            result = run_detector(spec, fold, plan, ctx, fold_dir, perturbed)
        except Exception as exc:  # noqa: BLE001 - one broken detector must not sink the comparison
            run_log.error("%s failed (fold %s):\n%s", spec.name, fold.name or "-", traceback.format_exc())
            result = failed_result(spec, exc)
            session.say(f"{prefix}[red]{spec.name}: FAILED[/] {escape(result['rows'][spec.name]['entry']['error'])} "
                        f"(traceback in {session.log_path})")
        result["test_paths"] = test_paths
        store.save(spec.name, result)
        results[spec.name] = result
    return results


def paired_tests(results: dict[str, dict[str, Any]], labels: np.ndarray, options: CompareOptions) -> list[dict]:
    """Best detector (overall AUC) against each other one, paired on the same images."""
    from ..metrics import paired_bootstrap

    rows = _ok_rows(results)
    ranked = [(row["entry"]["overall"].get("auc"), name) for name, row in rows.items()
              if row["entry"]["overall"].get("auc") is not None]
    if len(ranked) < 2:
        return []
    best = max(ranked)[1]
    best_scores = np.asarray(rows[best]["scores"][""])
    out = []
    for name, row in rows.items():
        if name == best:
            continue
        test = paired_bootstrap(labels, best_scores, np.asarray(row["scores"][""]), metric="auc",
                                n_boot=options.n_boot, seed=options.seed)
        out.append({"a": best, "b": name, **test})
    return out


def _ok_rows(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: row for result in results.values() for name, row in result["rows"].items()
            if row["entry"]["status"] == "ok"}


def perturbation_section(plan: RunPlan, fold: Fold, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    section: dict[str, Any] = {}
    for perturbation in plan.perturbations:
        label = perturbation.label()
        section[label] = {}
        for name, row in _ok_rows(results).items():
            if label in row["scores"]:
                summary = _summary(fold.test, np.asarray(row["scores"][label]), plan.options)
                section[label][name] = {k: summary[k] for k in ("overall", "by_modality", "by_generator")}
    return section


def fold_report(plan: RunPlan, fold: Fold, results: dict[str, dict[str, Any]], data: DataBundle,
                env: dict[str, Any]) -> dict[str, Any]:
    """The report dict (see the report contract) of one fold."""
    options = plan.options
    detectors = {name: row["entry"] for result in results.values() for name, row in result["rows"].items()}
    needs_train = any(spec.checkpoint is None for spec in plan.specs)
    report = {
        "mfx_version": env.get("mfx_version"), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": options.command, "protocol": options.protocol, "seed": options.seed, "preset": plan.preset,
        "fold": fold.name or None,
        "data": {"path": str(plan.data_path), "n_train": len(fold.train) if needs_train else 0,
                 "n_test": len(fold.test), "modalities": sorted({r.modality for r in fold.test.rows}),
                 "generators": sorted({r.generator for r in fold.test.rows if r.label == 1}),
                 "skipped": [list(s) for s in data.skipped]},
        "environment": env, "detectors": detectors,
        "paired": paired_tests(results, fold.test.labels, options),
        "notes": list(fold.notes) + _bankless_notes(plan, fold) + _notes(results, env),
    }
    if plan.perturbations:
        report["perturbations"] = perturbation_section(plan, fold, results)
    return report


def _bankless_notes(plan: RunPlan, fold: Fold) -> list[str]:
    if fold.make_support is None:
        return []
    return [f"{spec.name} has no reference bank (no add_references): no few-shot row"
            for spec in plan.specs if not hasattr(spec.cls, "add_references")]


def _notes(results: dict[str, dict[str, Any]], env: dict[str, Any]) -> list[str]:
    on_gpu = str(env.get("device") or "").startswith("cuda")
    memory = "the CUDA allocator peak per detector" if on_gpu else "the process max RSS so far (not per detector)"
    notes = [f"peak_memory_mb is {memory}"]
    failed = [n for n, r in results.items() if r["status"] != "ok"]
    if failed:
        notes.append(f"failed: {', '.join(failed)} (tracebacks in {LOG_FILE})")
    return notes


def write_scores(run_dir: RunDir, fold: Fold, results: dict[str, dict[str, Any]]) -> None:
    """``scores.csv``: one row per detector, perturbation and test image (perturbation empty when clean)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SCORE_COLUMNS)
    for name, row in _ok_rows(results).items():
        for perturbation, scores in row["scores"].items():
            for image, value in zip(fold.test.rows, scores):
                writer.writerow([name, perturbation, image.path, image.label, image.modality, image.generator,
                                 repr(float(value))])
    run_dir.write_text("scores.csv", buffer.getvalue())


# --------------------------------------------------------------------------- folds into one report


def _mean_entries(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Metric-wise mean over folds (where defined); counts add up; CIs do not carry over."""
    from ..metrics import MEAN_METRICS

    merged: dict[str, Any] = {}
    for key in MEAN_METRICS:
        values = [e[key] for e in entries if e.get(key) is not None]
        merged[key] = float(np.mean(values)) if values else None
    for key in ("n", "n_real", "n_fake"):
        merged[key] = int(sum(e.get(key) or 0 for e in entries))
    merged.update({"auc_ci": None, "ap_ci": None, "n_folds": len(entries)})
    return merged


def combine_folds(plan: RunPlan, reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Leave-one-generator-out: one report whose ``by_generator`` holds each held-out generator's fold."""
    first = next(iter(reports.values()))
    combined = {k: v for k, v in first.items() if k not in ("detectors", "paired", "perturbations", "fold")}
    combined["data"] = dict(first["data"], generators=list(reports),
                            n_test=sum(r["data"]["n_test"] for r in reports.values()))
    combined["detectors"] = {}
    names = dict.fromkeys(name for r in reports.values() for name in r["detectors"])
    for name in names:
        per_fold = {g: r["detectors"][name] for g, r in reports.items() if name in r["detectors"]}
        combined["detectors"][name] = _combined_entry(per_fold)
    combined["paired"] = []
    combined["notes"] = [f"leave-one-generator-out: {len(reports)} folds (one per held-out generator; each fold's "
                         "full report, paired tests and perturbations are in folds/<generator>/)",
                         "overall and by_modality are means over folds; by_generator[g] is the fold holding g out",
                         *first["notes"]]
    return combined


def _combined_entry(per_fold: dict[str, dict[str, Any]]) -> dict[str, Any]:
    failed = {g: e for g, e in per_fold.items() if e["status"] != "ok"}
    first = next(iter(per_fold.values()))
    meta = {k: first.get(k) for k in ("preset", "weights", "warnings", "trainable_params")}
    if failed:
        reasons = "; ".join(f"{g}: {e['error']}" for g, e in failed.items())
        return {**meta, "status": "failed", "error": f"failed on fold(s) {reasons}", "train_seconds": None,
                "infer_images_per_s": None, "peak_memory_mb": None, "checkpoint": None}
    by_generator = {g: e["overall"] for g, e in per_fold.items()}
    modalities = dict.fromkeys(m for e in per_fold.values() for m in e["by_modality"])
    by_modality = {m: _mean_entries([e["by_modality"][m] for e in per_fold.values() if m in e["by_modality"]])
                   for m in modalities}
    return {**meta, "status": "ok", "error": None,
            "train_seconds": round(sum(e["train_seconds"] for e in per_fold.values()), 3),
            "infer_images_per_s": round(float(np.mean([e["infer_images_per_s"] for e in per_fold.values()])), 2),
            "peak_memory_mb": max(e["peak_memory_mb"] for e in per_fold.values()), "checkpoint": None,
            "overall": _mean_entries(list(by_generator.values())), "by_modality": by_modality,
            "by_generator": by_generator, "mean_over_modalities": _mean_entries(list(by_modality.values())),
            "mean_over_generators": _mean_entries(list(by_generator.values()))}


# --------------------------------------------------------------------------- the whole run


@contextlib.contextmanager
def run_logging(run_dir: RunDir, enabled: bool = True) -> Iterator[None]:
    """Send the run's diagnostics (and every warning) to ``RUN_DIR/mfx.log`` for the run's duration."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(run_dir.file(LOG_FILE), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    run_log.setLevel(logging.INFO)
    run_log.addHandler(handler)
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        run_log.removeHandler(handler)
        logging.getLogger().removeHandler(handler)
        handler.close()


def prepare_run_dir(plan: RunPlan, session: Session, resume: RunDir | None) -> RunDir:
    """A new run directory (or the resumed one), agreed on by every rank; rank 0 writes config.json."""
    run_dir = resume
    if session.rank == 0 and run_dir is None:
        run_dir = _fixed_run_dir(plan.options.run_dir) if plan.options.run_dir else \
            new_run_dir(plan.options.out, plan.options.label)
    path = distributed.broadcast_object(str(run_dir.path) if run_dir is not None else None, session.world_size)
    run_dir = RunDir(path)
    if session.rank == 0 and resume is None:
        run_dir.write_json(CONFIG_FILE, resolved_config(plan))
    return run_dir


def _fixed_run_dir(path: str) -> RunDir:
    folder = Path(path)
    if folder.exists() and any(folder.iterdir()):
        raise MfxError(f"{folder}: run directory exists and is not empty (choose a new --out)")
    folder.mkdir(parents=True, exist_ok=True)
    return RunDir(folder)


def resolved_config(plan: RunPlan) -> dict[str, Any]:
    """``config.json``: the options with data path and preset resolved, and every detector's full config."""
    from ..config import config_to_dict

    options = dataclasses.replace(plan.options, data=str(plan.data_path), preset=plan.preset)
    detectors = {spec.name: {"class": f"{spec.cls.__module__}.{spec.cls.__qualname__}", "preset": spec.preset,
                             "overrides": spec.overrides, "checkpoint": spec.checkpoint,
                             "config": None if spec.checkpoint else config_to_dict(spec.config())}
                 for spec in plan.specs}
    return {"options": dataclasses.asdict(options), "seed": plan.options.seed, "detectors": detectors}


def load_resume_options(run_dir: str | Path) -> tuple[CompareOptions, RunDir]:
    """The options recorded in ``RUN_DIR/config.json`` (the source of truth on resume)."""
    folder = RunDir(run_dir)
    if not folder.path.is_dir():
        raise MfxError(f"{folder.path}: no such run directory to resume")
    config = folder.read_json(CONFIG_FILE)
    return CompareOptions.from_dict(config.get("options", {})), folder


def run_compare(options: CompareOptions, *, console: Console | None = None, progress: ProgressFn = no_progress,
                resume: str | Path | None = None) -> tuple[dict[str, Any], RunDir]:
    """Run a comparison end to end; returns the report dict and the run directory (rank 0 wrote it)."""
    resumed = None
    if resume is not None:
        options, resumed = load_resume_options(resume)
    plan = plan_run(options)
    data = DataBundle(open_manifest(plan.data_path), plan.data_path, on_bad=options.on_bad, progress=progress)
    folds = make_folds(options.protocol, data, ProtocolOptions(
        test_split=options.test_split, train_modalities=tuple(options.train_modalities), shots=options.shots,
        holdout=options.holdout, seed=options.seed))  # protocol errors come before any folder is made
    rank, world_size, device = distributed.init_from_env(resolve_device(options.device))
    session = Session(device, rank, world_size, progress, console if rank == 0 else None, resumed=resumed is not None)
    run_dir = prepare_run_dir(plan, session, resumed)
    session.log_path = run_dir.file(LOG_FILE)
    with run_logging(run_dir, enabled=rank == 0):
        run_log.info("%s %s", "resuming" if resumed else "starting", options.command or options.detectors)
        if resumed:
            session.say(f"resuming [bold]{run_dir.path}[/] (its config.json is the source of truth)")
        report = _run_protocol(plan, data, folds, run_dir, session)
    return report, run_dir


def _run_protocol(plan: RunPlan, data: DataBundle, folds: list[Fold], run_dir: RunDir,
                  session: Session) -> dict[str, Any]:
    """Every fold of the protocol, then one report (folds combined for leave-one-generator-out)."""
    env = environment(session.device)
    if session.rank == 0:
        run_dir.write_json("environment.json", env)
    reports: dict[str, dict[str, Any]] = {}
    for fold in folds:
        fold_dir = RunDir(run_dir.path / "folds" / fold.name) if len(folds) > 1 else run_dir
        fold_dir.path.mkdir(parents=True, exist_ok=True)
        results = run_fold(plan, fold, fold_dir, session)
        reports[fold.name] = fold_report(plan, fold, results, data, env)
        if session.rank == 0:
            write_scores(fold_dir, fold, results)
            if len(folds) > 1:
                _write_reports(fold_dir, reports[fold.name])
    report = combine_folds(plan, reports) if len(folds) > 1 else reports[folds[0].name]
    if session.rank == 0:
        _write_reports(run_dir, report)
    return report


def _write_reports(run_dir: RunDir, report: dict[str, Any]) -> None:
    from ..report import write_reports

    write_reports(run_dir, report)
