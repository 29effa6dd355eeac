"""Merging the folds of a protocol (leave-one-generator-out) into one report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .plan import RunPlan


def _mean_entries(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Metric-wise mean over folds (where defined); counts add up; CIs do not carry over."""
    from ...metrics import MEAN_METRICS

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
