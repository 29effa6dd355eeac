"""Metrics against hand-computed values and scikit-learn; bootstrap and paired comparisons."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medforensics_core import metrics as M
from medforensics_core.errors import MfxError

# Six images worked out by hand (see test_hand_computed_six_images).
HAND_LABELS = [0, 0, 0, 1, 1, 1]
HAND_SCORES = [0.1, 0.4, 0.6, 0.35, 0.7, 0.9]


def _noisy_scores(rng: np.random.Generator, labels: np.ndarray, separation: float, decimals: int | None = None):
    scores = np.clip(rng.normal(0.5 + separation * (labels - 0.5), 0.2), 0, 1)
    return np.round(scores, decimals) if decimals is not None else scores


def test_hand_computed_six_images():
    m = M.compute_metrics(HAND_LABELS, HAND_SCORES)
    # score > 0.5 is fake: reals 0.1, 0.4 right, 0.6 wrong; fakes 0.7, 0.9 right, 0.35 wrong.
    assert (m.n, m.n_real, m.n_fake) == (6, 3, 3)
    assert m.real_acc == pytest.approx(2 / 3) and m.fake_acc == pytest.approx(2 / 3) and m.acc == pytest.approx(4 / 6)
    # fake>real pairs: 0.35 beats 0.1 only (1), 0.7 and 0.9 beat all three reals (3 + 3): 7 of 9.
    assert m.auc == pytest.approx(7 / 9)
    # ranking 0.9F 0.7F 0.6R 0.4R 0.35F 0.1R: precision at each fake 1, 1, 3/5.
    assert m.ap == pytest.approx((1 + 1 + 3 / 5) / 3)
    # cut at 0.6: FPR = 1/3 (0.6), FNR = 1/3 (0.35) -> a vertex with FPR = FNR exactly.
    assert m.eer == pytest.approx(1 / 3)
    # best cut: fake iff score > 0.65 (between 0.6 and 0.7): 5 of 6 right.
    assert m.oracle_acc == pytest.approx(5 / 6)
    assert m.oracle_threshold == pytest.approx(0.65)
    assert M.compute_metrics(HAND_LABELS, HAND_SCORES, threshold=m.oracle_threshold).acc == pytest.approx(5 / 6)


def test_threshold_convention_score_equal_to_threshold_is_real():
    m = M.compute_metrics([0, 1], [0.5, 0.5])
    assert m.real_acc == 1.0 and m.fake_acc == 0.0 and m.auc == 0.5


def test_eer_interpolated_on_a_tied_segment():
    # Cuts: >=0.8 gives (FPR 0, TPR .5); >=0.5 gives (.5, 1). FPR = FNR on that segment at FPR = .25.
    assert M.compute_metrics([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.8]).eer == pytest.approx(0.25)


def test_eer_of_mirrored_scores_is_the_error_at_one_half():
    rng = np.random.default_rng(3)
    reals = rng.uniform(0, 0.7, 400)
    labels = np.r_[np.zeros(400), np.ones(400)]
    m = M.compute_metrics(labels, np.r_[reals, 1 - reals])
    # Symmetric around 0.5: FPR = FNR at the 0.5 cut, so EER = both class errors at 0.5.
    assert m.eer == pytest.approx(1 - m.real_acc) and m.eer == pytest.approx(1 - m.fake_acc)
    assert 0.05 < m.eer < 0.4


def test_eer_extremes():
    assert M.compute_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]).eer == 0.0
    assert M.compute_metrics([0, 0, 1, 1], [0.8, 0.9, 0.1, 0.2]).eer == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = _noisy_scores(rng, labels, 0.3, decimals=2)  # rounding makes ties
    m = M.compute_metrics(labels, scores)
    assert m.auc == pytest.approx(roc_auc_score(labels, scores))
    assert m.ap == pytest.approx(average_precision_score(labels, scores))
    assert m.acc == pytest.approx(np.mean((scores > 0.5) == labels))
    thresholds = np.unique(np.r_[scores, -1.0])
    brute_oracle = max(np.mean((scores > t) == labels) for t in thresholds)
    assert m.oracle_acc == pytest.approx(brute_oracle)
    assert m.oracle_acc >= m.acc


@pytest.mark.parametrize("seed", [0, 5])
def test_vectorised_metrics_equal_sklearn_on_an_explicit_resample(seed):
    """The bootstrap's weighted computation must equal compute_metrics on the materialised resample."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 150)
    scores = _noisy_scores(rng, labels, 0.25, decimals=2)
    weights = M._stratified_weights(labels, 3, rng)
    distinct, order, starts = M._distinct_index(scores)
    pos = M._collapse(weights * (labels == 1), order, starts)
    neg = M._collapse(weights * (labels == 0), order, starts)
    fast = M._weighted_metrics(pos, neg, distinct, 0.5, M.BOOTSTRAP_METRICS)
    for b in range(3):
        counts = weights[b].astype(int)
        assert counts[labels == 1].sum() == (labels == 1).sum()  # stratified: class sizes kept
        reference = M.compute_metrics(np.repeat(labels, counts), np.repeat(scores, counts))
        for name in M.BOOTSTRAP_METRICS:
            assert fast[name][b] == pytest.approx(getattr(reference, name)), name


def test_single_class_group_has_acc_only_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = M.compute_metrics([0, 0, 0], [0.2, 0.7, 0.1])
        assert m.acc == pytest.approx(2 / 3) and m.real_acc == pytest.approx(2 / 3) and m.fake_acc is None
        assert m.ap is None and m.auc is None and m.eer is None and m.oracle_acc is None and m.oracle_threshold is None
        assert M.bootstrap_ci([1, 1, 1], [0.2, 0.7, 0.1]) is None
        assert M.paired_bootstrap([1, 1], [0.2, 0.3], [0.4, 0.5])["delta"] is None
        assert M.delong_test([0, 0], [0.2, 0.3], [0.4, 0.5])["p_value"] is None
        empty = M.compute_metrics([], [])
        assert empty.n == 0 and empty.acc is None


def test_bad_inputs_are_clear():
    with pytest.raises(MfxError, match="NaN"):
        M.compute_metrics([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="differ in length"):
        M.compute_metrics([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        M.compute_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="unknown metric"):
        M.bootstrap_ci([0, 1], [0.1, 0.2], metric="f1")


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    rng = np.random.default_rng(7)
    widths = []
    for n in (200, 5000):
        labels = rng.integers(0, 2, n)
        scores = _noisy_scores(rng, labels, 0.3)
        point = M.compute_metrics(labels, scores)
        for metric in ("auc", "ap", "acc", "eer"):
            lo, hi = M.bootstrap_ci(labels, scores, metric=metric, n_boot=500, seed=1)
            assert lo <= getattr(point, metric) <= hi, (metric, n)
        lo, hi = M.bootstrap_ci(labels, scores, n_boot=500, seed=1)
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3  # sqrt(25) = 5 times narrower in theory
    assert M.bootstrap_ci(labels, scores, n_boot=200, seed=4) == M.bootstrap_ci(labels, scores, n_boot=200, seed=4)


def test_paired_bootstrap_identical_and_different_detectors():
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, 600)
    good = _noisy_scores(rng, labels, 0.4)
    same = M.paired_bootstrap(labels, good, good.copy(), n_boot=300)
    assert same["delta"] == 0 and same["ci"] == [0.0, 0.0] and same["p_value"] == 1.0
    weak = _noisy_scores(rng, labels, 0.1)
    diff = M.paired_bootstrap(labels, good, weak, metric="auc", n_boot=500)
    expected = roc_auc_score(labels, good) - roc_auc_score(labels, weak)
    assert diff["delta"] == pytest.approx(expected) and diff["delta"] > 0.2
    assert diff["ci"][0] > 0 and diff["p_value"] < 0.01
    reverse = M.paired_bootstrap(labels, weak, good, metric="ap", n_boot=500)
    assert reverse["delta"] < 0 and reverse["p_value"] < 0.01


def test_delong_agrees_with_paired_bootstrap():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 800)
    a = _noisy_scores(rng, labels, 0.3)
    b = np.clip(a + rng.normal(0, 0.15, a.size), 0, 1)  # correlated, somewhat worse
    delong = M.delong_test(labels, a, b)
    boot_values = M._bootstrap_metric_arrays(labels, [a, b], ["auc"], 2000, 3)
    boot_sd = float(np.std(boot_values[0]["auc"] - boot_values[1]["auc"]))
    assert delong["delta"] == pytest.approx(roc_auc_score(labels, a) - roc_auc_score(labels, b))
    assert delong["se"] == pytest.approx(boot_sd, rel=0.2)
    paired = M.paired_bootstrap(labels, a, b, n_boot=2000, seed=3)
    assert (delong["p_value"] < 0.05) == (paired["p_value"] < 0.05)
    assert M.delong_test(labels, a, a)["p_value"] == 1.0


def _grouped_data(rng: np.random.Generator, n: int = 400):
    modality = np.array(["CT", "MRI", "XR"])[rng.integers(0, 3, n)]
    labels = rng.integers(0, 2, n)
    labels[modality == "XR"] = 1  # a single-class modality
    generator = np.where(labels == 0, "real", np.array(["ddpm", "gan"])[rng.integers(0, 2, n)])
    return labels, _noisy_scores(rng, labels, 0.3), modality, generator


def test_summarize_grouping_rules_and_means():
    labels, scores, modality, generator = _grouped_data(np.random.default_rng(2))
    summary = M.summarize(labels, scores, modalities=modality, generators=generator, n_boot=200)
    assert set(summary) == {"overall", "by_modality", "by_generator", "mean_over_modalities", "mean_over_generators"}
    assert set(summary["by_modality"]) == {"CT", "MRI", "XR"} and set(summary["by_generator"]) == {"ddpm", "gan"}
    for name, group in summary["by_generator"].items():  # a generator's fakes against every real image
        assert group["n_real"] == int((labels == 0).sum())
        assert group["n_fake"] == int((generator == name).sum())
        mask = (labels == 0) | (generator == name)
        assert group["auc"] == pytest.approx(roc_auc_score(labels[mask], scores[mask]))
    ct = summary["by_modality"]["CT"]
    assert ct["n"] == int((modality == "CT").sum()) and ct["auc_ci"][0] <= ct["auc"] <= ct["auc_ci"][1]
    xr = summary["by_modality"]["XR"]
    assert xr["auc"] is None and xr["auc_ci"] is None and xr["ap_ci"] is None and xr["acc"] is not None
    means = summary["mean_over_modalities"]
    two_class = summary["by_modality"]["CT"]["auc"], summary["by_modality"]["MRI"]["auc"]
    assert means["auc"] == pytest.approx(sum(two_class) / 2)
    assert means["acc"] == pytest.approx(np.mean([g["acc"] for g in summary["by_modality"].values()]))
    assert means["n_groups"] == 3
    overall = summary["overall"]
    assert overall["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert overall["oracle_acc"] >= overall["acc"]
    no_ci = M.summarize(labels, scores, modalities=modality, generators=generator, n_boot=0)
    assert no_ci["overall"]["auc_ci"] is None and no_ci["overall"]["auc"] == overall["auc"]


def _one_dominant_source(rng: np.random.Generator):
    """40 sources, each a real crop plus a fake made from it; source 0 alone holds 120 of the 198 images.

    Scores carry a per-source offset (one scan's texture moves all of its crops together), which is
    what makes images of one source dependent and a per-image bootstrap overconfident.
    """
    sizes = [60] + [1] * 39  # (real, fake) pairs per source
    labels, scores, sources = [], [], []
    for source, pairs in enumerate(sizes):
        offset = rng.normal(0, 0.25)
        for _ in range(pairs):
            for label in (0, 1):
                labels.append(label)
                scores.append(0.5 + 0.15 * (label - 0.5) + offset + rng.normal(0, 0.05))
                sources.append(f"scan-{source}")
    return np.array(labels), np.array(scores), np.array(sources)


def test_cluster_bootstrap_is_wider_when_one_source_dominates():
    labels, scores, sources = _one_dominant_source(np.random.default_rng(0))
    per_image = M.bootstrap_ci(labels, scores, n_boot=1000, seed=0)
    per_source = M.bootstrap_ci(labels, scores, n_boot=1000, seed=0, clusters=sources)
    # measured 2.0x on this set (1.3x to 2.1x over eight draws of it)
    assert per_source[1] - per_source[0] > 1.5 * (per_image[1] - per_image[0])
    point = M.compute_metrics(labels, scores).auc
    assert per_source[0] <= point <= per_source[1]
    # the paired test resamples the same clusters: a detector that differs only on the big scan is less sure
    other = scores + np.where(sources == "scan-0", 0.3 * labels - 0.15, 0.0)
    image_test = M.paired_bootstrap(labels, other, scores, n_boot=1000, seed=0)
    source_test = M.paired_bootstrap(labels, other, scores, n_boot=1000, seed=0, clusters=sources)
    assert source_test["resampled"] == "clusters" and image_test["resampled"] == "images"
    assert source_test["delta"] == image_test["delta"]
    assert source_test["ci"][1] - source_test["ci"][0] > 1.3 * (image_test["ci"][1] - image_test["ci"][0])
    # a gain found on one scan alone: "significant" over images, not over sources (p 0.002 vs 0.69 measured)
    assert image_test["p_value"] < 0.01 and source_test["p_value"] > 0.2
    summary = M.summarize(labels, scores, modalities=["CT"] * labels.size, generators=np.where(labels, "ldm", "real"),
                          n_boot=300, clusters=sources)
    assert summary["overall"]["n_clusters"] == 40 and summary["by_generator"]["ldm"]["n_clusters"] == 40


def test_no_interval_when_no_label_stratum_holds_two_clusters():
    """One scan of reals against one cluster of sampled fakes: every resample is the original set, so the CI and
    the paired test's p would claim a certainty the data cannot give (a zero-width CI, p = 0.002); none is given.
    A second real scan is enough to resample."""
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], 30)
    a, b = _noisy_scores(rng, labels, 0.3), _noisy_scores(rng, labels, 0.6)
    one_each = np.where(labels == 1, "sampled", "scan-1")
    assert M.bootstrap_ci(labels, a, n_boot=200, clusters=one_each) is None
    paired = M.paired_bootstrap(labels, a, b, n_boot=200, clusters=one_each)
    assert paired["delta"] is not None and paired["ci"] is None and paired["p_value"] is None
    assert paired["no_interval"] == M.NO_INTERVAL
    folds = M.paired_bootstrap_over_folds([M.FoldRuns(labels, one_each, [a], [b])] * 2, n_boot=200)
    assert folds["delta"] is not None and folds["ci"] is None and "no_interval" in folds
    summary = M.summarize(labels, a, modalities=["CT"] * 60, generators=np.where(labels, "gan", "real"), n_boot=200,
                          clusters=one_each)
    assert summary["overall"]["auc"] is not None and summary["overall"]["auc_ci"] is None
    two_scans = np.where(labels == 1, "sampled", np.where(np.arange(60) % 2, "scan-1", "scan-2"))
    ci = M.bootstrap_ci(labels, a, n_boot=200, clusters=two_scans)
    assert ci is not None and ci[0] < ci[1]
    assert M.paired_bootstrap(labels, a, b, n_boot=200, clusters=two_scans)["p_value"] is not None


def test_cluster_bootstrap_equals_per_image_bootstrap_when_every_source_has_one_image():
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 2, 300)
    scores = _noisy_scores(rng, labels, 0.3)
    own = [f"img-{i}" for i in range(labels.size)]
    for metric in ("auc", "ap"):
        assert M.bootstrap_ci(labels, scores, metric=metric, n_boot=500, seed=2, clusters=own) == \
            M.bootstrap_ci(labels, scores, metric=metric, n_boot=500, seed=2)
    other = _noisy_scores(rng, labels, 0.2)
    with_ids = M.paired_bootstrap(labels, scores, other, n_boot=500, seed=2, clusters=own)
    without = M.paired_bootstrap(labels, scores, other, n_boot=500, seed=2)
    assert (with_ids["ci"], with_ids["p_value"]) == (without["ci"], without["p_value"])
