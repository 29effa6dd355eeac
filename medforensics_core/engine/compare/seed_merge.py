"""Merging the runs of ``mfx compare --seeds 0,1,2`` into one report: mean +- sd over seeds, per-seed rows.

Why seeds: a tiny-preset detector's AUC moves by a few hundredths between two
training seeds (initialisation, data order, augmentation draws), which is as
large as many of the differences a comparison is read for. A bootstrap CI only
covers the *test set's* sampling; training once per seed and reporting the
spread over seeds covers the training's luck. Each seed's own report (with its
bootstrap CIs, scores and checkpoints) stays in ``seeds/<seed>/``; the merged
report holds, for every detector, the mean over seeds of every metric with its
standard deviation (``<metric>_sd``, n-1 in the denominator) and the per-seed
overall metrics with their CIs (``seed_runs``, and the flat ``per_seed`` rows).
The paired test between two detectors pairs them seed by seed
(:func:`medforensics_core.metrics.paired_bootstrap_over_seeds`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...data.manifest import bootstrap_clusters
from ..protocols import Fold
from .fold_merge import row_auc
from .plan import CompareOptions
from .report_build import ok_rows

#: Group views of a detector's entry averaged over seeds (those present in the seed reports).
GROUP_VIEWS = ("by_modality", "by_generator", "by_holdout")
SINGLE_VIEWS = ("overall", "mean_over_modalities", "mean_over_generators", "mean_over_holdouts")
#: What a per-seed row shows (the overall metrics of that seed, CIs included).
PER_SEED_KEYS = ("n", "auc", "auc_ci", "ap", "ap_ci", "tpr", "fpr", "tpr_at_fpr_0.01", "tpr_at_fpr_0.05", "acc",
                 "real_acc", "fake_acc", "eer", "threshold")


def mean_sd(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Metric-wise mean over seeds with its standard deviation (``<metric>_sd``); counts are the first seed's.

    The seeds score the same test images, so counts do not add up (unlike folds); CIs do not carry
    over (each seed's CI is in ``seed_runs``).
    """
    from ...metrics import MEAN_METRICS

    first = entries[0]
    merged: dict[str, Any] = {k: first.get(k) for k in ("n", "n_real", "n_fake", "n_clusters") if k in first}
    for key in MEAN_METRICS:
        values = [e[key] for e in entries if e.get(key) is not None]
        merged[key] = float(np.mean(values)) if values else None
        merged[f"{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else (0.0 if values else None)
    merged.update({"auc_ci": None, "ap_ci": None, "n_seeds": len(entries)})
    return merged


def _seed_entry(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    first = next(iter(per_seed.values()))
    meta = {k: first.get(k) for k in ("preset", "distribution", "version", "weights", "warnings", "trainable_params")}
    failed = {s: e for s, e in per_seed.items() if e["status"] != "ok"}
    if failed:
        reasons = "; ".join(f"seed {s}: {e['error']}" for s, e in failed.items())
        return {**meta, "status": "failed", "error": f"failed with {reasons}", "train_seconds": None,
                "infer_images_per_s": None, "peak_memory_mb": None, "checkpoint": None}
    entries = list(per_seed.values())
    seconds = [e["train_seconds"] for e in entries if e.get("train_seconds") is not None]  # None: loaded
    out = {**meta, "status": "ok", "error": None,
           "train_seconds": round(float(np.mean(seconds)), 3) if seconds else None,
           "infer_images_per_s": round(float(np.mean([e["infer_images_per_s"] for e in entries])), 2),
           "peak_memory_mb": max(e["peak_memory_mb"] for e in entries), "checkpoint": None}
    for view in SINGLE_VIEWS:
        if view in first:
            out[view] = mean_sd([e[view] for e in entries])
    for view in GROUP_VIEWS:
        if view in first:
            groups = dict.fromkeys(g for e in entries for g in e.get(view) or {})
            out[view] = {g: mean_sd([e[view][g] for e in entries if g in (e.get(view) or {})]) for g in groups}
    out["seed_runs"] = {str(s): {"overall": e["overall"], "train_seconds": e["train_seconds"],
                                 "checkpoint": e.get("checkpoint")} for s, e in per_seed.items()}
    return out


def per_seed_rows(reports: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per detector and seed: that seed's overall metrics with their bootstrap CIs."""
    rows = []
    names = dict.fromkeys(n for r in reports.values() for n in r["detectors"])
    for name in names:
        for seed, report in reports.items():
            entry = report["detectors"].get(name)
            if entry is None:
                continue
            if entry["status"] != "ok":
                rows.append({"detector": name, "seed": seed, "status": "failed", "error": entry["error"]})
                continue
            rows.append({"detector": name, "seed": seed, "status": "ok",
                         **{k: entry["overall"].get(k) for k in PER_SEED_KEYS}})
    return rows


def seed_paired_tests(runs: dict[int, tuple[Fold, dict[str, dict[str, Any]]]], options: CompareOptions) -> list[dict]:
    """Best detector (mean AUC over seeds) against each other one, paired seed by seed and source by source.

    ``runs`` maps each seed to its (single) fold and that fold's results; every seed scores the
    same test images, so the scores line up.
    """
    from ...metrics import paired_bootstrap_over_seeds

    seeds = list(runs)
    fold = runs[seeds[0]][0]
    by_seed = {s: ok_rows(results) for s, (_, results) in runs.items()}
    names = [n for n in by_seed[seeds[0]] if all(n in rows for rows in by_seed.values())]
    mean_auc = {n: np.mean([row_auc(by_seed[s][n]) for s in seeds]) for n in names}
    ranked = [n for n in names if np.isfinite(mean_auc[n])]
    if len(ranked) < 2:
        return []
    best = max(ranked, key=lambda n: mean_auc[n])
    clusters = bootstrap_clusters(fold.test.rows)
    out = []
    for name in names:
        if name == best:
            continue
        test = paired_bootstrap_over_seeds(
            fold.test.labels, [np.asarray(by_seed[s][best]["scores"][""]) for s in seeds],
            [np.asarray(by_seed[s][name]["scores"][""]) for s in seeds], metric="auc", n_boot=options.n_boot,
            seed=options.seed, clusters=clusters)
        per_run = test.pop("per_run", None) or []
        out.append({"a": best, "b": name, **test, "seeds": seeds,
                    "per_seed": {str(s): d for s, d in zip(seeds, per_run)}})
    return out


def _perturbation_means(per_seed: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """One perturbation's entries (overall and per group) averaged over seeds, for detectors every seed scored."""
    out: dict[str, dict[str, Any]] = {}
    for name, entry in per_seed[0].items():
        runs = [p[name] for p in per_seed if name in p]
        if len(runs) != len(per_seed):
            continue
        out[name] = {"overall": mean_sd([r["overall"] for r in runs])}
        for view in GROUP_VIEWS:
            if view in entry:
                out[name][view] = {g: mean_sd([r[view][g] for r in runs if g in r[view]]) for g in entry[view]}
    return out


def combine_seeds(reports: dict[int, dict[str, Any]], paired: list[dict], *, folds: int) -> dict[str, Any]:
    """One report for a multi-seed comparison (see the module docstring)."""
    seeds = list(reports)
    first = reports[seeds[0]]
    combined = {k: v for k, v in first.items() if k not in ("detectors", "paired", "perturbations", "created")}
    combined["created"] = max(r.get("created") or "" for r in reports.values()) or None
    combined["seeds"] = seeds
    names = dict.fromkeys(n for r in reports.values() for n in r["detectors"])
    combined["detectors"] = {n: _seed_entry({s: r["detectors"][n] for s, r in reports.items()
                                             if n in r["detectors"]}) for n in names}
    combined["per_seed"] = per_seed_rows(reports)
    combined["paired"] = paired
    if "perturbations" in first:
        combined["perturbations"] = {label: _perturbation_means([r["perturbations"][label] for r in reports.values()])
                                     for label in first["perturbations"]}
    pairing = ("paired tests pair the detectors seed by seed on the same resamples of the test clusters (delta = "
               "mean over seeds of each seed's difference)" if folds == 1 else
               "paired tests pair the detectors seed by seed and fold by fold, on one draw of the test clusters per "
               "resample shared by every fold (delta = mean over seeds and folds); each fold's own tests are in "
               "seeds/<seed>/folds/<fold>/")
    notes = [n for r in reports.values() for n in r.get("notes") or []]
    combined["notes"] = [f"seeds {', '.join(map(str, seeds))}: every detector was trained once per seed; each "
                         "number is the mean over seeds, +- its standard deviation (sd, n-1); the per-seed rows "
                         "carry each seed's own 95% CIs, and each seed's full report is in seeds/<seed>/",
                         pairing, *dict.fromkeys(notes)]
    return combined
