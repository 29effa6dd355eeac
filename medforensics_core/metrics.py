"""Detection metrics, bootstrap confidence intervals and paired detector comparisons.

Conventions (one place, so every table in mfx means the same thing):

* ``labels``: 0 = real, 1 = fake; ``scores``: the detector's fake probability.
* ACC at a threshold predicts *fake* when ``score > threshold`` (the CNNDetection /
  UnivFD convention, so a score of exactly 0.5 counts as real); the rule lives in
  :func:`medforensics_core.decision.flag_fake`, which training, ``mfx predict`` and
  every detector use too.
* AP and ROC-AUC come from scikit-learn. They, the EER and the oracle accuracy need
  both classes; in a single-class group they are ``None`` ("not defined"), never a
  crash, a NaN or a leaked sklearn warning.
* EER: the point of the ROC curve where FPR = FNR (= 1 - TPR). The ROC curve is
  piecewise linear between its vertices, and ``FPR - FNR`` only grows along it, so the
  crossing is found on the first segment where it changes sign and interpolated linearly
  on that segment; when a vertex has FPR = FNR exactly, that value is returned.
* Oracle ACC: the best accuracy over every threshold (the best a detector could do if it
  were calibrated on the test set itself). It is an upper bound reported apart from
  ACC@0.5, never mixed with it. Its threshold is reported in the same ``score > t``
  convention, placed midway between two neighbouring distinct scores.

The bootstrap does not call scikit-learn once per resample: a resample is a vector of
multiplicities over the original items, so every metric can be computed from weighted
cumulative counts over the sorted distinct scores, for all resamples at once
(:func:`_weighted_metrics`; tested against scikit-learn with unit weights). Resampling is
stratified by label, so every resample keeps the original numbers of reals and fakes.

**Clusters.** Images are not independent when they share a ``source`` (a real crop and the
image-to-image fakes made from it) or a scan (many crops of one scan). Resampling images then
treats one scan seen fifty times as fifty independent observations, and the CIs come out too
narrow. Every bootstrap here therefore takes optional ``clusters`` (one id per image: ``mfx
compare`` passes :func:`~medforensics_core.data.manifest.bootstrap_clusters`, sources linked by
the manifest's ``scan``) and resamples *clusters* with replacement, each drawn cluster bringing
all its images. Strata are the clusters' label make-up (only reals, only fakes, both), so each
resample keeps the number of clusters of each kind. Without ``clusters`` (or when every image
is its own cluster) this is exactly the per-image stratified bootstrap, draw for draw.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from .decision import flag_fake
from .errors import MfxError

#: Metrics the bootstrap (and paired comparison) can resample.
BOOTSTRAP_METRICS = ("auc", "ap", "acc", "real_acc", "fake_acc", "eer", "oracle_acc")
#: Metrics averaged over groups in ``mean_over_*``.
MEAN_METRICS = ("acc", "real_acc", "fake_acc", "ap", "auc", "eer", "oracle_acc", "tpr", "fpr",
                "tpr_at_fpr_0.01", "tpr_at_fpr_0.05")
#: Metrics that get a bootstrap CI in :func:`summarize`.
CI_METRICS = ("auc", "ap")
#: The generator name of real images; not a group of its own.
REAL_GENERATOR = "real"
# Resamples processed together: at most 250, and about 2M floats per (chunk x n) array, so memory stays
# near 100 MB however large the test set is.
_BOOT_CHUNK = 250
_BOOT_CHUNK_FLOATS = 2_000_000


@dataclass
class MetricSet:
    """Metrics of one group of images. ``None`` where a metric is not defined (e.g. AUC of one class)."""

    n: int
    n_real: int
    n_fake: int
    acc: float | None
    real_acc: float | None
    fake_acc: float | None
    ap: float | None
    auc: float | None
    eer: float | None
    oracle_acc: float | None
    oracle_threshold: float | None

    def to_dict(self) -> dict:
        """Plain JSON-able dict (Python ints/floats/None)."""
        return asdict(self)


def metric_names() -> list[str]:
    """Field names of :class:`MetricSet` in their display order."""
    return [f.name for f in fields(MetricSet)]


# --------------------------------------------------------------------------- inputs


def _as_arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to (int labels in {0,1}, float scores); a NaN score is a user-facing error."""
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    if not np.isfinite(s).all():
        bad = int((~np.isfinite(s)).sum())
        raise MfxError(f"{bad} of {s.size} scores are NaN or infinite (did the detector diverge?)")
    return y.astype(np.int64), s


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


# --------------------------------------------------------------------------- point metrics


def compute_metrics(labels, scores, threshold: float = 0.5) -> MetricSet:
    """All metrics of one group; threshold-free ones are ``None`` unless both classes are present."""
    y, s = _as_arrays(labels, scores)
    predicted_fake = flag_fake(s, threshold)
    correct = predicted_fake == (y == 1)
    n_real, n_fake = int((y == 0).sum()), int((y == 1).sum())
    result = MetricSet(
        n=int(y.size), n_real=n_real, n_fake=n_fake,
        acc=_mean_or_none(correct), real_acc=_mean_or_none(correct[y == 0]), fake_acc=_mean_or_none(correct[y == 1]),
        ap=None, auc=None, eer=None, oracle_acc=None, oracle_threshold=None,
    )
    if n_real and n_fake:
        _fill_ranking_metrics(result, y, s)
    return result


def _fill_ranking_metrics(result: MetricSet, y: np.ndarray, s: np.ndarray) -> None:
    """AP, AUC, EER and oracle accuracy (two-class groups only) through scikit-learn."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    result.ap = float(average_precision_score(y, s))
    result.auc = float(roc_auc_score(y, s))
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    result.eer = equal_error_rate(fpr, tpr)
    result.oracle_acc, result.oracle_threshold = _oracle(fpr, tpr, thresholds, result.n_real, result.n_fake)


def equal_error_rate(fpr: Sequence[float], tpr: Sequence[float]) -> float:
    """EER of a ROC curve (vertices from ``sklearn.metrics.roc_curve``), interpolated on the crossing segment."""
    fpr = np.asarray(fpr, dtype=np.float64)
    fnr = 1.0 - np.asarray(tpr, dtype=np.float64)
    gap = fpr - fnr  # -1 at (0,0), +1 at (1,1), non-decreasing in between
    i = int(np.argmax(gap >= 0))
    if gap[i] == 0 or i == 0:
        return float(fpr[i])
    t = -gap[i - 1] / (gap[i] - gap[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def _oracle(fpr, tpr, thresholds, n_real: int, n_fake: int) -> tuple[float, float]:
    """Best accuracy over all cut points of the ROC curve and its threshold in the ``score > t`` convention."""
    correct = np.rint(tpr * n_fake + (1.0 - fpr) * n_real)  # counts of right answers, exact
    best = int(np.argmax(correct))
    # roc_curve's cut k means "fake iff score >= thresholds[k]"; thresholds[0] is +inf (everything real).
    distinct = thresholds[1:]  # distinct scores, descending
    if best == 0:
        cut = float(distinct[0])  # nothing is above the highest score
    elif best == len(distinct):
        cut = float(np.nextafter(distinct[-1], -np.inf))  # everything is fake
    else:
        cut = float((distinct[best - 1] + distinct[best]) / 2)
    return float(correct[best] / (n_real + n_fake)), cut


# --------------------------------------------------------------------------- vectorised (bootstrap) metrics


def _weighted_metrics(pos_w: np.ndarray, neg_w: np.ndarray, distinct: np.ndarray, threshold: float,
                      wanted: Iterable[str]) -> dict[str, np.ndarray]:
    """Metrics for B weighted copies of a data set at once.

    ``pos_w``/``neg_w`` (B, U): how many fakes/reals of each distinct score (ascending ``distinct``) a copy holds.
    Returns, for each wanted metric, an array of B values (NaN where the copy lacks a class).
    """
    wanted = set(wanted)
    n_pos = pos_w.sum(axis=1)
    n_neg = neg_w.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out: dict[str, np.ndarray] = {}
        above = flag_fake(distinct, threshold)
        tp_at = pos_w[:, above].sum(axis=1)
        tn_at = neg_w[:, ~above].sum(axis=1)
        if "acc" in wanted:
            out["acc"] = (tp_at + tn_at) / (n_pos + n_neg)
        if "real_acc" in wanted:
            out["real_acc"] = tn_at / n_neg
        if "fake_acc" in wanted:
            out["fake_acc"] = tp_at / n_pos
        if "auc" in wanted:
            neg_below = np.cumsum(neg_w, axis=1) - neg_w  # reals strictly below each distinct score
            out["auc"] = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1) / (n_pos * n_neg)
        if wanted & {"ap", "eer", "oracle_acc"}:
            # Cut points from the top: fake iff score >= distinct[k], walking down the scores.
            tp = np.cumsum(pos_w[:, ::-1], axis=1)
            fp = np.cumsum(neg_w[:, ::-1], axis=1)
            if "ap" in wanted:
                precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
                out["ap"] = (pos_w[:, ::-1] * precision).sum(axis=1) / n_pos
            zeros = np.zeros((tp.shape[0], 1))
            tpr = np.hstack([zeros, tp]) / n_pos[:, None]
            fpr = np.hstack([zeros, fp]) / n_neg[:, None]
            if "eer" in wanted:
                out["eer"] = _rowwise_eer(fpr, tpr)
            if "oracle_acc" in wanted:
                correct = tpr * n_pos[:, None] + (1.0 - fpr) * n_neg[:, None]
                out["oracle_acc"] = correct.max(axis=1) / (n_pos + n_neg)
    return out


def _rowwise_eer(fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
    """:func:`equal_error_rate` for every row of (B, K) ROC vertex arrays."""
    gap = fpr - (1.0 - tpr)
    rows = np.arange(fpr.shape[0])
    i = np.argmax(gap >= 0, axis=1)
    prev = np.maximum(i - 1, 0)
    g1, g0 = gap[rows, i], gap[rows, prev]
    denom = np.where(g1 - g0 > 0, g1 - g0, 1.0)
    t = np.where((g1 == 0) | (i == 0), 1.0, -g0 / denom)
    return fpr[rows, prev] + t * (fpr[rows, i] - fpr[rows, prev])


def cluster_index(y: np.ndarray, clusters: Sequence | None) -> tuple[np.ndarray, np.ndarray]:
    """Each image's cluster number and each cluster's stratum (0 only reals, 1 only fakes, 2 both).

    Clusters are numbered in order of first appearance, so with one image per cluster the numbers
    are the image indices (which makes the cluster bootstrap reproduce the per-image one exactly).
    ``clusters=None`` makes every image its own cluster.
    """
    if clusters is None:
        return np.arange(y.size), y.astype(np.int64).copy()
    ids = np.asarray(clusters, dtype=object).reshape(-1)
    if ids.size != y.size:
        raise ValueError(f"clusters ({ids.size}) and labels ({y.size}) differ in length")
    number: dict = {}
    of_image = np.fromiter((number.setdefault(c, len(number)) for c in ids.tolist()), dtype=np.int64, count=y.size)
    has_real = np.bincount(of_image, weights=(y == 0), minlength=len(number)) > 0
    has_fake = np.bincount(of_image, weights=(y == 1), minlength=len(number)) > 0
    return of_image, np.where(has_real & has_fake, 2, np.where(has_fake, 1, 0))


#: Why a bootstrap gives no interval although the metric is defined (the result's ``no_interval``).
NO_INTERVAL = "no label stratum holds two clusters: every resample redraws the same images"


def resampling_is_degenerate(y: np.ndarray, clusters: Sequence | None) -> bool:
    """True when no label stratum (only reals, only fakes, both) holds two clusters: every resample is then the
    original set, and a zero-width interval (or p = 0.002 for any difference) would claim a certainty the data
    cannot give, e.g. a modality cut from one scan, scored against one setting sampled from noise."""
    _, stratum = cluster_index(np.asarray(y).reshape(-1), clusters)
    return int(np.bincount(stratum, minlength=3).max(initial=0)) < 2


def _stratified_weights(y: np.ndarray, n_boot: int, rng: np.random.Generator,
                        clusters: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(n_boot, n) multiplicities of a bootstrap that resamples clusters within their label stratum.

    ``clusters`` is :func:`cluster_index`'s answer; ``None`` resamples images (reals and fakes apart).
    """
    of_image, stratum = clusters if clusters is not None else cluster_index(y, None)
    return _cluster_multiplicities(stratum, n_boot, rng)[:, of_image]


def _cluster_multiplicities(stratum: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, clusters) counts of each cluster in ``n_boot`` resamples, drawn within each stratum."""
    k = stratum.size
    flat = np.zeros(n_boot * k)
    offsets = (np.arange(n_boot) * k)[:, None]
    for kind in (0, 1, 2):
        members = np.flatnonzero(stratum == kind)
        if members.size == 0:
            continue
        picks = members[rng.integers(0, members.size, size=(n_boot, members.size))]
        flat += np.bincount((picks + offsets).ravel(), minlength=n_boot * k)
    return flat.reshape(n_boot, k)


def _bootstrap_metric_arrays(y: np.ndarray, score_sets: Sequence[np.ndarray], metrics: Sequence[str], n_boot: int,
                             seed: int, threshold: float = 0.5,
                             clusters: Sequence | None = None) -> list[dict[str, np.ndarray]]:
    """Resampled metric values for several score vectors over the *same* resamples (paired by construction)."""
    _check_metrics(metrics)
    rng = np.random.default_rng(seed)
    index = cluster_index(y, clusters)
    prepared = [_distinct_index(s) for s in score_sets]
    results: list[dict[str, list]] = [{m: [] for m in metrics} for _ in score_sets]
    chunk = max(1, min(_BOOT_CHUNK, _BOOT_CHUNK_FLOATS // max(y.size, 1)))
    for start in range(0, n_boot, chunk):
        weights = _stratified_weights(y, min(chunk, n_boot - start), rng, index)
        for (distinct, order, starts), acc in zip(prepared, results):
            pos_w = _collapse(weights * (y == 1), order, starts)
            neg_w = _collapse(weights * (y == 0), order, starts)
            for name, values in _weighted_metrics(pos_w, neg_w, distinct, threshold, metrics).items():
                acc[name].append(values)
    return [{m: np.concatenate(v) for m, v in r.items()} for r in results]


def _check_metrics(metrics: Sequence[str]) -> None:
    unknown = set(metrics) - set(BOOTSTRAP_METRICS)
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; choose from {', '.join(BOOTSTRAP_METRICS)}")


def _distinct_index(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores (ascending), the item order that sorts the scores, and where each distinct run starts."""
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return ordered[starts], order, starts


def _collapse(weights: np.ndarray, order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sum per-item weights (B, n) into per-distinct-score weights (B, U); ties share one column."""
    ordered = weights[:, order]
    if starts.size == order.size:
        return ordered
    return np.add.reduceat(ordered, starts, axis=1)


def _is_defined(metric: str, y: np.ndarray) -> bool:
    """Whether ``metric`` exists for a group with these labels."""
    has_real, has_fake = bool((y == 0).any()), bool((y == 1).any())
    if metric == "real_acc":
        return has_real
    if metric == "fake_acc":
        return has_fake
    if metric == "acc":
        return y.size > 0
    return has_real and has_fake


def _percentile_ci(values: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(labels, scores, metric: str = "auc", n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05, clusters: Sequence | None = None) -> tuple[float, float] | None:
    """Percentile bootstrap ``(1 - alpha)`` CI of ``metric``, resampling reals and fakes separately.

    With ``clusters`` (one source id per image) whole clusters are resampled (see the module docstring).
    ``None`` when the metric is not defined for this group or ``n_boot`` is 0.
    """
    _check_metrics([metric])
    y, s = _as_arrays(labels, scores)
    if n_boot <= 0 or not _is_defined(metric, y) or resampling_is_degenerate(y, clusters):
        return None
    values = _bootstrap_metric_arrays(y, [s], [metric], n_boot, seed, clusters=clusters)[0][metric]
    return _percentile_ci(values, alpha)


def paired_bootstrap(labels, scores_a, scores_b, metric: str = "auc", n_boot: int = 1000, seed: int = 0,
                     clusters: Sequence | None = None) -> dict:
    """Compare two detectors scored on the same images: ``metric(a) - metric(b)``, its 95% CI and p-value.

    Both detectors are evaluated on the same resamples (of ``clusters`` when given, else of images),
    so image difficulty cancels out. The two-sided p-value is twice the smaller tail of the
    resampled differences around 0 (with the usual +1 correction, capped at 1): identical detectors
    give p = 1, a difference no resample reverses gives p about 2 / (n_boot + 1). Undefined metrics
    give ``delta``/``ci``/``p_value`` of ``None``.
    """
    return paired_bootstrap_over_seeds(labels, [scores_a], [scores_b], metric=metric, n_boot=n_boot, seed=seed,
                                       clusters=clusters)


def paired_bootstrap_over_seeds(labels, runs_a: Sequence, runs_b: Sequence, metric: str = "auc",
                                n_boot: int = 1000, seed: int = 0, clusters: Sequence | None = None) -> dict:
    """:func:`paired_bootstrap` for detectors trained once per seed: the mean over seeds of ``a_s - b_s``.

    ``runs_a[i]`` and ``runs_b[i]`` are the two detectors' scores from the same training seed, so
    the seed's luck (initialisation, data order) is paired as the images are; every seed's
    difference is computed on the same resamples, and the resampled means give the CI and p-value.
    With one run each this *is* the paired bootstrap. ``per_run`` lists each seed's own difference.
    """
    if len(runs_a) != len(runs_b) or not runs_a:
        raise ValueError(f"need the same number (>= 1) of runs of each detector, got {len(runs_a)} and {len(runs_b)}")
    y = _as_arrays(labels, runs_a[0])[0]
    pairs = [(_as_arrays(labels, a)[1], _as_arrays(labels, b)[1]) for a, b in zip(runs_a, runs_b)]
    result: dict = {"metric": metric, "delta": None, "ci": None, "p_value": None, "n_boot": n_boot,
                    "resampled": "images" if clusters is None else "clusters"}
    if len(pairs) > 1:
        result["per_run"] = None
    if not _is_defined(metric, y):
        return result
    per_run = [_point_value(metric, y, a) - _point_value(metric, y, b) for a, b in pairs]
    result["delta"] = float(np.mean(per_run))
    if len(pairs) > 1:
        result["per_run"] = per_run
    if n_boot <= 0:
        return result
    if resampling_is_degenerate(y, clusters):
        result["no_interval"] = NO_INTERVAL
        return result
    flat = [s for pair in pairs for s in pair]
    boot = _bootstrap_metric_arrays(y, flat, [metric], n_boot, seed, clusters=clusters)
    deltas = np.mean([boot[2 * i][metric] - boot[2 * i + 1][metric] for i in range(len(pairs))], axis=0)
    result["ci"] = list(_percentile_ci(deltas, 0.05))
    tail = min(int((deltas <= 0).sum()), int((deltas >= 0).sum()))
    result["p_value"] = min(1.0, 2.0 * (tail + 1) / (n_boot + 1))
    return result


def _point_value(metric: str, y: np.ndarray, s: np.ndarray) -> float:
    value = getattr(compute_metrics(y, s), metric)
    if value is None:  # pragma: no cover - guarded by _is_defined
        raise ValueError(f"{metric} is not defined here")
    return float(value)


@dataclass
class FoldRuns:
    """One fold of a comparison for :func:`paired_bootstrap_over_folds`: its test labels and sources, and the
    two detectors' scores on it, one score vector per training seed (same seed order for both)."""

    labels: Sequence
    clusters: Sequence
    runs_a: Sequence
    runs_b: Sequence


def paired_bootstrap_over_folds(folds: Sequence[FoldRuns], metric: str = "auc", n_boot: int = 1000,
                                seed: int = 0) -> dict:
    """Two detectors over the folds of a protocol (and seeds): is the mean held-out ``metric`` of ``a`` higher?

    ``delta`` is the mean over folds of the mean over seeds of ``metric(a) - metric(b)``, the number a
    leave-one-generator-out table's "mean" column compares. Each bootstrap resample draws the
    *clusters* (sources, or whole scans) once, over the union of every fold's test clusters (within
    their label strata), and applies the same draw to every fold, seed and both detectors: folds share
    their test reals, so
    resampling them independently per fold would understate how much the mean can move. Seeds are
    paired (each seed's two runs saw the same training luck). ``per_fold`` gives each fold's own delta;
    ``wins`` counts the (fold, seed) runs in which ``a`` beat ``b``. Folds where the metric is not
    defined are left out (listed in ``skipped``).
    """
    result: dict = {"metric": metric, "delta": None, "ci": None, "p_value": None, "n_boot": n_boot,
                    "resampled": "clusters", "per_fold": [], "wins": None, "runs": 0, "skipped": []}
    usable = []
    for i, fold in enumerate(folds):
        y = np.asarray(fold.labels, dtype=np.int64).reshape(-1)
        if len(fold.runs_a) != len(fold.runs_b) or not fold.runs_a:
            raise ValueError(f"fold {i}: need the same number (>= 1) of runs of each detector")
        if not _is_defined(metric, y):
            result["skipped"].append(i)
            continue
        usable.append((y, np.asarray(fold.clusters, dtype=object).reshape(-1),
                       [_as_arrays(y, s)[1] for s in fold.runs_a], [_as_arrays(y, s)[1] for s in fold.runs_b]))
    if not usable:
        return result
    per_fold = [[_point_value(metric, y, a) - _point_value(metric, y, b) for a, b in zip(ra, rb)]
                for y, _, ra, rb in usable]
    result["per_fold"] = [float(np.mean(d)) for d in per_fold]
    result["delta"] = float(np.mean(result["per_fold"]))
    result["wins"] = int(sum(d > 0 for fold in per_fold for d in fold))
    result["runs"] = int(sum(len(fold) for fold in per_fold))
    if n_boot <= 0:
        return result
    if resampling_is_degenerate(np.concatenate([y for y, *_ in usable]), np.concatenate([c for _, c, *_ in usable])):
        result["no_interval"] = NO_INTERVAL
        return result
    deltas = _fold_bootstrap_deltas(usable, metric, n_boot, seed)
    result["ci"] = list(_percentile_ci(deltas, 0.05))
    tail = min(int((deltas <= 0).sum()), int((deltas >= 0).sum()))
    result["p_value"] = min(1.0, 2.0 * (tail + 1) / (n_boot + 1))
    return result


def _fold_bootstrap_deltas(usable, metric: str, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot,) resampled mean deltas, one shared source draw per resample (see :func:`paired_bootstrap_over_folds`)."""
    labels = np.concatenate([y for y, *_ in usable])
    clusters = np.concatenate([c for _, c, *_ in usable])
    of_image, stratum = cluster_index(labels, clusters)
    bounds = np.cumsum([0] + [y.size for y, *_ in usable])
    rng = np.random.default_rng(seed)
    out = []
    chunk = max(1, min(_BOOT_CHUNK, _BOOT_CHUNK_FLOATS // max(labels.size, 1)))
    for start in range(0, n_boot, chunk):
        counts = _cluster_multiplicities(stratum, min(chunk, n_boot - start), rng)
        fold_deltas = []
        for f, (y, _, runs_a, runs_b) in enumerate(usable):
            weights = counts[:, of_image[bounds[f]:bounds[f + 1]]]
            seeds = [_weighted_value(metric, y, weights, a) - _weighted_value(metric, y, weights, b)
                     for a, b in zip(runs_a, runs_b)]
            fold_deltas.append(np.mean(seeds, axis=0))
        out.append(np.mean(fold_deltas, axis=0))
    return np.concatenate(out)


def _weighted_value(metric: str, y: np.ndarray, weights: np.ndarray, scores: np.ndarray) -> np.ndarray:
    distinct, order, starts = _distinct_index(scores)
    pos_w = _collapse(weights * (y == 1), order, starts)
    neg_w = _collapse(weights * (y == 0), order, starts)
    return _weighted_metrics(pos_w, neg_w, distinct, 0.5, [metric])[metric]


def delong_test(labels, scores_a, scores_b) -> dict:
    """DeLong's test for two correlated ROC-AUCs (same images): ``{"delta", "se", "z", "p_value"}``.

    Uses the structural components (placement values) of DeLong et al. (1988); an analytic
    complement to :func:`paired_bootstrap` for the AUC. ``None`` values for a single-class group.
    """
    from scipy.stats import norm

    y, a = _as_arrays(labels, scores_a)
    _, b = _as_arrays(labels, scores_b)
    result: dict = {"metric": "auc", "delta": None, "se": None, "z": None, "p_value": None}
    if not _is_defined("auc", y):
        return result
    (auc_a, v10_a, v01_a), (auc_b, v10_b, v01_b) = _placements(y, a), _placements(y, b)
    n_pos, n_neg = v10_a.size, v01_a.size
    cov10 = np.cov(np.vstack([v10_a, v10_b])) if n_pos > 1 else np.zeros((2, 2))
    cov01 = np.cov(np.vstack([v01_a, v01_b])) if n_neg > 1 else np.zeros((2, 2))
    cov = cov10 / n_pos + cov01 / n_neg
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    delta = auc_a - auc_b
    result["delta"] = float(delta)
    result["se"] = float(math.sqrt(max(variance, 0.0)))
    if variance <= 1e-15:
        result["z"], result["p_value"] = 0.0, 1.0 if abs(delta) < 1e-12 else 0.0
        return result
    z = delta / math.sqrt(variance)
    result["z"] = float(z)
    result["p_value"] = float(2 * norm.sf(abs(z)))
    return result


def _placements(y: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong placement values: V10 per fake (share of reals below), V01 per real (share of fakes above)."""
    from scipy.stats import rankdata

    pos, neg = s[y == 1], s[y == 0]
    rank_all = rankdata(np.concatenate([pos, neg]))
    rank_pos, rank_neg = rankdata(pos), rankdata(neg)
    n_pos, n_neg = pos.size, neg.size
    v10 = (rank_all[:n_pos] - rank_pos) / n_neg
    v01 = 1.0 - (rank_all[n_pos:] - rank_neg) / n_pos
    return float(v10.mean()), v10, v01


# --------------------------------------------------------------------------- operating points

#: False-positive rates at which every report gives the true-positive rate (forensics convention).
LOW_FPRS = (0.01, 0.05)
#: The operating point at which a detector's threshold is chosen on its validation split.
VALIDATION_FPR = 0.05


def tpr_at_fpr(labels, scores, fpr: float) -> float | None:
    """Best fake recall (TPR) reachable while at most ``fpr`` of the reals are called fake.

    Read off the ROC curve's vertices (the largest TPR among cut points with FPR <= ``fpr``);
    with few reals this is strict (50 reals at 1% FPR allow no false positive at all).
    ``None`` without both classes.
    """
    y, s = _as_arrays(labels, scores)
    if not ((y == 0).any() and (y == 1).any()):
        return None
    from sklearn.metrics import roc_curve

    fprs, tprs, _ = roc_curve(y, s, drop_intermediate=False)
    allowed = fprs <= fpr + 1e-12
    return float(tprs[allowed].max())


def threshold_at_fpr(real_scores, fpr: float = VALIDATION_FPR) -> float | None:
    """The lowest threshold that calls at most ``fpr`` of these reals fake (``score > threshold``).

    With the real scores sorted in descending order and ``m = floor(fpr * n)`` false positives
    allowed, the threshold is the (m+1)-th highest real score: only the m above it are flagged
    (fewer on ties). ``None`` without reals.
    """
    values = np.sort(np.asarray(real_scores, dtype=np.float64).reshape(-1))[::-1]
    if values.size == 0:
        return None
    allowed = int(math.floor(fpr * values.size + 1e-9))
    return float(values[min(allowed, values.size - 1)])


def _operating_points(y: np.ndarray, s: np.ndarray, threshold: float, entry: dict) -> None:
    """Fake recall / false alarms at the detector's threshold, and TPR at the low FPRs, added to ``entry``."""
    entry["threshold"] = float(threshold)
    entry["tpr"] = entry.get("fake_acc")
    entry["fpr"] = None if entry.get("real_acc") is None else 1.0 - entry["real_acc"]
    for fpr in LOW_FPRS:
        entry[f"tpr_at_fpr_{fpr:g}"] = tpr_at_fpr(y, s, fpr)


# --------------------------------------------------------------------------- grouping


def _group_entry(y: np.ndarray, s: np.ndarray, n_boot: int, seed: int, clusters: np.ndarray | None = None,
                 threshold: float = 0.5) -> dict:
    """One group's metrics at ``threshold`` plus bootstrap CIs of AUC and AP (``None`` when not defined).

    A group whose every label stratum is one cluster (a modality cut from a single scan) gets no CI
    (:func:`resampling_is_degenerate`).
    """
    entry = compute_metrics(y, s, threshold).to_dict()
    _operating_points(y, s, threshold, entry)
    if clusters is not None:
        entry["n_clusters"] = len(set(clusters.tolist()))
    defined = [m for m in CI_METRICS if _is_defined(m, y)]
    cis: dict[str, list[float] | None] = {f"{m}_ci": None for m in CI_METRICS}
    if n_boot > 0 and defined and not resampling_is_degenerate(y, clusters):
        values = _bootstrap_metric_arrays(y, [s], defined, n_boot, seed, clusters=clusters)[0]
        cis.update({f"{m}_ci": list(_percentile_ci(values[m], 0.05)) for m in defined})
    entry.update(cis)
    return entry


def _mean_over(groups: dict[str, dict]) -> dict:
    """Unweighted mean of each metric over the groups where it is defined (``None`` if in none)."""
    means: dict = {}
    for name in MEAN_METRICS:
        values = [g[name] for g in groups.values() if g.get(name) is not None]
        means[name] = float(np.mean(values)) if values else None
    means["n_groups"] = len(groups)
    return means


def summarize(labels, scores, *, modalities, generators, n_boot: int = 1000, seed: int = 0,
              clusters: Sequence | None = None, threshold: float = 0.5) -> dict:
    """Metrics overall, per modality, per generator and their means, in the report dict's shape.

    Threshold metrics (ACC, ``tpr`` = fake recall, ``fpr``) are taken at ``threshold``: the
    detector's validated threshold when its checkpoint holds one, else 0.5.

    A modality group holds every row of that modality (real and fake). A generator group holds
    that generator's fakes plus *all* real rows (CNNDetection-style: each generator is scored
    against the reals); the reals' own generator name (``"real"``) is not a group. With
    ``clusters`` (one id per image: sources, or whole scans, see
    :func:`~medforensics_core.data.manifest.bootstrap_clusters`) every CI resamples clusters, not
    images, and each group says how many clusters it holds (``n_clusters``).
    """
    y, s = _as_arrays(labels, scores)
    modalities = np.asarray(modalities, dtype=object).reshape(-1)
    generators = np.asarray(generators, dtype=object).reshape(-1)
    clusters = None if clusters is None else np.asarray(clusters, dtype=object).reshape(-1)
    if modalities.size != y.size or generators.size != y.size or (clusters is not None and clusters.size != y.size):
        raise ValueError("modalities, generators and clusters must have one entry per score")

    def entry(mask: np.ndarray | None = None) -> dict:
        if mask is None:
            return _group_entry(y, s, n_boot, seed, clusters, threshold)
        return _group_entry(y[mask], s[mask], n_boot, seed, None if clusters is None else clusters[mask],
                            threshold)

    by_modality = {str(m): entry(modalities == m) for m in _ordered_unique(modalities)}
    reals = y == 0
    fake_generators = [g for g in _ordered_unique(generators[y == 1]) if g != REAL_GENERATOR]
    by_generator = {str(g): entry(reals | ((generators == g) & (y == 1))) for g in fake_generators}
    return {
        "overall": entry(),
        "by_modality": by_modality,
        "by_generator": by_generator,
        "mean_over_modalities": _mean_over(by_modality),
        "mean_over_generators": _mean_over(by_generator),
    }


def _ordered_unique(values: np.ndarray) -> list:
    """Distinct values, sorted by their string form (stable, readable order in tables)."""
    return sorted({v for v in values.tolist()}, key=str)
