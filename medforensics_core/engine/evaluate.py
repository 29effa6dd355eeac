"""Scoring a detector over an image set: the one inference loop every command shares."""

from __future__ import annotations

import functools
import inspect
import time

import numpy as np
import torch

from ..errors import CheckpointError
from ..data.dataset import ImageSet
from ..interfaces import Detector
from .context import FitContext
from .distributed import gather_in_order
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

    Detectors whose ``predict_proba`` takes a ``modalities`` keyword (DSKI's
    per-modality prompts) get each image's modality from the image set's rows.
    Under ``torchrun`` each rank scores its shard and the scores are gathered
    back into the image set's order, so every rank returns the same array.
    """
    ctx = ctx or FitContext()
    if len(images) == 0:
        return np.zeros(0), 0.0
    loader = ctx.loader(images, detector.preprocess, batch_size, shuffle=False)
    seen: list[np.ndarray] = []
    predict = functools.partial(_predict_batch, detector, images, seen, accepts_modalities(detector))
    start = time.perf_counter()
    with torch.inference_mode():
        scores, _ = predict_loader(predict, loader, ctx, description=f"scoring {detector.name}", pass_indices=True)
    elapsed = max(time.perf_counter() - start, 1e-9)
    indices = np.concatenate(seen) if seen else np.zeros(0, dtype=np.int64)
    scores = gather_in_order(scores, indices, len(images), ctx.world_size)
    check_finite_scores(detector.name, scores)
    return scores, len(images) / elapsed


def check_finite_scores(name: str, scores: np.ndarray) -> None:
    """NaN/inf scores are an error, never a verdict: ``nan >= threshold`` is False, so they would all read "real"."""
    bad = ~np.isfinite(np.asarray(scores, dtype=np.float64))
    if bad.any():
        raise CheckpointError(f"{name} produced {int(bad.sum())} non-finite score(s) (NaN/inf) of {bad.size}: "
                              "its weights are corrupt or its training diverged")


def accepts_modalities(detector: Detector) -> bool:
    """Whether ``detector.predict_proba`` takes the optional ``modalities`` keyword."""
    try:
        return "modalities" in inspect.signature(detector.predict_proba).parameters
    except (TypeError, ValueError):
        return False


def _predict_batch(detector: Detector, images: ImageSet, seen: list, with_modalities: bool,
                   inputs: torch.Tensor, indices: torch.Tensor) -> np.ndarray:
    index_array = indices.numpy().astype(np.int64)
    seen.append(index_array)
    if with_modalities:
        return detector.predict_proba(inputs, modalities=[images.rows[i].modality for i in index_array])
    return detector.predict_proba(inputs)
