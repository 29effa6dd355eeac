"""A torch Dataset over a manifest, with bad-file policy and an in-memory decode cache.

Images are decoded once and then served to every epoch and every detector of a
comparison: decoding is usually the slowest step on a 2-core machine. An 8-bit
source (PNG, JPEG, 8-bit DICOM) is cached as uint8, so a few thousand crops cost
megabytes; anything finer (12/16-bit CT, MR, float NIfTI) stays float32, so the
detector sees exactly what ``read_image`` returned and ``mfx predict``, the
Python API and training agree. Bad files follow ``on_bad``: ``fail``
stops with one line naming the file, ``skip`` leaves it out and lists it in
:attr:`ImageSet.skipped` so the report can repeat it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..errors import BadInputError, MfxError
from .manifest import Manifest, ManifestRow
from .readers import read_image

log = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor], torch.Tensor]


MIN_SIDE = 8
"""Smallest side (px) of a dataset image: smaller ones are bad files, so one 1x1 image cannot fail a detector's
whole batch (frequency and patch detectors need a few pixels each way)."""


def check_scorable_size(path: str | Path, image: torch.Tensor) -> torch.Tensor:
    """``image`` itself, or one bad-input line when a side is below :data:`MIN_SIDE` pixels.

    Why one check for every command: a detector's preprocessing (a circular pad, a spectrum, a 2x2 residual)
    fails or means nothing on a 1-7 px image; compare, predict, calibrate and ``index add`` say so alike.
    """
    if min(image.shape[-2:]) < MIN_SIDE:
        raise BadInputError(path, f"image too small to score ({image.shape[-1]}x{image.shape[-2]} px; "
                                  f"every side needs at least {MIN_SIDE} px)")
    return image


def pack(image: torch.Tensor) -> torch.Tensor:
    """Cache form of a decoded image: uint8 when that is lossless (8-bit sources), else float32 unchanged."""
    quantised = (image * 255).round().clamp(0, 255).to(torch.uint8)
    if torch.equal(quantised.float() / 255.0, image):
        return quantised
    return image.float().contiguous()


def unpack(cached: torch.Tensor) -> torch.Tensor:
    """The image :func:`pack` stored, bit for bit."""
    return cached.float() / 255.0 if cached.dtype == torch.uint8 else cached


class ImageSet(torch.utils.data.Dataset):
    """Images and labels of a manifest (label 1 = fake). Items are ``(image (3,H,W) in [0,1], label)``."""

    def __init__(self, manifest: Manifest, *, on_bad: str = "fail", preload: bool = True,
                 progress: Callable[[Iterator, int, str], Iterator] | None = None):
        if on_bad not in ("fail", "skip"):
            raise MfxError(f"--on-bad must be 'skip' or 'fail', not {on_bad!r}")
        self.root = manifest.root
        self.on_bad = on_bad
        self.skipped: list[tuple[str, str]] = []
        self._cache: list[torch.Tensor] | None = None
        rows = list(manifest.rows)
        if preload:
            kept, cache = [], []
            iterator = iter(rows)
            if progress is not None:
                iterator = progress(iterator, len(rows), "decoding images")
            for row in iterator:
                image = self._read(row)
                if image is None:
                    continue
                kept.append(row)
                cache.append(pack(image))
            rows, self._cache = kept, cache
        self.rows: list[ManifestRow] = rows
        self.labels = np.array([r.label for r in rows], dtype=np.int64)

    def _read(self, row: ManifestRow) -> torch.Tensor | None:
        path = row.resolved(self.root)
        try:
            return check_scorable_size(path, read_image(path).tensor)
        except BadInputError as exc:
            if self.on_bad == "fail":
                raise
            log.warning("skipping %s", exc)
            self.skipped.append((str(path), exc.reason))
            return None

    @property
    def manifest(self) -> Manifest:
        return Manifest(self.rows, self.root)

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, index: int) -> torch.Tensor:
        if self._cache is not None:
            return unpack(self._cache[index])
        image = self._read(self.rows[index])
        if image is None:  # lazily found bad with on_bad="skip": a neutral grey stands in, and is listed
            return torch.full((3, 8, 8), 0.5)
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.image(index), int(self.labels[index])

    def subset(self, indices) -> "ImageSet":
        """A view on some rows (shares the decode cache)."""
        view = ImageSet.__new__(ImageSet)
        torch.utils.data.Dataset.__init__(view)
        view.root, view.on_bad, view.skipped = self.root, self.on_bad, self.skipped
        idx = list(indices)
        view.rows = [self.rows[i] for i in idx]
        view.labels = self.labels[idx] if idx else np.zeros(0, dtype=np.int64)
        view._cache = [self._cache[i] for i in idx] if self._cache is not None else None
        return view

    def where(self, **conditions) -> "ImageSet":
        """Rows whose manifest fields match (see :meth:`Manifest.where`)."""
        keep = Manifest(self.rows, self.root).where(**conditions).rows
        wanted = {id(r) for r in keep}
        return self.subset([i for i, r in enumerate(self.rows) if id(r) in wanted])


class TransformedSet(torch.utils.data.Dataset):
    """An :class:`ImageSet` seen through a detector's transform; items are ``(input, label, index)``."""

    def __init__(self, images: ImageSet, transform: Transform):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, label = self.images[index]
        return self.transform(image), label, index


def load_split(manifest: Manifest, split: str, **kwargs) -> ImageSet:
    return ImageSet(manifest.split(split), **kwargs)


def image_paths(root: Path, rows: list[ManifestRow]) -> list[Path]:
    return [r.resolved(root) for r in rows]
