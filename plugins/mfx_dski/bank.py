"""DSKI's MFRM bank in use: building it from training images, tuning the fusion, stage-wise AUCs.

The formulas live in :mod:`mfx_dski.mfrm`; this module feeds them a detector's
embeddings. Tuning runs on dense similarity matrices (exactly what
``faiss-flat`` computes), so every descriptor weight of the grid is tried
without building a bank per weight; the real bank is built once, with the
weight chosen.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medforensics_core.data.dataset import ImageSet
from medforensics_core.engine.context import FitContext
from medforensics_core.engine.distributed import gather_tensor_rows

from . import mfrm
from .training import chance_auc

if TYPE_CHECKING:
    from .detector import DSKIBase

EVAL_BATCH = 64


@dataclasses.dataclass
class Embedded:
    """What DSKI computes for a labelled image set: embeddings, descriptors, stage-1 probabilities, labels."""

    embeddings: np.ndarray
    descriptors: np.ndarray | None
    stage1: np.ndarray
    labels: np.ndarray
    modalities: list[str]
    inconsistency: np.ndarray | None = None
    """Raw local-inconsistency scores (:mod:`mfx_dski.inconsistency`), ``None`` when the detector has none."""

    def vectors(self, weight: float) -> np.ndarray:
        """The bank vectors with descriptor weight ``weight``: ``normalise([e, w d])``."""
        if self.descriptors is None or weight <= 0:
            return self.embeddings
        joined = np.concatenate([self.embeddings, weight * self.descriptors], axis=1)
        return joined / np.linalg.norm(joined, axis=1, keepdims=True).clip(min=1e-12)

    def subset(self, indices: list[int]) -> "Embedded":
        """The rows ``indices``, in that order."""
        pick = np.asarray(indices, dtype=np.int64)
        return Embedded(self.embeddings[pick], None if self.descriptors is None else self.descriptors[pick],
                        self.stage1[pick], self.labels[pick], [self.modalities[i] for i in pick],
                        None if self.inconsistency is None else self.inconsistency[pick])


@torch.no_grad()
def embed_imageset(detector: "DSKIBase", images: ImageSet, ctx: FitContext | None = None) -> Embedded:
    """Embeddings, descriptors and stage-1 probabilities of every image (each with its own modality's prompts).

    Under ``torchrun`` each rank embeds its shard once and the shards are gathered, so every
    rank holds every row, in the image set's order.
    """
    ctx = ctx or FitContext(device=detector.device)
    loader = ctx.loader(images, detector.preprocess, EVAL_BATCH, shuffle=False)
    embeddings, descriptors, probs, local, seen = [], [], [], [], []
    for batch in loader:
        encoded = detector.encode_all(batch.inputs)
        probs.append(torch.from_numpy(detector.stage1_probability(encoded.embeddings, batch.modalities)))
        embeddings.append(encoded.embeddings.float().cpu())
        if encoded.descriptors is not None:
            descriptors.append(encoded.descriptors.float().cpu())
        if encoded.inconsistency is not None:
            local.append(encoded.inconsistency.float().cpu()[:, None])
        seen.append(batch.indices.numpy())
    dim = detector.backbone.embed_dim
    if not embeddings:
        return Embedded(np.zeros((0, dim), np.float32), None, np.zeros(0), np.asarray(images.labels), [])
    index, total = np.concatenate(seen), len(images)

    def gathered(parts: list[torch.Tensor]) -> np.ndarray:
        return gather_tensor_rows(torch.cat(parts), index, total, ctx.world_size).numpy()

    return Embedded(gathered(embeddings), gathered(descriptors) if descriptors else None, gathered(probs),
                    np.asarray(images.labels), [row.modality for row in images.rows],
                    gathered(local)[:, 0] if local else None)


def build(detector: "DSKIBase", support: Embedded, rows: list[dict[str, Any]]) -> None:
    """A fresh bank holding ``support`` with the detector's current descriptor weight."""
    detector.bank = detector.new_bank()
    if len(support.labels):
        detector.bank.add(support.vectors(detector.fusion.descriptor_weight).astype(np.float32), support.labels, rows)
    detector.reset_bank_warning()


def _neighbours(query: Embedded, support: Embedded, weight: float, k: int, same_modality: bool) -> mfrm.Neighbours:
    embed_sims = query.embeddings @ support.embeddings.T
    desc_sims = (query.descriptors @ support.descriptors.T
                 if query.descriptors is not None and support.descriptors is not None else None)
    sims = mfrm.combined_similarity(embed_sims, desc_sims, weight)
    if same_modality:
        other = np.asarray(query.modalities, dtype=object)[:, None] != np.asarray(support.modalities, dtype=object)
        sims = np.where(other, -np.inf, sims)
    found = mfrm.exact_neighbours(sims, support.labels, k)
    empty = ~np.isfinite(found.similarities)
    return mfrm.Neighbours(np.where(empty, 0.0, found.similarities), np.where(empty, -1, found.labels))


def tune(detector: "DSKIBase", holdout: Embedded, support: Embedded) -> dict[str, Any]:
    """Pick (alpha, beta, descriptor weight) on the hold-out against a bank of ``support``; stage-wise AUCs."""
    cfg = detector.config
    weights = sorted(set(cfg.descriptor_grid) | {detector.fusion.descriptor_weight}) \
        if detector.uses_descriptor() else [0.0]
    neighbours = {w: _neighbours(holdout, support, w, cfg.top_k, cfg.same_modality) for w in weights}
    alphas, leads = alphas_for(detector, holdout)
    if leads:
        detector.fusion = dataclasses.replace(detector.fusion, alpha=alphas[0])
    default = detector.fusion if detector.fusion.descriptor_weight in neighbours else \
        mfrm.Fusion(detector.fusion.alpha, detector.fusion.beta, 0.0)
    best = mfrm.tune_fusion(holdout.stage1, holdout.labels, neighbours, alphas, cfg.beta_grid, default)
    if best is None:
        return {}
    # judged by the fused AUC itself: retrieval may rank a hold-out that stage 1 cannot (then tuning is informed)
    candidates = 1 + len(neighbours) * len(alphas) * len(cfg.beta_grid)
    chance = chance_auc(holdout.labels, candidates, cfg.holdout_significance)
    if best[1] <= chance:
        return {**untuned(detector, holdout, support), "chance_auc": chance, "retrieval_leads": leads}
    chosen = neighbours[best[0].descriptor_weight]
    shift_of = inconsistency_shifts(detector, holdout)
    grid = sorted(set(cfg.inconsistency_grid) | {cfg.inconsistency_weight})
    detector.fusion = dataclasses.replace(best[0], inconsistency_weight=pick_inconsistency_weight(
        holdout, chosen, best[0], shift_of, grid, cfg.inconsistency_tolerance))
    return {"fusion": dataclasses.asdict(detector.fusion), "retrieval_leads": leads,
            **stage_aucs(holdout.labels, holdout.stage1, chosen, detector.fusion, shift_of)}


def alphas_for(detector: "DSKIBase", holdout: Embedded) -> tuple[tuple[float, ...], bool]:
    """The evidence weights to tune over, and whether retrieval leads: when the kept stage 1 ranks the hold-out
    network no better than chance (one-sided ``holdout_significance``), only the grid's largest alpha.

    Why: a stage 1 that cannot tell an unseen network's fakes from reals adds only noise on the next unseen
    network, and the fused AUC on such a hold-out is too weak to say how little of it to keep; MFRM is the
    part meant to carry unseen generators (the largest-alpha tie-break of :func:`mfrm.tune_fusion`, taken
    one step further). Before this rule, ablations whose stage 1 is at chance everywhere (``-no-noise``,
    ``-no-cdfa``) chose alpha 8 on most hold-outs, but 0.5-2 on the inpainting network, and then scored
    0.67-0.75 on a held-out super-resolution network against 0.91-0.93 for the other seeds.
    """
    cfg = detector.config
    grid = tuple(cfg.alpha_grid)
    if not cfg.retrieval_leads_at_chance or not grid:
        return grid, False
    auc = mfrm.auc_or_none(holdout.labels, holdout.stage1)
    at_chance = auc is None or auc <= chance_auc(holdout.labels, 1, cfg.holdout_significance)
    return ((max(grid),), True) if at_chance else (grid, False)


def inconsistency_shifts(detector: "DSKIBase", embedded: Embedded):
    """``weight -> logit shift`` of each image of ``embedded``; ``None`` when the detector has no fitted score."""
    z = detector.inconsistency_z(embedded.inconsistency, embedded.modalities)
    return None if z is None else (lambda weight: weight * z)


def pick_inconsistency_weight(holdout: Embedded, neighbours: mfrm.Neighbours, fusion: mfrm.Fusion, shift_of,
                              grid, tolerance: float) -> float:
    """The largest weight of ``grid`` whose hold-out AUC is within ``tolerance`` of the fusion without it.

    Why the largest that costs (almost) nothing, not the best: the hold-out is a whole-image
    generator, and a partial fake (the case the score is for) is never in it; the hold-out can
    only say how much of the score a whole-image detector tolerates. Same spirit as the
    largest-alpha tie-break of :func:`mfrm.tune_fusion`.
    """
    def auc(weight: float) -> float:
        fused = mfrm.fused_probability(holdout.stage1, neighbours, fusion.alpha, fusion.beta, shift_of(weight))
        return float(mfrm.auc_or_none(holdout.labels, fused) or 0.0)

    if shift_of is None:  # no fitted score: a weight would change nothing, so none is claimed
        return 0.0
    floor = auc(0.0) - tolerance
    return max([0.0] + [float(w) for w in grid if w > 0 and auc(float(w)) >= floor])


def untuned(detector: "DSKIBase", holdout: Embedded, support: Embedded) -> dict[str, Any]:
    """The default fusion kept (no candidate beats chance on the hold-out, so it cannot choose one); its stage-wise
    AUCs on the hold-out."""
    neighbours = _neighbours(holdout, support, detector.fusion.descriptor_weight, detector.config.top_k,
                             detector.config.same_modality)
    return {"fusion": dataclasses.asdict(detector.fusion), "tuned": False,
            **stage_aucs(holdout.labels, holdout.stage1, neighbours, detector.fusion,
                         inconsistency_shifts(detector, holdout))}


def stage_aucs(labels: np.ndarray, stage1: np.ndarray, neighbours: mfrm.Neighbours,
               fusion: mfrm.Fusion, shift_of=None) -> dict[str, float | None]:
    """AUC of stage 1 alone, of the retrieval evidence alone (``F - R``), and of the fused score; with a fitted
    local-inconsistency score (``shift_of``) also the score alone and the fused score without it, as the
    engine reports them for a test set."""
    def fused(shift) -> float | None:
        return mfrm.auc_or_none(labels, mfrm.fused_probability(stage1, neighbours, fusion.alpha, fusion.beta, shift))

    aucs = {"stage1_auc": mfrm.auc_or_none(labels, stage1),
            "retrieval_auc": mfrm.auc_or_none(labels, mfrm.evidence(neighbours, fusion.beta)),
            "fused_auc": fused(0.0 if shift_of is None else shift_of(fusion.inconsistency_weight))}
    if shift_of is not None:
        aucs["inconsistency_auc"] = mfrm.auc_or_none(labels, shift_of(1.0))
        aucs["fused_without_inconsistency_auc"] = fused(0.0)
    return aucs


def row_meta(row: Any) -> dict[str, Any]:
    return {"label": int(row.label), "modality": row.modality, "generator": row.generator,
            "source": row.source, "path": row.path}


def concat(parts: list[Embedded]) -> Embedded:
    """One :class:`Embedded` of several (e.g. the training rest and the tuning hold-out)."""
    descriptors = [p.descriptors for p in parts]
    local = [p.inconsistency for p in parts]
    return Embedded(np.concatenate([p.embeddings for p in parts]),
                    np.concatenate(descriptors) if all(d is not None for d in descriptors) else None,
                    np.concatenate([p.stage1 for p in parts]), np.concatenate([p.labels for p in parts]),
                    [m for p in parts for m in p.modalities],
                    np.concatenate(local) if all(x is not None for x in local) else None)
