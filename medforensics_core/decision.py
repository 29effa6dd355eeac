"""The one decision rule of mfx: when a fake probability means "fake".

An image is called **fake when its score is strictly greater than the
threshold** (``score > threshold``; default 0.5). This is the convention of the
CNNDetection and UnivFD evaluation code that the baselines reproduce, so a score
of exactly 0.5 counts as real. Every accuracy in mfx — the metrics of a report,
the validation accuracy that early stopping watches, ``mfx predict``'s verdict,
each detector's own ``train_info`` — goes through :func:`flag_fake`, so they can
never disagree on a tie.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_THRESHOLD", "accuracy", "flag_fake", "verdict"]

#: The threshold of ACC@0.5 and of ``mfx predict`` unless a checkpoint or the user sets another.
DEFAULT_THRESHOLD = 0.5


def flag_fake(scores, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Boolean array: which scores are called fake (``score > threshold``)."""
    return np.asarray(scores, dtype=np.float64) > threshold


def verdict(score: float, threshold: float = DEFAULT_THRESHOLD) -> str:
    """``"fake"`` or ``"real"`` for one score, by :func:`flag_fake`."""
    return "fake" if bool(flag_fake(score, threshold)) else "real"


def accuracy(scores, labels, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Fraction of images whose :func:`flag_fake` call matches the label (1 = fake); 0.0 for no images."""
    labels = np.asarray(labels).reshape(-1)
    if not labels.size:
        return 0.0
    return float((flag_fake(scores, threshold).reshape(-1) == (labels == 1)).mean())
