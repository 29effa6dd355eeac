"""NPR: neighbouring pixel relationships (Tan et al., CVPR 2024).

CNN generators up-sample with nearest/transposed convolutions, which ties the
pixels of each 2x2 block together. NPR exposes that tie: an image minus its own
nearest-neighbour down-then-up copy, ``x - up(down(x, 0.5))``. The official code
(NPR-DeepfakeDetection, ``networks/resnet.py``) computes it with two
``F.interpolate(mode="nearest")`` calls and feeds ``residual * 2/3`` to the
network; we keep that recipe (factor 2, scale 2/3) as the config defaults.

A nearest ``down(0.5)`` keeps the top-left pixel of every 2x2 block and the
nearest ``up(2)`` copies it back over the block, so the residual of a pixel is
its difference to the top-left pixel of its block. We compute exactly that with
strided slicing and ``repeat_interleave``: identical to the official
``F.interpolate`` pair on even sizes, and defined on odd sizes too (a trailing
row/column forms its own block, where ``F.interpolate`` would change the shape).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from medforensics_core.interfaces import NoiseExtractor


def npr_residual(images: torch.Tensor, factor: int = 2, scale: float = 2.0 / 3.0) -> torch.Tensor:
    """NPR residual of ``(N, C, H, W)`` images: ``scale * (x - up(down(x, 1/factor)))``, nearest both ways.

    The one implementation shared by the NPR baseline and DSKI's noise branch.
    Output has the input's shape; differentiable, device- and dtype-agnostic.
    """
    if images.ndim != 4:
        raise ValueError(f"npr_residual expects (N, C, H, W) images, got shape {tuple(images.shape)}")
    if factor < 1:
        raise ValueError(f"npr factor must be >= 1, got {factor}")
    height, width = images.shape[-2:]
    anchors = images[..., ::factor, ::factor]
    copied = anchors.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    return (images - copied[..., :height, :width]) * scale


@dataclasses.dataclass
class NprConfig:
    """NPR residual options; defaults are the official recipe."""

    factor: int = 2
    """Block size of the nearest down/up-sampling (the paper's 0.5 scale = factor 2)."""
    scale: float = 2.0 / 3.0
    """Multiplier applied to the residual before the network (official code: ``NPR * 2.0 / 3.0``)."""


class NprExtractor(NoiseExtractor):
    """``scale * (x - up(down(x)))`` per channel; same size as the input, no parameters."""

    name: ClassVar[str] = "npr"
    description: ClassVar[str] = "NPR up-sampling residual x - up(down(x, 0.5)), nearest, x2/3 (Tan et al. CVPR 2024)"
    config_class: ClassVar[type] = NprConfig
    downsample: ClassVar[int] = 1

    @property
    def out_channels(self) -> int:
        return self.in_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return npr_residual(images, self.config.factor, self.config.scale)
