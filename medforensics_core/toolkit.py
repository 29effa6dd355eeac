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
* **CLIP tower pieces** (open_clip's own sub-modules driven block by block, so
  adapters can sit beside a block's MLP and intermediate tokens can be read;
  with nothing added they reproduce ``encode_image`` / ``encode_text``):
  :func:`run_image_tower`, :func:`block_class_tokens`, :func:`project_tokens`,
  :func:`encode_text_embeddings`, :func:`evenly_spaced_blocks` (FatFormer, RINE);
  :func:`feature_loader` batches cached features for the epoch loop;
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
from .clip_parts import (block_class_tokens, encode_text_embeddings, evenly_spaced_blocks, project_tokens,
                         run_image_tower)
from .engine.augment import (IMAGENET_MEAN, IMAGENET_STD, BlurJpegRecipe, blur_jpeg_transform, check_geometry,
                             eval_geometry_transform, normalise, resize_shorter, test_geometry, train_geometry,
                             train_resize_for, validation_recipe, validation_steps,
                             variable_size)
from .engine.features import FeatureCache, cached_features, encode_images, feature_loader
from .engine.schedules import Schedule, detector_loaders, scale_lr, train_binary
from .engine.training import binary_logit_loss, predict_loader, run_epoch
from .errors import CheckpointError
from .seeding import seeded

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "BlurJpegRecipe", "ClipBackbone", "FeatureCache", "Schedule",
           "binary_logit_loss", "block_class_tokens", "blur_jpeg_transform", "cached_features", "check_backbone",
           "detector_loaders", "encode_images", "encode_text_embeddings", "evenly_spaced_blocks", "feature_loader",
           "linear_head", "load_clip", "normalise", "predict_loader", "project_tokens", "resize_shorter", "run_epoch",
           "run_image_tower", "scale_lr", "seeded", "test_geometry", "train_binary", "train_geometry",
           "check_geometry", "eval_geometry_transform", "train_resize_for", "validation_recipe", "validation_steps",
           "variable_size"]


def linear_head(in_features: int, std: float = 0.02, *, zero_bias: bool = True) -> torch.nn.Linear:
    """A one-logit ``Linear(in_features, 1)``, weights N(0, ``std``); zero bias unless ``zero_bias=False``."""
    head = torch.nn.Linear(in_features, 1)
    torch.nn.init.normal_(head.weight, 0.0, std)
    if zero_bias:  # CNNSpot's and UnivFD's official trainers leave the bias at PyTorch's default (zero_bias=False)
        torch.nn.init.zeros_(head.bias)
    return head


def check_backbone(extra: Mapping[str, Any], backbone: ClipBackbone, name: str, source: str = "checkpoint") -> None:
    """Refuse a checkpoint whose ``extra["backbone"]`` is not ``backbone.key()`` (trained on other features)."""
    saved = extra.get("backbone")
    if saved is not None and saved != backbone.key():
        raise CheckpointError(f"{source}: {name} checkpoint was trained on backbone {saved!r}, "
                              f"but this config loads {backbone.key()!r}")
