"""NPR block statistics: how the three differences inside each 2x2 block of NPR's residual are shaped.

Why: NPR's residual (:func:`~mfx_noise.npr.npr_residual`) is each pixel minus the
top-left pixel of its 2x2 block, so every block holds one zero and three signed
differences: horizontal ``h = x01 - x00``, vertical ``v = x10 - x00`` and diagonal
``d = x11 - x00``. An up-sampler by 2 computes the four pixels of a block from the
same input pixel(s), which shapes those three together (their sizes relative to each
other, and how they co-vary). The mean of a signed residual over a region is about
0 on every image, so a cell mean of the residual itself carries nothing; NPR's own
network, and DSKI's former trained trace stem, read the arrangement with
convolutions at full resolution, which on a small backbone costs more than the
backbone. These statistics keep the arrangement in numbers that survive a cell mean,
computed once per image at native resolution (in preprocessing, not in the forward):

* the three differences divided by the image's robust noise level (the MAD of ``d``,
  as ``noise-stats`` does with its finest diagonal band), so the amount of detail
  divides out and what stays is the shape;
* per component, the log local energy ``log(mean_w c^2)`` over a window of blocks;
* per pair, the local correlation ``mean_w(c_i c_j) / sqrt(mean_w c_i^2 mean_w c_j^2)``
  (each energy floored, as in ``noise-stats``).

Each block's six values are copied back over its four pixels, so the maps have the
image's size and follow it through crop and flip like every other statistic.
The blocks are NPR's: aligned with the image's top-left pixel, as a generator's
up-sampling grid is in an image it wrote whole.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from medforensics_core.interfaces import NoiseExtractor

from .npr import npr_residual
from .stats import local_energy_and_correlation, robust_noise_level

COMPONENTS = ("h", "v", "d")
PAIRS = ((0, 1), (0, 2), (1, 2))
"""Component pairs whose local correlation is kept: (h, v), (h, d), (v, d)."""


def block_differences(grey: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` -> ``(N, 3, ceil(H/2), ceil(W/2))``: NPR's residual inside each 2x2 block (h, v, d).

    An odd trailing row or column is its own block (as in :func:`npr_residual`); its missing pixels count as 0.
    """
    residual = npr_residual(grey, factor=2, scale=1.0)
    height, width = residual.shape[-2:]
    even = F.pad(residual, (0, width % 2, 0, height % 2))
    return F.pixel_unshuffle(even, 2)[:, 1:]  # channel 0 is the anchor, always 0


@dataclasses.dataclass
class NprBlocksConfig:
    """Options of the block statistics."""

    window: int = 5
    """Side of the square window of blocks (odd) for the local energy and correlation: 10 x 10 pixels."""
    min_level: float = 1.0 / 255.0 / 4
    """Floor of the noise level in [0, 1] pixel units: a flat or heavily quantised image has a MAD of ~0."""


class NprBlocksExtractor(NoiseExtractor):
    """Log local energies and correlations of the three differences in each 2x2 block of NPR's residual."""

    name: ClassVar[str] = "npr-blocks"
    description: ClassVar[str] = ("NPR block statistics: the h/v/d differences in each 2x2 block / MAD noise level; "
                                  "log local energy and pairwise correlation (6 maps)")
    config_class: ClassVar[type] = NprBlocksConfig
    downsample: ClassVar[int] = 1

    def __init__(self, config: NprBlocksConfig | None = None, in_channels: int = 3):
        super().__init__(config, in_channels)
        if self.config.window < 1 or self.config.window % 2 == 0:
            raise ValueError(f"npr-blocks window must be odd and >= 1, got {self.config.window}")

    @property
    def out_channels(self) -> int:
        return len(COMPONENTS) + len(PAIRS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):
            grey = images.float().mean(dim=1, keepdim=True)
            blocks = block_differences(grey)
            blocks = blocks / robust_noise_level(blocks[:, 2:3]).clamp(min=self.config.min_level)
            energy, correlation = local_energy_and_correlation(blocks, PAIRS, self.config.window)
            stats = torch.cat([torch.log(energy + 1e-3), correlation], dim=1)
            per_pixel = stats.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
            return per_pixel[..., :images.shape[-2], :images.shape[-1]]
