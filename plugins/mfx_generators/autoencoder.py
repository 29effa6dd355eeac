"""``autoencoder``: a real image passed through a trained encoder/decoder (reconstruction fakes).

Reconstruction through a bottleneck is what the decoders of latent diffusion
models and VAEs do to every image they output, so the decoder's up-sampling is
the trace a detector must find (Ricker et al., 2024, showed that autoencoder
reconstructions alone fool many detectors). The up-sampling kind is a config
field, because kinds leave different spectra:

* ``bilinear``: bilinear interpolation then a 3x3 convolution (smooth, low-pass);
* ``pixelshuffle``: a convolution to 4x channels then sub-pixel shuffle (Shi et
  al., 2016), which can leave 2-periodic patterns;
* ``transposed``: stride-2 transposed convolution (checkerboard).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medforensics_core.engine.context import FitContext
from medforensics_core.interfaces import Generator

from .common import (batched, check_images, is_grey, random_batch, seed_of, seeded, to_image_space, to_model_space,
                     training_steps)

UPSAMPLING_KINDS = ("bilinear", "pixelshuffle", "transposed")


@dataclasses.dataclass
class AutoencoderConfig:
    """A convolutional autoencoder with a spatial bottleneck, L1 reconstruction loss, Adam."""

    upsample: str = "bilinear"   # bilinear | pixelshuffle | transposed
    width: int = 16              # channels after the first down-sampling; doubled once below
    levels: int = 3              # stride-2 down-samplings (bottleneck at 1/2**levels of the side)
    latent_channels: int = 8     # channels of the bottleneck map
    steps: int = 300
    batch_size: int = 16
    patch: int = 64              # train on random windows of this side (0 = whole images); inference is full size
    lr: float = 2e-3
    batch_infer: int = 64


def _upsampler(kind: str, c_in: int, c_out: int) -> nn.Module:
    if kind == "bilinear":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                             nn.Conv2d(c_in, c_out, 3, padding=1))
    if kind == "pixelshuffle":
        return nn.Sequential(nn.Conv2d(c_in, c_out * 4, 3, padding=1), nn.PixelShuffle(2))
    if kind == "transposed":
        return nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)
    raise ValueError(f"unknown up-sampling {kind!r}; choose one of {', '.join(UPSAMPLING_KINDS)}")


class _Autoencoder(nn.Module):
    """Strided-conv encoder to a ``latent_channels`` map; decoder of ``levels`` up-samplings of the chosen kind."""

    def __init__(self, channels: int, cfg: AutoencoderConfig):
        super().__init__()
        widths = [cfg.width * min(2**i, 2) for i in range(cfg.levels)]
        encoder: list[nn.Module] = []
        c = channels
        for w in widths:
            encoder += [nn.Conv2d(c, w, 4, 2, 1), nn.GELU()]
            c = w
        encoder.append(nn.Conv2d(c, cfg.latent_channels, 1))
        self.encoder = nn.Sequential(*encoder)
        decoder: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, c, 3, padding=1), nn.GELU()]
        for w in reversed(widths):
            decoder += [_upsampler(cfg.upsample, c, w), nn.GELU()]
            c = w
        decoder.append(nn.Conv2d(c, channels, 3, padding=1))
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.decoder(self.encoder(x)))


class AutoencoderGenerator(Generator):
    name: ClassVar[str] = "autoencoder"
    family: ClassVar[str] = "autoencoder"
    description: ClassVar[str] = "Reconstruction through a trained encoder/decoder (upsample: bilinear|pixelshuffle|transposed)"
    config_class: ClassVar[type] = AutoencoderConfig
    presets: ClassVar[dict] = {"tiny": {"steps": 40, "width": 8, "batch_size": 8, "patch": 32}}

    def __init__(self, config: AutoencoderConfig | None = None, *, device: str | torch.device = "cpu"):
        super().__init__(config, device=device)
        if self.config.upsample not in UPSAMPLING_KINDS:
            raise ValueError(f"unknown up-sampling {self.config.upsample!r}; choose one of {', '.join(UPSAMPLING_KINDS)}")
        self.model: _Autoencoder | None = None
        self.channels = 3
        self.losses: list[float] = []

    def fit(self, images: torch.Tensor, ctx: FitContext | None = None) -> "AutoencoderGenerator":
        cfg = self.config
        check_images(images, 2**cfg.levels, self.name)
        self.channels = 1 if is_grey(images) else 3
        data = to_model_space(images, self.channels).to(self.device)
        with seeded(seed_of(ctx)):
            model = _Autoencoder(self.channels, cfg).to(self.device)
        rng = torch.Generator().manual_seed(seed_of(ctx) + 1)
        optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        self.losses = []
        for _ in training_steps(ctx, cfg.steps, f"{self.name}-{cfg.upsample} training"):
            x = random_batch(data, cfg.batch_size, rng, cfg.patch)
            loss = F.l1_loss(model(x), x)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            self.losses.append(loss.item())
        self.model = model.eval()
        return self

    @torch.no_grad()
    def transform(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError(f"{self.name}: call fit() before transform()")
        model = self.model

        def one_batch(real: torch.Tensor) -> torch.Tensor:
            return to_image_space(model(to_model_space(real, self.channels).to(self.device))).cpu()

        return batched(one_batch, images, self.config.batch_infer)
