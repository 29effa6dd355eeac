"""The epoch loop of detectors trained with a binary objective, with the baselines' learning-rate schedules.

Two schedules from the published code, in one place:

* CNNDetection's (Wang et al. 2020; reused by UnivFD): when validation accuracy
  has not improved for ``patience`` epochs, divide the learning rate by
  ``lr_drop`` and carry on; stop once it falls below ``min_lr``;
* a step decay (NPR, Tan et al. 2024): multiply the learning rate by
  ``step_gamma`` every ``step_every`` epochs.

Either way the loop stops at ``epochs`` or when the run's budget is spent, and
the best-validation weights are restored at the end, so the saved model is the
one the validation set chose.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import numpy as np
import torch

from ..contract import Batch
from ..decision import accuracy
from ..seeding import seeded  # noqa: F401 - re-exported for the baselines
from .context import FitContext
from .training import LossFn, binary_logit_loss, predict_loader, run_epoch


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Epoch budget and learning-rate schedule (``patience=None``: no early stopping)."""

    epochs: int
    patience: int | None = None
    lr_drop: float = 10.0
    min_lr: float = 1e-6
    step_every: int | None = None
    step_gamma: float = 1.0


def _module_forward(module: torch.nn.Module, frozen: Callable[[torch.Tensor], torch.Tensor] | None):
    if frozen is None:
        return module

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = frozen(inputs)
        return module(features.float())

    return forward


def scale_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Multiply every group's learning rate by ``factor``; returns the smallest new rate."""
    for group in optimizer.param_groups:
        group["lr"] *= factor
    return min(group["lr"] for group in optimizer.param_groups)


def detector_loaders(detector, train, val, ctx, batch_size: int):
    """``(train_loader_for_epoch, val_loader)`` for a detector's own transforms (val may be absent or empty).

    The training loader is rebuilt per epoch with an epoch-dependent seed, so the
    shuffling differs between epochs yet is reproducible from the run's seed.
    """
    val_loader = ctx.loader(val, detector.preprocess, batch_size, shuffle=False) if val is not None and len(val) \
        else None

    def train_loader(epoch: int):
        return ctx.loader(train, detector.train_transform, batch_size, shuffle=True, epoch_offset=epoch)

    return train_loader, val_loader


def train_binary(module: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor] | None,
                 predict: Callable[[Batch], np.ndarray], optimizer: torch.optim.Optimizer,
                 train_loader: Callable[[int], Iterable], val_loader: Iterable | None, ctx: FitContext,
                 schedule: Schedule, name: str, loss_fn: LossFn = binary_logit_loss, *,
                 frozen: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
    """Train ``module`` epoch by epoch; returns the run's ``train_info``.

    The logits are ``module(frozen(inputs))`` (``frozen``: e.g. a frozen encoder,
    run without gradients) when ``forward`` is ``None`` or ``module`` itself — the
    form that trains distributed for real: ``module`` is wrapped by
    ``ctx.parallel`` (``DistributedDataParallel`` under ``torchrun``). Any other
    ``forward`` callable is used as given (gradients then averaged by hand).
    ``train_loader(epoch)`` gives that epoch's loader of batches; ``predict`` maps
    a validation :class:`Batch` to fake probabilities (gathered over ranks, so
    every rank takes the same early-stopping decision); ``loss_fn(logits, labels)``
    is the training objective (default: BCE on one logit per image).
    """
    best_acc, best_state, stale = -1.0, None, 0
    info: dict[str, Any] = {"epochs": 0, "lr_drops": 0}
    synchronised = forward is None or forward is module
    if synchronised:
        forward = _module_forward(ctx.parallel(module), frozen)
    for epoch in ctx.epoch_range(schedule.epochs, name):
        module.train()
        info["final_loss"] = run_epoch(forward, train_loader(epoch), optimizer, ctx, loss_fn=loss_fn,
                                       description=f"{name} epoch {epoch + 1}", synchronised=synchronised)
        info["epochs"] = epoch + 1
        if schedule.step_every and (epoch + 1) % schedule.step_every == 0:
            scale_lr(optimizer, schedule.step_gamma)
        if val_loader is not None:
            module.eval()
            info["val_acc"] = accuracy(*predict_loader(predict, val_loader, ctx, description="validation"))
        ctx.log_epoch(name, epoch + 1, schedule.epochs, loss=info["final_loss"],
                      val_acc=info.get("val_acc") if val_loader is not None else None,
                      lr=min(group["lr"] for group in optimizer.param_groups))
        if val_loader is not None:
            acc = info["val_acc"]
            if acc > best_acc + 1e-3:
                best_acc, stale = acc, 0
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            else:
                stale += 1
            if schedule.patience is not None and stale >= schedule.patience:
                if scale_lr(optimizer, 1.0 / schedule.lr_drop) < schedule.min_lr:
                    info["stopped"] = "early stopping (lr below min_lr)"
                    break
                info["lr_drops"] += 1
                stale = 0
        if ctx.out_of_time():
            info["stopped"] = "budget"
            break
    module.eval()
    if best_state is not None:
        module.load_state_dict(best_state)
        info["best_val_acc"] = best_acc
    return info
