"""Generators that build the offline benchmark MedForensics-mini, one model per modality.

Four families that leave different traces, each small enough to train on two
CPU cores in minutes:

* ``dcgan`` (gan): unconditional, transposed-convolution up-sampling;
* ``ddpm`` (diffusion): unconditional, small U-Net, DDIM sampling;
* ``sdedit`` (diffusion, img2img): a real image noised to a strength and denoised;
* ``autoencoder`` (autoencoder, img2img): reconstruction with a bilinear,
  pixel-shuffle or transposed-convolution decoder;
* ``inpaint`` (local-regeneration, img2img): one square region re-synthesised.
"""

from __future__ import annotations

from medforensics_core.hookspecs import hookimpl

from .autoencoder import AutoencoderConfig, AutoencoderGenerator
from .diffusion import (DDPMGenerator, DiffusionConfig, DiffusionGenerator, InpaintConfig, InpaintGenerator,
                        SDEditConfig, SDEditGenerator)
from .gan import DCGANConfig, DCGANGenerator

GENERATOR_CLASSES = (DCGANGenerator, DDPMGenerator, SDEditGenerator, InpaintGenerator, AutoencoderGenerator)

__all__ = ["AutoencoderConfig", "AutoencoderGenerator", "DCGANConfig", "DCGANGenerator", "DDPMGenerator",
           "DiffusionConfig", "DiffusionGenerator", "GENERATOR_CLASSES", "InpaintConfig", "InpaintGenerator",
           "SDEditConfig", "SDEditGenerator"]


@hookimpl
def register_generators(register):
    for cls in GENERATOR_CLASSES:
        register(cls)
