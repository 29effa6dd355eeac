"""SRM high-pass residuals (Fridrich & Kodovsky's spatial rich model, as used by RGB-N and later detectors).

Three fixed 5x5 kernels that predict a pixel from its neighbours and keep the
prediction error, so image content cancels and the noise that cameras and
generators leave behind remains: KB (3x3 second-order "square", /4), KV (5x5
"square", /12) and the horizontal second-order difference (/2). Each kernel
sums to zero, so a flat region gives exactly zero.

Choices (documented because they change the numbers):

* **grey by default**: the kernels run on the channel mean, as RGB-N's SRM
  layer does (it sums the RGB channels). Medical images are mostly grey stored
  as three equal channels, where per-channel filtering would triple the same
  map; ``per_channel=True`` filters each input channel instead (9 outputs).
* **truncation in 8-bit units**: the classic Hardtanh(-3, 3) was tuned for
  0-255 pixel values. Our inputs are in [0, 1], so responses are computed on
  ``255 * x`` (``input_scale``), clipped to ``[-truncation, truncation]`` and
  divided by ``truncation`` so the output lies in [-1, 1].
* **reflect padding** keeps the output size and keeps flat borders at zero
  (zero padding would invent an edge at the image border).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from medforensics_core.interfaces import NoiseExtractor

KB = torch.tensor([[0, 0, 0, 0, 0],
                   [0, -1, 2, -1, 0],
                   [0, 2, -4, 2, 0],
                   [0, -1, 2, -1, 0],
                   [0, 0, 0, 0, 0]], dtype=torch.float32) / 4
KV = torch.tensor([[-1, 2, -2, 2, -1],
                   [2, -6, 8, -6, 2],
                   [-2, 8, -12, 8, -2],
                   [2, -6, 8, -6, 2],
                   [-1, 2, -2, 2, -1]], dtype=torch.float32) / 12
SECOND_ORDER_H = torch.tensor([[0, 0, 0, 0, 0],
                               [0, 0, 0, 0, 0],
                               [0, 1, -2, 1, 0],
                               [0, 0, 0, 0, 0],
                               [0, 0, 0, 0, 0]], dtype=torch.float32) / 2
SRM_KERNELS = torch.stack([KB, KV, SECOND_ORDER_H])
"""The three classic SRM kernels, ``(3, 5, 5)``; every one sums to zero."""


@dataclasses.dataclass
class SrmConfig:
    """SRM residual options; the defaults are the classic 3-kernel layer with Hardtanh(-3, 3)."""

    per_channel: bool = False
    """Filter every input channel (3 x in_channels outputs) instead of the channel mean (3 outputs)."""
    truncation: float = 3.0
    """Clip level T of Hardtanh(-T, T), in units of ``input_scale`` (8-bit grey levels)."""
    input_scale: float = 255.0
    """Factor that brings [0, 1] inputs to the range the truncation was tuned for."""
    normalise: bool = True
    """Divide the clipped response by T so the output lies in [-1, 1]."""


class SrmExtractor(NoiseExtractor):
    """Fixed SRM high-pass filters + truncation; no trainable parameters (kernels are buffers)."""

    name: ClassVar[str] = "srm"
    description: ClassVar[str] = "3 fixed SRM 5x5 high-pass kernels (KB/4, KV/12, 2nd-order/2) + Hardtanh(-3,3)"
    config_class: ClassVar[type] = SrmConfig
    downsample: ClassVar[int] = 1

    def __init__(self, config: SrmConfig | None = None, in_channels: int = 3):
        super().__init__(config, in_channels)
        self.register_buffer("kernels", SRM_KERNELS.clone().unsqueeze(1), persistent=False)

    @property
    def out_channels(self) -> int:
        return 3 * self.in_channels if self.config.per_channel else 3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        planes = images if self.config.per_channel else images.mean(dim=1, keepdim=True)
        n, c, h, w = planes.shape
        padded = F.pad(planes.reshape(n * c, 1, h, w), (2, 2, 2, 2), mode="reflect")
        response = F.conv2d(padded, self.kernels.to(padded.dtype)).reshape(n, c * 3, h, w)
        truncation = self.config.truncation
        clipped = F.hardtanh(response * self.config.input_scale, -truncation, truncation)
        return clipped / truncation if self.config.normalise else clipped
