"""``dcgan``: an unconditional GAN with transposed-convolution up-sampling (Radford et al., ICLR 2016).

Transposed convolutions with stride 2 leave the checkerboard pattern and the
periodic spectral peaks that Odena et al. (2016) and Durall et al. (2020)
describe: the classic GAN trace natural-image detectors were built on. Four
stride-2 layers take a latent map at 1/16 of the output size to full size, so
one model serves any crop size divisible by 16. Small widths and a short run
keep training within minutes on two CPU cores.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from medforensics_core.engine.context import FitContext
from medforensics_core.interfaces import Generator

from .common import (check_images, is_grey, random_batch, seed_of, seeded, to_image_space, to_model_space,
                     training_steps)

UPSAMPLINGS = 4  # stride-2 layers: the latent map is 1/16 of the image side


@dataclasses.dataclass
class DCGANConfig:
    """DCGAN recipe (Adam 2e-4, beta1 0.5, non-saturating loss, batch norm), scaled down for CPUs."""

    latent_dim: int = 64
    width: int = 16          # channels of the last generator layer; earlier layers double it
    steps: int = 300         # generator updates (one discriminator update each)
    batch_size: int = 16
    lr: float = 2e-4
    beta1: float = 0.5


class _Generator(nn.Module):
    def __init__(self, latent_dim: int, width: int, channels: int, size: int):
        super().__init__()
        self.start = size // 2**UPSAMPLINGS
        top = width * 2 ** (UPSAMPLINGS - 1)
        self.project = nn.Sequential(nn.Linear(latent_dim, top * self.start * self.start), nn.ReLU(True))
        self.top = top
        layers: list[nn.Module] = []
        ch = top
        for _ in range(UPSAMPLINGS - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(z).view(-1, self.top, self.start, self.start))


class _Discriminator(nn.Module):
    def __init__(self, width: int, channels: int, size: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = width
        for _ in range(UPSAMPLINGS - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        side = size // 2**UPSAMPLINGS
        layers += [nn.Flatten(), nn.Linear(ch * side * side, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(1)


class DCGANGenerator(Generator):
    name: ClassVar[str] = "dcgan"
    family: ClassVar[str] = "gan"
    description: ClassVar[str] = "DCGAN: unconditional GAN with transposed-convolution up-sampling (checkerboard traces)"
    config_class: ClassVar[type] = DCGANConfig
    presets: ClassVar[dict] = {"tiny": {"steps": 40, "width": 8, "batch_size": 8}}

    def __init__(self, config: DCGANConfig | None = None, *, device: str | torch.device = "cpu"):
        super().__init__(config, device=device)
        self.generator_net: _Generator | None = None
        self.channels = 3
        self.losses: list[float] = []         # discriminator loss per step
        self.generator_losses: list[float] = []

    def fit(self, images: torch.Tensor, ctx: FitContext | None = None) -> "DCGANGenerator":
        check_images(images, 2**UPSAMPLINGS, self.name)
        cfg = self.config
        self.channels = 1 if is_grey(images) else 3
        size = images.shape[-1]
        if images.shape[-2] != size:
            raise ValueError(f"{self.name}: square images expected, got {tuple(images.shape[-2:])}")
        data = to_model_space(images, self.channels).to(self.device)
        with seeded(seed_of(ctx)):
            gen = _Generator(cfg.latent_dim, cfg.width, self.channels, size).to(self.device)
            disc = _Discriminator(cfg.width, self.channels, size).to(self.device)
        rng = torch.Generator().manual_seed(seed_of(ctx) + 1)
        opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
        bce = nn.BCEWithLogitsLoss()
        ones, zeros = torch.ones(cfg.batch_size, device=self.device), torch.zeros(cfg.batch_size, device=self.device)
        self.losses, self.generator_losses = [], []
        for _ in training_steps(ctx, cfg.steps, f"{self.name} training"):
            real = random_batch(data, cfg.batch_size, rng)
            z = torch.randn(cfg.batch_size, cfg.latent_dim, generator=rng).to(self.device)
            fake = gen(z)
            loss_d = bce(disc(real), ones) + bce(disc(fake.detach()), zeros)
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            loss_g = bce(disc(fake), ones)
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            self.losses.append(loss_d.item())
            self.generator_losses.append(loss_g.item())
        self.generator_net = gen.eval()
        return self

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.generator_net is None:
            raise RuntimeError(f"{self.name}: call fit() before sample()")
        generator = generator or torch.Generator().manual_seed(0)
        z = torch.randn(n, self.config.latent_dim, generator=generator).to(self.device)
        return to_image_space(self.generator_net(z)).cpu()
