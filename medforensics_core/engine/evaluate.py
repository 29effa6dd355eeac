"""Scoring a detector over an image set: the one inference loop every command shares."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..data.dataset import ImageSet
from ..errors import CheckpointError
from ..interfaces import Detector
from .context import FitContext
from .training import predict_loader

DEFAULT_EVAL_BATCH = 64


def score(detector: Detector, images: ImageSet, ctx: FitContext | None = None, *,
          batch_size: int = DEFAULT_EVAL_BATCH) -> np.ndarray:
    """Fake probability for every image of ``images`` (in order), with the detector's own preprocessing."""
    scores, _ = score_with_timing(detector, images, ctx, batch_size=batch_size)
    return scores


def score_with_timing(detector: Detector, images: ImageSet, ctx: FitContext | None = None, *,
                      batch_size: int = DEFAULT_EVAL_BATCH) -> tuple[np.ndarray, float]:
    """Scores plus inference throughput (images per second, loading included).

    ``predict_proba`` receives :class:`~medforensics_core.contract.Batch` objects
    whose rows carry each image's modality, generator and source (DSKI picks its
    per-modality prompts from them). Under ``torchrun`` each rank scores its shard
    and the scores are gathered back into the image set's order, so every rank
    returns the same array.
    """
    ctx = ctx or FitContext()
    if len(images) == 0:
        return np.zeros(0), 0.0
    loader = scoring_loader(detector, images, ctx, batch_size)
    start = time.perf_counter()
    with torch.inference_mode():
        scores, _ = predict_loader(detector.predict_proba, loader, ctx, description=f"scoring {detector.name}")
    elapsed = max(time.perf_counter() - start, 1e-9)
    check_finite_scores(detector.name, scores)
    return scores, len(images) / elapsed


def scoring_loader(detector: Detector, images: ImageSet, ctx: FitContext, batch_size: int):
    """The loader that scores ``images``; batches hold images of one size when the detector keeps native sizes.

    A detector that tests whole images at their own size (NPR's ``native``
    geometry) cannot stack a 512 px and a 256 px image in one batch; its batches
    are then formed per image size (``predict_loader`` puts scores back in order).
    """
    if not getattr(detector, "variable_input_size", False):
        return ctx.loader(images, detector.preprocess, batch_size, shuffle=False)
    if ctx.distributed:
        return ctx.loader(images, detector.preprocess, 1, shuffle=False)
    from ..data.dataset import TransformedSet
    from .context import BatchCollate

    by_size: dict[tuple[int, ...], list[int]] = {}
    for index in range(len(images)):
        by_size.setdefault(tuple(images.image(index).shape), []).append(index)
    batches = [group[i:i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]
    return torch.utils.data.DataLoader(TransformedSet(images, detector.preprocess), batch_sampler=batches,
                                       num_workers=ctx.num_workers, pin_memory=ctx.device.type == "cuda",
                                       collate_fn=BatchCollate(images.rows))


def check_finite_scores(name: str, scores: np.ndarray) -> None:
    """NaN/inf scores are an error, never a verdict: ``nan >= threshold`` is False, so they would all read "real"."""
    bad = ~np.isfinite(np.asarray(scores, dtype=np.float64))
    if bad.any():
        raise CheckpointError(f"{name} produced {int(bad.sum())} non-finite score(s) (NaN/inf) of {bad.size}: "
                              "its weights are corrupt or its training diverged")
