"""On-disk cache of frozen-backbone features, shared by every detector that probes the same backbone.

A linear probe (UnivFD) or a nearest-neighbour bank (UnivFD-NN, MFRM) on a
frozen encoder needs each training image's features once; computing them is
most of the cost on a CPU. The cache stores them keyed by

* the backbone's identity (``ClipBackbone.key()``: model name + which weights,
  including the seed of a random init or the digest of a local file),
* the preprocessing (a string the detector builds from its resize/crop/normalisation),
* each image's sha256 (the manifest's ``sha256`` column, else a hash of the file),

so a probe retrains in seconds and two detectors on one backbone share the work.
Augmented training cannot use it (each epoch sees new pixels): detectors that
augment call the backbone directly, and document that trade-off.

Layout: ``<root>/<digest of backbone+preprocessing>/info.json`` plus shards
``<uuid>.safetensors`` (a ``features`` tensor and the image hashes in the
metadata). Shards are written atomically and never rewritten, so concurrent
writers at worst compute the same features twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..checkpoint import atomic_write_bytes, load_tensors, save_tensors
from ..data.dataset import ImageSet, Transform
from ..data.manifest import sha256_file
from ..errors import CheckpointError
from ..locations import cache_root
from .context import FitContext
from .distributed import gather_tensor_rows

log = logging.getLogger(__name__)

Encoder = Callable[[torch.Tensor], torch.Tensor]


def default_cache_root() -> Path:
    """``features`` under the mfx cache root (:func:`medforensics_core.locations.cache_root`)."""
    return cache_root("features")


def image_hashes(images: ImageSet) -> list[str]:
    """sha256 of every image of the set: the manifest's column, else the file's bytes."""
    return [row.sha256 or sha256_file(row.resolved(images.root)) for row in images.rows]


@dataclasses.dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class FeatureCache:
    """Features of one (backbone, preprocessing) pair, by image hash."""

    def __init__(self, root: str | Path, backbone_key: str, preprocess_key: str):
        self.backbone_key = backbone_key
        self.preprocess_key = preprocess_key
        digest = hashlib.sha256(f"{backbone_key}\n{preprocess_key}".encode()).hexdigest()[:20]
        self.folder = Path(root) / digest
        self.stats = CacheStats()

    def _load_all(self) -> dict[str, torch.Tensor]:
        found: dict[str, torch.Tensor] = {}
        for shard in sorted(self.folder.glob("*.safetensors")):
            try:
                tensors, meta = load_tensors(shard)
            except CheckpointError as exc:  # a damaged shard is recomputed, not fatal
                log.warning("ignoring damaged feature-cache shard: %s", exc)
                continue
            for key, row in zip(meta.get("hashes", []), tensors["features"]):
                found[key] = row
        return found

    def lookup(self, hashes: list[str]) -> dict[str, torch.Tensor]:
        """The cached features among ``hashes``."""
        stored = self._load_all() if self.folder.is_dir() else {}
        return {h: stored[h] for h in hashes if h in stored}

    def store(self, hashes: list[str], features: torch.Tensor) -> None:
        """Write one new shard with ``features`` (n, d) for ``hashes``."""
        if not hashes:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        info = self.folder / "info.json"
        if not info.exists():
            atomic_write_bytes(info, json.dumps({"backbone": self.backbone_key,
                                                 "preprocess": self.preprocess_key}, indent=1).encode())
        save_tensors(self.folder / f"{uuid.uuid4().hex}.safetensors", {"features": features.float().cpu()},
                     {"kind": "feature-cache", "hashes": hashes})


def cached_features(images: ImageSet, encode: Encoder, transform: Transform, *, backbone_key: str,
                    preprocess_key: str, ctx: FitContext | None = None, batch_size: int = 64,
                    cache_root: str | Path | None = None) -> tuple[torch.Tensor, CacheStats]:
    """Features ``(N, d)`` of every image, in order; only the images not yet cached are encoded.

    ``encode`` maps a preprocessed batch on ``ctx.device`` to features; the
    cache lives under ``cache_root``, else ``ctx.cache_dir/features``, else
    :func:`default_cache_root`.
    """
    ctx = ctx or FitContext()
    root = Path(cache_root) if cache_root else (Path(ctx.cache_dir) / "features" if ctx.cache_dir
                                                 else default_cache_root())
    cache = FeatureCache(root, backbone_key, preprocess_key)
    hashes = image_hashes(images)
    known = cache.lookup(hashes)
    missing = sorted({i for i, h in enumerate(hashes) if h not in known})
    stats = CacheStats(hits=len(hashes) - len(missing), misses=len(missing))
    if missing:
        fresh = encode_images(images.subset(missing), encode, transform, ctx, batch_size)
        new_hashes = [hashes[i] for i in missing]
        if ctx.rank == 0:  # every rank holds the gathered features; one writes them
            cache.store(new_hashes, fresh)
        known.update(dict(zip(new_hashes, fresh)))
    if not hashes:
        return torch.zeros(0, 0), stats
    return torch.stack([known[h] for h in hashes]), stats


@torch.no_grad()
def encode_images(images: ImageSet, encode: Encoder, transform: Transform, ctx: FitContext,
                  batch_size: int) -> torch.Tensor:
    """Run ``encode`` over every image (in order) under the context's device and precision.

    Under ``torchrun`` each rank encodes its shard once and the shards are
    gathered, so every rank returns all the features in the image set's order.
    """
    loader = ctx.loader(images, transform, batch_size, shuffle=False)
    chunks, seen = [], []
    for batch in ctx.track(loader, len(loader), "encoding features"):
        with ctx.autocast():
            chunks.append(encode(batch.inputs.to(ctx.device, non_blocking=True)).float().cpu())
        seen.append(batch.indices.numpy())
    if not chunks:
        return torch.zeros(0, 0)
    return gather_tensor_rows(torch.cat(chunks), np.concatenate(seen), len(images), ctx.world_size)



def feature_loader(features: torch.Tensor, labels, batch_size: int, ctx: FitContext,
                   shuffle: bool = True, epoch_offset: int = 0) -> torch.utils.data.DataLoader:
    """Batches (:class:`~medforensics_core.contract.Batch`) over cached features — what the epoch loop expects.

    Shuffled from the run's seed plus ``epoch_offset`` (pass the epoch for a new, reproducible order each epoch);
    sharded across ranks under ``torchrun`` (``ctx.tensor_loader``).
    """
    return ctx.tensor_loader(features, labels, batch_size, shuffle=shuffle, epoch_offset=epoch_offset)
