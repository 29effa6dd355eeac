"""Noise extractors for forensic traces: ``srm``, ``bayar``, ``wavelet``, ``npr``, ``noise-stats``, ``grid-phase`` and ``npr-blocks``.

Each is a :class:`~medforensics_core.interfaces.NoiseExtractor` (a ``torch.nn.Module``)
mapping ``(N, 3, H, W)`` images in [0, 1] to residual maps
``(N, out_channels, H / downsample, W / downsample)``. Detectors get them from
the registry by name (``get_registry().noise_extractor("npr")``) so that the
NPR baseline and DSKI share one implementation of each residual.
"""

from __future__ import annotations

from medforensics_core.hookspecs import hookimpl

from .bayar import BayarConfig, BayarExtractor, bayar_project
from .blocks import NprBlocksConfig, NprBlocksExtractor, block_differences
from .phase import GridPhaseConfig, GridPhaseExtractor, phase_masks
from .npr import NprConfig, NprExtractor, npr_residual
from .srm import SRM_KERNELS, SrmConfig, SrmExtractor
from .stats import NoiseStatsConfig, NoiseStatsExtractor, folded_kernels, robust_noise_level
from .wavelet import WaveletConfig, WaveletExtractor, dwt2, wavelet_kernels

__all__ = ["NprBlocksConfig", "NprBlocksExtractor", "block_differences", "GridPhaseConfig", "GridPhaseExtractor", "phase_masks", "BayarConfig", "BayarExtractor", "bayar_project", "NprConfig", "NprExtractor", "npr_residual",
           "SRM_KERNELS", "SrmConfig", "SrmExtractor", "NoiseStatsConfig", "NoiseStatsExtractor", "folded_kernels",
           "robust_noise_level", "WaveletConfig", "WaveletExtractor", "dwt2",
           "wavelet_kernels"]

EXTRACTORS = (NprExtractor, SrmExtractor, BayarExtractor, WaveletExtractor, NoiseStatsExtractor, GridPhaseExtractor,
              NprBlocksExtractor)


@hookimpl
def register_noise_extractors(register):
    for cls in EXTRACTORS:
        register(cls)
