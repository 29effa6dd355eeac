"""Datasets: manifests, folder indexers, image readers and group-aware splits.

:func:`open_dataset` is the one door every command uses to get a
:class:`~medforensics_core.data.manifest.Manifest` from what a user points at.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BadInputError
from .manifest import Manifest, ManifestRow, read_manifest, write_manifest
from .readers import IMAGE_SUFFIXES, LoadedImage, ReadLimits, count_frames, iter_frames, read_image

MANIFEST_NAME = "manifest.csv"

__all__ = ["open_dataset", "Manifest", "ManifestRow", "read_manifest", "write_manifest", "read_image",
           "iter_frames", "count_frames", "LoadedImage", "ReadLimits", "IMAGE_SUFFIXES", "MANIFEST_NAME"]


def open_dataset(path: str | os.PathLike, *, val: float = 0.1, test: float = 0.2, seed: int = 0) -> Manifest:
    """A manifest from a manifest CSV, a folder holding ``manifest.csv``, or a folder layout indexed on the fly.

    A folder layout without split folders gets group-aware splits
    (``val``/``test`` fractions, ``seed``; see :mod:`.splits`). Indexing on the
    fly hashes every file; run ``mfx data index`` once to keep the manifest.
    """
    path = Path(path)
    if path.is_file():
        return read_manifest(path)
    if not path.exists():
        raise BadInputError(path, "dataset not found (give a manifest CSV or a dataset folder)")
    if (path / MANIFEST_NAME).is_file():
        return read_manifest(path / MANIFEST_NAME)
    from .indexers import index_folder
    from .splits import assign_splits

    result = index_folder(path)
    rows = assign_splits(result.rows, val=val, test=test, seed=seed)
    given = {r.split for r in result.rows} - {""}
    made = "" if given else f"by source (val {val:g}, test {test:g} of the sources, seed {seed})"
    return Manifest(rows, path, splits_made=made)
