"""Retrievers on faiss (``faiss-flat`` exact, ``faiss-hnsw`` approximate).

Detectors ask the registry for a retriever by name
(``get_registry().retriever("faiss-flat")``); what they do with a bank (the
kNN vote, bank labels, the compatibility check, bank persistence) lives once in
the core, :mod:`medforensics_core.retrieval`, and works with any registered
retriever. The helpers are re-exported here for code written against this
package's earlier API.
"""

from __future__ import annotations

from medforensics_core.hookspecs import hookimpl

from .banks import (MISSING_SIMILARITY, FaissBank, FaissFlatRetriever, FaissHnswRetriever, FlatConfig, HnswConfig,
                    normalised)
from medforensics_core.retrieval import (bank_labels, check_compatible, knn_fake_probability,
                                         retrieval_fake_probability)

__all__ = ["MISSING_SIMILARITY", "FaissBank", "FaissFlatRetriever", "FaissHnswRetriever", "FlatConfig", "HnswConfig",
           "normalised",
           "check_compatible", "knn_fake_probability", "bank_labels",
           "retrieval_fake_probability"]

RETRIEVERS = (FaissFlatRetriever, FaissHnswRetriever)


@hookimpl
def register_retrievers(register):
    for cls in RETRIEVERS:
        register(cls)
