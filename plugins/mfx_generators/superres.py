"""``superres``: learned super-resolution regenerations (a real down-sampled, then up-sampled by a trained network).

Scanners, archives and generative pipelines up-sample images with learned
networks; the up-sampling layer leaves its own trace, and which layer is used
changes the trace (Odena et al. 2016 on checkerboards; Tan et al., CVPR 2024,
built NPR on exactly these neighbouring-pixel relations). The network here is
an EDSR-style body (residual blocks at low resolution, Lim et al. 2017) with a
global bicubic skip (as VDSR, Kim et al. 2016), and one of three up-samplers,
each a separate benchmark setting and a separately trained network:

* ``pixelshuffle``: convolution to ``scale**2`` x channels, sub-pixel shuffle (Shi et al. 2016, ESPCN);
* ``transposed``: stride-``scale`` transposed convolution (FSRCNN-style);
* ``resizeconv``: nearest-neighbour resize then a 3x3 convolution (Odena et al.'s fix for checkerboards).

A fake is ``SR(down(real))`` with ``down`` = antialiased bicubic by ``scale``:
the same anatomy as its source, re-synthesised detail.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medforensics_core.engine.context import FitContext
from medforensics_core.interfaces import Generator

from .blocks import channels_equal, grey_out
from .common import batched, check_images, seed_of, seeded, training_steps
from .ldm import balanced_weights, random_windows

UPSAMPLERS = ("pixelshuffle", "transposed", "resizeconv")


@dataclasses.dataclass
class SuperResConfig:
    """EDSR-style x``scale`` network, L1 loss, Adam with cosine decay."""

    upsampler: str = "pixelshuffle"   # pixelshuffle | transposed | resizeconv
    scale: int = 2                    # 2 or 4
    width: int = 32
    blocks: int = 4
    steps: int = 500
    batch_size: int = 16
    patch: int = 64                   # high-resolution training window side
    lr: float = 1e-3
    batch_infer: int = 32


def _upsample_stage(kind: str, width: int, factor: int) -> nn.Module:
    if kind == "pixelshuffle":
        return nn.Sequential(nn.Conv2d(width, width * factor * factor, 3, padding=1), nn.PixelShuffle(factor))
    if kind == "transposed":
        return nn.ConvTranspose2d(width, width, 2 * factor, stride=factor, padding=factor // 2)
    if kind == "resizeconv":
        return nn.Sequential(nn.Upsample(scale_factor=factor, mode="nearest"), nn.Conv2d(width, width, 3, padding=1))
    raise ValueError(f"unknown up-sampler {kind!r}; choose one of {', '.join(UPSAMPLERS)}")


class _Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(True),
                                  nn.Conv2d(width, width, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.5 * self.body(x)


class SRNet(nn.Module):
    def __init__(self, cfg: SuperResConfig):
        super().__init__()
        self.scale = cfg.scale
        self.head = nn.Conv2d(3, cfg.width, 3, padding=1)
        self.body = nn.Sequential(*[_Block(cfg.width) for _ in range(cfg.blocks)])
        stages: list[nn.Module] = []
        for _ in range(int(math.log2(cfg.scale))):
            stages += [_upsample_stage(cfg.upsampler, cfg.width, 2), nn.ReLU(True)]
        self.up = nn.Sequential(*stages)
        self.tail = nn.Conv2d(cfg.width, 3, 3, padding=1)

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        base = F.interpolate(low, scale_factor=self.scale, mode="bicubic", align_corners=False)
        h = self.head(low)
        return base + self.tail(self.up(h + self.body(h)))


def downsample(images: torch.Tensor, scale: int) -> torch.Tensor:
    """The degradation the network learns to undo: antialiased bicubic down-sampling."""
    h, w = images.shape[-2:]
    return F.interpolate(images, size=(h // scale, w // scale), mode="bicubic", align_corners=False,
                         antialias=True).clamp(0, 1)


class SuperResGenerator(Generator):
    """Learned x2/x4 super-resolution of a down-sampled real; one network per up-sampler setting."""

    name: ClassVar[str] = "superres"
    family: ClassVar[str] = "super-resolution"
    conditional: ClassVar[bool] = True     # one network for every modality (it ignores the modality)
    description: ClassVar[str] = ("Learned super-resolution of a down-sampled real "
                                  "(upsampler: pixelshuffle|transposed|resizeconv)")
    config_class: ClassVar[type] = SuperResConfig
    presets: ClassVar[dict] = {"tiny": {"steps": 30, "width": 8, "blocks": 1, "batch_size": 8, "patch": 32}}

    def __init__(self, config: SuperResConfig | None = None, *, device: str | torch.device = "cpu"):
        super().__init__(config, device=device)
        if self.config.upsampler not in UPSAMPLERS:
            raise ValueError(f"unknown up-sampler {self.config.upsampler!r}; choose one of {', '.join(UPSAMPLERS)}")
        if self.config.scale not in (2, 4):
            raise ValueError(f"superres: scale must be 2 or 4, not {self.config.scale}")
        self.model: SRNet | None = None
        self.losses: list[float] = []

    def fit(self, images: torch.Tensor, ctx: FitContext | None = None,
            conditions: torch.Tensor | None = None) -> "SuperResGenerator":
        cfg = self.config
        check_images(images, cfg.scale, self.name)
        seed = seed_of(ctx)
        with seeded(seed):
            model = SRNet(cfg).to(self.device)
        rng = torch.Generator().manual_seed(seed + 1)
        optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, cfg.steps))
        patch = cfg.patch - cfg.patch % cfg.scale
        weights = balanced_weights(conditions) if conditions is not None else None
        self.losses = []
        for _ in training_steps(ctx, cfg.steps, f"{self.name}-{cfg.upsampler} training"):
            high, _ = random_windows(images, cfg.batch_size, patch, rng, weights)
            high = high.to(self.device)
            loss = F.l1_loss(model(downsample(high, cfg.scale)), high)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            self.losses.append(loss.item())
        self.model = model.eval()
        return self

    @torch.no_grad()
    def transform(self, images: torch.Tensor, generator: torch.Generator | None = None,
                  conditions: torch.Tensor | None = None) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError(f"{self.name}: call fit() before transform()")
        check_images(images, self.config.scale, self.name)
        model = self.model

        def one_batch(real: torch.Tensor) -> torch.Tensor:
            fake = model(downsample(real.to(self.device), self.config.scale)).clamp(0, 1).cpu()
            return grey_out(fake, channels_equal(real))

        return batched(one_batch, images, self.config.batch_infer)
