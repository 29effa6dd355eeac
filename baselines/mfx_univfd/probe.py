"""``univfd``: the linear probe on frozen CLIP features (Ojha et al., CVPR 2023).

The recipe (config defaults, checked against the official UniversalFakeDetect
code; docs/explanations/baselines.md lists each piece with its file and line):

* frozen open_clip ``ViT-L-14`` / ``openai`` image encoder (768-d features),
  built with QuickGELU as OpenAI trained it;
* ``Linear(d, 1)``, weight N(0, 0.02), bias PyTorch's default; BCE with logits,
  AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0, batch 256;
* training: blur/JPEG (each p=0.5) -> random crop to the backbone's input size ->
  flip, CLIP normalisation; validation: resize 256, blur sigma 1.5 / JPEG 65 at
  the training rates, centre crop; test (``eval_geometry="native-crop"``): no
  resize, centre crop 224 (official ``validate.py``), and training crops at
  native scale too so both see one scale;
* CNNDetection's early stopping (lr / 10 after 5 epochs without a 0.001 gain,
  a fresh stopper with 0.002 after each drop, stop below 1e-6); the weights kept
  are the last epoch's (``model_selection="last"``: the official script
  overwrites ``model_epoch_best.pth`` every epoch).

Feature cache trade-off: with augmentation off, every epoch sees the same
pixels, so the frozen features are computed once and cached on disk
(:mod:`medforensics_core.engine.features`) — the probe then trains in seconds and
``univfd-nn`` (or a second run) reuses them. With the paper's blur/JPEG/crop
augmentation on, features must be recomputed every epoch and the cache is not
used. The ``tiny`` preset turns augmentation off and uses the cache; ``full``
keeps the paper's augmentation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

from medforensics_core.contract import Batch, SupportsDistributed
from medforensics_core.lazy import lazy_module
from medforensics_core.toolkit import (BlurJpegRecipe, Schedule, blur_jpeg_transform, detector_loaders, linear_head,
                                       normalise, seeded, train_binary, train_geometry,
                                       train_resize_for, validation_recipe, validation_steps)

from .features import TINY_BACKBONE, ClipFeatureDetector

v2 = lazy_module("torchvision.transforms.v2")


@dataclasses.dataclass
class UnivFDConfig:
    """UnivFD recipe (defaults: Ojha et al. 2023, official UniversalFakeDetect options)."""

    clip_model: str = "ViT-L-14"
    pretrained: str = "openai"
    backbone_seed: int = 0
    load_size: int = 256
    eval_geometry: str = "native-crop"
    flip: bool = True
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 100)
    val_blur_sigma: float = 1.5
    val_jpeg_quality: int = 65
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 100
    patience: int = 5
    first_delta: float = 0.001
    delta: float = 0.002
    lr_drop: float = 10.0
    min_lr: float = 1e-6
    model_selection: str = "last"
    head_init_std: float = 0.02
    encode_batch_size: int = 64

    @property
    def augmentation(self) -> BlurJpegRecipe:
        return BlurJpegRecipe(self.blur_prob, tuple(self.blur_sigma), self.jpeg_prob, tuple(self.jpeg_quality))

    @property
    def augments(self) -> bool:
        """Whether training images differ from test-time ones (then the feature cache cannot be used)."""
        return self.augmentation.enabled or self.flip


class UnivFDDetector(ClipFeatureDetector, SupportsDistributed):
    """UnivFD linear probe on a frozen CLIP image encoder (see the module docstring).

    Presets: ``full`` = the paper (ViT-L/14 OpenAI weights, which must be on the
    machine; blur/JPEG/crop/flip augmentation, batch 256); ``tiny`` = mfx's tiny
    random-init CLIP (64 px), no augmentation so cached features are used,
    batch 64, lr 1e-2 (random features need a larger step), 60 epochs, patience 10 — what the tests and offline
    benchmark run.
    """

    name: ClassVar[str] = "univfd"
    description: ClassVar[str] = "linear probe on frozen CLIP image features (Ojha et al., CVPR 2023)"
    config_class: ClassVar[type] = UnivFDConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {**TINY_BACKBONE, "blur_prob": 0.0, "jpeg_prob": 0.0, "flip": False, "batch_size": 64,
                 "epochs": 60, "patience": 10, "lr": 1e-2},
    }

    def __init__(self, config: Any = None, *, preset: str | None = None, device: str | torch.device = "cpu"):
        super().__init__(config, preset=preset, device=device)
        self._train_steps: Any = None
        self._val_steps: Any = None
        self.head: torch.nn.Linear | None = None

    def ensure_head(self) -> torch.nn.Linear:
        if self.head is None:  # weight N(0, 0.02), bias PyTorch's default, as the official trainer
            self.head = linear_head(self.feature_dim, self.config.head_init_std, zero_bias=False).to(self.device)
        return self.head

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"head": self.ensure_head()}

    def train_transform(self, image: torch.Tensor) -> torch.Tensor:
        if self._train_steps is None:
            cfg, bb = self.config, self.backbone
            self._train_steps = v2.Compose([train_resize_for(cfg.eval_geometry, max(cfg.load_size, bb.image_size)),
                                            blur_jpeg_transform(cfg.augmentation),
                                            train_geometry(bb.image_size, cfg.flip), normalise(bb.mean, bb.std)])
        return self._train_steps(image)

    def val_transform(self, image: torch.Tensor) -> torch.Tensor:
        """The official validation (blur sigma 1.5 / JPEG 65 at the training rates, centre crop) at the training
        scale: the official resizes validation images as it resizes training images (see ``validation_steps``)."""
        if self._val_steps is None:
            cfg, bb = self.config, self.backbone
            recipe = validation_recipe(cfg.augmentation, cfg.val_blur_sigma, cfg.val_jpeg_quality)
            self._val_steps = v2.Compose([validation_steps(cfg.eval_geometry, max(cfg.load_size, bb.image_size),
                                                           bb.image_size, recipe), normalise(bb.mean, bb.std)])
        return self._val_steps(image)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.ensure_head()(self.encode(batch).float())

    # -- training
    def fit(self, train: Any, val: Any | None = None, ctx: Any | None = None) -> "UnivFDDetector":
        from medforensics_core.engine.context import FitContext

        ctx = ctx or FitContext(device=self.device)
        self.ensure_backbone(ctx)
        self.to(ctx.device)
        self.feature_cache_stats = {}
        with seeded(ctx.seed):
            self.head = None
            self._train_head(self.ensure_head(), train, val, ctx)
        self.fitted = True
        return self

    def _train_head(self, head: torch.nn.Linear, train: Any, val: Any | None, ctx: Any) -> None:
        cfg = self.config
        optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                      weight_decay=cfg.weight_decay)
        schedule = Schedule(ctx.epochs_for(cfg.epochs), patience=cfg.patience, first_delta=cfg.first_delta,
                            delta=cfg.delta, lr_drop=cfg.lr_drop, min_lr=cfg.min_lr, keep=cfg.model_selection)
        batch_size = ctx.batch_size_for(cfg.batch_size)
        if cfg.augments:
            self.train_info = train_probe_on_images(self, optimizer, train, val, ctx, schedule, batch_size)
        else:
            self.train_info = train_probe_on_features(self, optimizer, train, val, ctx, schedule, batch_size)
            self.train_info["feature_cache"] = dict(self.feature_cache_stats)

    @torch.no_grad()
    def predict_proba(self, batch: Batch) -> np.ndarray:
        return torch.sigmoid(self.forward(batch.inputs).reshape(-1)).float().cpu().numpy()

    def load_state(self, tensors: Mapping[str, torch.Tensor], extra: Mapping[str, Any],
                   source: str = "checkpoint") -> None:
        self.check_backbone(extra, source)
        self.load_module_tensors(tensors, source)

    def weights_info(self) -> str:
        return f"frozen {self.backbone.weights_info} + trained linear head"


def train_probe_on_features(detector: UnivFDDetector, optimizer: torch.optim.Optimizer, train: Any, val: Any | None,
                            ctx: Any, schedule: Schedule, batch_size: int) -> dict[str, Any]:
    """Train the head on cached frozen features (no augmentation): seconds instead of minutes."""
    features = detector.cached_features(train, ctx)
    val_loader = None
    if val is not None and len(val):
        val_loader = ctx.tensor_loader(detector.cached_features(val, ctx), val.labels, batch_size, shuffle=False)
    head = detector.ensure_head()
    predict = lambda batch: torch.sigmoid(head(batch.inputs.float()).reshape(-1)).cpu().numpy()  # noqa: E731

    loader = ctx.tensor_loader(features, train.labels, batch_size, shuffle=True)  # one shuffling stream for all epochs

    def train_loader(epoch: int):
        if hasattr(loader.sampler, "set_epoch"):  # DistributedSampler: a new shard order per epoch
            loader.sampler.set_epoch(epoch)
        return loader

    return train_binary(head, None, predict, optimizer, train_loader, val_loader, ctx, schedule, detector.name)


def train_probe_on_images(detector: UnivFDDetector, optimizer: torch.optim.Optimizer, train: Any, val: Any | None,
                          ctx: Any, schedule: Schedule, batch_size: int) -> dict[str, Any]:
    """Train the head on augmented images, encoding each batch with the frozen backbone (the paper's recipe)."""
    train_loader, val_loader = detector_loaders(detector, train, val, ctx, batch_size)

    return train_binary(detector.ensure_head(), None, detector.predict_proba, optimizer, train_loader,
                        val_loader, ctx, schedule, detector.name, frozen=detector.encode)
