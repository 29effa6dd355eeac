"""The ``fatformer`` detector: config, preprocessing, the adapted forward pass, training and state."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from medforensics_core.clip_parts import (check_vision_tower, encode_text_embeddings, evenly_spaced_blocks,
                                          project_tokens, run_image_tower, used_length)
from medforensics_core.contract import Batch, SupportsDistributed
from medforensics_core.engine.augment import IMAGENET_MEAN, IMAGENET_STD, normalise, train_geometry
from medforensics_core.decision import accuracy
from medforensics_core.engine.schedules import Schedule, detector_loaders, seeded, train_binary
from medforensics_core.engine.training import predict_loader
from medforensics_core.errors import ConfigError
from medforensics_core.toolkit import check_backbone
from medforensics_core.interfaces import Detector
from medforensics_core.lazy import lazy_module

from .modules import FatFormerModule

v2 = lazy_module("torchvision.transforms.v2")

log = logging.getLogger(__name__)

NORMALISATIONS = ("imagenet", "clip")


@dataclasses.dataclass
class FatFormerConfig:
    """FatFormer recipe (defaults: Liu et al., CVPR 2024, Sec. 4.1, and the official evaluation code)."""

    clip_model: str = "ViT-L-14"
    pretrained: str = "openai"
    backbone_seed: int = 0
    adapters: int = dataclasses.field(default=3, metadata={"min": 1})
    """Number of ViT stages; an adapter sits in the last block of each (24 blocks -> 7, 15, 23)."""
    bottleneck: int = dataclasses.field(default=64, metadata={"min": 1})
    adapter_scale: float = dataclasses.field(default=0.1, metadata={"min": 0})
    adapter_dropout: float = dataclasses.field(default=0.1, metadata={"min": 0, "max": 0.99})
    adapter_heads: int = dataclasses.field(default=8, metadata={"min": 1})
    dwt_groups: int = dataclasses.field(default=128, metadata={"min": 1})
    wavelet: str = "haar"
    n_ctx: int = dataclasses.field(default=8, metadata={"min": 1})
    lga_heads: int = dataclasses.field(default=12, metadata={"min": 1})
    class_names: tuple[str, str] = ("real", "fake")
    load_size: int = dataclasses.field(default=256, metadata={"min": 1})
    """Images are resized to load_size x load_size (square), then cropped to the backbone's input size."""
    flip: bool = True
    normalisation: str = "imagenet"
    """Input normalisation: 'imagenet' as in the official evaluation code, or 'clip'."""
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 256
    epochs: int = 25
    lr_step_every: int = dataclasses.field(default=10, metadata={"min": 1})
    lr_step_gamma: float = dataclasses.field(default=0.9, metadata={"min": 0, "max": 1})


TINY = {"clip_model": "mfx-tiny-clip", "pretrained": "random", "load_size": 64, "bottleneck": 16,
        "adapter_heads": 4, "dwt_groups": 16, "n_ctx": 4, "lga_heads": 4, "batch_size": 32, "epochs": 8,
        "lr": 1e-3, "lr_step_every": 4, "flip": False}


class FatFormerDetector(Detector, SupportsDistributed):
    """FatFormer: forgery-aware adapters in a frozen CLIP image encoder plus language-guided alignment.

    Presets: ``full`` = the paper (ViT-L/14 OpenAI weights, which must be on the
    machine; 3 adapters at blocks 7, 15, 23; 256 -> 224 crops + flip; Adam lr
    4e-4, 25 epochs, batch 256, lr x0.9 every 10 epochs); ``tiny`` = mfx's tiny
    random-init CLIP (2 blocks, so adapters in both; 64 px, no crop or flip),
    bottleneck 16, 4 heads, 4 context tokens, batch 32, lr 1e-3 for 8 epochs
    (x0.9 every 4) — what the tests and the offline benchmark run.
    """

    name: ClassVar[str] = "fatformer"
    description: ClassVar[str] = "forgery-aware adapters (image + DWT) and image-conditioned prompts on frozen CLIP " \
                                 "(Liu et al., CVPR 2024)"
    config_class: ClassVar[type] = FatFormerConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"tiny": TINY}

    def __init__(self, config: Any = None, *, preset: str | None = None, device: str | torch.device = "cpu"):
        super().__init__(config, preset=preset, device=device)
        if self.config.normalisation not in NORMALISATIONS:
            raise ConfigError(f"fatformer: normalisation must be one of {', '.join(NORMALISATIONS)}, "
                              f"not {self.config.normalisation!r}")
        self._backbone = None
        self.model: FatFormerModule | None = None
        self._prompt: dict[str, torch.Tensor] = {}
        self._test_steps: Any = None
        self._train_steps: Any = None

    # -- frozen backbone and trainable parts, built on first use
    @property
    def backbone(self) -> Any:
        if self._backbone is None:
            from medforensics_core.backbones import load_clip

            cfg = self.config
            self._backbone = load_clip(cfg.clip_model, cfg.pretrained, device=self.device, seed=cfg.backbone_seed)
            check_vision_tower(self._backbone.model.visual)
        return self._backbone

    @property
    def blocks(self) -> tuple[int, ...]:
        return evenly_spaced_blocks(len(self.backbone.model.visual.transformer.resblocks), self.config.adapters)

    def ensure_model(self) -> FatFormerModule:
        if self.model is None:
            clip = self.backbone.model
            visual = clip.visual
            self.model = FatFormerModule(self.blocks, visual.transformer.width, tuple(visual.grid_size),
                                         clip.token_embedding.weight.shape[1], self.backbone.embed_dim,
                                         self.config).to(self.device).eval()
        return self.model

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.ensure_model()}

    def to(self, device: str | torch.device) -> "FatFormerDetector":
        super().to(device)
        if self._backbone is not None:
            self._backbone.model.to(self.device)
        self._prompt = {}
        return self

    # -- preprocessing: square resize, crop, normalisation (official: ImageNet statistics)
    def _normalise(self) -> Any:
        bb = self.backbone
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if self.config.normalisation == "imagenet" else (bb.mean, bb.std)
        return normalise(mean, std)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        if self._test_steps is None:
            size, load = self.backbone.image_size, self.config.load_size
            self._test_steps = v2.Compose([v2.Resize((load, load), antialias=True), v2.CenterCrop(size),
                                           self._normalise()])
        return self._test_steps(image)

    def train_transform(self, image: torch.Tensor) -> torch.Tensor:
        if self._train_steps is None:
            size, load = self.backbone.image_size, self.config.load_size
            self._train_steps = v2.Compose([v2.Resize((load, load), antialias=True),
                                            train_geometry(size, self.config.flip), self._normalise()])
        return self._train_steps(image)

    # -- the forward pass
    def prompt_parts(self) -> dict[str, torch.Tensor]:
        """Token ids and frozen embeddings of "<ctx> real." / "<ctx> fake." (placeholders where the context goes)."""
        if not self._prompt:
            clip, n_ctx = self.backbone.model, self.config.n_ctx
            texts = [" ".join(["X"] * n_ctx) + f" {name}." for name in self.config.class_names]
            tokens = self.backbone.tokenizer(texts).to(self.device)
            tokens = tokens[:, :used_length(tokens, clip)]
            with torch.no_grad():
                embedded = clip.token_embedding(tokens)
            self._prompt = {"tokens": tokens, "prefix": embedded[:, :1], "suffix": embedded[:, 1 + n_ctx:]}
        return self._prompt

    def text_features(self, context: torch.Tensor) -> torch.Tensor:
        """Class text embeddings ``(N, 2, E)`` for per-image context ``(N, n_ctx, width)``."""
        parts = self.prompt_parts()
        n, classes = context.shape[0], parts["tokens"].shape[0]
        prefix = parts["prefix"].unsqueeze(0).expand(n, -1, -1, -1)
        suffix = parts["suffix"].unsqueeze(0).expand(n, -1, -1, -1)
        ctx = context.unsqueeze(1).expand(-1, classes, -1, -1)
        embeddings = torch.cat([prefix.to(ctx.dtype), ctx, suffix.to(ctx.dtype)], dim=2).flatten(0, 1)
        tokens = parts["tokens"].repeat(n, 1)
        return encode_text_embeddings(self.backbone.model, embeddings, tokens).reshape(n, classes, -1)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, 2)`` real/fake logits: class-token and aligned-patch cosines to the prompts, summed."""
        model, clip = self.ensure_model(), self.backbone.model
        parallel = {i: model.adapters[str(i)] for i in model.blocks}
        tokens = run_image_tower(clip.visual, batch.to(self.device), parallel)
        image = project_tokens(clip.visual, tokens)
        text = self.text_features(model.alignment.image_context(image))
        text_unit = F.normalize(text, dim=-1)
        scale = clip.logit_scale.exp()
        first = scale * torch.einsum("ne,nke->nk", F.normalize(image[:, 0], dim=-1), text_unit)
        aligned = F.normalize(model.alignment.aligned_patches(image[:, 1:], text), dim=-1)
        second = scale * torch.einsum("ne,nke->nk", aligned, text_unit)
        return first + second

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """``logit_fake - logit_real``: BCE on it is exactly the 2-class cross-entropy FatFormer trains with."""
        logits = self.logits(batch).float()
        return logits[:, 1] - logits[:, 0]

    @torch.no_grad()
    def predict_proba(self, batch: Batch) -> np.ndarray:
        self.ensure_model().eval()
        return torch.sigmoid(self.forward(batch.inputs)).float().cpu().numpy()

    # -- training
    def fit(self, train: Any, val: Any | None = None, ctx: Any | None = None) -> "FatFormerDetector":
        from medforensics_core.engine.context import FitContext

        ctx = ctx or FitContext(device=self.device)
        self.to(ctx.device)
        with seeded(ctx.seed):
            self.model = None
            model = self.ensure_model()
            cfg = self.config
            optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
            schedule = Schedule(ctx.epochs_for(cfg.epochs), step_every=cfg.lr_step_every,
                                step_gamma=cfg.lr_step_gamma)
            train_loader, val_loader = detector_loaders(self, train, val, ctx, ctx.batch_size_for(cfg.batch_size))
            # the last epoch is kept (no validation-based selection in the paper): validation is only reported
            self.train_info = train_binary(model, self.forward, self.predict_proba, optimizer, train_loader,
                                           None, ctx, schedule, self.name)
            if val_loader is not None:
                self.train_info["val_acc"] = accuracy(*predict_loader(self.predict_proba, val_loader, ctx,
                                                                      description="validation"))
        self.fitted = True
        return self

    # -- reporting and state
    def weights_info(self) -> str:
        trainable = sum(p.numel() for p in self.ensure_model().parameters())
        return f"frozen {self.backbone.weights_info} + trained adapters at blocks {list(self.blocks)} " \
               f"and prompt alignment ({trainable:,} parameters)"

    def warnings(self) -> list[str]:
        if self.backbone.is_random:
            return [f"{self.name}: the CLIP backbone {self.config.clip_model} is randomly initialised, not "
                    f"pretrained — FatFormer adapts pretrained CLIP; give pretrained=PATH for real runs"]
        return []

    def extra_state(self) -> dict[str, Any]:
        return {"backbone": self.backbone.key()}

    def load_state(self, tensors: Mapping[str, torch.Tensor], extra: Mapping[str, Any],
                   source: str = "checkpoint") -> None:
        check_backbone(extra, self.backbone, self.name, source)
        self.load_module_tensors(tensors, source)
