"""faiss-backed labelled vector banks: ``faiss-flat`` (exact) and ``faiss-hnsw`` (approximate).

Both store L2-normalised float32 vectors, so inner product *is* cosine
similarity; vectors are normalised on the way in (``add``) and on the way out
(``search``), whatever the caller passes. Labels (0 real, 1 fake) and optional
per-vector metadata rows (generator, modality, file...) are kept beside the
index in insertion order, so index ``i`` of a search result is row ``i``.

Why HNSW for large banks rather than IVF: HNSW needs no training pass, so a
bank can start empty and grow one reference at a time (MFRM's few-shot
adaptation adds a new generator's images to a trained model's bank), and its
recall is controlled at query time by ``ef_search`` alone. IVF would need a
k-means pass over a representative sample and a re-train when the data drift.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import faiss
import numpy as np
import torch

from medforensics_core.errors import CheckpointError
from medforensics_core.interfaces import Retriever

MISSING_SIMILARITY = -np.inf
"""Similarity reported for the slots of a search the bank cannot fill (index -1)."""


def _json_value(value: Any) -> Any:
    """Make a metadata value JSON-able (numpy scalars, paths); anything else becomes its string."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _jsonable_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({str(k): v for k, v in dict(row).items()}, default=_json_value))


def normalised(vectors: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(n, d)`` float32 C-contiguous copy with unit L2 rows (zero rows stay zero)."""
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().float().cpu().numpy()
    array = np.array(vectors, dtype=np.float32, copy=True, order="C")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"expected (n, d) vectors, got shape {array.shape}")
    faiss.normalize_L2(array)
    return array


class FaissBank(Retriever):
    """Shared bookkeeping of the faiss retrievers: labels, metadata, dims, search padding.

    Subclasses say how to build an empty index (:meth:`_new_index`) and how to
    persist it (:meth:`state_tensors` / :meth:`_index_from_tensors`).
    """

    def __init__(self, config: Any = None, dim: int | None = None, info: Mapping[str, Any] | None = None):
        super().__init__(config, dim=dim, info=info)
        self._labels = np.zeros(0, dtype=np.int64)
        self._meta: list[dict[str, Any]] = []
        self.index: faiss.Index | None = self._new_index(dim) if dim is not None else None

    # -- subclass hooks
    @abc.abstractmethod
    def _new_index(self, dim: int) -> faiss.Index:
        """An empty index for ``dim``-d unit vectors."""

    # -- Retriever API
    def add(self, vectors: np.ndarray | torch.Tensor, labels: Sequence[int] | np.ndarray,
            meta: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Add ``(n, d)`` vectors with their labels (and optional metadata rows, one per vector)."""
        array = normalised(vectors)
        label_array = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(label_array) != len(array):
            raise ValueError(f"{len(array)} vectors but {len(label_array)} labels")
        if meta is not None and len(meta) != len(array):
            raise ValueError(f"{len(array)} vectors but {len(meta)} metadata rows")
        if len(array) == 0:
            return
        self._ensure_index(array.shape[1])
        self.index.add(array)
        self._labels = np.concatenate([self._labels, label_array])
        rows = meta if meta is not None else [{} for _ in range(len(array))]
        self._meta.extend(_jsonable_row(row) for row in rows)

    def search(self, vectors: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine ``(similarities, indices)``, each ``(n, k)``, best first.

        Slots the bank cannot fill (fewer than ``k`` vectors, or an empty bank)
        hold index -1 and similarity ``-inf``.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = normalised(vectors)
        if self.dim is not None and queries.shape[1] != self.dim and len(queries):
            raise CheckpointError(f"retriever {self.name!r}: bank holds {self.dim}-d vectors, "
                                  f"queries are {queries.shape[1]}-d (features of another model?)")
        if self.index is None or len(self) == 0 or len(queries) == 0:
            return (np.full((len(queries), k), MISSING_SIMILARITY, dtype=np.float32),
                    np.full((len(queries), k), -1, dtype=np.int64))
        similarities, indices = self.index.search(queries, k, params=self._search_params(k))
        similarities = np.where(indices < 0, MISSING_SIMILARITY, similarities).astype(np.float32)
        return similarities, indices.astype(np.int64)

    def __len__(self) -> int:
        return int(self.index.ntotal) if self.index is not None else 0

    @property
    def labels(self) -> np.ndarray:
        return self._labels.copy()

    @property
    def meta(self) -> list[dict[str, Any]]:
        """Metadata rows in insertion order (empty dicts where none was given)."""
        return [dict(row) for row in self._meta]

    def extra_state(self) -> dict[str, Any]:
        has_meta = any(self._meta)
        return {"count": len(self), "meta": self._meta if has_meta else None}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], extra: Mapping[str, Any]) -> None:
        labels = tensors.get("labels")
        if labels is None:
            raise CheckpointError(f"retriever {self.name!r}: bank file has no 'labels' tensor")
        self._labels = labels.cpu().numpy().astype(np.int64)
        self.index = self._index_from_tensors(tensors) if self.dim is not None else None
        count = len(self)
        if count != len(self._labels) or count != int(extra.get("count", count)):
            raise CheckpointError(f"retriever {self.name!r}: bank holds {count} vectors but "
                                  f"{len(self._labels)} labels (damaged bank file)")
        meta = extra.get("meta")
        self._meta = [dict(row) for row in meta] if meta else [{} for _ in range(count)]
        if len(self._meta) != count:
            raise CheckpointError(f"retriever {self.name!r}: {len(self._meta)} metadata rows for {count} vectors")

    @abc.abstractmethod
    def _index_from_tensors(self, tensors: Mapping[str, torch.Tensor]) -> faiss.Index:
        """Rebuild the index from :meth:`state_tensors`, refusing anything that does not fit ``dim``."""

    # -- helpers
    def _ensure_index(self, dim: int) -> None:
        if self.dim is None:
            self.dim = int(dim)
        if dim != self.dim:
            raise CheckpointError(f"retriever {self.name!r}: bank holds {self.dim}-d vectors, "
                                  f"cannot add {dim}-d vectors (features of another model?)")
        if self.index is None:
            self.index = self._new_index(self.dim)

    def _search_params(self, k: int) -> faiss.SearchParameters | None:
        """Query-time parameters (HNSW's ef_search); none for exact search."""
        return None


@dataclasses.dataclass
class FlatConfig:
    """Exact search has no knobs: every query is compared with every stored vector."""


class FaissFlatRetriever(FaissBank):
    """Exact cosine search (``faiss.IndexFlatIP`` on unit vectors); the reference for small banks."""

    name: ClassVar[str] = "faiss-flat"
    description: ClassVar[str] = "exact cosine nearest neighbours (faiss IndexFlatIP on L2-normalised vectors)"
    config_class: ClassVar[type] = FlatConfig

    def _new_index(self, dim: int) -> faiss.Index:
        return faiss.IndexFlatIP(int(dim))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The stored unit vectors (plain float32, inspectable) and labels; the index is rebuilt on load."""
        vectors = self.index.reconstruct_n(0, len(self)) if len(self) else np.zeros((0, self.dim or 0), np.float32)
        return {"vectors": torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)),
                "labels": torch.from_numpy(self._labels.copy())}

    def _index_from_tensors(self, tensors: Mapping[str, torch.Tensor]) -> faiss.Index:
        vectors = tensors.get("vectors")
        if vectors is None or vectors.ndim != 2 or (len(vectors) and vectors.shape[1] != self.dim):
            shape = None if vectors is None else tuple(vectors.shape)
            raise CheckpointError(f"retriever {self.name!r}: bank vectors of shape {shape} do not fit dim {self.dim}")
        index = self._new_index(self.dim)
        if len(vectors):
            index.add(np.ascontiguousarray(vectors.float().numpy()))
        return index


@dataclasses.dataclass
class HnswConfig:
    """HNSW graph options (faiss names in brackets); defaults suit banks of up to millions of embeddings.

    Recall is bought at query time with ``ef_search`` alone, so a bank built
    once can be searched faster or more exactly without rebuilding it.
    """

    m: int = 32
    """Graph degree [M]: links per vector; more = better recall, more memory and a slower build."""
    ef_construction: int = 40
    """Candidate list while inserting [efConstruction] (faiss's default)."""
    ef_search: int = 256
    """Candidate list while searching [efSearch]; raised to k when k is larger."""


class FaissHnswRetriever(FaissBank):
    """Approximate cosine search on an HNSW graph (``faiss.IndexHNSWFlat``, inner product on unit vectors).

    Needs no training, so it can start empty and grow one reference at a
    time (few-shot additions to a trained bank), unlike IVF. Saved as
    ``faiss.serialize_index`` bytes in a uint8 tensor (the graph is not
    rebuilt on load, and no pickle is involved); the vectors live inside it.
    """

    name: ClassVar[str] = "faiss-hnsw"
    description: ClassVar[str] = "approximate cosine nearest neighbours on an HNSW graph (faiss IndexHNSWFlat)"
    config_class: ClassVar[type] = HnswConfig

    def _new_index(self, dim: int) -> faiss.Index:
        index = faiss.IndexHNSWFlat(int(dim), int(self.config.m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(self.config.ef_construction)
        index.hnsw.efSearch = int(self.config.ef_search)
        return index

    def _search_params(self, k: int) -> faiss.SearchParameters | None:
        return faiss.SearchParametersHNSW(efSearch=max(int(self.config.ef_search), int(k)))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.index is None:
            blob = np.zeros(0, dtype=np.uint8)
        else:
            blob = faiss.serialize_index(self.index)
        return {"index": torch.from_numpy(np.ascontiguousarray(blob, dtype=np.uint8)),
                "labels": torch.from_numpy(self._labels.copy())}

    def _index_from_tensors(self, tensors: Mapping[str, torch.Tensor]) -> faiss.Index:
        blob = tensors.get("index")
        if blob is None or blob.dtype != torch.uint8 or blob.ndim != 1 or len(blob) == 0:
            raise CheckpointError(f"retriever {self.name!r}: bank file has no serialised HNSW index")
        try:
            index = faiss.deserialize_index(blob.numpy())
        except RuntimeError as exc:
            raise CheckpointError(f"retriever {self.name!r}: damaged HNSW index ({str(exc).splitlines()[0]})") from None
        if not isinstance(index, faiss.IndexHNSWFlat) or index.d != self.dim:
            raise CheckpointError(f"retriever {self.name!r}: stored index is {type(index).__name__} of dim "
                                  f"{index.d}, expected IndexHNSWFlat of dim {self.dim}")
        return index
