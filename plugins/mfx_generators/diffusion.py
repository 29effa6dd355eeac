"""Diffusion generators: ``ddpm`` (unconditional), ``sdedit`` (img2img) and ``inpaint`` (local regeneration).

All three share one small U-Net trained with the DDPM objective (Ho et al.,
NeurIPS 2020: predict the noise added at a random step of a linear beta
schedule) and sample with deterministic DDIM steps (Song et al., ICLR 2021), so
few network evaluations suffice on a CPU.

* ``ddpm`` starts from pure noise: whole-image synthesis.
* ``sdedit`` (Meng et al., ICLR 2022) noises a *real* image to strength ``s``
  (the fraction of the schedule) and denoises it: the fake keeps the real
  anatomy and only the fine texture is regenerated. Lower strength means a
  fake closer to its real source: the benchmark's difficulty knob.
* ``inpaint`` regenerates one square region of a real image (RePaint-style
  replacement of the known area at every step) and pastes it back: a *local*
  manipulation that leaves most of the image untouched, the hardest case for
  global-statistics detectors.

``sdedit`` and ``inpaint`` reuse a fitted ``ddpm`` of the same modality through
:meth:`DiffusionGenerator.adopt` (the builder does this), so one denoiser is
trained per modality.
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

from .common import (batched, check_images, is_grey, random_batch, seed_of, seeded, to_image_space, to_model_space,
                     training_steps)

LEVELS = 3  # U-Net resolution levels: images must be divisible by 2**LEVELS


@dataclasses.dataclass
class DiffusionConfig:
    """DDPM training (linear betas 1e-4..0.02 over 1000 steps, eps-prediction MSE, Adam) + DDIM sampling."""

    width: int = 16              # channels at full resolution; doubled at each level below
    train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    steps: int = 400             # training iterations
    batch_size: int = 16
    patch: int = 64              # train on random windows of this side (0 = whole images); sampling is full size
    lr: float = 2e-3
    sample_steps: int = 20       # DDIM steps for a full (strength 1) denoising
    strength: float = 1.0        # fraction of the schedule a sample starts from (1 = pure noise)
    batch_infer: int = 32        # images per denoising batch


@dataclasses.dataclass
class SDEditConfig(DiffusionConfig):
    """SDEdit: start from the real image noised to 30% of the schedule (keeps anatomy, regenerates texture)."""

    strength: float = 0.3


@dataclasses.dataclass
class InpaintConfig(DiffusionConfig):
    """Local regeneration of a square whose side is ``region`` of the image side, from pure noise."""

    region: float = 0.4


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, t_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(math.gcd(8, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(math.gcd(8, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(t_emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """A small U-Net: one residual block per level, strided-conv down, nearest-neighbour + conv up."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.t_dim = width * 4
        self.time_mlp = nn.Sequential(nn.Linear(width, self.t_dim), nn.SiLU(), nn.Linear(self.t_dim, self.t_dim))
        self.width = width
        widths = [width * 2**i for i in range(LEVELS + 1)]
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.down_blocks = nn.ModuleList(_ResBlock(widths[i], widths[i], self.t_dim) for i in range(LEVELS))
        self.downsamplers = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 3, 2, 1) for i in range(LEVELS))
        self.middle = _ResBlock(widths[-1], widths[-1], self.t_dim)
        self.upsamplers = nn.ModuleList(nn.Conv2d(widths[i + 1], widths[i], 3, padding=1) for i in range(LEVELS))
        self.up_blocks = nn.ModuleList(_ResBlock(widths[i] * 2, widths[i], self.t_dim) for i in range(LEVELS))
        self.out = nn.Sequential(nn.GroupNorm(math.gcd(8, width), width), nn.SiLU(), nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_emb = self.time_mlp(_timestep_embedding(t, self.width))
        h = self.stem(x)
        skips = []
        for block, down in zip(self.down_blocks, self.downsamplers):
            h = block(h, t_emb)
            skips.append(h)
            h = down(h)
        h = self.middle(h, t_emb)
        for i in reversed(range(LEVELS)):
            h = self.upsamplers[i](F.interpolate(h, scale_factor=2, mode="nearest"))
            h = self.up_blocks[i](torch.cat([h, skips[i]], dim=1), t_emb)
        return self.out(h)


class DiffusionGenerator(Generator):
    """Base of the diffusion family: DDPM training and DDIM sampling around one :class:`UNet`."""

    family: ClassVar[str] = "diffusion"
    config_class: ClassVar[type] = DiffusionConfig
    presets: ClassVar[dict] = {"tiny": {"steps": 40, "width": 8, "batch_size": 8, "patch": 32, "sample_steps": 6}}

    def __init__(self, config: DiffusionConfig | None = None, *, device: str | torch.device = "cpu"):
        super().__init__(config, device=device)
        self.model: UNet | None = None
        self.channels = 3
        self.losses: list[float] = []
        self.trained_by: str = ""
        self.image_size: tuple[int, int] | None = None
        cfg = self.config
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, cfg.train_timesteps, dtype=torch.float64)
        self.alpha_bar = torch.cumprod(1.0 - betas, dim=0).float()

    # -- training
    def fit(self, images: torch.Tensor, ctx: FitContext | None = None) -> "DiffusionGenerator":
        check_images(images, 2**LEVELS, self.name)
        cfg = self.config
        self.channels = 1 if is_grey(images) else 3
        self.image_size = (int(images.shape[-2]), int(images.shape[-1]))
        data = to_model_space(images, self.channels).to(self.device)
        with seeded(seed_of(ctx)):
            model = UNet(self.channels, cfg.width).to(self.device)
        rng = torch.Generator().manual_seed(seed_of(ctx) + 1)
        optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        alpha_bar = self.alpha_bar.to(self.device)
        self.losses = []
        for _ in training_steps(ctx, cfg.steps, f"{self.name} training"):
            x0 = random_batch(data, cfg.batch_size, rng, cfg.patch)
            t = torch.randint(0, cfg.train_timesteps, (cfg.batch_size,), generator=rng).to(self.device)
            noise = torch.randn(x0.shape, generator=rng).to(self.device)
            ab = alpha_bar[t][:, None, None, None]
            loss = F.mse_loss(model(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t), noise)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            self.losses.append(loss.item())
        self.model = model.eval()
        self.trained_by = self.name
        return self

    def adopt(self, other: "DiffusionGenerator") -> "DiffusionGenerator":
        """Share the fitted denoiser of ``other`` (same modality) instead of training a second one."""
        if other.model is None:
            raise RuntimeError(f"{self.name}: cannot adopt an unfitted {other.name!r}")
        self.model, self.channels, self.losses = other.model, other.channels, other.losses
        self.alpha_bar, self.trained_by = other.alpha_bar, other.trained_by or other.name
        self.image_size = other.image_size
        return self

    # -- sampling
    def _require_model(self) -> UNet:
        if self.model is None:
            raise RuntimeError(f"{self.name}: call fit() (or adopt()) first")
        return self.model

    def _schedule(self, strength: float) -> list[int]:
        """Decreasing DDIM timesteps from ``strength`` of the schedule down to 0."""
        cfg = self.config
        start = max(1, min(cfg.train_timesteps, round(strength * cfg.train_timesteps))) - 1
        n = max(1, math.ceil(strength * cfg.sample_steps))
        return sorted({round(start * i / n) for i in range(n + 1)}, reverse=True)

    def _noised(self, x0: torch.Tensor, t: int, generator: torch.Generator) -> torch.Tensor:
        ab = self.alpha_bar[t]
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    @torch.no_grad()
    def _denoise(self, x: torch.Tensor, timesteps: list[int], known: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Deterministic DDIM (eta 0) from ``timesteps[0]`` to 0; ``known``/``mask`` re-impose the known area."""
        model = self._require_model()
        for i, t in enumerate(timesteps[:-1]):
            t_next = timesteps[i + 1]
            ab, ab_next = self.alpha_bar[t], self.alpha_bar[t_next]
            eps = model(x, torch.full((x.shape[0],), t, device=self.device, dtype=torch.long))
            x0_hat = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
            x = ab_next.sqrt() * x0_hat + (1 - ab_next).sqrt() * eps
            if known is not None and mask is not None and generator is not None and t_next > 0:
                x = mask * x + (1 - mask) * self._noised(known, t_next, generator)
        eps = model(x, torch.zeros(x.shape[0], device=self.device, dtype=torch.long))
        ab = self.alpha_bar[0]
        return ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)


class DDPMGenerator(DiffusionGenerator):
    name: ClassVar[str] = "ddpm"
    description: ClassVar[str] = "DDPM-trained small U-Net, unconditional DDIM sampling from pure noise"

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.image_size is None:
            raise RuntimeError(f"{self.name}: call fit() first (it fixes the image size)")
        generator = generator or torch.Generator().manual_seed(0)
        h, w = self.image_size

        def one_batch(count_tensor: torch.Tensor) -> torch.Tensor:
            x = torch.randn((count_tensor.shape[0], self.channels, h, w), generator=generator).to(self.device)
            return self._denoise(x, self._schedule(self.config.strength))

        return to_image_space(batched(one_batch, torch.empty(n, 0), self.config.batch_infer)).cpu()


class SDEditGenerator(DiffusionGenerator):
    name: ClassVar[str] = "sdedit"
    description: ClassVar[str] = "SDEdit img2img: noise a real image to STRENGTH and denoise it (keeps anatomy)"
    config_class: ClassVar[type] = SDEditConfig

    @torch.no_grad()
    def transform(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        generator = generator or torch.Generator().manual_seed(0)
        schedule = self._schedule(self.config.strength)

        def one_batch(real: torch.Tensor) -> torch.Tensor:
            x0 = to_model_space(real, self.channels).to(self.device)
            return self._denoise(self._noised(x0, schedule[0], generator), schedule)

        return to_image_space(batched(one_batch, images, self.config.batch_infer)).cpu()


class InpaintGenerator(DiffusionGenerator):
    name: ClassVar[str] = "inpaint"
    family: ClassVar[str] = "local-regeneration"
    description: ClassVar[str] = "Local regeneration: re-synthesise one square region with the diffusion model"
    config_class: ClassVar[type] = InpaintConfig

    def square_mask(self, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
        """1 inside a randomly placed square of side ``region * min(h, w)``, 0 elsewhere."""
        side = max(2, round(self.config.region * min(h, w)))
        top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
        mask = torch.zeros(1, 1, h, w)
        mask[..., top:top + side, left:left + side] = 1.0
        return mask

    @torch.no_grad()
    def transform(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        generator = generator or torch.Generator().manual_seed(0)
        schedule = self._schedule(self.config.strength)
        h, w = images.shape[-2:]

        def one_image(real: torch.Tensor) -> torch.Tensor:
            x0 = to_model_space(real, self.channels).to(self.device)
            mask = self.square_mask(h, w, generator).to(self.device)
            start = torch.randn(x0.shape, generator=generator).to(self.device)
            regenerated = self._denoise(start, schedule, known=x0, mask=mask, generator=generator)
            out = to_image_space(mask * regenerated + (1 - mask) * x0)
            # outside the region the fake is the real image, bit for bit
            return torch.where(mask.bool().expand_as(out), out, real.to(self.device))

        return batched(one_image, images, 1).cpu()
