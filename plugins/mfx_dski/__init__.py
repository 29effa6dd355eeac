"""DSKI — dual-stage knowledge infusing on a frozen CLIP space — as the ``mfx_dski`` plugin.

Registers the ``dski`` detector and its ablations (``dski-no-noise``,
``dski-no-cdfa``, ``dski-no-mfrm``). ``dski`` declares the core's
``ReferenceBank`` capability, so ``mfx index add``/``show`` (a core command)
work on its MFRM bank.
"""

from __future__ import annotations

from medforensics_core.hookspecs import hookimpl

from .config import DSKIConfig
from .detector import DETECTORS, DSKIBase, DSKIDetector, DSKINoCDFA, DSKINoMFRM, DSKINoNoise

__all__ = ["DSKIBase", "DSKIConfig", "DSKIDetector", "DSKINoCDFA", "DSKINoMFRM", "DSKINoNoise"]


@hookimpl
def register_detectors(register):
    for cls in DETECTORS:
        register(cls)

