"""Small loops shared by detectors that train a torch model with a binary (real/fake) objective.

They exist so that each detector's ``fit`` states only its recipe (optimiser,
schedule, stopping rule) and not the plumbing (device moves, mixed precision,
progress, budget), which is the same for every detector.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..decision import accuracy  # noqa: F401 - re-exported: the one accuracy rule
from .context import FitContext
from .distributed import average_gradients

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def binary_logit_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE with logits on a ``(N,)`` or ``(N, 1)`` output, labels 1 = fake."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.reshape(-1).float(), labels.float())


def run_epoch(forward: Callable[[torch.Tensor], torch.Tensor], loader, optimizer: torch.optim.Optimizer,
              ctx: FitContext, loss_fn: LossFn = binary_logit_loss, description: str = "train") -> float:
    """One pass over ``loader``: forward under autocast, loss, backward, step. Returns the mean loss."""
    total, count = 0.0, 0
    for inputs, labels, _ in ctx.track(loader, len(loader), description):
        inputs = inputs.to(ctx.device, non_blocking=True)
        labels = labels.to(ctx.device, non_blocking=True)
        with ctx.autocast():
            loss = loss_fn(forward(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if ctx.distributed:  # the DistributedDataParallel rule: every rank steps with the mean gradient
            average_gradients(optimizer, ctx.world_size)
        optimizer.step()
        total += float(loss.detach()) * len(labels)
        count += len(labels)
        ctx.status(f"loss {total / count:.4f}")
    return total / max(count, 1)


@torch.no_grad()
def predict_loader(predict: Callable[..., np.ndarray], loader, ctx: FitContext,
                   description: str = "score", *, pass_indices: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels over a loader (``predict`` maps a batch on ``ctx.device`` to probabilities).

    With ``pass_indices`` the batch's dataset indices are handed to ``predict`` as
    a second argument (the engine uses them to pass per-image modalities and to
    put scores gathered from several ranks back in order).
    """
    scores, labels = [], []
    for inputs, batch_labels, indices in ctx.track(loader, len(loader), description):
        inputs = inputs.to(ctx.device, non_blocking=True)
        with ctx.autocast():
            batch_scores = predict(inputs, indices) if pass_indices else predict(inputs)
        scores.append(np.asarray(batch_scores, dtype=np.float64).reshape(-1))
        labels.append(batch_labels.numpy())
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(scores), np.concatenate(labels)

