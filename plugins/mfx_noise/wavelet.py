"""Wavelet high-frequency sub-bands as batched, differentiable torch convolutions.

The filter banks come from PyWavelets (``pywt.Wavelet(name).dec_lo/dec_hi``),
so any wavelet pywt knows works and its coefficients are never re-typed here.
One DWT level is a stride-2 2-D convolution with the four separable products
of the low/high-pass filters, computed on every channel independently.

Boundary handling is pywt's ``'periodization'`` mode, chosen because its
output is exactly ``ceil(H / 2) x ceil(W / 2)`` (no filter-length growth), so
``downsample = 2`` holds for every wavelet and the result can be checked
against ``pywt.dwt2(..., mode='periodization')`` coefficient for coefficient:
an odd side is first extended by repeating its last row/column (as pywt
does), then the signal is wrapped around by ``L/2 - 1`` samples before and
``L/2`` after (``L`` = filter length) and filtered with the reversed filters.

Output: the detail bands in pywt's order (cH, cV, cD) — cH is high-pass down
the rows (horizontal edges), cV high-pass along the columns, cD both. With
several ``levels`` each next level transforms the previous approximation, and
its (smaller) detail maps are brought back to the level-1 grid by
nearest-neighbour upsampling, so each coarse coefficient covers the block of
level-1 positions it describes. Channel order: input channel, then level,
then band (``out[:, (c * levels + l) * 3 + b]``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import pywt
import torch
import torch.nn.functional as F

from medforensics_core.errors import ConfigError
from medforensics_core.interfaces import NoiseExtractor


def wavelet_kernels(name: str) -> torch.Tensor:
    """The four 2-D analysis kernels ``(4, L, L)`` of pywt wavelet ``name``: LL, cH, cV, cD.

    Filters are reversed so that torch's cross-correlation computes pywt's convolution.
    """
    try:
        wavelet = pywt.Wavelet(name)
    except ValueError:
        known = ", ".join(pywt.wavelist(kind="discrete")[:12])
        raise ConfigError(f"unknown discrete wavelet {name!r} (pywavelets knows e.g. {known}, ...)") from None
    low = torch.tensor(np.asarray(wavelet.dec_lo[::-1], dtype=np.float64), dtype=torch.float32)
    high = torch.tensor(np.asarray(wavelet.dec_hi[::-1], dtype=np.float64), dtype=torch.float32)
    pairs = [(low, low), (high, low), (low, high), (high, high)]  # (along rows H, along columns W)
    return torch.stack([torch.outer(rows, cols) for rows, cols in pairs])


def _periodic_pad(planes: torch.Tensor, filter_length: int) -> torch.Tensor:
    """Extend odd sides by their last row/column, then wrap around as pywt's periodization does."""
    h, w = planes.shape[-2:]
    planes = F.pad(planes, (0, w % 2, 0, h % 2), mode="replicate") if (h % 2 or w % 2) else planes
    before, after = filter_length // 2 - 1, filter_length // 2
    return F.pad(planes, (before, after, before, after), mode="circular")


def dwt2(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """One periodization DWT level of ``(N, C, H, W)``: ``(N, C, 4, ceil(H/2), ceil(W/2))`` as LL, cH, cV, cD."""
    n, c, h, w = images.shape
    planes = _periodic_pad(images.reshape(n * c, 1, h, w), kernels.shape[-1])
    bands = F.conv2d(planes, kernels.unsqueeze(1).to(images.dtype), stride=2)
    return bands.reshape(n, c, 4, *bands.shape[-2:])


@dataclasses.dataclass
class WaveletConfig:
    """Wavelet sub-band options; defaults give FatFormer's one-level Haar high-frequency bands."""

    wavelet: str = "haar"
    """Any discrete wavelet name PyWavelets knows (haar, db2, sym4, bior2.2, coif1...)."""
    levels: int = 1
    """Decomposition levels; levels > 1 are upsampled (nearest) to the level-1 grid."""


class WaveletExtractor(NoiseExtractor):
    """High-frequency sub-bands (cH, cV, cD) of a periodization DWT; fixed filters, differentiable."""

    name: ClassVar[str] = "wavelet"
    description: ClassVar[str] = "DWT high-frequency sub-bands (cH, cV, cD) with pywavelets filter banks, any wavelet"
    config_class: ClassVar[type] = WaveletConfig
    downsample: ClassVar[int] = 2

    def __init__(self, config: WaveletConfig | None = None, in_channels: int = 3):
        super().__init__(config, in_channels)
        if self.config.levels < 1:
            raise ConfigError(f"wavelet levels must be >= 1, got {self.config.levels}")
        self.register_buffer("kernels", wavelet_kernels(self.config.wavelet), persistent=False)

    @property
    def out_channels(self) -> int:
        return 3 * self.config.levels * self.in_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        approximation, details = images, []
        for _ in range(self.config.levels):
            bands = dwt2(approximation, self.kernels)
            approximation = bands[:, :, 0]
            details.append(bands[:, :, 1:])
        grid = details[0].shape[-2:]
        n, c = images.shape[:2]
        resized = [d if d.shape[-2:] == grid else
                   F.interpolate(d.flatten(1, 2), size=grid, mode="nearest").reshape(n, c, 3, *grid)
                   for d in details]
        return torch.stack(resized, dim=2).reshape(n, self.out_channels, *grid)
