"""DSKI's ablations: each removes exactly one part, everything else (initial weights included) is shared.

Shared initial weights come from the per-module seeds of :func:`~mfx_dski.model.reset_parameters`;
equal training comes from the fixed epoch count (a ``--budget-minutes`` run says it cannot compare them).

* ``dski-no-noise``: CDFA without its noise branch (the retrieval descriptor stays);
* ``dski-no-descriptor``: retrieval on the adapted embedding alone (the noise branch stays);
* ``dski-no-cdfa``: frozen CLIP + prompts + MFRM, no adapters;
* ``dski-no-mfrm``: CDFA only, stage-1 scores, no bank.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from .config import DSKIConfig
from .detector import DSKIBase, DSKIDetector


@dataclasses.dataclass
class DSKINoNoiseConfig(DSKIConfig):
    """DSKI without the CDFA noise branch (spatial adapters only; the retrieval descriptor stays)."""

    use_noise: bool = False


@dataclasses.dataclass
class DSKINoDescriptorConfig(DSKIConfig):
    """DSKI whose MFRM retrieves on the adapted embedding alone (no noise descriptor)."""

    use_descriptor: bool = False


@dataclasses.dataclass
class DSKINoCDFAConfig(DSKIConfig):
    """DSKI without CDFA: frozen CLIP, (learnable) prompts and MFRM."""

    use_cdfa: bool = False


@dataclasses.dataclass
class DSKINoMFRMConfig(DSKIConfig):
    """DSKI without MFRM: stage-1 scores only."""

    use_mfrm: bool = False


class DSKINoNoise(DSKIDetector):
    name: ClassVar[str] = "dski-no-noise"
    description: ClassVar[str] = "DSKI ablation: CDFA without its noise branch (spatial adapters + MFRM)"
    config_class: ClassVar[type] = DSKINoNoiseConfig


class DSKINoDescriptor(DSKIDetector):
    name: ClassVar[str] = "dski-no-descriptor"
    description: ClassVar[str] = "DSKI ablation: MFRM retrieves on the adapted embedding only (no noise descriptor)"
    config_class: ClassVar[type] = DSKINoDescriptorConfig


class DSKINoCDFA(DSKIDetector):
    name: ClassVar[str] = "dski-no-cdfa"
    description: ClassVar[str] = "DSKI ablation: frozen CLIP + prompts + MFRM, no adapters"
    config_class: ClassVar[type] = DSKINoCDFAConfig


class DSKINoMFRM(DSKIBase):
    name: ClassVar[str] = "dski-no-mfrm"
    description: ClassVar[str] = "DSKI ablation: CDFA only, no retrieval at test time"
    config_class: ClassVar[type] = DSKINoMFRMConfig


DETECTORS = (DSKIDetector, DSKINoNoise, DSKINoDescriptor, DSKINoCDFA, DSKINoMFRM)
