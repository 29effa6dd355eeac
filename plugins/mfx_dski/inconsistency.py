"""Local noise inconsistency: the trace a *partial* fake leaves, which a detector trained on whole-image fakes misses.

Why: an inpainting (or splicing) generator regenerates part of a real image and
pastes it back. Stage 1 learns what whole generated images look like; a region
of one, blended into real pixels, barely moves a pooled embedding, and the
benchmark's held-out inpainting network sits at AUC 0.55-0.59 for every trained
detector. What such an edit cannot hide is that the regenerated region's noise
differs from the rest of the same image (the forensics of splicing: Splicebuster,
Noiseprint). DSKI already has the evidence: the noise statistics of every token
cell of every view (:class:`~mfx_dski.model.CellStats`). Per residual band, the
score is how far the *smoothest* cell's log local energy lies below the image's
median cell, averaged over the bands (a decoder re-synthesises a smoother
texture than a sensor's noise). Untrained and standardised, on the default build
it separates the inpainted fakes from the test reals at AUC 0.74 (tiny preset's
cells; x-ray, MRI, microscopy ~0.9), and whole-image fakes only weakly (0.51-0.67).

The raw score depends on the modality (a CT slice has flat air, a fundus a dark
border), so it is standardised against the reals of the same modality in the
training bank (all training reals unless ``bank_shots`` is set; median and MAD, no
fake involved) into ``z``, and the fusion adds ``inconsistency_weight x z`` to the
fused logit (:mod:`mfx_dski.mfrm`); the weight is chosen on the tuning hold-out
(:func:`mfx_dski.bank.tune`). An image whose modality has no reference (unknown,
or never trained on) gets ``z = 0``: its raw score cannot be read without one, and
a pooled reference would misread a modality's flat background as an edit.

Two-sided on purpose: ``z < 0`` (more uniform than the modality's reals) lowers the
score a little. Measured (seed 0, offline simulation on saved scores): clipping ``z``
at 0 changed nothing on the held-out inpainting network and cost 0.005 AUC on the
held-out pixel-shuffle network.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import torch

MAD_TO_SIGMA = 1.4826
"""MAD x 1.4826 estimates a normal standard deviation."""
Z_CLIP = 5.0
"""Standardised scores are clipped here: one odd image must not outvote stage 1 and retrieval together."""
MIN_SCALE = 0.05
"""Floor of a modality's spread (log-energy units; measured spreads 0.13-5.9): where most reals have a flat
smoothest cell, the MAD is 0 and any edit would get the maximal ``z``."""


def smoothest_cell_deviation(stats: torch.Tensor, views: int, energy: Sequence[int]) -> torch.Tensor:
    """Per image ``(N,)``: mean over the ``energy`` bands of (median cell - smoothest cell) log local energy.

    ``stats`` are the per-cell statistics ``(N V, cells, C)`` of every view; the cells of an
    image's views are taken together, so the score looks at the whole image the views cover.
    """
    bands = stats[..., list(energy)].float()
    per_image = bands.reshape(bands.shape[0] // views, views * bands.shape[1], len(energy))
    return (per_image.median(dim=1).values - per_image.min(dim=1).values).mean(dim=1)


@dataclasses.dataclass
class RealReference:
    """Median and spread of the raw score on training reals, per modality."""

    centre: dict[str, float]
    scale: dict[str, float]

    @classmethod
    def fit(cls, raw: np.ndarray, labels: np.ndarray, modalities: Sequence[str]) -> "RealReference | None":
        """From the reals of (``raw``, ``labels``, ``modalities``), two per modality at least; ``None`` if none has."""
        real = np.asarray(labels) == 0
        values = np.asarray(raw, dtype=np.float64)[real]
        if len(values) < 2:
            return None
        mods = np.asarray(modalities, dtype=object)[real]
        centre, scale = {}, {}
        for key in sorted(set(mods)):
            chosen = values[mods == key]
            if len(chosen) < 2:
                continue
            middle = float(np.median(chosen))
            centre[key] = middle
            scale[key] = max(float(np.median(np.abs(chosen - middle)) * MAD_TO_SIGMA), MIN_SCALE)
        return cls(centre, scale) if centre else None

    def standardise(self, raw: np.ndarray, modalities: Sequence[str] | None) -> np.ndarray:
        """``z = (raw - median) / spread`` of each image's modality, clipped to +-5; 0 where it has no reference."""
        raw = np.asarray(raw, dtype=np.float64)
        known = [m if m in self.centre else None for m in (modalities if modalities is not None else [None] * len(raw))]
        centre = np.array([self.centre.get(m, 0.0) if m else 0.0 for m in known])
        scale = np.array([self.scale.get(m, 1.0) if m else 1.0 for m in known])
        z = np.clip((raw - centre) / scale, -Z_CLIP, Z_CLIP)
        return np.where([m is not None for m in known], z, 0.0)

    def state(self) -> dict[str, Any]:
        return {"centre": dict(self.centre), "scale": dict(self.scale)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> "RealReference | None":
        if not state:
            return None
        return cls({k: float(v) for k, v in state["centre"].items()}, {k: float(v) for k, v in state["scale"].items()})
