"""MFRM — the medical forensic retrieval module: a labelled bank of adapted embeddings and its vote.

The retriever (asked for by registry name), the kNN vote, the compatibility
check and bank persistence live in the core (:mod:`medforensics_core.retrieval`),
so DSKI and UnivFD-NN score neighbours with one formula. What is DSKI's own is here: which training images go into the bank,
how the vote is fused with the stage-1 probability, and how the fusion is tuned.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from medforensics_core.interfaces import Retriever
from medforensics_core.retrieval import bank_labels, knn_fake_probability, new_bank  # noqa: F401 - new_bank re-exported

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Neighbours:
    """Top-k search result of a batch of queries: similarities and neighbour labels, each ``(n, k)``."""

    similarities: np.ndarray
    labels: np.ndarray


def support_indices(rows: Sequence[Any], shots: int, rng: np.random.Generator) -> list[int]:
    """Rows that enter the bank: all of them (``shots`` 0) or ``shots`` per (label, modality, generator)."""
    if shots <= 0:
        return list(range(len(rows)))
    groups: dict[tuple[int, str, str], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault((int(row.label), row.modality, row.generator), []).append(i)
    chosen: list[int] = []
    for key in sorted(groups):
        members = groups[key]
        take = min(shots, len(members))
        chosen.extend(int(i) for i in rng.choice(members, size=take, replace=False))
    return sorted(chosen)


def search(bank: Retriever, features: np.ndarray, k: int) -> Neighbours:
    """Top-``k`` neighbours of ``features`` with their labels (-1 in slots the bank cannot fill)."""
    similarities, indices = bank.search(features, k)
    return Neighbours(similarities, bank_labels(bank, indices))


def fused_probability(stage1: np.ndarray, neighbours: Neighbours, weight: float, temperature: float) -> np.ndarray:
    """``(1 - weight) * stage1 + weight * p_knn``; a query without neighbours keeps its stage-1 probability."""
    knn = knn_fake_probability(neighbours.similarities, neighbours.labels, temperature, empty_value=np.nan)
    knn = np.where(np.isnan(knn), stage1, knn)
    return (1.0 - weight) * stage1 + weight * knn


def tune_fusion(stage1: np.ndarray, neighbours: Neighbours, labels: np.ndarray, weights: Sequence[float],
                temperatures: Sequence[float], default: tuple[float, float]) -> tuple[float, float, float] | None:
    """The (weight, temperature) of the grid with the best AUC on a labelled set, and that AUC.

    ``None`` when the set cannot rank (one class only). Ties keep the default
    first, then the smaller weight, so tuning never moves away from the recipe
    without evidence.
    """
    if len(np.unique(labels)) < 2:
        return None
    candidates = [default, *sorted(itertools.product(weights, temperatures))]
    best: tuple[float, float, float] | None = None
    for weight, temperature in candidates:
        auc = float(roc_auc_score(labels, fused_probability(stage1, neighbours, weight, temperature)))
        if best is None or auc > best[2] + 1e-9:
            best = (float(weight), float(temperature), auc)
    return best
