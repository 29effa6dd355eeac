"""Frozen CLIP image features, the part UnivFD's probe and its nearest-neighbour variant share.

:class:`ClipFeatureDetector` owns the backbone (loaded on first use through
:func:`medforensics_core.backbones.load_clip`, QuickGELU for OpenAI weights),
the test-time preprocessing (``eval_geometry``; the official
``validate.py`` centre-crops 224 with no resize) and the on-disk feature cache.
What is done with the features — a trained linear probe (:mod:`.probe`) or a
labelled bank (:mod:`.nn`) — is the subclass's business; neither inherits the
other.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

import torch

from medforensics_core import toolkit
from medforensics_core.errors import WeightsNotFoundError
from medforensics_core.interfaces import Detector
from medforensics_core.lazy import lazy_module
from medforensics_core.toolkit import check_geometry, eval_geometry_transform, normalise

v2 = lazy_module("torchvision.transforms.v2")

log = logging.getLogger(__name__)

TINY_BACKBONE = {"clip_model": "mfx-tiny-clip", "pretrained": "random", "load_size": 64}


class ClipFeatureDetector(Detector):
    """A detector on frozen open_clip image features (config: ``clip_model``, ``pretrained``, ``eval_geometry``...)."""

    def __init__(self, config: Any = None, *, preset: str | None = None, device: str | torch.device = "cpu"):
        super().__init__(config, preset=preset, device=device)
        check_geometry(self.name, self.config.eval_geometry)
        self._backbone = None
        self._test_steps: Any = None
        self.feature_cache_stats: dict[str, int] = {}
        self.random_init_fallback = False

    # -- the frozen backbone, loaded on first use (constructing a detector never touches weights)
    @property
    def backbone(self) -> Any:
        if self._backbone is None:
            cfg = self.config
            self._backbone = toolkit.load_clip(cfg.clip_model, cfg.pretrained, device=self.device,
                                               seed=cfg.backbone_seed)
        return self._backbone

    def ensure_backbone(self, ctx: Any) -> None:
        """Load the backbone now; with ``--allow-random-init`` missing weights fall back to random ones (reported)."""
        try:
            self.backbone
        except WeightsNotFoundError as exc:
            if not getattr(ctx, "allow_random_init", False):
                raise WeightsNotFoundError(f"{self.name}: config key pretrained={self.config.pretrained!r}: {exc}; "
                                           f"or pass --allow-random-init") from None
            log.warning("%s: %s; --allow-random-init: random CLIP weights", self.name, exc)
            self.config = dataclasses.replace(self.config, pretrained="random")
            self.random_init_fallback = True
            self._test_steps = None

    @property
    def feature_dim(self) -> int:
        """Dimension of ``encode_image`` output."""
        return int(self.backbone.embed_dim)

    def to(self, device: str | torch.device) -> "ClipFeatureDetector":
        super().to(device)
        if self._backbone is not None:
            self._backbone.model.to(self.device)
        return self

    # -- preprocessing
    def preprocess_key(self) -> str:
        """Identity of the test-time preprocessing (part of the feature-cache key)."""
        bb, cfg = self.backbone, self.config
        return f"{cfg.eval_geometry}-load{cfg.load_size}-crop{bb.image_size}-norm{bb.mean}{bb.std}"

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        if self._test_steps is None:
            bb, cfg = self.backbone, self.config
            self._test_steps = v2.Compose([eval_geometry_transform(cfg.eval_geometry, cfg.load_size, bb.image_size),
                                           normalise(bb.mean, bb.std)])
        return self._test_steps(image)

    @torch.no_grad()
    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """Frozen image features of a preprocessed batch."""
        return self.backbone.model.encode_image(batch.to(self.device))

    def cached_features(self, images: Any, ctx: Any) -> torch.Tensor:
        """Test-time features of every image, through the on-disk cache."""
        features, stats = toolkit.cached_features(images, self.encode, self.preprocess, backbone_key=self.backbone.key(),
                                          preprocess_key=self.preprocess_key(), ctx=ctx,
                                          batch_size=self.config.encode_batch_size)
        for key, value in dataclasses.asdict(stats).items():
            self.feature_cache_stats[key] = self.feature_cache_stats.get(key, 0) + value
        return features

    # -- reporting and state
    def warnings(self) -> list[str]:
        if self.backbone.is_random:
            return [f"{self.name}: the CLIP backbone {self.config.clip_model} is randomly initialised, not "
                    f"pretrained — UnivFD's premise is pretrained CLIP features; give pretrained=PATH for real runs"]
        return []

    def extra_state(self) -> dict[str, Any]:
        return {"backbone": self.backbone.key(), "random_init_fallback": self.random_init_fallback}

    def check_backbone(self, extra: Mapping[str, Any], source: str) -> None:
        """Refuse a checkpoint trained on another backbone, in one line."""
        self.random_init_fallback = bool(extra.get("random_init_fallback", False))
        toolkit.check_backbone(extra, self.backbone, self.name, source)
