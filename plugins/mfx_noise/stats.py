"""Noise *statistics*, not noise residuals: what DSKI's noise branch and retrieval descriptor look at.

Why not hand a detector the residuals themselves: a fixed linear high-pass
filter followed by a trainable linear embedding is one more linear view of the
pixels, so a detector learns "more high-frequency energy = fake" and a smooth
(low-pass) unseen generator then looks more real than the reals. Two changes
break that shortcut:

* **per-image robust noise-level normalisation**: every residual is divided by
  the image's own noise level, Donoho's MAD estimate ``median(|HH|) / 0.6745``
  of the finest diagonal Haar band. The overall amount of high frequency (what
  blur, resampling or a smoother generator changes) is divided out; what stays
  is how the noise is *structured*;
* **nonlinear local statistics**: per band, the clipped magnitude ``min(|r|, T)``
  and the log local energy ``log(mean_w r^2)``, and per band pair the local
  correlation ``mean_w(r_i r_j) / sqrt(mean_w r_i^2 mean_w r_j^2)`` (each energy
  floored at :data:`ENERGY_FLOOR`) — the
  shape and spatial/cross-band coupling of the noise (interpolation kernels,
  denoisers and up-samplers couple neighbouring residuals; sensor noise does not).

The residual bank is six fixed filters folded into one 5x5 convolution: the
three classic SRM kernels (KB /4, KV /12, horizontal second order /2) and the
three undecimated Haar detail filters (horizontal, vertical, diagonal). Borders
wrap around (circular ``F.pad``), as the periodised wavelet transform does.
Local windows wrap around too. The statistics stay per pixel (``(N, 15, H, W)``, same size as the input) so
the caller pools them onto whatever grid it needs (DSKI: the ViT's patch grid)
after cropping; they are always computed in float32, whatever autocast says.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from medforensics_core.interfaces import NoiseExtractor

from .srm import SRM_KERNELS

MAD_TO_SIGMA = 0.6745
"""``median(|x|) / 0.6745`` estimates the standard deviation of Gaussian noise (Donoho & Johnstone 1994)."""
ENERGY_FLOOR = 1e-3
"""Floor of each band's local energy in the correlation's denominator, in units of the image's own noise energy.

Why each band's and not their product's: where one band is flat (energy ~ 0) beside a strong one, a floor of
1e-6 on the product left the denominator at 1e-3 and multiplied whatever residue the flat band had by a
thousand. On 8-bit pixels that residue is exactly 0, but a change of the pixels far below one grey level
(float rounding in a resampler, a GPU's other order of additions) moved such a correlation by up to 0.75: the
CUDA test found it. With the floor on each band, rounding moves it by less than 1e-3 and a 1e-6 change of the
pixels by 0.03 at most, and wherever both energies are at least the floor the result is the product formula's,
bit for bit."""
BAND_NAMES = ("srm-kb", "srm-kv", "srm-h2", "haar-h", "haar-v", "haar-d")
PAIRS = ((0, 1), (3, 4), (2, 3))
"""Band pairs whose local correlation is kept: (KB, KV), (Haar H, Haar V), (SRM 2nd-order H, Haar H)."""
HAAR_DIAGONAL = 5


def haar_detail_kernels() -> torch.Tensor:
    """The three undecimated one-level Haar detail filters ``(3, 2, 2)`` (H, V, D), orthonormal scaling."""
    low = torch.tensor([1.0, 1.0]) / 2**0.5
    high = torch.tensor([1.0, -1.0]) / 2**0.5
    return torch.stack([torch.outer(high, low), torch.outer(low, high), torch.outer(high, high)])


def folded_kernels() -> torch.Tensor:
    """SRM (3) and Haar detail (3) filters as one ``(6, 1, 5, 5)`` kernel, so one convolution computes all six."""
    bank = torch.zeros(len(BAND_NAMES), 1, 5, 5)
    bank[:3, 0] = SRM_KERNELS
    bank[3:, 0, 2:4, 2:4] = haar_detail_kernels()
    return bank


def robust_noise_level(diagonal: torch.Tensor) -> torch.Tensor:
    """Per-image noise sigma ``(N, 1, 1, 1)`` from the finest diagonal band ``(N, 1, H, W)`` (MAD estimator)."""
    flat = diagonal.abs().flatten(1)
    return (flat.median(dim=1).values / MAD_TO_SIGMA).view(-1, 1, 1, 1)


def local_mean(maps: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a ``window`` x ``window`` neighbourhood with wrapped borders, as two 1-D box filters.

    Each 1-D filter adds ``window`` shifted slices in order to 0 and divides by ``window``: the same additions in
    the same order as ``F.avg_pool2d`` with a ``(1, window)`` then ``(window, 1)`` kernel, so the same bits, the
    sign of a zero included (a test checks), at a quarter or less of its cost on the CPU, where pooling with
    stride 1 is slow (0.7 ms per call on one 128-px image, most of this extractor's time).
    """
    half = window // 2
    if half == 0:
        return maps
    wrapped = F.pad(maps, (half, half, half, half), mode="circular")
    return sliding_mean(sliding_mean(wrapped, window, -1), window, -2)


def sliding_mean(maps: torch.Tensor, window: int, axis: int) -> torch.Tensor:
    """Mean of every run of ``window`` neighbours along ``axis`` (no padding: ``window - 1`` fewer outputs)."""
    length = maps.shape[axis] - window + 1
    total = maps.narrow(axis, 0, length) + 0.0  # pooling's sum starts at +0: a window of -0.0 sums to +0.0
    for shift in range(1, window):
        total = total + maps.narrow(axis, shift, length)
    return total / window


@dataclasses.dataclass
class NoiseStatsConfig:
    """Options of the statistics; defaults are the ones DSKI is tuned with."""

    window: int = 5
    """Side of the square window of the local energy and correlation (odd)."""
    clip: float = 4.0
    """Normalised magnitudes are clipped at this many noise sigmas (a bright edge must not dominate)."""
    min_level: float = 1.0 / 255.0 / 4
    """Floor of the noise level, in [0, 1] pixel units: a flat or heavily quantised image has sigma ~ 0."""


class NoiseStatsExtractor(NoiseExtractor):
    """Noise-level-normalised, nonlinear local statistics of six fixed residual filters; no parameters."""

    name: ClassVar[str] = "noise-stats"
    description: ClassVar[str] = ("noise statistics: SRM + Haar residuals / per-image MAD noise level; clipped "
                                  "|r|, log local energy, cross-band correlation (15 maps)")
    config_class: ClassVar[type] = NoiseStatsConfig
    downsample: ClassVar[int] = 1
    local_energy_channels: ClassVar[tuple[int, ...]] = tuple(range(len(BAND_NAMES), 2 * len(BAND_NAMES)))
    """Which output maps are log local energies, one per band (DSKI's local-inconsistency score reads them)."""

    def __init__(self, config: NoiseStatsConfig | None = None, in_channels: int = 3):
        super().__init__(config, in_channels)
        if self.config.window < 1 or self.config.window % 2 == 0:
            raise ValueError(f"noise-stats window must be odd and >= 1, got {self.config.window}")
        self.register_buffer("kernels", folded_kernels(), persistent=False)

    @property
    def out_channels(self) -> int:
        return 2 * len(BAND_NAMES) + len(PAIRS)

    def residuals(self, images: torch.Tensor) -> torch.Tensor:
        """The six residual maps ``(N, 6, H, W)`` of the grey image, divided by its robust noise level."""
        grey = images.float().mean(dim=1, keepdim=True)
        padded = F.pad(grey, (2, 2, 2, 2), mode="circular")
        bands = F.conv2d(padded, self.kernels.float())
        level = robust_noise_level(bands[:, HAAR_DIAGONAL:HAAR_DIAGONAL + 1]).clamp(min=self.config.min_level)
        return bands / level

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):
            bands = self.residuals(images)
            energy, correlation = local_energy_and_correlation(bands, PAIRS, self.config.window)
            magnitude = bands.abs().clamp(max=self.config.clip)
            return torch.cat([magnitude, torch.log(energy + 1e-3), correlation], dim=1)


def local_energy_and_correlation(bands: torch.Tensor, pairs: tuple[tuple[int, int], ...], window: int
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per band the local energy ``mean_w r^2`` ``(N, B, H, W)``, and per band pair the local correlation
    ``mean_w(r_i r_j) / sqrt(mean_w r_i^2 mean_w r_j^2)`` ``(N, len(pairs), H, W)`` (each energy floored at
    :data:`ENERGY_FLOOR` in the denominator), over ``window`` x ``window`` wrapped windows."""
    energy = local_mean(bands.square(), window)
    first, second = [i for i, _ in pairs], [j for _, j in pairs]
    products = local_mean(bands[:, first] * bands[:, second], window)
    floored = energy.clamp(min=ENERGY_FLOOR)
    return energy, products / (floored[:, first] * floored[:, second]).sqrt()
