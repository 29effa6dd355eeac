"""MFRM — the medical forensic retrieval module: a labelled bank of adapted embeddings, and Tip-Adapter fusion.

The retriever (asked for by registry name), bank labels, the compatibility
check and bank persistence live in the core (:mod:`medforensics_core.retrieval`),
shared with UnivFD-NN. What is DSKI's own is here:
which training images go into the bank, how neighbours become evidence, how
that evidence is fused with the stage-1 probability, and how the fusion is tuned.

Evidence (Tip-Adapter, Zhang et al. 2022): each of the ``k`` nearest references
contributes an affinity ``exp(-beta (1 - cos))`` to its class; ``F`` and ``R``
are the fake and real affinity sums divided by ``k``. The fused score is
``logit(p_stage1) + alpha (F - R)``. The affinity decays with distance, so a
query far from every reference (an unseen generator the bank knows nothing
about) adds almost nothing and stage 1 stays in charge; a softmax vote over the
top k would be just as confident for far neighbours as for near ones.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Any, Mapping, Sequence

import numpy as np

from medforensics_core.interfaces import Retriever
from medforensics_core.lazy import lazy_module
from medforensics_core.retrieval import bank_labels

metrics = lazy_module("sklearn.metrics")

log = logging.getLogger(__name__)
_EPS = 1e-6


@dataclasses.dataclass
class Neighbours:
    """Top-k search result of a batch of queries: similarities and neighbour labels, each ``(n, k)`` (-1 = empty)."""

    similarities: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass
class Fusion:
    """The tuned fusion: evidence weight ``alpha``, affinity sharpness ``beta``, descriptor weight, and the weight
    of the local-inconsistency score (:mod:`mfx_dski.inconsistency`; 0 = not used)."""

    alpha: float
    beta: float
    descriptor_weight: float
    inconsistency_weight: float = 0.0


def bank_group(row: Any) -> tuple[int, str, str]:
    """The group ``bank_shots`` counts references in: (label, modality, generator)."""
    return int(row.label), row.modality, row.generator


def support_indices(rows: Sequence[Any], shots: int, rng: np.random.Generator,
                    banked: Mapping[tuple[int, str, str], int] | None = None) -> list[int]:
    """Rows that enter the bank: all of them (``shots`` 0) or ``shots`` per (label, modality, generator), less
    the ``banked`` references a group already has (rows added after a first bank, e.g. the tuning hold-out)."""
    if shots <= 0:
        return list(range(len(rows)))
    groups: dict[tuple[int, str, str], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(bank_group(row), []).append(i)
    chosen: list[int] = []
    for key in sorted(groups):
        members = groups[key]
        take = min(shots - (banked or {}).get(key, 0), len(members))
        if take <= 0:
            continue
        chosen.extend(int(i) for i in rng.choice(members, size=take, replace=False))
    return sorted(chosen)


def search(bank: Retriever, features: np.ndarray, k: int, modalities: Sequence[str] | None = None) -> Neighbours:
    """Top-``k`` neighbours of ``features`` with their labels; with ``modalities``, only references of the same one.

    Restricting to a modality searches the whole bank and keeps each query's
    ``k`` best of its own modality (banks are thousands of vectors, not millions).
    """
    if modalities is None:
        similarities, indices = bank.search(features, k)
        return Neighbours(similarities, bank_labels(bank, indices))
    similarities, indices = bank.search(features, len(bank))
    stored = np.array([m.get("modality", "") for m in bank.meta] or [""], dtype=object)
    same = (indices >= 0) & (stored[np.clip(indices, 0, None)] == np.asarray(modalities, dtype=object)[:, None])
    order = np.argsort(~same, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(same, order, 1)
    sims = np.where(kept, np.take_along_axis(similarities, order, 1), 0.0)
    labels = np.where(kept, bank_labels(bank, np.take_along_axis(indices, order, 1)), -1)
    return padded(Neighbours(sims, labels), k)


def padded(neighbours: Neighbours, k: int) -> Neighbours:
    """``k`` columns, the slots a small bank cannot fill holding similarity 0 and label -1 (no affinity).

    Why: :func:`evidence` divides by the number of columns, and tuning (an exact search over the
    tuning bank), the test-time search and a modality-restricted search must divide by the same
    ``top_k``, or the alpha tuned on a bank smaller than ``top_k`` would not be the alpha applied.
    """
    n, have = neighbours.similarities.shape[0], neighbours.similarities.shape[1]
    if have >= k:
        return neighbours
    return Neighbours(np.hstack([neighbours.similarities, np.zeros((n, k - have))]),
                      np.hstack([neighbours.labels, np.full((n, k - have), -1)]))


def evidence(neighbours: Neighbours, beta: float) -> np.ndarray:
    """``F - R``: fake minus real affinity ``exp(-beta (1 - cos))``, summed over the neighbours and divided by k."""
    sims = np.asarray(neighbours.similarities, dtype=np.float64)
    labels = np.asarray(neighbours.labels)
    affinity = np.where(labels >= 0, np.exp(-beta * (1.0 - sims)), 0.0)
    signed = np.where(labels == 1, affinity, -affinity)
    return signed.sum(axis=1) / max(sims.shape[1], 1)


def logit(probability: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probability, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def fused_probability(stage1: np.ndarray, neighbours: Neighbours, alpha: float, beta: float,
                      shift: np.ndarray | float = 0.0) -> np.ndarray:
    """``sigmoid(logit(stage1) + alpha (F - R) + shift)``; a query with no (or only far) neighbours keeps ``stage1``.

    ``shift`` is any further evidence in logits (DSKI: the weighted local-inconsistency score).
    """
    return 1.0 / (1.0 + np.exp(-(logit(stage1) + alpha * evidence(neighbours, beta) + shift)))


def exact_neighbours(query_sims: np.ndarray, bank_labels: np.ndarray, k: int) -> Neighbours:
    """Top-``k`` of a dense similarity matrix ``(n, bank)`` (what ``faiss-flat`` returns), for tuning; always ``k``
    columns (:func:`padded`)."""
    order = np.argsort(-query_sims, axis=1, kind="stable")[:, :k]
    return padded(Neighbours(np.take_along_axis(query_sims, order, 1), np.asarray(bank_labels)[order]), k)


def combined_similarity(embed_sims: np.ndarray, descriptor_sims: np.ndarray | None, weight: float) -> np.ndarray:
    """Cosine of ``[e, w d]`` vectors (e, d unit norm) from the two parts' cosines: ``(e.e' + w^2 d.d') / (1 + w^2)``."""
    if descriptor_sims is None or weight <= 0:
        return embed_sims
    return (embed_sims + weight**2 * descriptor_sims) / (1.0 + weight**2)


def auc_or_none(labels: np.ndarray, scores: np.ndarray) -> float | None:
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2 or not np.all(np.isfinite(scores)):
        return None
    return float(metrics.roc_auc_score(labels, scores))


def tune_fusion(stage1: np.ndarray, labels: np.ndarray, neighbours_for: Mapping[float, Neighbours],
                alphas: Sequence[float], betas: Sequence[float], default: Fusion) -> tuple[Fusion, float] | None:
    """The (alpha, beta, descriptor weight) with the best AUC on a labelled hold-out, and that AUC.

    ``neighbours_for`` maps each descriptor weight to the hold-out's neighbours
    under it. ``None`` when the hold-out cannot rank (one class only).

    Ties go to the **largest alpha** (then the default's beta and weight, then grid
    order). A tie means the hold-out cannot tell the candidates apart — typically
    stage 1 already ranks the held-out generator perfectly. Measured on the quick
    build (leave-one-generator-out, ae-bilinear and ae-pixelshuffle folds), that is
    exactly when stage 1 fails on the *next* unseen generator (stage-1 AUC 0.30 and
    0.83 against retrieval 0.73 and 0.93): stage 1 is the part that can memorise the
    training generators, while a reference far from a query adds nothing by
    construction, so leaning on retrieval costs little where stage 1 holds.
    """
    if len(np.unique(labels)) < 2:
        return None
    candidates = [default] + [Fusion(a, b, w) for w, a, b in
                              itertools.product(sorted(neighbours_for), sorted(alphas), sorted(betas))]
    scored = [(fusion, float(metrics.roc_auc_score(labels, fused_probability(
        stage1, neighbours_for[fusion.descriptor_weight], fusion.alpha, fusion.beta))))
        for fusion in candidates if fusion.descriptor_weight in neighbours_for]
    if not scored:
        return None
    top = max(auc for _, auc in scored)
    tied = [(fusion, auc) for fusion, auc in scored if auc >= top - 1e-9]
    largest = max(fusion.alpha for fusion, _ in tied)
    strongest = [(fusion, auc) for fusion, auc in tied if fusion.alpha == largest]
    recipe = [(fusion, auc) for fusion, auc in strongest
              if (fusion.beta, fusion.descriptor_weight) == (default.beta, default.descriptor_weight)]
    return (recipe or strongest)[0]
