"""The epoch loop of detectors trained with a binary objective, with the baselines' learning-rate schedules.

Two schedules from the published code, in one place, each a pure decision rule
(:class:`ScheduleState`) that a test can drive with a scripted sequence of
validation scores:

* CNNDetection's early stopping (Wang et al. 2020, ``earlystop.py`` +
  ``train.py``; UniversalFakeDetect's ``train.py`` runs the same loop): the first
  validation score is the best so far; a later score counts as an improvement
  only when it beats the best by more than ``first_delta`` (0.001); after
  ``patience`` epochs without one, the learning rate is divided by ``lr_drop``
  and a *fresh* stopper starts (best forgotten, threshold ``delta`` = 0.002);
  training ends when the divided rate falls below ``min_lr``. Every improvement
  (and the first score after each drop) "saves" the model;
* a step decay (NPR, Tan et al. 2024): after each epoch whose 0-based index is a
  positive multiple of ``decay_every``, the rate is multiplied by ``decay``;
  ``step_every``/``step_gamma`` is PyTorch's ``StepLR`` (after every
  ``step_every``-th epoch, 1-based), for recipes that use it.

Which weights a fit keeps is ``keep``: ``"last-saved"`` restores the last saved
weights (CNNDetection evaluates ``model_epoch_best.pth``, the stopper's last
save), ``"last"`` keeps the final epoch's (NPR saves ``last``; UnivFD's script
overwrites its ``model_epoch_best.pth`` at every epoch, so it holds the last).
The loop also stops at ``epochs`` or when the run's budget is spent.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import numpy as np
import torch

from ..contract import Batch
from ..decision import accuracy
from ..errors import ConfigError
from ..seeding import rank_seed, seeded  # noqa: F401 - seeded re-exported for the baselines
from .context import FitContext
from .training import LossFn, binary_logit_loss, predict_loader, run_epoch

KEEP_CHOICES = ("last-saved", "last")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Epoch budget, learning-rate schedule and model selection (``patience=None``: no early stopping)."""

    epochs: int
    patience: int | None = None
    first_delta: float = 0.001
    delta: float = 0.002
    lr_drop: float = 10.0
    min_lr: float = 1e-6
    decay_every: int | None = None
    decay: float = 1.0
    step_every: int | None = None
    step_gamma: float = 1.0
    keep: str = "last"

    def __post_init__(self) -> None:
        if self.keep not in KEEP_CHOICES:
            raise ConfigError(f"model selection {self.keep!r}: choose one of {', '.join(KEEP_CHOICES)}")


@dataclasses.dataclass
class EpochDecision:
    """What the schedule decided at the end of one epoch."""

    saved: bool = False
    lr_multiply: float | None = None
    lr_divide: float | None = None
    stop: bool = False


class ScheduleState:
    """The schedule's memory across epochs; :meth:`end_epoch` is the whole decision rule."""

    def __init__(self, schedule: Schedule):
        self.schedule = schedule
        self.best: float | None = None
        self.stale = 0
        self.threshold = schedule.first_delta
        self.lr_drops = 0

    def end_epoch(self, epoch: int, val_score: float | None, current_lr: float) -> EpochDecision:
        """Decision after 0-based ``epoch`` with validation score ``val_score`` (``None``: no validation)."""
        s, decision = self.schedule, EpochDecision()
        if s.decay_every and epoch > 0 and epoch % s.decay_every == 0:
            decision.lr_multiply = s.decay
        if s.step_every and (epoch + 1) % s.step_every == 0:  # StepLR(step_every, step_gamma), stepped per epoch
            decision.lr_multiply = (decision.lr_multiply or 1.0) * s.step_gamma
        if val_score is None or s.patience is None:
            return decision
        if self.best is None or val_score >= self.best + self.threshold:
            self.best, self.stale, decision.saved = val_score, 0, True
            return decision
        self.stale += 1
        if self.stale < s.patience:
            return decision
        if current_lr / s.lr_drop < s.min_lr:
            decision.stop = True
            return decision
        decision.lr_divide = s.lr_drop
        self.best, self.stale, self.threshold = None, 0, s.delta
        self.lr_drops += 1
        return decision


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


def apply_lr_decision(optimizer: torch.optim.Optimizer, decision: EpochDecision) -> None:
    """Multiply and/or divide every group's rate as decided (dividing, not multiplying by 1/x, as the papers' code)."""
    for group in optimizer.param_groups:
        if decision.lr_multiply is not None:
            group["lr"] *= decision.lr_multiply
        if decision.lr_divide is not None:
            group["lr"] /= decision.lr_divide


def detector_loaders(detector, train, val, ctx, batch_size: int):
    """``(train_loader_for_epoch, val_loader)`` for a detector's own transforms (val may be absent or empty).

    The training loader is rebuilt per epoch with an epoch-dependent seed, so the
    shuffling differs between epochs yet is reproducible from the run's seed.
    Validation images go through ``detector.val_transform`` when the detector has
    one (CNNSpot and UnivFD validate on blurred/JPEG'd images, as the official
    code does), else through ``preprocess``.
    """
    val_transform = getattr(detector, "val_transform", None) or detector.preprocess
    val_loader = ctx.loader(val, val_transform, batch_size, shuffle=False) if val is not None and len(val) \
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

    Under ``torchrun`` a rank > 0 reseeds torch's global stream (augmentation draws from it) with its own
    :func:`~medforensics_core.seeding.rank_seed`, so the ranks do not augment their shards with one sequence;
    rank 0 keeps the single process's stream.
    """
    if ctx.rank > 0:  # weights are built (and DDP broadcasts rank 0's): from here on, this rank's own draws
        torch.manual_seed(rank_seed(ctx.seed, ctx.rank))
    state = ScheduleState(schedule)
    saved: dict[str, torch.Tensor] | None = None
    info: dict[str, Any] = {"epochs": 0, "lr_drops": 0, "lr": [], "keep": schedule.keep}
    synchronised = forward is None or forward is module
    if synchronised:
        forward = _module_forward(ctx.parallel(module), frozen)
    for epoch in ctx.epoch_range(schedule.epochs, name):
        module.train()
        lr = min(group["lr"] for group in optimizer.param_groups)
        info["lr"].append(lr)
        info["final_loss"] = run_epoch(forward, train_loader(epoch), optimizer, ctx, loss_fn=loss_fn,
                                       description=f"{name} epoch {epoch + 1}", synchronised=synchronised)
        info["epochs"] = epoch + 1
        acc = None
        if val_loader is not None:
            module.eval()
            acc = accuracy(*predict_loader(predict, val_loader, ctx, description="validation"))
            info["val_acc"] = acc
        ctx.log_epoch(name, epoch + 1, schedule.epochs, loss=info["final_loss"], val_acc=acc, lr=lr)
        decision = state.end_epoch(epoch, acc, lr)
        if decision.saved and schedule.keep == "last-saved":
            saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
            info["saved_epoch"], info["saved_val_acc"] = epoch + 1, acc
        if decision.stop:
            info["stopped"] = "early stopping (lr below min_lr)"
            break
        apply_lr_decision(optimizer, decision)
        if ctx.out_of_time():
            info["stopped"] = "budget"
            break
    info["lr_drops"] = state.lr_drops
    module.eval()
    if saved is not None:
        module.load_state_dict(saved)
    return info
