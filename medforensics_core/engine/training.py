"""Small loops shared by detectors that train a torch model with a binary (real/fake) objective.

They exist so that each detector's ``fit`` states only its recipe (optimiser,
schedule, stopping rule) and not the plumbing (device moves, mixed precision,
progress, budget, distribution), which is the same for every detector. Loaders
yield :class:`~medforensics_core.contract.Batch` (``ctx.loader`` / ``ctx.tensor_loader``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..contract import Batch
from ..decision import accuracy  # noqa: F401 - re-exported: the one accuracy rule
from .context import FitContext
from .distributed import average_gradients, gather_in_order

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def binary_logit_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE with logits on a ``(N,)`` or ``(N, 1)`` output, labels 1 = fake."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.reshape(-1).float(), labels.float())


def run_epoch(forward: Callable[[torch.Tensor], torch.Tensor] | None, loader, optimizer: torch.optim.Optimizer,
              ctx: FitContext, loss_fn: LossFn = binary_logit_loss, description: str = "train", *,
              synchronised: bool = False, batch_loss: Callable[[Batch], torch.Tensor] | None = None,
              max_grad_norm: float = 0.0, grad_norms: list[float] | None = None) -> float:
    """One pass over ``loader``: forward under autocast, loss, backward, step. Returns the mean loss.

    The loss is ``loss_fn(forward(batch.inputs), batch.labels)``, or ``batch_loss(batch)``
    for an objective that needs more of the batch than its pixels (DSKI's prompts
    need each image's modality, ``batch.modalities``). Under ``torchrun`` every rank
    must step with the mean gradient of the global batch: ``synchronised`` says
    ``forward`` is a ``DistributedDataParallel`` module (``ctx.parallel``) that
    already averages in ``backward``; otherwise the gradients are averaged here by
    hand (the same rule).

    ``max_grad_norm`` > 0 rescales the (averaged, unscaled) gradient of all the optimiser's parameters
    to at most that global L2 norm before each step (``torch.nn.utils.clip_grad_norm_``); 0 (the
    default, and every paper recipe here) leaves it alone. Why: one outlier batch at a high learning
    rate can throw trained weights far off in a single step (a loss jump between epochs), and clipping
    bounds how far any one batch can move them, without changing the ordinary steps. ``grad_norms``, when
    given, receives each step's gradient norm before clipping (a diagnostic: where a clip would bite).
    """
    total, count = 0.0, 0
    measure = max_grad_norm > 0 or grad_norms is not None
    parameters = [p for group in optimizer.param_groups for p in group["params"]] if measure else []
    scaler = ctx.grad_scaler()  # enabled only for fp16 on CUDA
    for batch in ctx.track(loader, len(loader), description):
        batch = batch.to(ctx.device)
        with ctx.autocast():
            loss = batch_loss(batch) if batch_loss is not None else loss_fn(forward(batch.inputs), batch.labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if ctx.distributed and not synchronised:
            average_gradients(optimizer, ctx.world_size)
        if parameters:
            scaler.unscale_(optimizer)  # clip the true gradient, not the fp16 loss-scaled one
            norm = clip_or_measure(parameters, max_grad_norm)
            if grad_norms is not None:
                grad_norms.append(norm)
        scaler.step(optimizer)
        scaler.update()
        total += float(loss.detach()) * len(batch)
        count += len(batch)
        ctx.status(f"loss {total / count:.4f}")
    return total / max(count, 1)


def clip_or_measure(parameters: list[torch.Tensor], max_grad_norm: float) -> float:
    """The global L2 norm of the parameters' gradients, before clipping them to ``max_grad_norm`` (> 0).

    With ``max_grad_norm`` 0 the gradients are only measured, never touched: scaling them by an
    ``inf / norm`` factor of 1 would be a no-op for finite norms but turn every gradient into NaN once
    one is infinite (an fp16 overflow step that the grad scaler is about to skip).
    """
    if max_grad_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm))
    grads = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0


@torch.no_grad()
def predict_loader(predict: Callable[[Batch], np.ndarray], loader, ctx: FitContext,
                   description: str = "score") -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels over a loader of batches, in dataset order (``predict`` maps a Batch to probabilities).

    Under ``torchrun`` each rank scores its shard and the scores are gathered back
    into the dataset's order, so every rank returns the same arrays.
    """
    scores, labels, seen = [], [], []
    for batch in ctx.track(loader, len(loader), description):
        batch = batch.to(ctx.device)
        with ctx.autocast():
            batch_scores = predict(batch)
        scores.append(np.asarray(batch_scores, dtype=np.float64).reshape(-1))
        labels.append(batch.labels.cpu().numpy())
        seen.append(batch.indices.numpy().astype(np.int64))
    total = len(loader.dataset)
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    indices = np.concatenate(seen)
    ordered = gather_in_order(np.concatenate(scores), indices, total, ctx.world_size)
    ordered_labels = gather_in_order(np.concatenate(labels), indices, total, ctx.world_size).astype(np.int64)
    return ordered, ordered_labels
