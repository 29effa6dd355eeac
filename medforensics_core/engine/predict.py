"""Scoring real-world files (``mfx predict``): folders expanded, multi-frame DICOM and NIfTI volumes split into frames.

Every frame becomes one row of an in-memory manifest (``file#N``, the same
notation manifests use), so decoding, the bad-file policy and scoring are the
very code paths a comparison uses (``ImageSet`` + ``engine.evaluate.score``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.dataset import ImageSet
from ..decision import verdict
from ..data.manifest import Manifest, ManifestRow
from ..data.walk import expand_inputs
from ..errors import BadInputError
from ..interfaces import Detector
from .context import FitContext
from .evaluate import score

log = logging.getLogger(__name__)

@dataclasses.dataclass
class Prediction:
    path: str
    frame: int | None
    score: float
    verdict: str


def frame_count(path: Path) -> int:
    """Frames (multi-frame DICOM, cine) or slices (NIfTI) in a file; 1 for a 2-D image."""
    try:
        from ..data.readers import count_frames
    except ImportError:
        return 1
    return count_frames(path)


def frame_rows(files: Sequence[Path], modality: str, on_bad: str) -> tuple[list[ManifestRow], list[tuple[str, str]]]:
    """One manifest row per frame (``file#N`` for multi-frame files); paths stay as the user gave them."""
    rows: list[ManifestRow] = []
    bad: list[tuple[str, str]] = []
    for path in files:
        try:
            frames = frame_count(path)
        except BadInputError as exc:
            if on_bad == "fail":
                raise
            bad.append((exc.path, exc.reason))
            continue
        names = [str(path)] if frames <= 1 else [f"{path}#{i}" for i in range(frames)]
        rows.extend(ManifestRow(path=name, label=0, modality=modality, generator="unknown") for name in names)
    return rows, bad


def predict_files(detector: Detector, inputs: Sequence[str | Path], ctx: FitContext, *, threshold: float = 0.5,
                  on_bad: str = "skip", modality: str = "unknown", batch_size: int = 32,
                  ) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Fake probability and verdict for every frame of every input; bad inputs are listed (skip) or raise (fail)."""
    files, bad = expand_inputs(inputs)
    if bad and on_bad == "fail":
        raise BadInputError(*bad[0])
    rows, unreadable = frame_rows(files, modality, on_bad)
    bad.extend(unreadable)
    images = ImageSet(Manifest(rows, Path.cwd()), on_bad=on_bad, progress=ctx.progress)
    bad.extend(images.skipped)
    scores = score(detector, images, ctx, batch_size=batch_size) if len(images) else np.zeros(0)
    predictions = []
    for row, value in zip(images.rows, scores):
        path, _, frame = row.path.partition("#")
        predictions.append(Prediction(path, int(frame) if frame else None, float(value),
                                      verdict(value, threshold)))
    return predictions, bad
