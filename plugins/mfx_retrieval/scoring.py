"""Turning neighbours into a fake probability, shared by DSKI's MFRM and UnivFD's nearest-neighbour variant.

One formula in one place: a similarity-weighted vote of the top-k neighbours'
labels with softmax weights ``exp(s_i / T) / sum_j exp(s_j / T)``. This is
Tip-Adapter's affinity ``exp(-beta (1 - s))`` with ``beta = 1 / T``, normalised
over the k neighbours so the result is a probability; ``k = 1`` gives the
nearest neighbour's label (UnivFD-NN), a small ``T`` approaches a majority of
the closest, a large ``T`` a plain majority vote.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from medforensics_core.errors import CheckpointError


def knn_fake_probability(similarities: np.ndarray, neighbour_labels: np.ndarray, temperature: float = 0.1,
                         empty_value: float = 0.5) -> np.ndarray:
    """Probability that each query is fake from its neighbours, shape ``(n,)``.

    ``similarities`` and ``neighbour_labels`` are ``(n, k)`` (labels 0 real /
    1 fake, -1 for a slot the bank could not fill, as returned with index -1 by
    :meth:`Retriever.search`). Unfilled slots get no weight; a query with no
    neighbour at all gets ``empty_value`` (no evidence either way).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    sims = np.asarray(similarities, dtype=np.float64)
    labels = np.asarray(neighbour_labels)
    if sims.ndim == 1:
        sims, labels = sims[:, None], labels[:, None]
    if sims.shape != labels.shape:
        raise ValueError(f"similarities {sims.shape} and labels {labels.shape} differ in shape")
    valid = (labels >= 0) & np.isfinite(sims)
    logits = np.where(valid, sims / temperature, -np.inf)
    top = np.max(logits, axis=1, keepdims=True)
    has_any = np.isfinite(top[:, 0])
    weights = np.where(valid, np.exp(logits - np.where(np.isfinite(top), top, 0.0)), 0.0)
    totals = weights.sum(axis=1)
    votes = (weights * (labels == 1)).sum(axis=1)
    return np.where(has_any, votes / np.where(has_any, totals, 1.0), empty_value)


def retrieval_fake_probability(retriever: Any, vectors: np.ndarray, k: int, temperature: float = 0.1,
                               empty_value: float = 0.5) -> np.ndarray:
    """Search ``retriever`` for ``vectors`` and fuse the top-``k`` labels with :func:`knn_fake_probability`."""
    similarities, indices = retriever.search(vectors, k)
    return knn_fake_probability(similarities, bank_labels(retriever, indices), temperature, empty_value)


def bank_labels(retriever: Any, indices: np.ndarray) -> np.ndarray:
    """Labels of the bank rows named by search ``indices`` (same shape), -1 where the index is -1."""
    indices = np.asarray(indices, dtype=np.int64)
    stored = np.asarray(retriever.labels, dtype=np.int64)
    if len(stored) == 0:
        return np.full(indices.shape, -1, dtype=np.int64)
    return np.where(indices >= 0, stored[np.clip(indices, 0, len(stored) - 1)], -1)


def check_compatible(retriever: Any, expected_info: Mapping[str, Any]) -> None:
    """Refuse a bank built by another model: every key of ``expected_info`` must match ``retriever.info``.

    Raises :class:`~medforensics_core.errors.CheckpointError` with one line
    naming both, e.g. a bank of ViT-L/14 features loaded into a ViT-B/32 detector.
    """
    bank_info = dict(getattr(retriever, "info", {}) or {})
    mismatched = sorted(key for key, value in expected_info.items() if bank_info.get(key) != value)
    if mismatched:
        bank = {key: bank_info.get(key) for key in mismatched}
        wanted = {key: expected_info[key] for key in mismatched}
        raise CheckpointError(f"retriever bank built with {bank} cannot be used with {wanted} "
                              f"(mismatch in {', '.join(mismatched)})")
