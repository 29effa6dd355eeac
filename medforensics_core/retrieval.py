"""Retrieval helpers shared by every detector with a reference bank, behind the :class:`Retriever` interface.

A bank is any registered :class:`~medforensics_core.interfaces.Retriever`
(``faiss-flat``, ``faiss-hnsw``... asked for by name); what detectors do with it
lives here, once:

* :func:`knn_fake_probability` — the neighbour vote: a softmax-weighted vote of
  the top-k labels, weights ``exp(s_i / T) / sum_j exp(s_j / T)`` (Tip-Adapter's
  affinity ``exp(-beta (1 - s))`` with ``beta = 1 / T``, normalised over the k
  neighbours). ``k = 1`` gives the nearest neighbour's label (UnivFD-NN), a
  small ``T`` approaches the closest's label, a large ``T`` a plain majority;
* :func:`bank_labels`, :func:`nearest_per_label` — reading a search result;
* :func:`check_compatible` — refusing a bank built by another model;
* :func:`new_bank`, :func:`bank_state`, :func:`restore_bank` — one checkpoint
  layout for a bank inside a detector checkpoint: tensors under ``bank.``, and
  one JSON entry ``{"retriever", "dim", "info", "config", "extra"}``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from .config import config_from_dict, config_to_dict
from .errors import CheckpointError
from .interfaces import Retriever

__all__ = ["BANK_PREFIX", "bank_labels", "bank_state", "check_compatible", "knn_fake_probability", "nearest_per_label",
           "new_bank", "restore_bank", "retrieval_fake_probability", "split_bank_tensors"]

#: Prefix of a bank's tensors inside a detector checkpoint.
BANK_PREFIX = "bank."


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


def retrieval_fake_probability(retriever: Retriever, vectors: np.ndarray, k: int, temperature: float = 0.1,
                               empty_value: float = 0.5) -> np.ndarray:
    """Search ``retriever`` for ``vectors`` and fuse the top-``k`` labels with :func:`knn_fake_probability`."""
    similarities, indices = retriever.search(vectors, k)
    return knn_fake_probability(similarities, bank_labels(retriever, indices), temperature, empty_value)


def bank_labels(retriever: Retriever, indices: np.ndarray) -> np.ndarray:
    """Labels of the bank rows named by search ``indices`` (same shape), -1 where the index is -1."""
    indices = np.asarray(indices, dtype=np.int64)
    stored = np.asarray(retriever.labels, dtype=np.int64)
    if len(stored) == 0:
        return np.full(indices.shape, -1, dtype=np.int64)
    return np.where(indices >= 0, stored[np.clip(indices, 0, len(stored) - 1)], -1)


def nearest_per_label(similarities: np.ndarray, labels: np.ndarray, label: int) -> np.ndarray:
    """Per query row, the similarity of the best-ranked neighbour with ``label`` (``-inf`` if none in the top k)."""
    hit = np.asarray(labels) == label
    rows = np.arange(len(hit))
    first = np.argmax(hit, axis=1)
    return np.where(hit[rows, first], np.asarray(similarities)[rows, first], -np.inf)


def check_compatible(retriever: Retriever, expected_info: Mapping[str, Any]) -> None:
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


def new_bank(retriever_name: str, dim: int | None, info: Mapping[str, Any],
             config: Mapping[str, Any] | None = None) -> Retriever:
    """An empty bank of the registered retriever ``retriever_name`` (its config restored from ``config``)."""
    from .plugins import get_registry

    cls = get_registry().retriever(retriever_name)
    retriever_config = config_from_dict(cls.config_class, config) if config else None
    return cls(retriever_config, dim=dim, info=dict(info))


def bank_state(bank: Retriever | None) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(tensors under BANK_PREFIX, JSON entry)`` of a bank for a detector checkpoint; ``({}, None)`` for none."""
    if bank is None:
        return {}, None
    tensors = {BANK_PREFIX + key: value for key, value in bank.state_tensors().items()}
    entry = {"retriever": bank.name, "dim": bank.dim, "info": dict(bank.info),
             "config": config_to_dict(bank.config), "extra": bank.extra_state()}
    return tensors, entry


def split_bank_tensors(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(the bank's tensors without prefix, every other tensor)`` of a checkpoint."""
    bank = {k[len(BANK_PREFIX):]: v for k, v in tensors.items() if k.startswith(BANK_PREFIX)}
    rest = {k: v for k, v in tensors.items() if not k.startswith(BANK_PREFIX)}
    return bank, rest


def restore_bank(tensors: Mapping[str, torch.Tensor], entry: Mapping[str, Any] | None,
                 expected_info: Mapping[str, Any], source: str = "checkpoint") -> Retriever | None:
    """The bank saved by :func:`bank_state` (``tensors`` without prefix), checked against ``expected_info``."""
    if entry is None:
        if tensors:
            raise CheckpointError(f"{source}: bank tensors without bank metadata")
        return None
    try:
        bank = new_bank(entry["retriever"], entry.get("dim"), entry.get("info", {}), entry.get("config"))
        bank.load_state_tensors(tensors, entry.get("extra", {}))
        check_compatible(bank, expected_info)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    except KeyError as exc:
        raise CheckpointError(f"{source}: bank metadata lacks {exc}") from None
    return bank
