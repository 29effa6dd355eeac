"""The report's shape, typed: what ``report.json`` holds and every writer renders.

A report is a plain JSON dict; these ``TypedDict`` classes say which keys it
has and what they hold, so the engine that builds it
(:mod:`medforensics_core.engine.compare.report_build` for a fold,
:mod:`~medforensics_core.engine.compare.fold_merge` for folds merged,
:mod:`~medforensics_core.engine.compare.detector_run` for one detector's entry),
the writers that render it and a user reading ``report.json`` agree (a test
checks a real run's report against them). A detector's own numbers come from its
``train_info``, whose shared keys are named here (``TRAINABLE_PARAMS``).
"""

from __future__ import annotations

from typing import Any, Optional, TypedDict

#: ``train_info`` key a detector may set to report its trainable parameter count (else the engine counts).
TRAINABLE_PARAMS = "trainable_params"
#: Detector-entry keys that are not metrics (kept when folds are merged).
ENTRY_META = ("preset", "distribution", "version", "weights", "weights_status", "warnings", TRAINABLE_PARAMS,
              "source", "threshold_rule", "precision")


#: Metrics of one group of images (see :class:`medforensics_core.metrics.MetricSet`); ``None`` = not defined.
#: ``tpr``/``fpr`` are taken at the detector's ``threshold``; ``tpr_at_fpr_X`` at a false-positive rate of X;
#: ``n_clusters`` counts the clusters the bootstrap resamples (sources, or whole scans).
#: (Functional form: some keys hold dots.)
GroupMetrics = TypedDict("GroupMetrics", {
    "n": int, "n_real": int, "n_fake": int, "n_clusters": int,
    "acc": Optional[float], "real_acc": Optional[float], "fake_acc": Optional[float],
    "ap": Optional[float], "auc": Optional[float], "eer": Optional[float],
    "oracle_acc": Optional[float], "oracle_threshold": Optional[float],
    "threshold": Optional[float], "tpr": Optional[float], "fpr": Optional[float],
    "tpr_at_fpr_0.01": Optional[float], "tpr_at_fpr_0.05": Optional[float],
    "auc_ci": Optional[list[float]], "ap_ci": Optional[list[float]], "n_folds": int, "n_groups": int,
}, total=False)


class Summary(TypedDict, total=False):
    """What :func:`medforensics_core.metrics.summarize` returns for one score vector (always every key)."""

    overall: GroupMetrics
    by_modality: dict[str, GroupMetrics]
    by_generator: dict[str, GroupMetrics]
    mean_over_modalities: GroupMetrics
    mean_over_generators: GroupMetrics


class DetectorEntry(Summary, total=False):
    """One detector's row of a report: status, provenance, cost, and (when ``ok``) the :class:`Summary` keys."""

    status: str  # "ok" or "failed"
    error: Optional[str]
    preset: str
    distribution: str  # the distribution (and version) that registered the detector
    version: str
    weights: str
    weights_status: str
    warnings: list[str]
    source: str  # "trained" or "loaded"
    precision: str  # fp32, bf16 or fp16: what training and scoring ran at (--precision)
    random_init: bool  # pretrained weights were missing and --allow-random-init trained from random ones
    threshold: float  # the threshold ACC/TPR are taken at (validated, else 0.5)
    threshold_rule: str
    train_seconds: Optional[float]
    infer_images_per_s: Optional[float]
    peak_memory_mb: Optional[float]
    trainable_params: Optional[int]
    checkpoint: Optional[str]
    train_info: dict[str, Any]
    history: list[dict[str, Any]]  # one record per training epoch (loss, lr, validation metrics)
    examples: dict[str, Any]  # the example-grid images of the report (most / least suspicious...)
    by_holdout: dict[str, GroupMetrics]  # folds merged: each held-out fold's overall metrics
    stage1_auc: Optional[float]  # detectors that score their stages apart (DSKI)
    retrieval_auc: Optional[float]
    fused_auc: Optional[float]
    inconsistency_auc: Optional[float]  # DSKI's local-inconsistency score alone
    fused_without_inconsistency_auc: Optional[float]


class DataSection(TypedDict, total=False):
    path: str
    n_train: int
    n_test: int
    modalities: list[str]
    generators: list[str]
    skipped: list[list[str]]


class Report(TypedDict, total=False):
    """The whole report of a run (one fold, or folds merged)."""

    mfx_version: Optional[str]
    created: str
    command: str
    protocol: str
    seed: int
    preset: str
    fold: Optional[str]
    holdout: Any
    data: DataSection
    environment: dict[str, Any]
    detectors: dict[str, DetectorEntry]
    paired: list[dict[str, Any]]
    bootstrap: dict[str, Any]
    notes: list[str]
    perturbations: dict[str, dict[str, Any]]
