"""Generators that build the offline benchmark MedForensics-mini, one model per modality.

Four families that leave different traces, each small enough to train on two
CPU cores in minutes:

* ``dcgan`` (gan): unconditional, transposed-convolution up-sampling;
* ``ddpm`` (diffusion): unconditional, small U-Net, DDIM sampling;
* ``sdedit`` (diffusion, img2img): a real image noised to a strength and denoised;
* ``autoencoder`` (autoencoder, img2img): reconstruction with a bilinear,
  pixel-shuffle or transposed-convolution decoder;
* ``inpaint`` (local-regeneration, img2img): one square region re-synthesised.

Those are the v1 generators (one small model per modality). The v2 ones follow
how medical fakes are made today and are trained once on every modality:

* ``ldm`` (latent-diffusion / autoencoder): a KL autoencoder + modality-conditioned
  latent U-Net; reconstruction, latent img2img, latent inpainting, DDIM samples;
* ``superres`` (super-resolution, img2img): learned x2/x4 up-sampling of a
  down-sampled real, with a pixel-shuffle, transposed-conv or resize+conv up-sampler.
"""

from __future__ import annotations

from medforensics_core.hookspecs import hookimpl

from .autoencoder import AutoencoderConfig, AutoencoderGenerator
from .diffusion import (DDPMGenerator, DiffusionConfig, DiffusionGenerator, InpaintConfig, InpaintGenerator,
                        SDEditConfig, SDEditGenerator)
from .gan import DCGANConfig, DCGANGenerator
from .ldm import LDMConfig, LDMGenerator
from .superres import SuperResConfig, SuperResGenerator

GENERATOR_CLASSES = (DCGANGenerator, DDPMGenerator, SDEditGenerator, InpaintGenerator, AutoencoderGenerator,
                     LDMGenerator, SuperResGenerator)

__all__ = ["AutoencoderConfig", "AutoencoderGenerator", "DCGANConfig", "DCGANGenerator", "DDPMGenerator",
           "DiffusionConfig", "DiffusionGenerator", "GENERATOR_CLASSES", "InpaintConfig", "InpaintGenerator",
           "LDMConfig", "LDMGenerator", "SDEditConfig", "SDEditGenerator", "SuperResConfig", "SuperResGenerator"]


@hookimpl
def register_generators(register):
    for cls in GENERATOR_CLASSES:
        register(cls)
