"""The realism gate: how easily each generator setting's fakes are told apart by trivial statistics.

A fake that a simple statistic separates from the reals (noise texture, flat
colour, checkerboard) measures nothing about medical deepfakes, so every build
measures, per setting:

* ``first_order_auc``: 5-fold AUC of a logistic regression on first-order
  statistics -- intensity percentiles, mean and standard deviation per channel,
  gradient-magnitude and local-variance statistics. Near 1.0 means the fakes
  are trivially off; near 0.5 means a detector has to find real traces.
* ``freq_auc``: 5-fold AUC of the ``freq`` detector's features (radial power
  spectrum, Durall et al. 2020) with the same classifier recipe (standardise +
  logistic regression), taken from the registered plugin.
* ``psnr`` / ``ssim`` of image-to-image fakes to the real crop they were made
  from (how much of the source survives);
* ``edited_region_auc``, for local edits only (an inpainted region pasted into
  its real crop): the same first-order AUC, on the box of pixels the edit
  changed, against the real pixels of that box in the source crop. A whole-image
  statistic is blind there -- ~88 % of an inpainted fake *is* its real crop --
  while a person looks straight at the regenerated region. The verdict counts
  the larger of the two AUCs for such a setting.

The reals each setting is compared with are drawn from the same modalities in
the same numbers as its fakes, so the modality mix is never a cue.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
FOLDS = 5
TARGET_SHARE_AT_MOST_080 = 0.5   # at least half of the default settings at first-order AUC <= 0.80
TARGET_NONE_AT_LEAST = 0.99      # no default setting at first-order AUC >= 0.99
CHANGE_TOLERANCE = 3.0 / 255.0   # a grey-level change larger than this is the edit's (not the uint8 rounding's)
LOCAL_EDIT_MAX_SHARE = 0.5       # an edit whose changed box covers at most this share of the image is local
MIN_REGION_SIDE = 8              # smaller boxes are too small for the local-variance statistics


def luma(image: np.ndarray) -> np.ndarray:
    """Grey levels in [0, 1] of an (H, W, 3) uint8 image."""
    return image.astype(np.float64) @ LUMA / 255.0


def _box_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over ``k x k`` windows (valid part), by cumulative sums."""
    c = np.pad(x, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def first_order_features(image: np.ndarray) -> np.ndarray:
    """Intensity, gradient and local-variance statistics of one (H, W, 3) uint8 image."""
    grey = luma(image)
    rgb = image.astype(np.float64) / 255.0
    gy, gx = np.diff(grey, axis=0)[:, :-1], np.diff(grey, axis=1)[:-1, :]
    gradient = np.hypot(gy, gx)
    local_var = np.maximum(_box_mean(grey**2, 5) - _box_mean(grey, 5) ** 2, 0.0)
    log_var = np.log10(local_var + 1e-6)
    return np.concatenate([
        np.percentile(grey, PERCENTILES), [grey.mean(), grey.std()],
        rgb.mean(axis=(0, 1)), rgb.std(axis=(0, 1)),
        np.percentile(gradient, (10, 50, 90, 99)), [gradient.mean(), gradient.std()],
        np.percentile(log_var, (10, 50, 90)), [log_var.mean(), log_var.std()],
    ])


def psnr(fake: np.ndarray, real: np.ndarray) -> float:
    mse = float(np.mean((fake.astype(np.float64) - real.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _gaussian_filter(x: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=1.5, truncate=3.5)


def ssim(fake: np.ndarray, real: np.ndarray) -> float:
    """Mean SSIM of the luma (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03)."""
    a, b = luma(fake), luma(real)
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = _gaussian_filter(a), _gaussian_filter(b)
    var_a = _gaussian_filter(a * a) - mu_a**2
    var_b = _gaussian_filter(b * b) - mu_b**2
    cov = _gaussian_filter(a * b) - mu_a * mu_b
    score = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(score.mean())


def cross_validated_auc(features: np.ndarray, labels: np.ndarray, seed: int, folds: int = FOLDS,
                        groups: np.ndarray | None = None) -> float | None:
    """Pooled out-of-fold AUC of standardise + logistic regression (None when a class is too small).

    ``groups`` keeps images of one group (an edited region and its source) in the same fold.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels, minlength=2)
    folds = min(folds, int(counts.min()))
    if folds < 2:
        return None
    scores = np.zeros(len(labels))
    splitter = (StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed) if groups is None
                else StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed))
    for train, test in splitter.split(features, labels, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        model.fit(features[train], labels[train])
        scores[test] = model.predict_proba(features[test])[:, 1]
    return float(roc_auc_score(labels, scores))


def freq_features_fn() -> Callable[[np.ndarray], np.ndarray] | None:
    """The registered ``freq`` detector's feature extractor (None, logged, when no such plugin is installed)."""
    import torch

    from ..plugins import get_registry

    registry = get_registry()
    if "freq" not in registry.names("detector"):
        log.warning("realism gate: no 'freq' detector plugin installed; freq_auc left empty")
        return None
    detector = registry.detector("freq")(preset="tiny")

    def features(image: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
        return detector.preprocess(tensor).numpy().astype(np.float64)

    return features


@dataclasses.dataclass
class GateImage:
    """One image the gate looks at: pixels, label, modality, setting and (img2img fakes) its source pixels."""

    image: np.ndarray
    label: int
    modality: str
    setting: str
    source_image: np.ndarray | None = None


def balanced_reals(fakes: Sequence[GateImage], reals: Sequence[GateImage], rng: np.random.Generator) -> list[GateImage]:
    """As many reals of each modality as the setting has fakes of it (all of them when there are fewer)."""
    chosen: list[GateImage] = []
    for modality in sorted({f.modality for f in fakes}):
        pool = [r for r in reals if r.modality == modality]
        want = min(len(pool), sum(f.modality == modality for f in fakes))
        chosen += [pool[i] for i in np.sort(rng.choice(len(pool), size=want, replace=False))]
    return chosen


def measure_setting(fakes: Sequence[GateImage], reals: Sequence[GateImage], seed: int,
                    freq: Callable[[np.ndarray], np.ndarray] | None) -> dict[str, Any]:
    """The gate's numbers for one setting."""
    rng = np.random.default_rng(seed)
    compared = balanced_reals(fakes, reals, rng)
    images = [g.image for g in compared] + [f.image for f in fakes]
    labels = np.array([0] * len(compared) + [1] * len(fakes))
    first_order = np.stack([first_order_features(im) for im in images])
    out: dict[str, Any] = {"n_fake": len(fakes), "n_real_compared": len(compared),
                           "first_order_auc": _rounded(cross_validated_auc(first_order, labels, seed))}
    out["freq_auc"] = _rounded(cross_validated_auc(np.stack([freq(im) for im in images]), labels, seed)) \
        if freq is not None else None
    pairs = [(f.image, f.source_image) for f in fakes if f.source_image is not None]
    if pairs:
        finite = [p for p in (psnr(a, b) for a, b in pairs) if np.isfinite(p)]
        out["psnr"] = round(float(np.mean(finite)), 2) if finite else None
        out["ssim"] = round(float(np.mean([ssim(a, b) for a, b in pairs])), 4)
    out["edited_region_auc"] = _rounded(edited_region_auc(fakes, seed))
    return out


def edited_box(fake: np.ndarray, source: np.ndarray) -> tuple[slice, slice] | None:
    """The bounding box of the pixels an edit changed, when the edit is local (else None: a whole-image fake)."""
    changed = np.abs(luma(fake) - luma(source)) > CHANGE_TOLERANCE
    if not changed.any():
        return None
    rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    if height * width > LOCAL_EDIT_MAX_SHARE * changed.size or min(height, width) < MIN_REGION_SIDE:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def edited_region_auc(fakes: Sequence[GateImage], seed: int) -> float | None:
    """First-order AUC of the edited boxes against the same boxes of their sources (None unless most fakes of the
    setting are local edits); each region and its source stay in one fold."""
    regions = []
    for fake in fakes:
        box = edited_box(fake.image, fake.source_image) if fake.source_image is not None else None
        if box is not None:
            regions.append((fake.image[box], fake.source_image[box]))
    if len(regions) < max(2 * FOLDS, len(fakes) / 2):
        return None
    features = np.stack([first_order_features(im) for pair in regions for im in pair])
    labels = np.array([1, 0] * len(regions))
    groups = np.repeat(np.arange(len(regions)), 2)
    return cross_validated_auc(features, labels, seed, groups=groups)


def realism_auc(gate: dict[str, Any]) -> float | None:
    """The AUC a setting is judged by: the larger of its whole-image and edited-region first-order AUCs."""
    known = [a for a in (gate.get("first_order_auc"), gate.get("edited_region_auc")) if a is not None]
    return max(known) if known else None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def verdict(aucs: Sequence[float | None]) -> dict[str, Any]:
    """Whether a set of settings meets the realism target of the default build."""
    known = [a for a in aucs if a is not None]
    share = sum(a <= 0.80 for a in known) / len(known) if known else 0.0
    return {"share_at_most_0.80": round(share, 3), "any_at_least_0.99": any(a >= TARGET_NONE_AT_LEAST for a in known),
            "meets_target": bool(known) and share >= TARGET_SHARE_AT_MOST_080
            and not any(a >= TARGET_NONE_AT_LEAST for a in known)}
