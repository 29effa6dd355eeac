"""mfx-example-detector: a complete third-party mfx plugin, kept small enough to read in one sitting.

It contributes one class of three plugin kinds:

* detector ``example`` (:class:`~mfx_example_detector.detector.ExampleDetector`):
  statistics of a high-pass residual, then a logistic regression;
* noise extractor ``example-laplacian``
  (:class:`~mfx_example_detector.residuals.LaplacianExtractor`): a fixed 3x3
  Laplacian high-pass filter, which the detector asks the registry for by name;
* generator ``example-spectral`` (:class:`~mfx_example_detector.generator.SpectralGenerator`):
  random-phase images with the mean power spectrum of its training images.

mfx finds this module through the ``[project.entry-points.mfx]`` table of the
distribution's ``pyproject.toml`` and calls the ``register_*`` hooks below. The
hooks only hand classes to ``register``; nothing heavy runs at import time, so
``mfx plugins`` stays fast however many plugins are installed.
"""

from __future__ import annotations

from medforensics_core.hookspecs import hookimpl

from .detector import ExampleConfig, ExampleDetector
from .generator import SpectralConfig, SpectralGenerator
from .residuals import LaplacianConfig, LaplacianExtractor

__all__ = [
    "ExampleConfig", "ExampleDetector", "LaplacianConfig", "LaplacianExtractor", "SpectralConfig",
    "SpectralGenerator",
]


@hookimpl
def register_detectors(register):
    register(ExampleDetector)


@hookimpl
def register_noise_extractors(register):
    register(LaplacianExtractor)


@hookimpl
def register_generators(register):
    register(SpectralGenerator)
