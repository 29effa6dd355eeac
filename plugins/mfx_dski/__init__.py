"""DSKI — dual-stage knowledge infusing on a frozen CLIP space — as the ``mfx_dski`` plugin.

Registers the ``dski`` detector and its ablations (``dski-no-noise``,
``dski-no-descriptor``, ``dski-no-cdfa``, ``dski-no-mfrm``). ``dski`` declares the
core's ``ReferenceBank`` capability, so ``mfx index add``/``show`` (core commands)
work on its MFRM bank.

Layout, one concept per module: ``config`` (typed config and presets), ``cdfa``
and ``model`` (the adapters, the noise branch, per-module seeded initialisation),
``prompts``, ``training`` (stage-1 loop and tuning hold-out), ``mfrm`` and
``bank`` (retrieval fusion and the bank), ``detector``, ``ablations``.
"""

from __future__ import annotations

from medforensics_core.hookspecs import hookimpl

from .config import DSKIConfig
from .ablations import DETECTORS, DSKINoCDFA, DSKINoDescriptor, DSKINoMFRM, DSKINoNoise
from .detector import DSKIBase, DSKIDetector

__all__ = ["DSKIBase", "DSKIConfig", "DSKIDetector", "DSKINoCDFA", "DSKINoDescriptor", "DSKINoMFRM", "DSKINoNoise"]


@hookimpl
def register_detectors(register):
    for cls in DETECTORS:
        register(cls)

