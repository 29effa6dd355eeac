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


def masked_phase_means(across: torch.Tensor, period: int, window: int) -> torch.Tensor:
    """``(N, 1, H, L)`` -> ``(N, period, H, L)``: for each phase ``k``, the wrapped box mean over ``window`` along
    the rows of the values at positions ``i mod period == k`` (the others count as 0).

    Any row length, one masked copy per phase. :func:`phase_mean_extremes` gets the same bits with ``period``
    times fewer sums where the row length is a multiple of the period.
    """
    masks = phase_masks(across.shape[-1], period).to(across.device)
    return box_mean(across * masks.view(1, period, 1, -1), window, -1)


def phase_mean_extremes(across: torch.Tensor, period: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest and the smallest over the phases of :func:`masked_phase_means` for one period, for rows whose
    length is a multiple of ``period``: two ``(N, 1, H, L)`` maps, bit for bit where running sums add in order
    (the CPU, where DSKI computes its maps; a test checks), within float rounding on a GPU's parallel scan.

    Why it is equal: the masked running sum only adds zeros between two values of a phase, which changes no
    bit, so at every position it equals the running sum of that phase's values alone. With a row length and a
    window that are multiples of the period, the wrapped row keeps the phase pattern: phase ``r`` of the padded
    row is column ``r`` of its ``(L + window) / period`` x ``period`` reshape. One running sum down those
    columns (a ``period``-th of the masked copies' length) gives, read row-major, the sum of every ``window /
    period`` values ``period`` apart, from each start ``t``; the window at ``i`` holds one such sum per phase,
    those from the starts ``i .. i + period - 1``. So the largest and smallest phase mean are a sliding max and
    min over ``period`` neighbours of that row.
    """
    length = across.shape[-1]
    before, after = (window - 1) // 2, window // 2
    padded = F.pad(across, (before, after + 1, 0, 0), mode="circular")  # one more: length L + window
    sums = F.pad(padded.unflatten(-1, (-1, period)).cumsum(dim=-2), (0, 0, 1, 0))  # (N, 1, H, n + 1, period)
    span = window // period
    strided = ((sums[..., span:, :] - sums[..., :-span, :]) / window).flatten(-2)  # (N, 1, H, L + period)
    return (sliding_extreme(strided, period, length, torch.maximum),
            sliding_extreme(strided, period, length, torch.minimum))


def sliding_extreme(values: torch.Tensor, width: int, length: int, pick) -> torch.Tensor:
    """``pick`` (``torch.maximum`` / ``torch.minimum``) over ``values[..., i:i + width]`` for ``i < length``.

    By doubling (runs of 1, 2, 4 ... values), then two overlapping runs: ``log2(width) + 1`` element-wise
    operations; an extreme is exact, so the order does not change a bit.
    """
    covered, run = 1, values
    while 2 * covered <= width:
        run = pick(run[..., :-covered], run[..., covered:])
        covered *= 2
    if covered == width:
        return run[..., :length]
    return pick(run[..., :length], run[..., width - covered:width - covered + length])


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

    def _spreads(self, grey: torch.Tensor, window: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Grey ``(N, 1, H, W)`` -> per period, the local log max/min over its phases of the horizontal and of the
        vertical neighbour differences (two lists of ``(N, 1, H, W)``).

        The window spans a multiple of every period along the differences, so it holds as many pairs of each
        phase. The mean across them is shared by every phase and period; the logarithm, which keeps order, is
        taken of the largest and smallest phase mean only. The vertical phases run down the columns, so they are
        worked on transposed; on a square image both directions then go through in one batch.
        """
        rows = box_mean(neighbour_differences(grey, -1), window, -2)
        columns = box_mean(neighbour_differences(grey, -2), window, -1).transpose(-1, -2)
        if rows.shape == columns.shape:
            both = self._spreads_along_rows(torch.cat([rows, columns]), window)
            return [s[:len(grey)] for s in both], [s[len(grey):].transpose(-1, -2) for s in both]
        return (self._spreads_along_rows(rows, window),
                [s.transpose(-1, -2) for s in self._spreads_along_rows(columns, window)])

    def _spreads_along_rows(self, across: torch.Tensor, window: int) -> list[torch.Tensor]:
        """Per period, the log max/min of the phase means along the rows of ``across`` ``(N, 1, H, L)``."""
        spreads, floor = [], self.config.floor
        for period in self.config.periods:
            if across.shape[-1] % period:
                masked = masked_phase_means(across, period, window)
                top, bottom = masked.amax(dim=1, keepdim=True), masked.amin(dim=1, keepdim=True)
            else:
                top, bottom = phase_mean_extremes(across, period, window)
            spreads.append(torch.log(top * period + floor) - torch.log(bottom * period + floor))
        return spreads

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
            horizontal, vertical = self._spreads(grey, window)
            return torch.cat([(h + v) / 2 for h, v in zip(horizontal, vertical)], dim=1)
