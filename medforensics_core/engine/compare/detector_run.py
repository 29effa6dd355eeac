"""Running one detector of a comparison: train or load it, score the test images (clean, perturbed, few-shot).

The result is a plain dict saved as soon as the detector finishes (``--resume``
skips it); a detector that raises becomes a FAILED row (:func:`failed_result`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...contract import ReferenceBank, SupportsDistributed
from ...decision import DEFAULT_THRESHOLD, flag_fake
from ...errors import MfxError, WeightsNotFoundError
from ...interfaces import Detector, Perturbation
from ...report.schema import TRAINABLE_PARAMS, DetectorEntry
from ...metrics import VALIDATION_FPR, threshold_at_fpr
from ...seeding import seed_everything
from .. import distributed
from ..context import FitContext, ProgressFn, no_progress
from ..device import peak_memory_mb, resolve_precision
from ..evaluate import score_with_timing
from ..protocols import Fold
from ..rundir import RunDir, release_memory, reset_peak_memory
from ..tiles import CENTRE_SCORING, describe_scoring, stored_scoring
from .plan import CompareOptions, DetectorSpec, RunPlan
from .report_build import summarize_scores

log = logging.getLogger("mfx.run")


def make_context(options: CompareOptions, device: torch.device, rank: int = 0, world_size: int = 1,
                 progress: ProgressFn = no_progress, work_dir: Path | None = None,
                 detector_cls: type | None = None) -> FitContext:
    """A fresh context per detector, so each one gets the whole budget, at its precision (``--precision``)."""
    budget = options.budget_minutes * 60 if options.budget_minutes is not None else None
    precision = resolve_precision(options.precision, detector_cls or Detector, device)
    sink = tensorboard_sink(work_dir / "tensorboard") if options.log == "tensorboard" and work_dir and rank == 0 \
        else None
    return FitContext(device=device, precision=precision, seed=options.seed, epochs=options.epochs,
                      budget_seconds=budget, progress=progress, rank=rank, world_size=world_size, work_dir=work_dir,
                      allow_random_init=options.allow_random_init, scalar_sink=sink, num_workers=options.workers)


def tensorboard_sink(folder: Path):
    """``(tag, value, step)`` -> a TensorBoard event file in ``folder`` (flushed at once: runs are short)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))

    def add(tag: str, value: float, step: int) -> None:
        writer.add_scalar(tag, value, step)
        writer.flush()

    return add


def fit_context(cls: type[Detector], ctx: FitContext) -> FitContext:
    """The context a detector's ``fit`` sees under torchrun.

    Only a detector that declares :class:`~medforensics_core.contract.SupportsDistributed`
    (its training goes through the shared epoch loop, which wraps the trained
    module in ``DistributedDataParallel``) trains on shards. Any other detector trains on the full training set on
    every rank — identical, seeded runs — because training it on a shard
    without gradient synchronisation would silently give rank 0 a model fitted
    to 1/N of the data. Scoring is always sharded.
    """
    if ctx.distributed and not issubclass(cls, SupportsDistributed):
        return dataclasses.replace(ctx, world_size=1)
    return ctx


def train_detector(spec: DetectorSpec, train, val, ctx: FitContext) -> tuple[Detector, float]:
    """Seed, build and fit one detector, then fix its threshold on ``val``; returns it and its training seconds."""
    start = time.perf_counter()
    try:
        detector = built_and_fitted(spec, train, val, ctx)
    except WeightsNotFoundError as exc:
        if not ctx.allow_random_init or not hasattr(spec.config(), "pretrained"):
            raise
        detector = random_init_fallback(spec, train, val, ctx, exc)
    seconds = time.perf_counter() - start
    detector.train_info.update(validated_threshold(detector, val, ctx))
    return detector, seconds


def built_and_fitted(spec: DetectorSpec, train, val, ctx: FitContext) -> Detector:
    seed_everything(ctx.seed)
    detector = spec.build(ctx.device)
    detector.fit(train, val, fit_context(spec.cls, ctx))
    detector.fitted = True
    return detector


def random_init_fallback(spec: DetectorSpec, train, val, ctx: FitContext, missing: WeightsNotFoundError) -> Detector:
    """``--allow-random-init`` for any detector that follows the one weights key, ``pretrained``: built and fitted
    again with ``pretrained=random``, and marked so that every report row says so.

    Why here and not in each detector: DSKI loads its frozen backbone when it is built (before ``fit`` sees the
    context), FatFormer and RINE at the start of ``fit``, and a third-party detector anywhere; the flag promises the
    same for all of them. CNNSpot and UnivFD fall back inside ``fit`` themselves (so the Python API's
    ``FitContext(allow_random_init=True)`` works for them) and never reach this. Every built-in detector resolves its
    weights before the first training step (RINE after reading its first batch), so the retry repeats no training.
    """
    log.warning("%s: %s; --allow-random-init: random weights instead (every report row is marked)", spec.name, missing)
    detector = built_and_fitted(dataclasses.replace(spec, overrides={**spec.overrides, "pretrained": "random"}),
                                train, val, ctx)
    detector.random_init_fallback = True
    return detector


def validated_threshold(detector: Detector, val, ctx: FitContext, fpr: float = VALIDATION_FPR) -> dict[str, Any]:
    """The decision threshold chosen on the validation split at ``fpr`` false positives, and how.

    Saved in the checkpoint's ``train_info`` (``threshold``, ``threshold_rule``), so
    ``mfx predict`` and every report use the operating point the detector was
    validated at instead of an arbitrary 0.5. Without validation reals: nothing
    (the 0.5 fallback, stated where it is used).
    """
    if val is None or len(val) == 0 or not (np.asarray(val.labels) == 0).any():
        return {}
    scores = score_with_timing(detector, val, ctx)[0]
    labels = np.asarray(val.labels)
    threshold = threshold_at_fpr(scores[labels == 0], fpr)
    n_real, n_fake = int((labels == 0).sum()), int((labels == 1).sum())
    recall = float(flag_fake(scores[labels == 1], threshold).mean()) if n_fake else None
    rule = (f"{fpr:.0%} FPR on the validation split ({n_real} real, {n_fake} fake"
            + (f"; validation TPR {recall:.3f})" if recall is not None else ")"))
    # scored by the detector's own preprocessing: mfx predict warns when it scores otherwise (tiles)
    return {"threshold": threshold, "threshold_rule": rule, "threshold_fpr": fpr,
            "threshold_scoring": dict(CENTRE_SCORING)}


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
    if TRAINABLE_PARAMS in detector.train_info:
        return int(detector.train_info[TRAINABLE_PARAMS])
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


def detector_threshold(detector: Detector) -> float:
    """The threshold a report takes a detector's TPR/ACC at: its validated one, else 0.5."""
    value = (detector.train_info or {}).get("threshold")
    return DEFAULT_THRESHOLD if value is None else float(value)


def _entry(detector: Detector, spec: DetectorSpec, train_seconds: float, speed: float, checkpoint: str | None,
           summary: dict[str, Any], device: torch.device, precision: str = "fp32") -> DetectorEntry:
    loaded = spec.checkpoint is not None
    info = detector.train_info or {}
    return {"status": "ok", "error": None, "preset": detector.preset or spec.preset, **_origin(spec.name),
            "weights": detector.weights_info(), "weights_status": detector.weights_status(),
            "warnings": [*detector.warnings(), *threshold_scoring_warning(info)],
            "source": "loaded" if loaded else "trained",
            "precision": precision, "random_init": bool(getattr(detector, "random_init_fallback", False)),
            "threshold": detector_threshold(detector),
            "threshold_rule": info.get("threshold_rule") or "default 0.5 (no validated threshold)",
            "train_seconds": None if loaded else round(train_seconds, 3), "infer_images_per_s": round(speed, 2),
            "peak_memory_mb": round(peak_memory_mb(device), 1), "trainable_params": trainable_params(detector),
            "checkpoint": checkpoint, "train_info": dict(detector.train_info), **summary}


def threshold_scoring_warning(train_info: dict[str, Any]) -> list[str]:
    """A report scores centre crops: a threshold fixed under another scoring (``mfx calibrate`` on tiles) puts
    TPR, FPR and ACC at an operating point chosen for that other scoring, which the report must say."""
    stored = stored_scoring(train_info)
    if train_info.get("threshold") is None or stored == CENTRE_SCORING:
        return []
    return [f"threshold fixed on {describe_scoring(stored)} (mfx calibrate), but this report scores "
            f"{describe_scoring(CENTRE_SCORING)}: TPR, FPR and ACC are at an operating point chosen for another "
            f"scoring (AUC and AP are not affected)"]


def _origin(name: str) -> dict[str, str]:
    """The distribution and version that registered the detector: a report says whose code produced a row."""
    from ...plugins import get_registry

    return get_registry().origin("detector", name)


def report_examples(detector: Detector, images, scores: np.ndarray, threshold: float, fold_dir: RunDir,
                    name: str, ctx: FitContext) -> dict[str, Any]:
    """Heat-map overlays of caught fakes, missed fakes and flagged reals; a drawing problem is logged, not fatal."""
    from ..examples import write_examples

    try:
        return write_examples(detector, images, scores, threshold, fold_dir, name, ctx)
    except (OSError, ValueError, RuntimeError, MfxError) as exc:
        log.warning("%s: no example images in the report (%s: %s)", name, type(exc).__name__, exc)
        return {}


def add_references(detector: Detector, support, ctx: FitContext) -> None:
    """Give a :class:`~medforensics_core.contract.ReferenceBank` detector the few-shot support images."""
    images = torch.stack([support.image(i) for i in range(len(support))])
    detector.add_references(images, support.labels.tolist(), [r.modality for r in support.rows],
                            [r.generator for r in support.rows])


def run_detector(spec: DetectorSpec, fold: Fold, plan: RunPlan, ctx: FitContext, fold_dir: RunDir | None,
                 perturbed: dict[str, PerturbedImages]) -> dict[str, Any]:
    """Train/load, score clean and perturbed test images (and few-shot support); one saved result."""
    options = plan.options
    release_memory(ctx.device)
    reset_peak_memory(ctx.device)
    detector, train_seconds, checkpoint = obtain_detector(spec, fold, ctx, fold_dir)
    scores, speed = score_with_timing(detector, fold.test, ctx, batch_size=options.batch_size)
    rows = {spec.name: {"scores": {"": scores.tolist()}}}
    for label, images in perturbed.items():
        rows[spec.name]["scores"][label] = score_with_timing(detector, images, ctx,
                                                             batch_size=options.batch_size)[0].tolist()
    threshold = detector_threshold(detector)
    entry = _entry(detector, spec, train_seconds, speed, checkpoint,
                   summarize_scores(fold.test, scores, options, threshold), ctx.device, ctx.precision)
    entry["history"] = [dict(record) for record in ctx.history]
    entry.update(stage_aucs(detector, fold.test, ctx, options.batch_size))
    if fold_dir is not None and ctx.rank == 0:
        entry["examples"] = report_examples(detector, fold.test, scores, threshold, fold_dir, spec.name, ctx)
    rows[spec.name]["entry"] = entry
    if fold.support is not None and isinstance(detector, ReferenceBank):
        add_references(detector, fold.support, ctx)
        shot_scores, _ = score_with_timing(detector, fold.test, ctx, batch_size=options.batch_size)
        shot_entry = dict(entry, **summarize_scores(fold.test, shot_scores, options, threshold), checkpoint=None)
        shot_entry.update(stage_aucs(detector, fold.test, ctx, options.batch_size))
        shots = int(np.asarray(fold.support.labels).sum())  # K references per class: K fakes (and K reals)
        rows[f"{spec.name} +{shots}-shot"] = {"entry": shot_entry, "scores": {"": shot_scores.tolist()}}
    return {"status": "ok", "rows": rows}


def stage_aucs(detector: Detector, images, ctx: FitContext, batch_size: int) -> dict[str, float | None]:
    """``{stage}_auc`` for a detector that scores its stages separately (``stage_scores``, e.g. DSKI's
    ``stage1``, ``retrieval`` and ``fused``), so a report shows which stage carries or loses a generator."""
    if not callable(getattr(detector, "stage_scores", None)) or len(images) == 0:
        return {}
    from sklearn.metrics import roc_auc_score

    loader = ctx.loader(images, detector.preprocess, batch_size, shuffle=False)
    collected: dict[str, list[np.ndarray]] = {}
    seen: list[np.ndarray] = []
    with torch.inference_mode():
        for batch in loader:
            batch = batch.to(ctx.device)
            with ctx.autocast():
                stages = detector.stage_scores(batch.inputs, batch.modalities)
            for stage, values in stages.items():
                collected.setdefault(stage, []).append(np.asarray(values, dtype=np.float64).reshape(-1))
            seen.append(batch.indices.numpy().astype(np.int64))
    labels = np.asarray(images.labels)
    two_classes = len(np.unique(labels)) == 2
    indices = np.concatenate(seen) if seen else np.zeros(0, dtype=np.int64)
    # under torchrun each rank scored its shard: back into dataset order, on every rank (as predict_loader does)
    ordered = {stage: distributed.gather_in_order(np.concatenate(parts), indices, len(images), ctx.world_size)
               for stage, parts in sorted(collected.items())}
    return {f"{stage}_auc": round(float(roc_auc_score(labels, values)), 6) if two_classes else None
            for stage, values in ordered.items()}


def failed_result(spec: DetectorSpec, exc: BaseException) -> dict[str, Any]:
    reason = f"{type(exc).__name__}: {exc}".strip()
    entry = {"status": "failed", "error": reason, "preset": spec.preset, **_origin(spec.name), "weights": "",
             "warnings": [],
             "train_seconds": None, "infer_images_per_s": None, "peak_memory_mb": None,
             "trainable_params": None, "checkpoint": None}
    return {"status": "failed", "rows": {spec.name: {"entry": entry, "scores": {}}}}
