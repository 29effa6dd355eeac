"""Report figures as PNG bytes: ROC curves per detector and AUC per modality.

Figures are drawn on matplotlib's object API with an Agg canvas, never through ``pyplot``:
no global backend switch, no open-figure leaks, and it works on headless machines.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import views

logger = logging.getLogger(__name__)

def plain(text) -> str:
    """Untrusted text (detector, modality, generator names) shown literally: ``$`` would start matplotlib mathtext."""
    return str(text).replace("$", r"\$")


SCORES_COLUMNS = ("detector", "perturbation", "path", "label", "modality", "generator", "score")


def read_clean_scores(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """``{detector: (labels, scores)}`` of the clean (unperturbed) rows of a ``scores.csv``.

    ``None`` when the file is missing or unreadable: plots are a convenience and must never
    break a run whose metrics are already computed (the problem is logged).
    """
    if not path.is_file():
        return None
    grouped: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = set(SCORES_COLUMNS) - set(reader.fieldnames or [])
            if missing:
                logger.warning("%s: no ROC plot, missing columns %s", path, sorted(missing))
                return None
            for row in reader:
                if row["perturbation"]:
                    continue
                labels, scores = grouped[row["detector"]]
                labels.append(int(row["label"]))
                scores.append(float(row["score"]))
    except (OSError, ValueError, csv.Error) as exc:
        logger.warning("%s: no ROC plot, unreadable scores (%s)", path, exc)
        return None
    return {name: (np.asarray(y), np.asarray(s)) for name, (y, s) in grouped.items()}


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def roc_png(scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """ROC curve of every detector with both classes in its scores; AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    figure = Figure(figsize=(5.5, 5), dpi=110)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    for name, (labels, values) in scores.items():
        if len(set(labels.tolist())) < 2:
            logger.info("ROC of %s skipped: its scores hold a single class", name)
            continue
        fpr, tpr, _ = roc_curve(labels, values)
        axes.plot(fpr, tpr, linewidth=1.8, label=f"{plain(name)} (AUC {roc_auc_score(labels, values):.3f})")
    axes.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate (fake caught)",
             xlim=(0, 1), ylim=(0, 1.01), title="ROC, clean test set")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return _png(figure)


def by_group_png(report: dict, view: str = "by_modality", metric: str = "auc") -> bytes:
    """Grouped bars: ``metric`` per group (modality) for every successful detector, bootstrap CIs as error bars."""
    entries = {n: e for n, e in views.detectors(report).items() if views.is_ok(e)}
    groups = sorted({g for e in entries.values() for g in (e.get(view) or {})}, key=str)
    figure = Figure(figsize=(max(5.5, 1.1 * len(groups) * max(len(entries), 1) ** 0.5 + 2), 4), dpi=110)
    axes = figure.add_subplot()
    width = 0.8 / max(len(entries), 1)
    positions = np.arange(len(groups))
    for i, (name, entry) in enumerate(entries.items()):
        _bars(axes, positions + (i - (len(entries) - 1) / 2) * width, width, name,
              [(entry.get(view) or {}).get(g) for g in groups], metric)
    axes.set_xticks(positions, [plain(g) for g in groups], rotation=20 if len(groups) > 4 else 0)
    axes.set(ylabel=metric.upper(), ylim=(0, 1.05), title=f"{metric.upper()} {view.replace('_', ' ')}")
    if metric == "auc":
        axes.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    if not groups:
        axes.text(0.5, 0.5, "no groups with metrics", ha="center", va="center", transform=axes.transAxes)
    elif entries:
        axes.legend(fontsize=8, loc="best")
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return _png(figure)


def _bars(axes, x: np.ndarray, width: float, name: str, groups: list[dict | None], metric: str) -> None:
    """One detector's bars; an undefined value gets no bar but an "n/a" label, so it is not read as 0."""
    heights = np.array([np.nan if g is None or g.get(metric) is None else g[metric] for g in groups], dtype=float)
    errors = np.full((2, len(groups)), np.nan)  # NaN: no error bar drawn (no CI, or no value)
    for j, group in enumerate(groups):
        ci = (group or {}).get(f"{metric}_ci")
        if ci and ci[0] is not None and not np.isnan(heights[j]):
            errors[:, j] = [max(heights[j] - ci[0], 0), max(ci[1] - heights[j], 0)]
    axes.bar(x, np.nan_to_num(heights), width, label=plain(name))
    shown = ~np.isnan(errors[0])
    if shown.any():
        axes.errorbar(x[shown], heights[shown], yerr=errors[:, shown], fmt="none", ecolor="black", capsize=3)
    for xj, height in zip(x, heights):
        if np.isnan(height):
            axes.text(xj, 0.02, views.NOT_DEFINED, ha="center", va="bottom", fontsize=7, rotation=90)


def histograms_png(scores: dict[str, tuple[np.ndarray, np.ndarray]], thresholds: dict[str, float]) -> bytes:
    """Score histograms per class (real, fake), one panel per detector, its threshold as a vertical line.

    Shows what a single AUC hides: whether the classes are separated, overlap at the
    threshold, or sit in a narrow band (a detector whose scores barely move).
    """
    names = list(scores)
    columns = min(3, max(len(names), 1))
    rows = max(1, -(-len(names) // columns))
    figure = Figure(figsize=(3.6 * columns, 2.8 * rows), dpi=100)
    bins = np.linspace(0.0, 1.0, 26)
    for i, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, i + 1)
        labels, values = scores[name]
        for label, colour, text in ((0, "#2f81f7", "real"), (1, "#d1242f", "fake")):
            chosen = values[labels == label]
            if chosen.size:
                axes.hist(np.clip(chosen, 0, 1), bins=bins, alpha=0.55, color=colour,
                          label=f"{text} (n={chosen.size})")
        if name in thresholds:
            axes.axvline(thresholds[name], color="black", linestyle="--", linewidth=1,
                         label=f"threshold {thresholds[name]:.3f}")
        axes.set(title=plain(name), xlabel="fake probability", ylabel="images", xlim=(0, 1))
        axes.legend(fontsize=7)
    if not names:
        figure.add_subplot().text(0.5, 0.5, "no scores", ha="center", va="center")
    figure.tight_layout()
    return _png(figure)


def has_history(report: dict) -> bool:
    return any(entry.get("history") for entry in views.detectors(report).values())


VALIDATION_KEYS = {"val_acc": "val acc", "val_auc": "val AUC"}
"""Per-epoch validation metrics a history may record, in order of preference, and their legend names."""


def loss_png(report: dict) -> bytes:
    """Training loss per epoch of every trained detector; its validation accuracy (or AUC) dashed where recorded."""
    figure = Figure(figsize=(6, 3.6), dpi=110)
    axes = figure.add_subplot()
    other = None
    for name, entry in views.detectors(report).items():
        history = [r for r in entry.get("history") or [] if r.get("loss") is not None]
        if not history:
            continue
        line, = axes.plot([r["epoch"] for r in history], [r["loss"] for r in history], marker="o", markersize=3,
                          label=f"{name} loss")
        key = next((k for k in VALIDATION_KEYS if any(r.get(k) is not None for r in history)), None)
        if key is not None:  # what the detector validates with: accuracy (the baselines) or AUC (DSKI)
            other = other or axes.twinx()
            val = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
            other.plot(*zip(*val), linestyle="--", color=line.get_color(), label=f"{name} {VALIDATION_KEYS[key]}")
    axes.set(xlabel="epoch", ylabel="training loss", title="Training loss per epoch")
    axes.grid(alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    if other is not None:
        other.set(ylabel="validation accuracy / AUC", ylim=(0, 1.02))
        more = other.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if handles:
        axes.legend(handles, labels, fontsize=7, loc="best")
    figure.tight_layout()
    return _png(figure)
