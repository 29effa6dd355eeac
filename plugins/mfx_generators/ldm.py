"""``ldm``: a latent-diffusion pipeline (Rombach et al., CVPR 2022) scaled down for two CPU cores.

Most medical image generators in use today (RoentGen, MINIM, Medical
Diffusion...) are latent-diffusion pipelines: an autoencoder with a spatial
factor of 4-8 and a few latent channels, and a diffusion model that works in its
latent space. Every image such a pipeline outputs passes through the
autoencoder's decoder, so the decoder's up-sampling is the trace a detector
must find. This generator trains both parts, once, on the training crops of
*every* modality (one network, told each image's modality, like a
modality-conditioned medical LDM):

1. a KL-regularised convolutional autoencoder (``factor`` 4 or 8, ``latent_channels``
   channels; L1 + image-gradient L1 + a tiny KL term, as the LDM "KL-f4/f8" models);
2. a small U-Net trained with the DDPM objective on the autoencoder's (scaled)
   latents, conditioned on timestep and modality, sampled with DDIM (eta 0).

One trained pipeline serves four ``mode`` s (each a benchmark setting):

* ``reconstruct``: decode(encode(real)) -- the trace every LDM image carries (family ``autoencoder``);
* ``img2img``: SDEdit in latent space -- the real's latent noised to ``strength`` and denoised;
* ``inpaint``: a round region (diameter ``region`` of the side) regenerated in latent space (known
  latents re-imposed at every step, RePaint style), decoded, and pasted back into the real with a
  feathered edge -- outside the region the fake is the real image; ``strength`` below 1 starts the
  region from the real latent noised that far (the ``strength`` of diffusers' inpainting pipeline);
* ``sample``: DDIM from pure latent noise for a given modality.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medforensics_core.engine.context import FitContext
from medforensics_core.interfaces import Generator

from .blocks import ResBlock, channels_equal, grey_out, group_norm, soft_ellipse_mask, timestep_embedding
from .common import batched, check_images, seed_of, seeded, training_steps

log = logging.getLogger(__name__)

MODES = ("reconstruct", "img2img", "inpaint", "sample")
FAMILY_OF_MODE = {"reconstruct": "autoencoder", "img2img": "latent-diffusion", "inpaint": "latent-diffusion",
                  "sample": "latent-diffusion"}


@dataclasses.dataclass
class LDMConfig:
    """Autoencoder + latent U-Net training, and how the pipeline is used (``mode``, ``strength``, ``region``)."""

    mode: str = "img2img"          # reconstruct | img2img | inpaint | sample
    factor: int = 4                # spatial down-sampling of the autoencoder (4 or 8)
    latent_channels: int = 4
    ae_width: int = 32             # channels at full resolution; doubled once below
    ae_steps: int = 600
    ae_batch_size: int = 16
    ae_patch: int = 48             # autoencoder trains on random windows of this side
    ae_lr: float = 2e-3
    kl_weight: float = 1e-6
    edge_weight: float = 0.5       # L1 on image gradients: keeps edges and texture sharp
    unet_width: int = 32
    unet_steps: int = 800          # 0: no diffusion model (a reconstruction-only pipeline)
    unet_batch_size: int = 32
    unet_patch: int = 0            # latent window side for training (0 = whole latents)
    unet_lr: float = 2e-3
    train_timesteps: int = 1000
    beta_start: float = 0.00085    # the "scaled linear" schedule of latent diffusion
    beta_end: float = 0.012
    sample_steps: int = 25         # DDIM steps for a full denoising
    strength: float = 0.5          # img2img and inpaint: fraction of the schedule the real latent is noised to
                                   # (inpaint at 1.0 starts the region from pure noise, as diffusers' inpainting does)
    region: float = 0.4            # inpaint: diameter of the regenerated region, as a fraction of the image side
    feather: float = 6.0           # inpaint: width of the blend ramp, in pixels
    batch_infer: int = 32


class KLAutoencoder(nn.Module):
    """Encoder to a diagonal Gaussian over ``latent_channels`` maps at 1/``factor``; nearest+conv decoder."""

    def __init__(self, channels: int, width: int, factor: int, latent_channels: int):
        super().__init__()
        levels = int(math.log2(factor))
        widths = [width * min(2**i, 2) for i in range(levels + 1)]
        enc: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1)]
        for i in range(levels):
            enc += [ResBlock(widths[i], widths[i]), nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1)]
        enc += [ResBlock(widths[-1], widths[-1]), group_norm(widths[-1]), nn.SiLU(),
                 nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1), ResBlock(widths[-1], widths[-1])]
        for i in reversed(range(levels)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i + 1], widths[i], 3, padding=1),
                    ResBlock(widths[i], widths[i])]
        dec += [group_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


class LatentUNet(nn.Module):
    """Two-level U-Net on latents; timestep and modality embeddings are added in every residual block."""

    def __init__(self, channels: int, width: int, n_conditions: int):
        super().__init__()
        self.width = width
        emb = 4 * width
        self.time_mlp = nn.Sequential(nn.Linear(width, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.condition = nn.Embedding(max(1, n_conditions), emb)
        w1, w2 = width, 2 * width
        self.stem = nn.Conv2d(channels, w1, 3, padding=1)
        self.down1 = ResBlock(w1, w1, emb)
        self.pool1 = nn.Conv2d(w1, w2, 3, stride=2, padding=1)
        self.down2 = ResBlock(w2, w2, emb)
        self.pool2 = nn.Conv2d(w2, w2, 3, stride=2, padding=1)
        self.middle = ResBlock(w2, w2, emb)
        self.up2 = ResBlock(2 * w2, w2, emb)
        self.lift2 = nn.Conv2d(w2, w2, 3, padding=1)
        self.up1 = ResBlock(w2 + w1, w1, emb)
        self.lift1 = nn.Conv2d(w2, w2, 3, padding=1)
        self.out = nn.Sequential(group_norm(w1), nn.SiLU(), nn.Conv2d(w1, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.width)) + self.condition(condition)
        h1 = self.down1(self.stem(x), emb)
        h2 = self.down2(self.pool1(h1), emb)
        h = self.middle(self.pool2(h2), emb)
        h = self.up2(torch.cat([self.lift2(F.interpolate(h, scale_factor=2, mode="nearest")), h2], 1), emb)
        h = self.up1(torch.cat([self.lift1(F.interpolate(h, scale_factor=2, mode="nearest")), h1], 1), emb)
        return self.out(h)


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def balanced_weights(conditions: torch.Tensor) -> torch.Tensor:
    """Sampling weight per image so that every modality is drawn equally often.

    The modalities have very different numbers of training crops (hundreds of
    brain MRI slices, a few dozen fundus crops); drawn uniformly, a network
    shared by all of them would learn the large grey modalities and wash out
    the colour of the small ones.
    """
    counts = torch.bincount(conditions).float()
    return 1.0 / counts[conditions]


def random_windows(data: torch.Tensor, count: int, side: int, rng: torch.Generator,
                   weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random windows (with horizontal flips) drawn with replacement from ``data``, reproducibly.

    ``weights`` (one per image) makes some images likelier (see :func:`balanced_weights`).
    """
    if weights is None:
        index = torch.randint(0, data.shape[0], (count,), generator=rng)
    else:
        index = torch.multinomial(weights, count, replacement=True, generator=rng)
    h, w = data.shape[-2:]
    batch = data[index]
    if 0 < side < min(h, w):
        top = torch.randint(0, h - side + 1, (count,), generator=rng).tolist()
        left = torch.randint(0, w - side + 1, (count,), generator=rng).tolist()
        batch = torch.stack([img[:, y:y + side, x:x + side] for img, y, x in zip(batch, top, left)])
    flip = torch.rand(count, generator=rng) < 0.5
    return torch.where(flip[:, None, None, None], batch.flip(-1), batch), index


class LDMGenerator(Generator):
    """One latent-diffusion pipeline, trained once on all modalities; ``mode`` picks how it makes fakes."""

    name: ClassVar[str] = "ldm"
    family: ClassVar[str] = "latent-diffusion"
    conditional: ClassVar[bool] = True
    description: ClassVar[str] = ("Latent diffusion: KL autoencoder (factor 4/8) + modality-conditioned latent U-Net, "
                                  "DDIM; mode reconstruct|img2img|inpaint|sample")
    config_class: ClassVar[type] = LDMConfig
    presets: ClassVar[dict] = {"tiny": {"ae_steps": 30, "ae_width": 8, "ae_batch_size": 8, "ae_patch": 32,
                                        "unet_steps": 30, "unet_width": 8, "unet_batch_size": 8, "sample_steps": 6}}

    def __init__(self, config: LDMConfig | None = None, *, device: str | torch.device = "cpu"):
        super().__init__(config, device=device)
        cfg = self.config
        if cfg.mode not in MODES:
            raise ValueError(f"ldm: unknown mode {cfg.mode!r}; choose one of {', '.join(MODES)}")
        if cfg.factor not in (4, 8):
            raise ValueError(f"ldm: factor must be 4 or 8, not {cfg.factor}")
        self.family = FAMILY_OF_MODE[cfg.mode]
        self.autoencoder: KLAutoencoder | None = None
        self.unet: LatentUNet | None = None
        self.latent_scale = 1.0
        self.latent_size: tuple[int, int] | None = None
        self.grey_conditions: set[int] = set()
        self.losses: list[float] = []
        self.unet_losses: list[float] = []
        betas = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.train_timesteps, dtype=torch.float64) ** 2
        self.alpha_bar = torch.cumprod(1.0 - betas, dim=0).float()

    @property
    def is_img2img(self) -> bool:
        return self.config.mode != "sample"

    # -- training
    def fit(self, images: torch.Tensor, ctx: FitContext | None = None,
            conditions: torch.Tensor | None = None) -> "LDMGenerator":
        cfg = self.config
        check_images(images, cfg.factor * 4, self.name)
        conditions = conditions if conditions is not None else torch.zeros(len(images), dtype=torch.long)
        grey = channels_equal(images)
        self.grey_conditions = {int(c) for c in conditions.unique() if bool(grey[conditions == c].all())}
        data = images * 2.0 - 1.0
        seed = seed_of(ctx)
        weights = balanced_weights(conditions)
        self._fit_autoencoder(data, weights, ctx, seed)
        latents = self._encode_all(data)
        self.latent_size = (int(latents.shape[-2]), int(latents.shape[-1]))
        if cfg.unet_steps > 0:
            self._fit_unet(latents, conditions, weights, ctx, seed)
        return self

    def _fit_autoencoder(self, data: torch.Tensor, weights: torch.Tensor, ctx: FitContext | None, seed: int) -> None:
        cfg = self.config
        with seeded(seed):
            model = KLAutoencoder(3, cfg.ae_width, cfg.factor, cfg.latent_channels).to(self.device)
        rng = torch.Generator().manual_seed(seed + 1)
        optimiser = torch.optim.Adam(model.parameters(), lr=cfg.ae_lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, cfg.ae_steps))
        self.losses = []
        for _ in training_steps(ctx, cfg.ae_steps, f"{self.name}: autoencoder (f{cfg.factor}) training"):
            x, _ = random_windows(data, cfg.ae_batch_size, cfg.ae_patch, rng, weights)
            x = x.to(self.device)
            mean, logvar = model.encode(x)
            z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=rng).to(self.device)
            out = model.decode(z)
            gy, gx = image_gradients(out)
            ty, tx = image_gradients(x)
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
            loss = F.l1_loss(out, x) + cfg.edge_weight * (F.l1_loss(gy, ty) + F.l1_loss(gx, tx)) + cfg.kl_weight * kl
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            self.losses.append(loss.item())
        self.autoencoder = model.eval()

    @torch.no_grad()
    def _encode_all(self, data: torch.Tensor) -> torch.Tensor:
        """Latent means of all training images, scaled to unit variance (as latent diffusion does)."""
        model = self._require_autoencoder()
        means = batched(lambda x: model.encode(x.to(self.device))[0].cpu(), data, self.config.batch_infer)
        self.latent_scale = float(1.0 / means.std().clamp_min(1e-3))
        return means * self.latent_scale

    def _fit_unet(self, latents: torch.Tensor, conditions: torch.Tensor, weights: torch.Tensor,
                  ctx: FitContext | None, seed: int) -> None:
        cfg = self.config
        with seeded(seed + 2):
            unet = LatentUNet(cfg.latent_channels, cfg.unet_width, int(conditions.max()) + 1).to(self.device)
        rng = torch.Generator().manual_seed(seed + 3)
        optimiser = torch.optim.Adam(unet.parameters(), lr=cfg.unet_lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, cfg.unet_steps))
        alpha_bar = self.alpha_bar.to(self.device)
        self.unet_losses = []
        for _ in training_steps(ctx, cfg.unet_steps, f"{self.name}: latent U-Net training"):
            z0, index = random_windows(latents, cfg.unet_batch_size, cfg.unet_patch, rng, weights)
            z0 = z0.to(self.device)
            t = torch.randint(0, cfg.train_timesteps, (len(z0),), generator=rng).to(self.device)
            noise = torch.randn(z0.shape, generator=rng).to(self.device)
            ab = alpha_bar[t][:, None, None, None]
            loss = F.mse_loss(unet(ab.sqrt() * z0 + (1 - ab).sqrt() * noise, t, conditions[index].to(self.device)),
                              noise)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            self.unet_losses.append(loss.item())
        self.unet = unet.eval()

    def adopt(self, other: "LDMGenerator") -> "LDMGenerator":
        """Use the trained pipeline of ``other`` (same network, another mode) instead of training again."""
        if other.autoencoder is None:
            raise RuntimeError(f"{self.name}: cannot adopt an unfitted pipeline")
        for field in ("autoencoder", "unet", "latent_scale", "latent_size", "grey_conditions", "losses",
                      "unet_losses", "alpha_bar"):
            setattr(self, field, getattr(other, field))
        return self

    # -- using the pipeline
    def _require_autoencoder(self) -> KLAutoencoder:
        if self.autoencoder is None:
            raise RuntimeError(f"{self.name}: call fit() (or adopt()) first")
        return self.autoencoder

    def _require_unet(self) -> LatentUNet:
        if self.unet is None:
            raise RuntimeError(f"{self.name}: mode {self.config.mode!r} needs a trained latent U-Net (unet_steps > 0)")
        return self.unet

    def _schedule(self, strength: float) -> list[int]:
        """Decreasing DDIM timesteps from ``strength`` of the schedule down to 0."""
        cfg = self.config
        start = max(1, min(cfg.train_timesteps, round(strength * cfg.train_timesteps))) - 1
        n = max(1, math.ceil(strength * cfg.sample_steps))
        return sorted({round(start * i / n) for i in range(n + 1)}, reverse=True)

    def _noised(self, z0: torch.Tensor, t: int, generator: torch.Generator) -> torch.Tensor:
        ab = self.alpha_bar[t]
        return ab.sqrt() * z0 + (1 - ab).sqrt() * torch.randn(z0.shape, generator=generator).to(self.device)

    @torch.no_grad()
    def _denoise(self, z: torch.Tensor, timesteps: list[int], condition: torch.Tensor, generator: torch.Generator,
                 known: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Deterministic DDIM from ``timesteps[0]`` to 0; ``known``/``mask`` re-impose the known latents."""
        unet = self._require_unet()
        for i, t in enumerate(timesteps):
            t_next = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            ab = self.alpha_bar[t]
            ab_next = self.alpha_bar[t_next] if t_next >= 0 else torch.tensor(1.0)
            eps = unet(z, torch.full((len(z),), t, dtype=torch.long, device=self.device), condition)
            z0_hat = (z - (1 - ab).sqrt() * eps) / ab.sqrt()
            z = ab_next.sqrt() * z0_hat + (1 - ab_next).sqrt() * eps
            if known is not None and mask is not None:
                z = mask * z + (1 - mask) * (self._noised(known, t_next, generator) if t_next >= 0 else known)
        return z

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((self._require_autoencoder().decode(z / self.latent_scale) + 1.0) / 2.0).clamp(0, 1)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self._require_autoencoder().encode(images.to(self.device) * 2.0 - 1.0)[0] * self.latent_scale

    @torch.no_grad()
    def transform(self, images: torch.Tensor, generator: torch.Generator | None = None,
                  conditions: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.mode == "sample":
            raise NotImplementedError("ldm: mode 'sample' makes new images; use sample()")
        check_images(images, self.config.factor, self.name)
        generator = generator or torch.Generator().manual_seed(0)
        conditions = conditions if conditions is not None else torch.zeros(len(images), dtype=torch.long)
        step = self.config.batch_infer
        out = [self._transform_batch(images[i:i + step], conditions[i:i + step], generator)
               for i in range(0, len(images), step)]
        return torch.cat(out) if out else images

    def _transform_batch(self, real: torch.Tensor, condition: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        z0 = self._encode(real)
        condition = condition.to(self.device)
        if cfg.mode == "reconstruct":
            fake = self._decode(z0)
        elif cfg.mode == "img2img":
            schedule = self._schedule(cfg.strength)
            fake = self._decode(self._denoise(self._noised(z0, schedule[0], generator), schedule, condition, generator))
        else:
            fake = self._inpaint(real, z0, condition, generator)
        return grey_out(fake.cpu(), channels_equal(real))

    def _inpaint(self, real: torch.Tensor, z0: torch.Tensor, condition: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
        """Regenerate a random round region per image in latent space; paste it back with a soft edge."""
        cfg = self.config
        h, w = real.shape[-2:]
        f = cfg.factor
        side = max(f, round(cfg.region * min(h, w) / f) * f)
        pixel_masks = []
        for _ in range(len(real)):
            top = int(torch.randint(0, (h - side) // f + 1, (1,), generator=generator)) * f
            left = int(torch.randint(0, (w - side) // f + 1, (1,), generator=generator)) * f
            pixel_masks.append(soft_ellipse_mask(h, w, side, top, left, cfg.feather))
        pixel_mask = torch.cat(pixel_masks)
        # every latent whose footprint the pasted region touches is regenerated
        latent_mask = (F.max_pool2d(pixel_mask, f) > 0).float().to(self.device)
        schedule = self._schedule(min(1.0, cfg.strength))
        if cfg.strength >= 1.0:
            start = torch.randn(z0.shape, generator=generator).to(self.device)
        else:  # the region keeps the real's layout and regenerates its detail (a partial-strength edit)
            start = self._noised(z0, schedule[0], generator)
        z = self._denoise(start, schedule, condition, generator, known=z0, mask=latent_mask)
        regenerated = self._decode(z).cpu()
        return pixel_mask * regenerated + (1 - pixel_mask) * real

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               conditions: torch.Tensor | None = None) -> torch.Tensor:
        if self.latent_size is None:
            raise RuntimeError(f"{self.name}: call fit() first (it fixes the image size)")
        generator = generator or torch.Generator().manual_seed(0)
        conditions = conditions if conditions is not None else torch.zeros(n, dtype=torch.long)
        h, w = self.latent_size
        channels = self.config.latent_channels

        def one_batch(condition: torch.Tensor) -> torch.Tensor:
            z = torch.randn((len(condition), channels, h, w), generator=generator).to(self.device)
            fake = self._decode(self._denoise(z, self._schedule(1.0), condition.to(self.device), generator)).cpu()
            grey = torch.tensor([int(c) in self.grey_conditions for c in condition], dtype=torch.bool)
            return grey_out(fake, grey)

        return batched(one_batch, conditions, self.config.batch_infer)
