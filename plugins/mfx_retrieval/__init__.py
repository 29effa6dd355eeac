"""Retrievers on faiss (``faiss-flat`` exact, ``faiss-hnsw`` approximate) and the shared kNN scoring.

Detectors ask the registry for a retriever by name
(``get_registry().retriever("faiss-flat")``) and use the helpers here to turn
neighbours into a fake probability (:func:`knn_fake_probability`) and to
refuse a bank built by another model (:func:`check_compatible`).
"""

from __future__ import annotations

from medforensics_core.hookspecs import hookimpl

from .banks import (MISSING_SIMILARITY, FaissBank, FaissFlatRetriever, FaissHnswRetriever, FlatConfig, HnswConfig,
                    normalised)
from .scoring import check_compatible, knn_fake_probability, bank_labels, retrieval_fake_probability

__all__ = ["MISSING_SIMILARITY", "FaissBank", "FaissFlatRetriever", "FaissHnswRetriever", "FlatConfig", "HnswConfig",
           "normalised",
           "check_compatible", "knn_fake_probability", "bank_labels",
           "retrieval_fake_probability"]

RETRIEVERS = (FaissFlatRetriever, FaissHnswRetriever)


@hookimpl
def register_retrievers(register):
    for cls in RETRIEVERS:
        register(cls)
