"""mfx — detect AI-generated medical images and compare detectors fairly.

The Python API (see :mod:`medforensics_core.api`)::

    import medforensics_core as mfx
    mfx.__version__, mfx.list_detectors()
    detector = mfx.create_detector("freq", preset="tiny")     # or mfx.load_detector("model.safetensors")
    image = mfx.read_image("scan.dcm")                          # (3, H, W) float tensor in [0, 1]
    scores = mfx.score(detector, ["scan.dcm", "folder/"])       # fake probability per frame

The functions are loaded on first use, so ``import medforensics_core`` stays
cheap for the command line and for plugins that import only a sub-module.
"""

from __future__ import annotations

from importlib import metadata as _metadata
from typing import Any

try:
    __version__ = _metadata.version("medforensics")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_API = ("calibrate", "checkpoint_detector_name", "create_detector", "demo_data", "list_detectors", "load_detector",
        "open_images", "read_image", "score")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'medforensics_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
