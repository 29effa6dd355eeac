"""A checkpoint's decision threshold fixed again on reals the user trusts, scored as ``mfx predict`` scores them.

Why this exists: ``mfx compare`` fixes each detector's threshold at 5 % false positives on its
validation reals, each scored by the detector's own preprocessing (its centre crop). Two things
move that operating point in use, both measured on the default build (leave-one-network-out,
seed 0, tiny DSKI; ``benchmarks/threshold_transfer.py RUN --crop tiles``):

* **the scoring**: ``mfx predict`` scores a whole image by tiles and keeps the most suspicious one.
  The max of nine 64-px tiles of a 128-px real is above its centre crop's score, so the same
  thresholds flagged 0.295 of the validation reals instead of 0.047 (mean over five folds; NPR,
  which sees the whole image in one tile, stayed at 0.043). On a 512-px scan there are many more tiles;
* **the reals**: reals further from the training data than the validation reals score higher
  (DSKI flagged 0.106 of the test reals at thresholds that flag 0.047 of the validation reals, mean
  over five folds).

So the threshold that matters is the one fixed on reals of the user's own scanner, under the
scoring the user will run. The new threshold is stored with its rule and its scoring
(``train_info``: ``threshold``, ``threshold_rule``, ``threshold_fpr``, ``threshold_scoring``) in a
new checkpoint; the given one is never rewritten.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.indexers import LABEL_FOLDERS
from ..data.walk import expand_inputs
from ..decision import flag_fake
from ..errors import BadInputError, MfxError
from ..interfaces import Detector
from ..metrics import threshold_at_fpr
from .context import FitContext
from .predict import Prediction, PredictOptions, checkpoint_threshold, predict_files
from .tiles import TileConfig, describe_scoring, scoring_of, stored_scoring


def scoring_mismatch(detector: Detector, tiles: TileConfig) -> str | None:
    """Why the checkpoint's threshold does not fit this scoring, or None (the same scoring, or no threshold)."""
    info = detector.train_info or {}
    if info.get("threshold") is None:
        return None
    stored, running = stored_scoring(info), scoring_of(detector, tiles)
    if stored == running:
        return None
    return (f"the checkpoint's threshold was fixed on {describe_scoring(stored)}; this run scores by "
            f"{describe_scoring(running)}, so the false-positive rate of its rule does not hold here. Fix it on "
            f"reals of your own scanner: mfx calibrate --checkpoint CKPT REALS... -o NEW")


def percent(share: float) -> str:
    """``0.05`` -> ``5%``, ``0.005`` -> ``0.5%`` (``{:.0%}`` would print 0%)."""
    return f"{share * 100:g}%"


def minimum_reals(fpr: float) -> int:
    """The fewest reals at which ``fpr`` is a share of at least one image (20 for 5 %)."""
    return math.ceil(1.0 / fpr - 1e-9)


@dataclasses.dataclass
class Calibration:
    """A threshold fixed on given reals: the rule, and the share of them flagged before and after, per modality."""

    threshold: float
    fpr: float
    scoring: dict[str, Any]
    n_frames: int
    n_files: int
    previous: float
    previous_source: str
    counts: dict[str, int]
    flagged_before: dict[str, float]
    flagged_after: dict[str, float]
    left_out_fakes: int = 0
    """Files under a ``1_fake`` folder (any case): fakes by the dataset layout, not calibrated on."""
    left_out_repeats: int = 0
    """Files given more than once (the same file by another path or link): each counts once."""

    @property
    def rule(self) -> str:
        files = f"{self.n_files} file" + ("s" if self.n_files != 1 else "")
        return (f"{percent(self.fpr)} FPR on {self.n_frames} real frames of {files} given to mfx calibrate "
                f"({describe_scoring(self.scoring)})")

    def train_info(self, before: dict[str, Any]) -> dict[str, Any]:
        """The keys a calibrated checkpoint's ``train_info`` gets (the rest of ``before`` is kept).

        ``thresholds_replaced`` lists every earlier threshold with its rule, oldest first, so a checkpoint
        calibrated twice still says what ``mfx compare`` chose.
        """
        replaced = before.get("thresholds_replaced")
        replaced = list(replaced) if isinstance(replaced, list) else []
        replaced.append({"threshold": self.previous, "rule": self.previous_source})
        return {"threshold": self.threshold, "threshold_rule": self.rule, "threshold_fpr": self.fpr,
                "threshold_scoring": self.scoring, "thresholds_replaced": replaced}


class CalibrationRefused(MfxError):
    """No threshold could be fixed (too few reals scored); ``skipped`` lists the bad files that were passed over,
    so the user sees why so few were left."""

    def __init__(self, message: str, skipped: list[tuple[str, str]]):
        super().__init__(message)
        self.skipped = skipped


def calibrate(predictions: Sequence[Prediction], fpr: float, scoring: dict[str, Any],
              previous: tuple[float, str]) -> Calibration:
    """The lowest threshold that flags at most ``fpr`` of these real frames (the rule ``mfx compare`` uses)."""
    if not predictions:
        raise MfxError("no real image was scored: nothing to calibrate on")
    needed = minimum_reals(fpr)
    if len(predictions) < needed:
        raise MfxError(f"{len(predictions)} real frame(s) scored; a threshold at {percent(fpr)} false positives "
                       f"needs at least {needed}")
    scores = np.array([p.score for p in predictions], dtype=np.float64)
    modalities = np.array([p.modality for p in predictions])
    threshold = threshold_at_fpr(scores, fpr)
    counts = dict(sorted(Counter(modalities.tolist()).items()))
    return Calibration(threshold, fpr, scoring, len(predictions), len({p.path for p in predictions}),
                       previous[0], previous[1], counts, flagged_shares(scores, modalities, previous[0]),
                       flagged_shares(scores, modalities, threshold))


def flagged_shares(scores: np.ndarray, modalities: np.ndarray, threshold: float) -> dict[str, float]:
    """Share of these reals called fake at ``threshold`` (:func:`flag_fake`, as reports do): ``all``, then per
    modality."""
    out = {"all": float(flag_fake(scores, threshold).mean())}
    for m in sorted(set(modalities.tolist())):
        out[m] = float(flag_fake(scores[modalities == m], threshold).mean())
    return out


def check_output(output: Path) -> None:
    """Refuse, before any scoring, an output that exists (the given checkpoint included) or cannot be written."""
    if output.exists() or output.is_symlink():
        raise MfxError(f"{output}: already exists; name a new file (the given checkpoint is never rewritten)")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise MfxError(f"{output}: cannot write there (no such folder, or not writable)")


def write_calibrated(detector: Detector, output: Path) -> Path:
    """Save the calibrated detector as ``output`` (checked again: never over an existing file)."""
    check_output(output)
    return detector.save(output)


FAKE_FOLDER = next(name for name, label in LABEL_FOLDERS.items() if label == 1)
REAL_FOLDER = next(name for name, label in LABEL_FOLDERS.items() if label == 0)


def fake_by_layout(path: Path) -> bool:
    """Whether a file sits under a ``1_fake`` folder: a fake by the layout every mfx dataset uses.

    Why calibrate leaves such files out: pointed at a dataset's split folder (``val/``), it would otherwise take
    its fakes for reals and fix a threshold far too high, under a rule that says "5 % of reals".
    """
    return any(part.lower() == FAKE_FOLDER for part in Path(path).parts)  # as the indexer reads label folders


def once_each(files: Sequence[Path]) -> list[Path]:
    """The files in order, each real file once (the same file named twice, or through a link, is one image).

    Why: the rule's minimum (20 frames at 5 %) counts images; one scan given 20 times would pass it and fix the
    threshold at that one scan's score.
    """
    seen: set[str] = set()
    out = []
    for file in files:
        key = os.path.realpath(file)
        if key not in seen:
            seen.add(key)
            out.append(file)
    return out


def calibrate_files(detector: Detector, reals: Sequence[str | os.PathLike], ctx: FitContext, options: PredictOptions,
                    fpr: float) -> tuple[Calibration, list[tuple[str, str]]]:
    """Score these real files as ``mfx predict`` would (``options``), fix the threshold on them, and set it on the
    detector's ``train_info`` (``detector.save`` then keeps it). The command line and :func:`mfx.calibrate
    <medforensics_core.api.calibrate>` both come here. Files under a ``1_fake`` folder are left out
    (:func:`fake_by_layout`; counted in ``left_out_fakes``). Returns the calibration and the bad files skipped."""
    try:
        previous = checkpoint_threshold(detector)
    except MfxError as exc:  # a NaN or non-numeric stored threshold is exactly what calibrating replaces
        previous = 0.5, f"default 0.5 (the checkpoint's own threshold was unusable: {exc})"
    options = dataclasses.replace(options, threshold=previous[0])
    files, bad = expand_inputs(list(reals))
    if bad and options.on_bad == "fail":
        raise BadInputError(*bad[0])
    unique = once_each(files)
    reals_only = [f for f in unique if not fake_by_layout(f)]
    if unique and not reals_only:
        raise MfxError(f"all {len(unique)} file(s) given sit under a {FAKE_FOLDER} folder (fakes by the dataset "
                       f"layout); calibrate on reals: give the {REAL_FOLDER} folders")
    predictions, unreadable = predict_files(detector, reals_only, ctx, options)
    bad = bad + unreadable
    try:
        result = calibrate(predictions, fpr, scoring_of(detector, options.tiles), previous)
    except MfxError as exc:
        raise CalibrationRefused(str(exc), bad) from None
    result.left_out_fakes = len(unique) - len(reals_only)
    result.left_out_repeats = len(files) - len(unique)
    before = detector.train_info or {}
    detector.train_info = {**before, **result.train_info(before)}
    return result, bad
