"""Network blocks shared by the v2 generators (latent diffusion, super-resolution).

Small residual blocks in the style of the latent-diffusion autoencoder and
U-Net (GroupNorm, SiLU, 3x3 convolutions), sized for two CPU cores.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    """Pre-activation residual block; an optional embedding (time + modality) is added after the first conv."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int = 0):
        super().__init__()
        self.norm1 = group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out) if emb_dim else None
        self.norm2 = group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None and emb is not None:
            h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of diffusion timesteps (Vaswani et al.; Ho et al.)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


def soft_ellipse_mask(h: int, w: int, side: int, top: int, left: int, feather: float) -> torch.Tensor:
    """1 inside the ellipse inscribed in a square, falling linearly to 0 over ``feather`` pixels at its rim.

    Inpainting tools take a free-form brush mask and paste the result back with
    a soft edge; a feathered blob is the simplest such region (a hard square
    would be a tell of our making, not of the generator's).
    """
    radius = side / 2.0
    ys = (torch.arange(h, dtype=torch.float32)[:, None] + 0.5 - top - radius)
    xs = (torch.arange(w, dtype=torch.float32)[None, :] + 0.5 - left - radius)
    distance_to_rim = radius - torch.sqrt(ys**2 + xs**2)
    if feather <= 0:
        return (distance_to_rim > 0).float()[None, None]
    return (distance_to_rim / feather).clamp(0, 1)[None, None]


def soft_square_mask(h: int, w: int, side: int, top: int, left: int, feather: float) -> torch.Tensor:
    """1 inside a square, 0 outside, with a linear ramp of ``feather`` pixels (how editors paste a region back)."""
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    dy = torch.minimum(ys - top + 0.5, top + side - ys - 0.5)
    dx = torch.minimum(xs - left + 0.5, left + side - xs - 0.5)
    inside = torch.minimum(dy, dx)
    if feather <= 0:
        return (inside > 0).float()[None, None]
    return (inside / feather).clamp(0, 1)[None, None]


def grey_out(x: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
    """Images flagged grey get their channel mean in all three channels (a grey modality stays exactly grey)."""
    if not bool(grey.any()):
        return x
    mean = x.mean(dim=1, keepdim=True).expand_as(x)
    return torch.where(grey[:, None, None, None], mean, x)


def channels_equal(images: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """Per image: are the three channels equal (a grey image stored as RGB)?"""
    return ((images[:, 0] - images[:, 1]).abs().amax(dim=(-2, -1)) <= tol) & \
        ((images[:, 0] - images[:, 2]).abs().amax(dim=(-2, -1)) <= tol)
