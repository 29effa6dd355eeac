"""Bayar & Stamm's constrained convolution (IH&MMSec 2016 / TIFS 2018): a learnable prediction-error filter.

Each 5x5 kernel is forced to the form "centre = -1, off-centre weights sum to
1", i.e. the kernel predicts the centre pixel from its neighbours and outputs
the prediction error. Content is suppressed (a flat region gives zero) while
the filter still *learns* which residual separates real from fake.

How the constraint is kept: the paper projects the weights after every
optimiser step. We re-project at every forward instead — the layer holds raw
weights and the forward convolves with ``project(raw)`` — so the kernel that is
applied always satisfies the constraint, whatever optimiser, AMP scaler or
``load_state_dict`` touched the raw weights, and nothing is modified in place
(safe with several forwards before one backward). Gradients flow through the
projection to the raw weights. The constraint holds per 2-D kernel (one per
output/input channel pair), the usual extension of the paper's greyscale
layer to colour input. Reflect padding keeps the size and keeps flat borders
at zero, as for the SRM filters.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from medforensics_core.interfaces import NoiseExtractor

_EPS = 1e-6


def bayar_project(raw: torch.Tensor) -> torch.Tensor:
    """Constrained copy of ``raw`` ``(out, in, k, k)``: centre -1, off-centre weights renormalised to sum 1."""
    k_h, k_w = raw.shape[-2:]
    centre = torch.zeros(k_h, k_w, dtype=torch.bool, device=raw.device)
    centre[k_h // 2, k_w // 2] = True
    off_centre = raw.masked_fill(centre, 0.0)
    total = off_centre.sum(dim=(-2, -1), keepdim=True)
    safe_total = torch.where(total.abs() < _EPS, torch.full_like(total, _EPS), total)
    return (off_centre / safe_total).masked_fill(centre, -1.0)


@dataclasses.dataclass
class BayarConfig:
    """Constrained convolution options; defaults follow Bayar & Stamm (k=5) with 3 output maps."""

    out_channels: int = 3
    """Number of learned prediction-error filters (the paper's first layer had 3)."""
    kernel_size: int = 5
    """Odd kernel size; the paper uses 5x5."""


class BayarExtractor(NoiseExtractor):
    """Learnable constrained convolution; trains with the detector that owns it."""

    name: ClassVar[str] = "bayar"
    description: ClassVar[str] = "learnable constrained conv (Bayar & Stamm): centre -1, off-centre sum 1, k=5"
    config_class: ClassVar[type] = BayarConfig
    downsample: ClassVar[int] = 1

    def __init__(self, config: BayarConfig | None = None, in_channels: int = 3):
        super().__init__(config, in_channels)
        size = self.config.kernel_size
        if size < 3 or size % 2 == 0:
            raise ValueError(f"bayar kernel_size must be odd and >= 3, got {size}")
        # Positive start: the projected kernel begins as "neighbour average minus centre", and the
        # off-centre sum stays far from 0 (a zero-mean init would make the renormalisation explode).
        raw = torch.rand(self.config.out_channels, in_channels, size, size) + 0.5
        self.weight = torch.nn.Parameter(raw)

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    def kernel(self) -> torch.Tensor:
        """The constrained kernel the forward applies (recomputed from the raw weights)."""
        return bayar_project(self.weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pad = self.config.kernel_size // 2
        padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
        return F.conv2d(padded, self.kernel().to(images.dtype))
