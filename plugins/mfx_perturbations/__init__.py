"""Built-in perturbations for robustness protocols: ``jpeg``, ``blur``, ``resize``, ``noise``.

Each takes one strength number (``--perturb jpeg:50,blur:1.5``) and is
deterministic for a given random generator, so a robustness table is
reproducible from the run's seed.
"""

from __future__ import annotations

import io
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medforensics_core.hookspecs import hookimpl
from medforensics_core.interfaces import Perturbation


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def _from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class JpegPerturbation(Perturbation):
    name: ClassVar[str] = "jpeg"
    strength_range: ClassVar[tuple[float, float]] = (1, 100)
    description: ClassVar[str] = "JPEG re-compression at quality STRENGTH (1-100, Pillow encoder)"
    default_strength: ClassVar[float] = 75

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        buffer = io.BytesIO()
        _to_pil(image).save(buffer, format="JPEG", quality=int(np.clip(self.strength, 1, 100)))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return _from_pil(decoded)


class BlurPerturbation(Perturbation):
    name: ClassVar[str] = "blur"
    strength_range: ClassVar[tuple[float, float]] = (0, 50)
    description: ClassVar[str] = "Gaussian blur with sigma STRENGTH pixels (kernel 2*ceil(3 sigma)+1)"
    default_strength: ClassVar[float] = 1.0

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        sigma = float(self.strength)
        if sigma <= 0:
            return image
        radius = int(np.ceil(3 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(x**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        c = image.shape[0]
        # reflect needs the pad below the image size; a wide kernel on a small image falls back to replicate
        mode = "reflect" if radius < min(image.shape[-2:]) else "replicate"
        padded = F.pad(image[None], (radius, radius, radius, radius), mode=mode)
        out = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        out = F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        return out[0].clamp(0, 1)


class ResizePerturbation(Perturbation):
    name: ClassVar[str] = "resize"
    strength_range: ClassVar[tuple[float, float]] = (0.01, 1)
    description: ClassVar[str] = "Downscale by factor STRENGTH (bilinear, antialiased) and back to the original size"
    default_strength: ClassVar[float] = 0.5

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        h, w = image.shape[-2:]
        small = (max(1, round(h * self.strength)), max(1, round(w * self.strength)))
        down = F.interpolate(image[None], size=small, mode="bilinear", antialias=True, align_corners=False)
        return F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)[0].clamp(0, 1)


class NoisePerturbation(Perturbation):
    name: ClassVar[str] = "noise"
    strength_range: ClassVar[tuple[float, float]] = (0, 1)
    description: ClassVar[str] = "Additive Gaussian noise with standard deviation STRENGTH (images in [0, 1])"
    default_strength: ClassVar[float] = 0.02

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        noise = torch.from_numpy(rng.normal(0.0, self.strength, size=tuple(image.shape)).astype(np.float32))
        return (image + noise).clamp(0, 1)


@hookimpl
def register_perturbations(register):
    for cls in (JpegPerturbation, BlurPerturbation, ResizePerturbation, NoisePerturbation):
        register(cls)
