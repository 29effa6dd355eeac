"""Grid phase: how unevenly neighbouring-pixel differences are spread over the phases of a 2/4/8-pixel grid.

Why: almost every image generator ends in up-sampling (transposed or
pixel-shuffle convolutions, nearest or bilinear resizes inside a decoder, a
super-resolution head). An up-sampler by 2 computes the pixels of each 2x2 output
block from the same input pixel(s), so the difference between two horizontal
neighbours depends on whether they sit in the same block or straddle two: the
mean ``|x[i+1] - x[i]|`` at even ``i`` differs from that at odd ``i``. A scanner
has no such grid. NPR (Tan et al., CVPR 2024) feeds a network the residual that
exposes this tie; the spectral peaks of Durall et al. (2020) and Corvi et al.
(2023) are the same periodicity seen in frequency. Here it is reduced to a
statistic that does not care how *much* detail an image has or which way a
generator leans:

* for a period ``p`` and a direction, the local mean absolute difference at each of the
  ``p`` phases (a window whose side is a multiple of ``p``, so every phase is counted
  equally), and the **log ratio of the largest to the smallest** of those means.
  A ratio divides the image's amount of high frequency out (a smooth generator and
  a sharp one leave the same ratio if they up-sample alike); the max/min makes it
  independent of where the generator's grid starts, so a crop at any offset sees it;
* a small floor under every mean keeps flat background (black air around a CT
  slice) at ratio 1 rather than 0/0; there is no difference across the image border
  (a border-to-border jump would lift one phase of every image, reals included).

Reals give ratios near 1 (log ~ 0) everywhere; every up-sampling generator raises
them, so the direction of the cue is the same for generators a detector never saw.
JPEG's 8x8 blocks raise the period-8 ratio too, which is why periods 2 and 4 are
kept as separate maps and a detector is trained with JPEG on both classes.
Output: one map per period (horizontal and vertical averaged), per pixel, float32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from medforensics_core.interfaces import NoiseExtractor


@dataclasses.dataclass
class GridPhaseConfig:
    """Options of the grid-phase statistics; defaults are the ones DSKI is tuned with."""

    periods: tuple[int, ...] = (2, 4, 8)
    """Grid periods, in pixels (an up-sampler by 2 shows at 2 and its multiples; stacked x2 decoders at 4, 8)."""
    window: int = 64
    """Side of the local window; a multiple of every period, so each phase is counted equally. Shrunk (to a
    multiple of every period) on images smaller than it. Larger windows average more pairs before the ratio:
    on MedForensics-mini the period-2 map separates held-out super-resolution fakes at image-mean AUC
    0.83-0.87 with 64, 0.76-0.83 with 16."""
    floor: float = 1e-4
    """Added to every phase mean (pixel units in [0, 1]): flat regions (all differences 0) read as ratio 1.
    Half a grey level (0.002) swamps the smallest real differences and costs 0.1 AUC; 1e-4 does not."""


def phase_masks(length: int, period: int) -> torch.Tensor:
    """``(period, length)`` one-hot masks of the positions ``i`` with ``i mod period == k``."""
    index = torch.arange(length)
    return (index[None, :] % period == torch.arange(period)[:, None]).float()


def neighbour_differences(grey: torch.Tensor, axis: int) -> torch.Tensor:
    """``|x[i+1] - x[i]|`` along ``axis``, same size; the last one (no right neighbour) repeats its predecessor
    rather than wrapping around the image (a border-to-border jump would lift one phase of every image)."""
    steps = (grey.narrow(axis, 1, grey.shape[axis] - 1) - grey.narrow(axis, 0, grey.shape[axis] - 1)).abs()
    return torch.cat([steps, steps.narrow(axis, steps.shape[axis] - 1, 1)], dim=axis)


def box_mean(maps: torch.Tensor, window: int, axis: int) -> torch.Tensor:
    """Mean over ``window`` neighbours along ``axis`` (-1 or -2), borders wrapped; same size as ``maps``.

    From a cumulative sum, so the cost does not grow with the window (a 64-pixel window
    would otherwise cost 64 additions per pixel, map and pass).
    """
    before, after = (window - 1) // 2, window // 2
    padding = (before, after, 0, 0) if axis == -1 else (0, 0, before, after)
    summed = F.pad(F.pad(maps, padding, mode="circular").cumsum(dim=axis), (1, 0) if axis == -1 else (0, 0, 1, 0))
    length = maps.shape[axis]
    return (summed.narrow(axis, window, length) - summed.narrow(axis, 0, length)) / window


class GridPhaseExtractor(NoiseExtractor):
    """Log max/min ratio of phase-wise neighbour differences, one map per grid period; no parameters."""

    name: ClassVar[str] = "grid-phase"
    description: ClassVar[str] = ("up-sampling grid: log max/min ratio of neighbour differences over the phases "
                                  "of a 2/4/8-pixel grid (local, level- and offset-invariant)")
    config_class: ClassVar[type] = GridPhaseConfig
    downsample: ClassVar[int] = 1

    def __init__(self, config: GridPhaseConfig | None = None, in_channels: int = 3):
        super().__init__(config, in_channels)
        periods, window = tuple(self.config.periods), self.config.window
        if not periods or any(p < 2 for p in periods):
            raise ValueError(f"grid-phase periods must be >= 2, got {periods}")
        if any(window % p for p in periods):
            raise ValueError(f"grid-phase window {window} must be a multiple of every period {periods}")

    @property
    def out_channels(self) -> int:
        return len(self.config.periods)

    def _spread(self, differences: torch.Tensor, period: int, axis: int, window: int) -> torch.Tensor:
        """``(N, 1, H, W)`` neighbour differences along ``axis`` -> ``(N, 1, H, W)`` local log max/min over its phases.

        The window spans a multiple of ``period`` along ``axis``, so it holds as many pairs of each phase.
        """
        across = box_mean(differences, window, -2 if axis == -1 else -1)  # shared by every phase
        masks = phase_masks(differences.shape[axis], period).to(differences.device)
        masks = masks.view((1, period, 1, -1) if axis == -1 else (1, period, -1, 1))
        per_phase = box_mean(across * masks, window, axis) * period
        logs = torch.log(per_phase + self.config.floor)
        return logs.amax(dim=1, keepdim=True) - logs.amin(dim=1, keepdim=True)

    def _window(self, size: tuple[int, int]) -> int:
        """The configured window, shrunk to a multiple of every period that fits the image."""
        step = math.lcm(*self.config.periods)
        return max(step, min(self.config.window, (min(size) // step) * step))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if min(images.shape[-2:]) < math.lcm(*self.config.periods):
            return images.new_zeros(images.shape[0], self.out_channels, *images.shape[-2:]).float()
        with torch.autocast(images.device.type, enabled=False):
            grey = images.float().mean(dim=1, keepdim=True)
            window = self._window(grey.shape[-2:])
            horizontal, vertical = neighbour_differences(grey, -1), neighbour_differences(grey, -2)
            maps = [(self._spread(horizontal, p, -1, window) + self._spread(vertical, p, -2, window)) / 2
                    for p in self.config.periods]
            return torch.cat(maps, dim=1)
