"""DSKI's stage-1 training loop: the tuning hold-out, the optimiser, the loss, and best-epoch selection.

Why a hold-out *generator*: fusion weights and early stopping tuned on a
validation split of the generators training saw reward memorising them. One
generator (or any manifest column, e.g. ``network``) of the training data is
therefore held out of stage-1 training, with a matching share of the reals, and
everything tuned is tuned on it: the question every tuning step answers is
"what transfers to a generator this model has not seen?".
"""

from __future__ import annotations

import copy
import logging
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from medforensics_core.data.dataset import ImageSet
from medforensics_core.engine.context import FitContext
from medforensics_core.engine.protocols import linked_groups
from medforensics_core.engine.training import run_epoch
from medforensics_core.errors import ConfigError
from medforensics_core.seeding import numpy_rng


if TYPE_CHECKING:
    from .detector import DSKIBase

log = logging.getLogger(__name__)
REAL = "real"


def holdout_split(train: ImageSet, column: str, seed: int) -> tuple[ImageSet, ImageSet | None, str | None]:
    """``(rest, held_out, value)``: the fakes of one ``column`` value (chosen from ``seed``) plus a matching share
    of the reals of each modality; ``(train, None, None)`` when fewer than two values have fakes.

    By ``network``, values that share a network id are one unit, as ``--holdout-by network`` links them: a fake
    made by ``vae-a+unet-b`` is held out with ``vae-a``'s own fakes, never trained on beside them.
    """
    if train.rows and not hasattr(train.rows[0], column):
        raise ConfigError(f"tune_holdout={column!r}: the manifest has no column {column!r} "
                          f"(use 'generator', 'val' or 'none')")
    fakes = [i for i, r in enumerate(train.rows) if r.label == 1]
    units = _holdout_units([train.rows[i] for i in fakes], column)
    values = sorted(set(units))
    if len(values) < 2:
        return train, None, None
    rng = numpy_rng(seed, "dski", "tune-holdout")
    chosen = values[int(rng.integers(len(values)))]
    held_fakes = [i for i, unit in zip(fakes, units) if unit == chosen]
    share = len(held_fakes) / max(len(fakes), 1)
    held_reals: list[int] = []
    for modality in sorted({r.modality for r in train.rows}):
        reals = [i for i, r in enumerate(train.rows) if r.label == 0 and r.modality == modality]
        take = min(len(reals) - 1, max(1, round(share * len(reals)))) if len(reals) > 1 else 0
        if take > 0:
            held_reals.extend(int(i) for i in rng.choice(reals, size=take, replace=False))
    held = set(held_fakes) | set(held_reals)
    rest = [i for i in range(len(train)) if i not in held]
    return train.subset(rest), train.subset(sorted(held)), chosen


def _holdout_units(fakes: Sequence[Any], column: str) -> list[str]:
    """The name of each fake row's hold-out unit: its ``column`` value, or, by ``network``, the ``+``-joined ids
    of the networks linked to it through fakes that share an id (blank: a unit of its own)."""
    if column != "network":
        return [str(getattr(r, column)) for r in fakes]
    ids: dict[str, set[str]] = {}
    for row in fakes:
        ids.setdefault(row.network, set()).update(row.networks)
    name = {}
    for group in linked_groups(ids):
        for value in group:
            name[value] = "+".join(sorted(set().union(*(ids[v] for v in group))))
    return [name[r.network] for r in fakes]


def tuning_split(detector: "DSKIBase", train: ImageSet, val: ImageSet | None,
                 seed: int) -> tuple[ImageSet, ImageSet | None, str]:
    """What stage 1 trains on, what tuning uses, and a line saying which (recorded in ``train_info``)."""
    mode = detector.config.tune_holdout
    if mode == "none":
        return train, None, "no tuning (defaults)"
    if mode == "val":
        usable = val if val is not None and len(val) and len(np.unique(val.labels)) == 2 else None
        return train, usable, "validation split" if usable is not None else "no usable validation split"
    fallback = ""
    if mode == "network" and not any(getattr(r, "network", "") for r in train.rows if r.label == 1):
        mode, fallback = "generator", " (the manifest records no networks)"
    rest, held, value = holdout_split(train, mode, seed)
    if held is None or len(np.unique(held.labels)) < 2:
        return train, None, f"no {mode} to hold out (fewer than 2 with fakes){fallback}"
    return rest, held, f"held-out {mode} {value!r} of the training data{fallback}"


def optimizer_for(detector: "DSKIBase") -> torch.optim.Optimizer:
    """AdamW: weight decay ``noise_weight_decay`` on the noise branch (embedding, cross-attention, gates) only."""
    cfg = detector.config
    noise, rest = [], []
    for name, param in detector.net.named_parameters():
        if not param.requires_grad:
            continue
        is_noise = name.startswith("cdfa.noise.") or ".cross." in name or name.endswith(".gate")
        (noise if is_noise else rest).append(param)
    groups = [{"params": rest, "weight_decay": 0.0}]
    if noise:
        groups.append({"params": noise, "weight_decay": cfg.noise_weight_decay})
    return torch.optim.AdamW(groups, lr=cfg.lr)


def train_stage1(detector: "DSKIBase", train: ImageSet, tune: ImageSet | None, ctx: FitContext) -> dict[str, Any]:
    """FatFormer's recipe (Adam, step decay) over CE on image-text logits (+ contrastive), fixed epoch count.

    With ``average_last_fraction`` the mean of the last epochs' weights is kept; otherwise, with a tuning
    hold-out and ``select_best_epoch``, the weights of the epoch with the best hold-out stage-1 AUC (the
    run still trains every epoch, so ablations train equally long). Each epoch is the shared
    ``engine.training.run_epoch`` with a batch-level loss: the prompts need each image's
    modality (``batch.modalities``).
    """
    cfg = detector.config
    if cfg.max_grad_norm < 0:
        raise ConfigError(f"max_grad_norm must be >= 0 (0: no clipping), not {cfg.max_grad_norm}")
    optimizer = optimizer_for(detector)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.lr_decay_every), gamma=cfg.lr_decay)
    batch_size = min(ctx.batch_size_for(cfg.batch_size), max(1, len(train)))
    epochs = ctx.epochs_for(cfg.epochs)
    info: dict[str, Any] = {"losses": [], "epochs_planned": epochs, "holdout_stage1_auc": [], "grad_norms": []}
    best_auc, best_state = -1.0, None
    averaged = averaged_epoch_count(epochs, cfg.average_last_fraction)
    average = WeightAverage(detector.net, first_epoch=epochs - averaged) if averaged else None
    try:
        for epoch in ctx.epoch_range(epochs, detector.name):
            detector.net.train()
            loader = ctx.loader(train, detector.train_transform, batch_size, shuffle=True,
                                drop_last=len(train) > batch_size, epoch_offset=epoch)
            norms: list[float] = []
            info["losses"].append(_train_epoch(detector, loader, optimizer, ctx, epoch, norms))
            info["grad_norms"].append(_norm_summary(norms))
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            if average is not None:
                average.update(epoch)
            detector.net.eval()
            detector.prompts.clear_cache()
            if tune is not None and cfg.select_best_epoch:
                auc = detector.stage1_auc(tune, ctx)
                info["holdout_stage1_auc"].append(auc)
                if auc is not None and auc > best_auc and average is None:
                    best_auc, best_state = auc, copy.deepcopy(detector.net.state_dict())
                    info["best_epoch"] = epoch + 1
            aucs = info["holdout_stage1_auc"]
            norms_seen = info["grad_norms"][-1] or {}
            ctx.log_epoch(detector.name, epoch + 1, epochs, loss=info["losses"][-1], lr=lr,
                          val_auc=aucs[-1] if len(aucs) == epoch + 1 else None,
                          grad_norm=norms_seen.get("median"), grad_norm_max=norms_seen.get("max"))
            if ctx.out_of_time() and epoch + 1 < epochs:
                log.warning("DSKI: time budget spent after epoch %d of %d", epoch + 1, epochs)
                info["stopped_by_budget"] = True
                break
    finally:
        detector.net.eval()
        detector.prompts.clear_cache()
    aucs = [a for a in info["holdout_stage1_auc"] if a is not None]
    if tune is not None and aucs:
        info["holdout_chance_auc"] = chance_auc(tune.labels, len(aucs), cfg.holdout_significance)
        info["holdout_informative"] = max(aucs) > info["holdout_chance_auc"]
    if average is not None:
        return _keep_average(detector, average, tune, ctx, info)
    if best_state is not None and info.get("holdout_informative", True):
        detector.net.load_state_dict(best_state)
        detector.prompts.clear_cache()
    elif best_state is not None:
        log.info("DSKI: the tuning hold-out is at chance (best stage-1 AUC %.3f <= %.3f); keeping the last epoch",
                 max(aucs), info["holdout_chance_auc"])
        info["best_epoch"] = len(info["losses"])
    info["epochs_trained"] = len(info["losses"])
    return info


def _norm_summary(norms: list[float]) -> dict[str, float] | None:
    """An epoch's gradient norms before clipping: median and max of the finite ones, and how many were not
    finite (fp16 overflow steps the grad scaler skipped), for train_info and mfx.log (where a clip bites)."""
    values = np.asarray(norms, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    summary = {"median": float(f"{np.median(finite):.4g}"), "max": float(f"{finite.max():.4g}")}
    if len(finite) < len(values):
        summary["not_finite"] = int(len(values) - len(finite))
    return summary


def averaged_epoch_count(epochs: int, fraction: float) -> int:
    """How many of the last epochs weight averaging covers: ``fraction`` of them, at least one (0: none)."""
    return 0 if fraction <= 0 else min(epochs, max(1, round(fraction * epochs)))


class WeightAverage:
    """Running mean of the trainable weights after each epoch from ``first_epoch`` (0-based) on (torch's
    ``AveragedModel``).

    Why (stochastic weight averaging; Izmailov et al. 2018, and SWAD for unseen domains, Cha et al. 2021):
    at the tiny preset's learning rate the epochs' weights scatter around a flat region, and the
    hold-out AUC of one epoch's weights swings with them (0.59 -> 0.71 -> 0.96 between neighbouring
    epochs); picking the best of those draws on a small hold-out is itself noisy. The mean of the late
    epochs' weights sits nearer the centre of that region. No batch-norm statistics to refresh: CLIP's
    tower uses layer norm, and only adapters and prompt context are averaged.
    """

    def __init__(self, net: torch.nn.Module, first_epoch: int):
        self.net = net
        self.first_epoch = max(0, first_epoch)
        self.average: AveragedModel | None = None
        self.count = 0

    def update(self, epoch: int) -> None:
        if epoch < self.first_epoch:
            return
        if self.average is None:  # copied only when the window opens: no copy before it is needed
            self.average = AveragedModel(self.net, use_buffers=True)
        self.average.update_parameters(self.net)
        self.count += 1

    def load_into_net(self) -> bool:
        """Replace the net's weights by the mean (``False``: no epoch was averaged, e.g. a budget stop)."""
        if self.average is None:
            return False
        self.net.load_state_dict(self.average.module.state_dict())
        return True


def _keep_average(detector: "DSKIBase", average: WeightAverage, tune: ImageSet | None, ctx: FitContext,
                  info: dict[str, Any]) -> dict[str, Any]:
    """Finish a weight-averaged run: the mean weights replace the last epoch's; their hold-out AUC is recorded."""
    info["epochs_trained"] = len(info["losses"])
    if average.load_into_net():
        detector.net.eval()
        detector.prompts.clear_cache()
        info["averaged_epochs"] = [average.first_epoch + 1, average.first_epoch + average.count]
        if tune is not None:
            info["holdout_stage1_auc_averaged"] = detector.stage1_auc(tune, ctx)
    else:
        log.warning("DSKI: no epoch reached the averaging window (from epoch %d); keeping the last epoch",
                    average.first_epoch + 1)
    info["best_epoch"] = len(info["losses"])
    return info


def chance_auc(labels: np.ndarray, comparisons: int, significance: float) -> float:
    """The AUC a hold-out must beat to be told from chance: the one-sided ``significance`` quantile of an AUC of
    random scores (normal approximation, variance ``(n1 + n0 + 1) / (12 n1 n0)``), Bonferroni over
    ``comparisons`` (the best of several epochs is the largest of several draws). ``significance`` 0: -inf
    (every hold-out is trusted)."""
    if significance <= 0:
        return float("-inf")
    labels = np.asarray(labels)
    fakes, reals = int((labels == 1).sum()), int((labels == 0).sum())
    spread = np.sqrt((fakes + reals + 1) / (12.0 * fakes * reals))
    z = NormalDist().inv_cdf(1.0 - significance / max(1, comparisons))
    return float(0.5 + z * spread)


def _train_epoch(detector: "DSKIBase", loader, optimizer, ctx: FitContext, epoch: int,
                 grad_norms: list[float]) -> float:
    """One pass of stage 1. The adapters run inside the frozen backbone's forward, not through one
    module's ``forward``, so under ``torchrun`` the gradients are averaged by hand (the DDP rule)."""
    return run_epoch(None, loader, optimizer, ctx, description=f"dski epoch {epoch + 1}",
                     max_grad_norm=detector.config.max_grad_norm, grad_norms=grad_norms,
                     batch_loss=lambda batch: stage1_loss(detector, batch.inputs, batch.labels, batch.modalities))


def stage1_loss(detector: "DSKIBase", inputs: torch.Tensor, labels: torch.Tensor,
                modalities: Sequence[str]) -> torch.Tensor:
    """CE over image-text logits for the images' modalities and for the generic prompts, + contrastive."""
    cfg = detector.config
    labels = labels.to(detector.device).long()
    embeddings = detector.embed(inputs)
    loss = F.cross_entropy(detector.clip_logits(embeddings, detector.prompt_modalities(modalities, len(labels))),
                           labels)
    if cfg.generic_loss_weight > 0:
        generic = detector.clip_logits(embeddings, detector.prompt_modalities(None, len(labels)))
        loss = loss + cfg.generic_loss_weight * F.cross_entropy(generic, labels)
    if cfg.contrastive_weight > 0:
        loss = loss + cfg.contrastive_weight * supervised_contrastive(embeddings, labels, cfg.contrastive_temperature)
    return loss


def supervised_contrastive(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon (Khosla et al. 2020) on unit embeddings: pull same-label images together, push others apart."""
    n = len(labels)
    if n < 2:
        return embeddings.sum() * 0.0
    similarities = embeddings @ embeddings.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    similarities = similarities.masked_fill(self_mask, float("-inf"))
    log_prob = similarities - torch.logsumexp(similarities, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positives.sum(1)
    has_positive = counts > 0
    if not bool(has_positive.any()):
        return embeddings.sum() * 0.0
    summed = log_prob.masked_fill(~positives, 0.0).sum(1)
    return -(summed[has_positive] / counts[has_positive]).mean()
