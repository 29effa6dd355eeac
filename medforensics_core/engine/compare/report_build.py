"""Building a comparison's report: per-detector metrics, paired tests, perturbations, notes, ``scores.csv``.

The report dict is what every writer (JSON, CSV, Markdown, HTML) renders; it is
built here and only here.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...data.manifest import bootstrap_clusters
from ..protocols import DataBundle, Fold
from ..rundir import RunDir
from ...report.schema import Report
from .plan import CompareOptions, RunPlan

LOG_FILE = "mfx.log"
BOOTSTRAP_NOTE = "95% CIs and paired tests resample the"
SCORE_COLUMNS = ("detector", "perturbation", "path", "label", "modality", "generator", "score")


def summarize_scores(images, scores: np.ndarray, options: CompareOptions, threshold: float = 0.5) -> dict[str, Any]:
    from ...metrics import summarize

    return summarize(images.labels, scores, modalities=[r.modality for r in images.rows],
                     generators=[r.generator for r in images.rows], n_boot=options.n_boot, seed=options.seed,
                     clusters=bootstrap_clusters(images.rows), threshold=threshold)


def paired_tests(results: dict[str, dict[str, Any]], labels: np.ndarray, options: CompareOptions,
                 clusters: Sequence[str] | None = None) -> list[dict]:
    """Best detector (overall AUC) against each other one, paired on the same resamples of the test clusters
    (:func:`~medforensics_core.data.manifest.bootstrap_clusters`: sources, or whole scans)."""
    from ...metrics import paired_bootstrap

    rows = ok_rows(results)
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
                                n_boot=options.n_boot, seed=options.seed, clusters=clusters)
        out.append({"a": best, "b": name, **test})
    return out


def ok_rows(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: row for result in results.values() for name, row in result["rows"].items()
            if row["entry"]["status"] == "ok"}


def perturbation_section(plan: RunPlan, fold: Fold, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    section: dict[str, Any] = {}
    for perturbation in plan.perturbations:
        label = perturbation.label()
        section[label] = {}
        for name, row in ok_rows(results).items():
            if label in row["scores"]:
                summary = summarize_scores(fold.test, np.asarray(row["scores"][label]), plan.options,
                                           row["entry"].get("threshold", 0.5))
                section[label][name] = {k: summary[k] for k in ("overall", "by_modality", "by_generator")}
    return section


def data_fingerprint(path, rows) -> dict[str, Any]:
    """Images and manifest sha256 and the build's thread count (see benchmark.card.dataset_fingerprint)."""
    from ...benchmark.card import dataset_fingerprint

    return dataset_fingerprint(Path(path), rows)


def fold_report(plan: RunPlan, fold: Fold, results: dict[str, dict[str, Any]], data: DataBundle,
                env: dict[str, Any]) -> Report:
    """The report dict (see the report contract) of one fold."""
    options = plan.options
    detectors = {name: row["entry"] for result in results.values() for name, row in result["rows"].items()}
    needs_train = any(spec.checkpoint is None for spec in plan.specs)
    report = {
        "mfx_version": env.get("mfx_version"), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": options.command, "protocol": options.protocol, "seed": options.seed, "preset": plan.preset,
        "fold": fold.name or None, "holdout": fold.holdout,
        "data": {"path": str(plan.data_path), "n_train": len(fold.train) if needs_train else 0,
                 "n_test": len(fold.test), "modalities": sorted({r.modality for r in fold.test.rows}),
                 "generators": sorted({r.generator for r in fold.test.rows if r.label == 1}),
                 "skipped": [list(s) for s in data.skipped],
                 **data_fingerprint(plan.data_path, data.manifest.rows)},
        "environment": env, "detectors": detectors,
        "paired": paired_tests(results, fold.test.labels, options, bootstrap_clusters(fold.test.rows)),
        "bootstrap": bootstrap_info(fold, options),
        "notes": [*fold.notes, bootstrap_note(fold, options), *(scan_overlap_notes(fold) if needs_train else []),
                  *_bankless_notes(plan, fold), *extension_notes(options), *_notes(results, env),
                  *worker_notes(options, env)],
    }
    if plan.perturbations:
        report["perturbations"] = perturbation_section(plan, fold, results)
    return report


def bootstrap_info(fold: Fold, options: CompareOptions) -> dict[str, Any]:
    """What the CIs and paired tests resample: clusters of the test set (whole scans when the manifest says
    which scan each image was cut from, else sources), never single images."""
    rows = fold.test.rows
    scans = {r.scan for r in rows if r.scan}
    return {"resamples": "scans" if scans else "sources", "n_boot": options.n_boot,
            "n_clusters": len(set(bootstrap_clusters(rows))), "n_sources": len({r.source_key for r in rows}),
            "n_scans": len(scans) or None, "n_images": len(fold.test),
            "stratified_by": "label make-up of each cluster (real, fake, both)"}


def bootstrap_note(fold: Fold, options: CompareOptions) -> str:
    info = bootstrap_info(fold, options)
    if info["resamples"] == "scans":
        unnamed = info["n_clusters"] - info["n_scans"]  # images with no scan named: each source is its own draw
        what = (f"{info['n_clusters']} test scans" if not unnamed else
                f"{info['n_clusters']} test clusters: {info['n_scans']} scans and {unnamed} sources whose scan "
                "the manifest does not name")
        return (f"{BOOTSTRAP_NOTE} {what} (the manifest's scan column: "
                f"{info['n_sources']} sources, {info['n_images']} images; {options.n_boot} resamples): every "
                "crop and slice of one scan, and the fakes made from them, are drawn together, so the CIs are not "
                "narrowed by images that share a patient, a scanner and an anatomy")
    return (f"{BOOTSTRAP_NOTE} {info['n_clusters']} test sources, not the {info['n_images']} "
            f"images ({options.n_boot} resamples): a real image and the fakes made from it are drawn together. "
            "The manifest names no scan for these images, so sources cut from one scan are resampled apart: if "
            "they share a patient the CIs are too narrow (add a scan column naming each image's scan or patient)")


def scan_overlap_notes(fold: Fold) -> list[str]:
    """Test scans that also gave training images (other regions or slices of one scan): said, not refused.

    A benchmark cut by region inside a few scan files (MedForensics-mini) does this on purpose; a dataset with
    a patient per scan should not, since its test patients are then not unseen.
    """
    test_scans = {r.scan for r in fold.test.rows if r.scan}
    shared = test_scans & {r.scan for r in fold.train.rows if r.scan}
    if not shared:
        return []
    return [f"{len(shared)} of {len(test_scans)} test scans also gave training images (other regions or slices "
            "of the same scan): the test patients and anatomy are not unseen, only the test pixels are"]


def _bankless_notes(plan: RunPlan, fold: Fold) -> list[str]:
    if fold.make_support is None:
        return []
    from ...contract import ReferenceBank

    return [f"{spec.name} has no reference bank (does not declare ReferenceBank): no few-shot row"
            for spec in plan.specs if not issubclass(spec.cls, ReferenceBank)]


def extension_notes(options: CompareOptions) -> list[str]:
    """One line per ``--extend``: which detectors were kept from which run (and its mfx version)."""
    return [f"{', '.join(step['added'])} added by --extend to {step['run']}: {', '.join(step['kept'])} are that "
            f"run's results, kept as they were (mfx {step.get('mfx_version') or 'unknown'}), not trained again"
            for step in options.extends or []]


def worker_notes(options: CompareOptions, env: dict[str, Any]) -> list[str]:
    """``--workers N``: what it changes in the numbers (augmentation draws) and what memory leaves out."""
    if not options.workers:
        return []
    memory = "" if str(env.get("device") or "").startswith("cuda") else \
        "; peak_memory_mb counts the main process, not the loader processes"
    return [(f"data loaded by {options.workers} worker processes (--workers {options.workers}): training's random "
             f"augmentation is drawn in them, so its numbers repeat for the same --workers only{memory}")]


def _notes(results: dict[str, dict[str, Any]], env: dict[str, Any]) -> list[str]:
    on_gpu = str(env.get("device") or "").startswith("cuda")
    per_detector = Path("/proc/self/clear_refs").exists()
    memory = ("the CUDA allocator peak per detector" if on_gpu else
              "the process peak RSS while each detector ran (reset per detector)" if per_detector else
              "the process max RSS so far (not per detector)")
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
    for name, row in ok_rows(results).items():
        for perturbation, scores in row["scores"].items():
            for image, value in zip(fold.test.rows, scores):
                writer.writerow([name, perturbation, image.path, image.label, image.modality, image.generator,
                                 repr(float(value))])
    run_dir.write_text("scores.csv", buffer.getvalue())
