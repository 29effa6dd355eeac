"""The ``rine`` detector: config, preprocessing, intermediate class tokens, training (cached or augmented), state."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

from medforensics_core.clip_parts import block_class_tokens, check_vision_tower
from medforensics_core.contract import Batch, SupportsDistributed
from medforensics_core.engine.augment import BlurJpegDraw, apply_blur_jpeg, normalise, train_geometry
from medforensics_core.decision import accuracy
from medforensics_core.engine.schedules import Schedule, detector_loaders, seeded, train_binary
from medforensics_core.engine.training import predict_loader
from medforensics_core.toolkit import check_backbone
from medforensics_core.interfaces import Detector
from medforensics_core.lazy import lazy_module

from .model import RINEHead, rine_loss

v2 = lazy_module("torchvision.transforms.v2")

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RINEConfig:
    """RINE recipe (defaults: the paper's best 4-class ProGAN model, official code mever-team/rine)."""

    clip_model: str = "ViT-L-14"
    pretrained: str = "openai"
    backbone_seed: int = 0
    proj_layers: int = dataclasses.field(default=2, metadata={"min": 1})
    """q: Linear+ReLU+Dropout layers in each of the two projections."""
    proj_dim: int = dataclasses.field(default=1024, metadata={"min": 1})
    dropout: float = dataclasses.field(default=0.5, metadata={"min": 0, "max": 0.99})
    contrastive_factor: float = dataclasses.field(default=0.2, metadata={"min": 0})
    """xi: weight of the supervised contrastive loss beside the (summed) BCE."""
    temperature: float = 0.07
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 1
    lr_drop_every: int = dataclasses.field(default=5, metadata={"min": 1})
    """lr / lr_drop after every lr_drop_every epochs (official: at the start of epochs 6 and 11)."""
    lr_drop: float = dataclasses.field(default=10.0, metadata={"min": 1})
    blur_prob: float = dataclasses.field(default=0.5, metadata={"min": 0, "max": 1})
    blur_sigma: tuple[float, float] = dataclasses.field(default=(0.0, 3.0), metadata={"min": 0})
    jpeg_prob: float = dataclasses.field(default=0.5, metadata={"min": 0, "max": 1})
    jpeg_qualities: tuple[int, ...] = dataclasses.field(default=(30, 100), metadata={"min": 1, "max": 100})
    """JPEG quality drawn from these values (the official code picks 30 or 100, not a range)."""
    flip: bool = True
    encode_batch_size: int = dataclasses.field(default=64, metadata={"min": 1})

    @property
    def augments(self) -> bool:
        return self.blur_prob > 0 or self.jpeg_prob > 0 or self.flip


class RineAugment:
    """RINE's blur + JPEG draw: blur sigma ~ U(blur_sigma) with p, JPEG at a quality chosen from a list with p.

    Applied through the registry's ``blur`` and ``jpeg`` perturbations (the
    shared :func:`apply_blur_jpeg`); a class so loaders can pickle it.
    """

    def __init__(self, cfg: RINEConfig):
        self.blur_prob, self.blur_sigma = cfg.blur_prob, tuple(cfg.blur_sigma)
        self.jpeg_prob, self.qualities = cfg.jpeg_prob, tuple(cfg.jpeg_qualities)

    def draw(self, generator: torch.Generator | None = None) -> BlurJpegDraw:
        u = torch.rand(3, generator=generator).tolist()
        pick = int(torch.randint(len(self.qualities), (1,), generator=generator))
        low, high = self.blur_sigma
        return BlurJpegDraw(blur=u[0] < self.blur_prob, sigma=low + u[1] * (high - low),
                            jpeg=u[2] < self.jpeg_prob, quality=int(self.qualities[pick]))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.blur_prob <= 0 and self.jpeg_prob <= 0:
            return image
        return apply_blur_jpeg(image, self.draw())


class RINEDetector(Detector, SupportsDistributed):
    """RINE: every block's class token from a frozen CLIP, importance-weighted, into a small trained network.

    Presets: ``full`` = the paper's best 4-class model (ViT-L/14 OpenAI weights,
    which must be on the machine; q=2, d'=1024, xi=0.2; blur/JPEG + 224 crops +
    flip; Adam lr 1e-3, batch 128, one epoch); ``tiny`` = mfx's tiny random-init
    CLIP (2 blocks, 64 px), q=1, d'=64, dropout 0.1 and lr 1e-2 (on random
    features dropout 0.5 and lr 1e-3 left the head at chance accuracy: held-out
    AUC 0.63 vs 0.71), no augmentation so the intermediate tokens are cached,
    batch 64, 40 epochs with lr / 10 every 15 — what the tests and the offline
    benchmark run.
    """

    name: ClassVar[str] = "rine"
    description: ClassVar[str] = "intermediate CLIP block tokens + learnable block importance (Koutlis & " \
                                 "Papadopoulos, ECCV 2024)"
    config_class: ClassVar[type] = RINEConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"clip_model": "mfx-tiny-clip", "pretrained": "random", "proj_layers": 1, "proj_dim": 64,
                 "dropout": 0.1, "lr": 1e-2, "batch_size": 64, "epochs": 40, "lr_drop_every": 15, "blur_prob": 0.0, "jpeg_prob": 0.0,
                 "flip": False},
    }

    def __init__(self, config: Any = None, *, preset: str | None = None, device: str | torch.device = "cpu"):
        super().__init__(config, preset=preset, device=device)
        self._backbone = None
        self.head: RINEHead | None = None
        self._test_steps: Any = None
        self._train_steps: Any = None
        self.feature_cache_stats: dict[str, int] = {}

    # -- frozen backbone and head, built on first use
    @property
    def backbone(self) -> Any:
        if self._backbone is None:
            from medforensics_core.backbones import load_clip

            cfg = self.config
            self._backbone = load_clip(cfg.clip_model, cfg.pretrained, device=self.device, seed=cfg.backbone_seed)
            check_vision_tower(self._backbone.model.visual)
        return self._backbone

    def ensure_head(self) -> RINEHead:
        if self.head is None:
            visual, cfg = self.backbone.model.visual, self.config
            self.head = RINEHead(len(visual.transformer.resblocks), visual.transformer.width, cfg.proj_dim,
                                 cfg.proj_layers, cfg.dropout).to(self.device).eval()
        return self.head

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"head": self.ensure_head()}

    def to(self, device: str | torch.device) -> "RINEDetector":
        super().to(device)
        if self._backbone is not None:
            self._backbone.model.to(self.device)
        return self

    # -- preprocessing: native size, crop to the backbone's input (official: no resize), CLIP normalisation
    def preprocess_key(self) -> str:
        bb = self.backbone
        return f"native-centrecrop{bb.image_size}-norm{bb.mean}{bb.std}|ln2-class-token-every-block"

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        if self._test_steps is None:
            bb = self.backbone
            self._test_steps = v2.Compose([v2.CenterCrop(bb.image_size), normalise(bb.mean, bb.std)])
        return self._test_steps(image)

    def train_transform(self, image: torch.Tensor) -> torch.Tensor:
        if self._train_steps is None:
            bb = self.backbone
            self._train_steps = v2.Compose([RineAugment(self.config), train_geometry(bb.image_size, self.config.flip),
                                            normalise(bb.mean, bb.std)])
        return self._train_steps(image)

    # -- forward
    @torch.no_grad()
    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """Every block's class token, flattened ``(N, blocks * width)`` (the feature-cache row)."""
        return block_class_tokens(self.backbone.model.visual, batch.to(self.device)).flatten(1)

    def _tokens(self, flat: torch.Tensor) -> torch.Tensor:
        visual = self.backbone.model.visual
        return flat.reshape(flat.shape[0], len(visual.transformer.resblocks), visual.transformer.width)

    def forward_features(self, flat: torch.Tensor) -> torch.Tensor:
        """Packed ``[logit, embedding]`` from flattened class tokens (what the loss needs)."""
        logit, embedding = self.ensure_head()(self._tokens(flat))
        return torch.cat([logit[:, None], embedding], dim=1)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.forward_features(self.encode(batch))

    def scores_from_features(self, flat: torch.Tensor) -> np.ndarray:
        head = self.ensure_head().eval()
        with torch.no_grad():
            return torch.sigmoid(head(self._tokens(flat))[0].float()).cpu().numpy()

    @torch.no_grad()
    def predict_proba(self, batch: Batch) -> np.ndarray:
        return self.scores_from_features(self.encode(batch.inputs))

    # -- training
    def fit(self, train: Any, val: Any | None = None, ctx: Any | None = None) -> "RINEDetector":
        from medforensics_core.engine.context import FitContext

        ctx = ctx or FitContext(device=self.device)
        self.to(ctx.device)
        self.feature_cache_stats = {}
        cfg = self.config
        batch_size = ctx.batch_size_for(cfg.batch_size)
        # cached tokens are read before the seeded block: encoding iterates loaders, which draw from the
        # global RNG, and the dropout masks of training must not depend on whether a validation set exists
        if cfg.augments:
            train_loader, val_loader = detector_loaders(self, train, val, ctx, batch_size)
            forward, predict = self.forward, self.predict_proba
        else:
            train_loader, val_loader = self._cached_loaders(train, val, ctx, batch_size)
            forward = self.forward_features
            predict = lambda batch: self.scores_from_features(batch.inputs)  # noqa: E731 - cached features
        with seeded(ctx.seed):
            self.head = None
            head = self.ensure_head()
            optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr)
            schedule = Schedule(ctx.epochs_for(cfg.epochs), step_every=cfg.lr_drop_every,
                                step_gamma=1.0 / cfg.lr_drop)
            # the last epoch is kept, as in the official code (validation accuracy is only reported)
            self.train_info = train_binary(head, forward, predict, optimizer, train_loader, None, ctx, schedule,
                                           self.name, loss_fn=rine_loss(cfg.contrastive_factor, cfg.temperature))
            if val_loader is not None:
                self.train_info["val_acc"] = accuracy(*predict_loader(predict, val_loader, ctx,
                                                                      description="validation"))
            self.train_info["block_importance"] = [round(float(w), 4) for w in head.block_importance()]
            if not cfg.augments:
                self.train_info["feature_cache"] = dict(self.feature_cache_stats)
        self.fitted = True
        return self

    def cached_features(self, images: Any, ctx: Any) -> torch.Tensor:
        from medforensics_core.engine.features import cached_features

        features, stats = cached_features(images, self.encode, self.preprocess, backbone_key=self.backbone.key(),
                                          preprocess_key=self.preprocess_key(), ctx=ctx,
                                          batch_size=self.config.encode_batch_size)
        for key, value in dataclasses.asdict(stats).items():
            self.feature_cache_stats[key] = self.feature_cache_stats.get(key, 0) + value
        return features

    def _cached_loaders(self, train: Any, val: Any | None, ctx: Any, batch_size: int):
        """Loaders over cached intermediate tokens (no augmentation: every epoch sees the same pixels)."""
        from medforensics_core.engine.features import feature_loader

        features = self.cached_features(train, ctx)
        val_loader = None
        if val is not None and len(val):
            val_loader = feature_loader(self.cached_features(val, ctx), val.labels, batch_size, ctx, shuffle=False)
        return (lambda epoch: feature_loader(features, train.labels, batch_size, ctx, epoch_offset=epoch)), val_loader

    # -- reporting and state
    def weights_info(self) -> str:
        blocks = len(self.backbone.model.visual.transformer.resblocks)
        return f"frozen {self.backbone.weights_info} + trained head on the class tokens of all {blocks} blocks"

    def warnings(self) -> list[str]:
        if self.backbone.is_random:
            return [f"{self.name}: the CLIP backbone {self.config.clip_model} is randomly initialised, not "
                    f"pretrained — RINE reads pretrained CLIP's intermediate blocks; give pretrained=PATH for real runs"]
        return []

    def extra_state(self) -> dict[str, Any]:
        return {"backbone": self.backbone.key()}

    def load_state(self, tensors: Mapping[str, torch.Tensor], extra: Mapping[str, Any],
                   source: str = "checkpoint") -> None:
        check_backbone(extra, self.backbone, self.name, source)
        self.load_module_tensors(tensors, source)
