"""Merging the folds of a protocol (leave-one-generator-out) into one report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...data.manifest import bootstrap_clusters
from ...report.schema import ENTRY_META, DetectorEntry, Report
from .plan import RunPlan
from .report_build import BOOTSTRAP_NOTE, ok_rows

FOLD_PAIRING_NOTE = ("paired tests compare the mean held-out AUC over folds{seeds}: one draw of the test clusters "
                     "(sources, or scans) per bootstrap resample, shared by every fold (they share their test reals)"
                     "{paired}")


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


def combine_folds(plan: RunPlan, reports: dict[str, dict[str, Any]]) -> Report:
    """Leave-one-generator-out: one report whose ``by_generator`` holds each held-out generator's fold."""
    first = next(iter(reports.values()))
    combined = {k: v for k, v in first.items() if k not in ("detectors", "paired", "perturbations", "fold")}
    combined["data"] = dict(first["data"], generators=sorted(g for r in reports.values() for g in r["data"]["generators"]),
                            n_test=sum(r["data"]["n_test"] for r in reports.values()))
    by = (first.get("holdout") or {}).get("by", "generator")
    combined["holdout"] = {"by": by, "folds": {name: r.get("holdout") for name, r in reports.items()}}
    combined["bootstrap"] = {**first["bootstrap"], "n_clusters": None, "n_sources": None, "n_scans": None,
                             "n_images": None,
                             "per_fold": {name: r["bootstrap"] for name, r in reports.items()}}
    combined["detectors"] = {}
    names = dict.fromkeys(name for r in reports.values() for name in r["detectors"])
    for name in names:
        per_fold = {g: r["detectors"][name] for g, r in reports.items() if name in r["detectors"]}
        combined["detectors"][name] = _combined_entry(per_fold)
    combined["paired"] = []  # filled by fold_paired_tests, which needs the scores (not kept in reports)
    notes = [n for r in reports.values() for n in r["notes"] if not n.startswith(BOOTSTRAP_NOTE)]
    combined["notes"] = [f"leave-one-generator-out by {by}: {len(reports)} folds (one per held-out {by}; each "
                         "fold's full report, paired tests and perturbations are in folds/<fold>/)",
                         "overall and by_modality are means over folds (by_holdout); by_generator[g] is g's fakes "
                         "scored by the detector of the fold that held g out",
                         f"{BOOTSTRAP_NOTE} {first['bootstrap']['resamples']} of each fold, not its images "
                         "(counts in each fold's report.json)",
                         *dict.fromkeys(notes)]
    return combined


def _total_seconds(entries) -> float | None:
    """Training time over folds; ``None`` when the detector was loaded, not trained."""
    seconds = [e["train_seconds"] for e in entries if e.get("train_seconds") is not None]
    return round(sum(seconds), 3) if seconds else None


def _combined_entry(per_fold: dict[str, DetectorEntry]) -> DetectorEntry:
    failed = {g: e for g, e in per_fold.items() if e["status"] != "ok"}
    first = next(iter(per_fold.values()))
    meta = {k: first.get(k) for k in ENTRY_META}
    meta["random_init"] = any(e.get("random_init") for e in per_fold.values())
    if failed:
        reasons = "; ".join(f"{g}: {e['error']}" for g, e in failed.items())
        return {**meta, "status": "failed", "error": f"failed on fold(s) {reasons}", "train_seconds": None,
                "infer_images_per_s": None, "peak_memory_mb": None, "checkpoint": None}
    by_holdout = {fold: e["overall"] for fold, e in per_fold.items()}
    by_generator = {g: ge for e in per_fold.values() for g, ge in e["by_generator"].items()}
    modalities = dict.fromkeys(m for e in per_fold.values() for m in e["by_modality"])
    by_modality = {m: _mean_entries([e["by_modality"][m] for e in per_fold.values() if m in e["by_modality"]])
                   for m in modalities}
    return {**meta, "status": "ok", "error": None,
            "train_seconds": _total_seconds(per_fold.values()),
            "infer_images_per_s": round(float(np.mean([e["infer_images_per_s"] for e in per_fold.values()])), 2),
            "peak_memory_mb": max(e["peak_memory_mb"] for e in per_fold.values()), "checkpoint": None,
            "overall": _mean_entries(list(by_holdout.values())), "by_modality": by_modality,
            "by_generator": by_generator, "by_holdout": by_holdout,
            "mean_over_modalities": _mean_entries(list(by_modality.values())),
            "mean_over_generators": _mean_entries(list(by_generator.values())),
            "mean_over_holdouts": _mean_entries(list(by_holdout.values()))}


def fold_paired_tests(runs: dict[int, dict[str, tuple[Any, dict[str, dict[str, Any]]]]], n_boot: int,
                      seed: int) -> list[dict]:
    """Best detector (mean held-out AUC over folds and seeds) against each other one, over every fold.

    ``runs`` maps each seed to ``{fold name: (fold, that fold's results)}``. A detector enters when it
    scored every fold of every seed. See :func:`medforensics_core.metrics.paired_bootstrap_over_folds`.
    """
    from ...metrics import FoldRuns, paired_bootstrap_over_folds

    seeds = list(runs)
    fold_names = list(runs[seeds[0]])
    rows = {s: {f: ok_rows(results) for f, (_, results) in runs[s].items()} for s in seeds}
    names = [n for n in rows[seeds[0]][fold_names[0]]
             if all(n in rows[s][f] for s in seeds for f in fold_names)]
    mean_auc = {n: np.mean([row_auc(rows[s][f][n]) for s in seeds for f in fold_names]) for n in names}
    ranked = [n for n in names if np.isfinite(mean_auc[n])]
    if len(ranked) < 2:
        return []
    best = max(ranked, key=lambda n: mean_auc[n])
    cluster_of = shared_clusters([runs[seeds[0]][f][0] for f in fold_names])

    def fold_runs(name: str) -> list[FoldRuns]:
        out = []
        for f in fold_names:
            fold = runs[seeds[0]][f][0]
            out.append(FoldRuns(fold.test.labels, [cluster_of[r.path] for r in fold.test.rows],
                                [np.asarray(rows[s][f][best]["scores"][""]) for s in seeds],
                                [np.asarray(rows[s][f][name]["scores"][""]) for s in seeds]))
        return out

    tests = []
    for name in names:
        if name == best:
            continue
        test = paired_bootstrap_over_folds(fold_runs(name), metric="auc", n_boot=n_boot, seed=seed)
        per_fold = dict(zip(fold_names, test.pop("per_fold")))
        tests.append({"a": best, "b": name, **test, "per_fold": per_fold, "folds": fold_names,
                      **({"seeds": seeds} if len(seeds) > 1 else {})})
    return tests


def shared_clusters(folds: Sequence[Any]) -> dict[str, str]:
    """Each test image's cluster, computed once over the union of every fold's test rows (by path).

    Why: one draw is shared by every fold, so a scan must carry the same id in each; ids computed fold
    by fold follow the rows each fold holds (a fake's own source may be the smallest key of its scan in
    one fold and absent from the next), and one scan would then be drawn as two clusters.
    """
    union = {r.path: r for fold in folds for r in fold.test.rows}
    return dict(zip(union, bootstrap_clusters(list(union.values()))))


def fold_pairing_note(seeds: Sequence[int]) -> str:
    many = len(seeds) > 1
    return FOLD_PAIRING_NOTE.format(seeds=" and seeds" if many else "",
                                    paired="; seeds are paired (delta = mean over seeds and folds)" if many else "")


def row_auc(row: dict[str, Any]) -> float:
    """A result row's overall AUC, NaN when undefined (an AUC of 0.0 is a value, not a missing one)."""
    auc = row["entry"]["overall"].get("auc")
    return float("nan") if auc is None else float(auc)
