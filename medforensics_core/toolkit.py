"""The building blocks detectors share — documented, stable API for built-in and third-party plugins alike.

A detector plugin may import anything listed here (``from medforensics_core.toolkit
import train_binary, Schedule, ...``) instead of copying it; the baselines do.

* **Augmentation and geometry** (CNNSpot's blur + JPEG recipe, resize / crop /
  flip / normalisation on tensors): :class:`BlurJpegRecipe`,
  :func:`blur_jpeg_transform`, :func:`resize_shorter`, :func:`train_geometry`,
  :func:`test_geometry`, :func:`normalise`, ``IMAGENET_MEAN`` / ``IMAGENET_STD``;
* **The epoch loop and schedules** (CNNDetection's early stopping with lr / 10,
  NPR's step decay; best-validation weights restored; distributed through
  ``DistributedDataParallel`` under ``torchrun``): :class:`Schedule`,
  :func:`train_binary`, :func:`detector_loaders`, :func:`run_epoch`,
  :func:`predict_loader`, :func:`binary_logit_loss`, :func:`scale_lr`, :func:`seeded`;
* **Feature cache** for frozen backbones (by backbone, preprocessing and image
  hash; one encode per rank shard under ``torchrun``): :func:`cached_features`,
  :func:`encode_images`, :class:`FeatureCache`;
* **Backbones**: :func:`load_clip` (open_clip by name, local weights files, the
  tiny random-init ``mfx-tiny-clip``), :class:`ClipBackbone`;
* **Heads**: :func:`linear_head` (the N(0, std) one-logit head of CNNSpot and UnivFD);
* **Checkpoints of frozen-backbone detectors**: :func:`check_backbone` refuses, in one line,
  a checkpoint trained on another backbone (the ``"backbone"`` key of ``extra_state``);
* **Retrieval** (k-NN vote, bank persistence, compatibility checks) lives in
  :mod:`medforensics_core.retrieval`; the detector contract (``Batch``,
  ``ReferenceBank``, ``SupportsDistributed``) in :mod:`medforensics_core.contract`.

Each block's full reference is on the toolkit page of the API reference.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .backbones import ClipBackbone, load_clip
from .errors import CheckpointError
from .engine.augment import (IMAGENET_MEAN, IMAGENET_STD, BlurJpegRecipe, blur_jpeg_transform, normalise,
                             resize_shorter, test_geometry, train_geometry)
from .engine.features import FeatureCache, cached_features, encode_images
from .engine.schedules import Schedule, detector_loaders, scale_lr, train_binary
from .engine.training import binary_logit_loss, predict_loader, run_epoch
from .seeding import seeded

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "BlurJpegRecipe", "ClipBackbone", "FeatureCache", "Schedule",
           "binary_logit_loss", "blur_jpeg_transform", "cached_features", "detector_loaders", "encode_images",
           "check_backbone", "linear_head", "load_clip", "normalise", "predict_loader", "resize_shorter", "run_epoch", "scale_lr",
           "seeded", "test_geometry", "train_binary", "train_geometry"]


def linear_head(in_features: int, std: float = 0.02) -> torch.nn.Linear:
    """A one-logit ``Linear(in_features, 1)``, weights N(0, ``std``) and zero bias (CNNSpot's and UnivFD's head)."""
    head = torch.nn.Linear(in_features, 1)
    torch.nn.init.normal_(head.weight, 0.0, std)
    torch.nn.init.zeros_(head.bias)
    return head


def check_backbone(extra: Mapping[str, Any], backbone: ClipBackbone, name: str, source: str = "checkpoint") -> None:
    """Refuse a checkpoint whose ``extra["backbone"]`` is not ``backbone.key()`` (trained on other features)."""
    saved = extra.get("backbone")
    if saved is not None and saved != backbone.key():
        raise CheckpointError(f"{source}: {name} checkpoint was trained on backbone {saved!r}, "
                              f"but this config loads {backbone.key()!r}")
