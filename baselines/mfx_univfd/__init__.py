"""``univfd`` and ``univfd-nn``: Ojha et al., "Towards Universal Fake Image Detectors..." (CVPR 2023).

UnivFD's point is that a *frozen* CLIP image encoder already separates real from
generated images; training only a linear probe on its features generalises to
unseen generators far better than training a CNN end to end. The package is in
three parts:

* :mod:`.features` — the frozen CLIP image features both detectors share
  (backbone, test-time geometry, on-disk feature cache);
* :mod:`.probe` — ``univfd``, the paper's linear probe;
* :mod:`.nn` — ``univfd-nn``, the paper's nearest-neighbour variant over a bank
  of training features (it shares the features, not the probe; it declares the
  ``ReferenceBank`` capability, so ``mfx index add`` and few-shot extend its bank).
"""

from __future__ import annotations

from medforensics_core.hookspecs import hookimpl

from .features import TINY_BACKBONE, ClipFeatureDetector
from .nn import UnivFDNNConfig, UnivFDNNDetector
from .probe import UnivFDConfig, UnivFDDetector, train_probe_on_features, train_probe_on_images

__all__ = ["TINY_BACKBONE", "ClipFeatureDetector", "UnivFDConfig", "UnivFDDetector", "UnivFDNNConfig",
           "UnivFDNNDetector", "train_probe_on_features", "train_probe_on_images"]


@hookimpl
def register_detectors(register):
    register(UnivFDDetector)
    register(UnivFDNNDetector)
