"""Noise extractor ``example-laplacian``: the simplest useful forensic residual.

A 3x3 Laplacian removes the smooth content of an image and keeps the fine
pixel-to-pixel structure (sensor noise, texture, and the traces an image
generator leaves). It has no learnable parameter, so it needs no weights and
behaves the same on every device.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from medforensics_core.interfaces import NoiseExtractor

# 4-neighbour Laplacian; the kernel sums to 0, so flat regions give a zero residual.
LAPLACIAN_4 = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))
# 8-neighbour Laplacian: also responds to diagonal structure.
LAPLACIAN_8 = ((1.0, 1.0, 1.0), (1.0, -8.0, 1.0), (1.0, 1.0, 1.0))


@dataclasses.dataclass
class LaplacianConfig:
    """Laplacian residual options."""

    neighbours: int = 8
    """4 or 8: which discrete Laplacian (8 also sees diagonal edges)."""
    scale: float = 1.0
    """Multiplier on the residual (the 8-neighbour kernel's response is about twice the 4-neighbour one)."""


class LaplacianExtractor(NoiseExtractor):
    """Per-channel 3x3 Laplacian with reflect padding: output has the input's shape."""

    name: ClassVar[str] = "example-laplacian"
    description: ClassVar[str] = "3x3 Laplacian high-pass residual (example plugin)"
    config_class: ClassVar[type] = LaplacianConfig
    downsample: ClassVar[int] = 1

    def __init__(self, config: LaplacianConfig | None = None, in_channels: int = 3):
        super().__init__(config, in_channels)
        if self.config.neighbours not in (4, 8):
            raise ValueError(f"example-laplacian: neighbours must be 4 or 8, got {self.config.neighbours}")
        kernel = torch.tensor(LAPLACIAN_4 if self.config.neighbours == 4 else LAPLACIAN_8)
        # Not persistent: the kernel is fixed by the config, so a checkpoint need not carry it.
        self.register_buffer("kernel", kernel.expand(in_channels, 1, 3, 3).clone(), persistent=False)

    @property
    def out_channels(self) -> int:
        return self.in_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
        kernel = self.kernel.to(dtype=images.dtype, device=images.device)
        return F.conv2d(padded, kernel, groups=self.in_channels) * self.config.scale
