"""The Python API: ``import medforensics_core as mfx`` and use detectors in five lines.

.. code-block:: python

    import medforensics_core as mfx
    data = mfx.demo_data(quick=True)                        # MedForensics-mini, built offline on first use
    detector = mfx.create_detector("freq", preset="tiny")   # or mfx.load_detector("model.safetensors")
    detector.fit(mfx.open_images(data, split="train"))
    print(mfx.score(detector, [data / "test"]))             # fake probability of every test image

Every function here is a thin, documented door into the registry and the
engine; the command line uses the same ones.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .errors import CheckpointError, MfxError
from .interfaces import Detector

log = logging.getLogger(__name__)

__all__ = ["calibrate", "checkpoint_detector_name", "create_detector", "demo_data", "list_detectors",
           "load_detector", "open_images", "read_image", "score"]


def list_detectors() -> list[str]:
    """Names of every registered detector (built-in and installed plugins), sorted."""
    from .plugins import get_registry

    return sorted(reg.name for reg in get_registry().all() if reg.kind == "detector")


def create_detector(name: str, preset: str | None = None, *, device: str = "cpu", **overrides: Any) -> Detector:
    """A new, untrained detector: ``preset`` (``"full"`` = the paper's recipe, ``"tiny"``...) + ``key=value``s."""
    from .plugins import get_registry

    cls = get_registry().detector(name)
    config = cls.make_config(preset, **overrides)
    return cls(config, preset=preset or "full", device=_device(device))


def checkpoint_detector_name(path: str | os.PathLike) -> str:
    """The detector a checkpoint belongs to, read from its header (no tensor is loaded)."""
    from .checkpoint import load_metadata

    meta = load_metadata(path)
    if not isinstance(meta, dict) or meta.get("kind") != "detector" or not meta.get("detector"):
        raise CheckpointError(f"{path}: not a detector checkpoint")
    return str(meta["detector"])


def load_detector(checkpoint: str | os.PathLike, *, device: str = "cpu") -> Detector:
    """A trained detector from its checkpoint; which detector it is comes from the checkpoint itself."""
    from .plugins import get_registry

    cls = get_registry().detector(checkpoint_detector_name(checkpoint))
    return cls.load(checkpoint, device=_device(device))


def demo_data(quick: bool = False) -> Path:
    """The folder of the offline benchmark MedForensics-mini (built on first use, then cached; ``quick``: small)."""
    from .benchmark import default_dataset

    return Path(default_dataset(quick=quick))


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """One image as a float tensor ``(3, H, W)`` in [0, 1] (PNG/JPEG/TIFF, 16-bit, DICOM, NIfTI middle slice)."""
    from .data.readers import read_image as read

    return read(path).tensor


def open_images(data: str | os.PathLike, split: str | None = None, *, on_bad: str = "fail"):
    """An image set (decoded once) from a manifest, a folder holding one, or a folder layout; one ``split`` of it."""
    from .data import open_dataset
    from .data.dataset import ImageSet

    manifest = open_dataset(Path(data))
    return ImageSet(manifest.split(split) if split else manifest, on_bad=on_bad)


def score(detector: Detector, paths: Sequence[str | os.PathLike] | str | os.PathLike, *, crop: str = "center",
          batch_size: int = 64) -> np.ndarray:
    """Fake probability of every frame of every file (folders are walked), in order; a bad file raises one error.

    ``crop="center"`` scores what a comparison scores (the detector's own preprocessing);
    ``"tiles"`` scores the whole image by tiles, as ``mfx predict`` does by default.
    """
    from .engine.context import FitContext
    from .engine.predict import PredictOptions, predict_files
    from .engine.tiles import TileConfig

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    options = PredictOptions(on_bad="fail", tiles=TileConfig(mode=crop, batch_size=batch_size))
    predictions, bad = predict_files(detector, list(paths), FitContext(device=detector.device), options)
    if bad:
        raise MfxError(f"{bad[0][0]}: {bad[0][1]}")
    return np.array([p.score for p in predictions])


def calibrate(detector: Detector, reals: Sequence[str | os.PathLike] | str | os.PathLike, *, fpr: float = 0.05,
              crop: str = "tiles", aggregate: str = "max", stride: float = 0.5, batch_size: int = 64) -> float:
    """Fix ``detector``'s decision threshold on these real files, scored as :func:`score` scores them with the same
    ``crop`` (``mfx calibrate``). The threshold, its rule and its scoring go into ``detector.train_info``, so
    ``detector.save(path)`` keeps them; returns the threshold. A bad file raises one error. Files under a
    ``1_fake`` folder (fakes by the dataset layout) are left out, and the count is logged.

    Why: a threshold fixed by ``mfx compare`` holds for its validation reals scored by centre crop, not for whole
    images scored by tiles nor for reals of another scanner (docs: "A threshold for your scanner").
    """
    from .engine.calibrate import calibrate_files
    from .engine.context import FitContext
    from .engine.predict import PredictOptions
    from .engine.tiles import TileConfig

    if isinstance(reals, (str, os.PathLike)):
        reals = [reals]
    options = PredictOptions(on_bad="fail", tiles=TileConfig(mode=crop, aggregate=aggregate, stride=stride,
                                                            batch_size=batch_size))
    result, _ = calibrate_files(detector, list(reals), FitContext(device=detector.device), options, fpr)
    if result.left_out_fakes:
        log.warning("calibrate: left out %d file(s) under 1_fake folders (fakes by the dataset layout)",
                    result.left_out_fakes)
    if result.left_out_repeats:
        log.warning("calibrate: left out %d repeated file(s): each file counts once", result.left_out_repeats)
    return result.threshold


def _device(name: str) -> torch.device:
    from .engine.device import resolve_device

    return resolve_device(name)
