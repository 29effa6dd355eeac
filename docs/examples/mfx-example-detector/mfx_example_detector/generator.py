"""Generator ``example-spectral``: random-phase images with the training images' power spectrum.

This is classic spectral texture synthesis: keep the mean amplitude spectrum of
the real images, draw the phases at random, transform back. The result has the
right brightness, contrast and "graininess" (second-order statistics) but none
of the structure that lives in phase — edges, anatomy. It is the weakest
possible forger, which makes it a useful sanity check: a detector that cannot
catch it has learnt nothing, and it fits on a CPU in milliseconds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from medforensics_core.errors import MfxError
from medforensics_core.interfaces import Generator

LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclasses.dataclass
class SpectralConfig:
    """Spectral synthesis settings.

    ``size``: side of the square images it fits on and samples (inputs are resized).
    ``colour``: model each channel's spectrum (True) or the luma only, replicated to 3 channels.
    """

    size: int = 64
    colour: bool = False


class SpectralGenerator(Generator):
    """Gaussian random field with the mean amplitude spectrum, mean and std of its training images."""

    name: ClassVar[str] = "example-spectral"
    description: ClassVar[str] = "random-phase images with the training images' power spectrum (example plugin)"
    family: ClassVar[str] = "spectral"
    config_class: ClassVar[type] = SpectralConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"size": 32}}

    def __init__(self, config: Any = None, *, device: str | torch.device = "cpu"):
        super().__init__(config, device=device)
        self.amplitude: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Resize to ``size`` x ``size`` and keep colour or luma, as the config says."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise MfxError(f"{self.name}: expected images (N, 3, H, W), got {tuple(images.shape)}")
        size = self.config.size
        resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                                align_corners=False)
        if self.config.colour:
            return resized
        weights = torch.tensor(LUMA_WEIGHTS, dtype=resized.dtype, device=resized.device).view(1, 3, 1, 1)
        return (resized * weights).sum(1, keepdim=True)

    def fit(self, images: torch.Tensor, ctx: Any = None) -> "SpectralGenerator":
        if len(images) == 0:
            raise MfxError(f"{self.name}: needs at least one training image")
        prepared = self._prepare(images.to(self.device))
        self.mean = prepared.mean(dim=(0, 2, 3), keepdim=True)
        self.std = prepared.std(dim=(2, 3), keepdim=True).mean(0, keepdim=True)
        centred = prepared - prepared.mean(dim=(2, 3), keepdim=True)
        self.amplitude = torch.fft.fft2(centred).abs().mean(0, keepdim=True)
        return self

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.amplitude is None:
            raise MfxError(f"{self.name}: call fit() on real images before sample()")
        channels, size = self.amplitude.shape[1], self.config.size
        # The phase of white noise's spectrum is uniformly random and Hermitian-symmetric,
        # so the inverse transform is real up to rounding.
        noise = torch.randn((n, channels, size, size), generator=generator).to(self.amplitude.device)
        spectrum = torch.fft.fft2(noise)
        phase = spectrum / spectrum.abs().clamp_min(1e-12)
        field = torch.fft.ifft2(phase * self.amplitude).real
        field = (field - field.mean(dim=(2, 3), keepdim=True)) / field.std(dim=(2, 3), keepdim=True).clamp_min(1e-8)
        images = (field * self.std + self.mean).clamp(0, 1)
        return images if channels == 3 else images.expand(-1, 3, -1, -1).contiguous()
