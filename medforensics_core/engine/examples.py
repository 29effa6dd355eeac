"""Example images for a report: fakes caught, fakes missed, reals flagged — each with its tile heat map.

A table of AUCs says how often a detector is right, not what it gets wrong. The
report therefore shows, per detector, the most confident true detections and the
worst errors at the detector's threshold, each as an overlay of its tile scores
(:mod:`engine.tiles`), so a reader sees whether a detector looks at the
manipulated region or at something else (a border, a text label, noise).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..decision import flag_fake
from ..interfaces import Detector
from ..report.overlay import overlay_png
from .context import FitContext
from .rundir import RunDir
from .tiles import TileConfig, TileScorer

log = logging.getLogger(__name__)

#: (key, heading) of the example rows, in report order.
KINDS = (("caught", "fakes caught (most confident)"), ("missed", "fakes missed (lowest scores)"),
         ("flagged", "reals flagged as fake (highest scores)"))
PER_KIND = 3


def pick_examples(labels: np.ndarray, scores: np.ndarray, threshold: float, k: int = PER_KIND) -> dict[str, list[int]]:
    """Indices of the ``k`` most telling images of each kind (see :data:`KINDS`)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    fake_call = flag_fake(scores, threshold)
    order = np.argsort(-scores, kind="stable")
    caught = [int(i) for i in order if labels[i] == 1 and fake_call[i]][:k]
    missed = [int(i) for i in order[::-1] if labels[i] == 1 and not fake_call[i]][:k]
    flagged = [int(i) for i in order if labels[i] == 0 and fake_call[i]][:k]
    return {"caught": caught, "missed": missed, "flagged": flagged}


def write_examples(detector: Detector, images, scores: np.ndarray, threshold: float, run_dir: RunDir,
                   name: str, ctx: FitContext | None = None, k: int = PER_KIND) -> dict[str, list[dict[str, Any]]]:
    """Overlay PNGs of the picked examples under ``examples/<name>/``; returns the report entry's ``examples``."""
    picked = pick_examples(images.labels, scores, threshold, k)
    scorer = TileScorer(detector, TileConfig(), ctx)
    out: dict[str, list[dict[str, Any]]] = {}
    for kind, indices in picked.items():
        out[kind] = []
        for rank, index in enumerate(indices, 1):
            row = images.rows[index]
            image = images.image(index)
            result = scorer.score(image, row.modality)
            title = f"{row.generator} ({row.modality}) {float(scores[index]):.3f}"
            png = overlay_png(image.numpy(), result.heat_map(), title=title, threshold=threshold,
                              boxes=[(t.y, t.x, t.height, t.width) for t in result.top(1)], dpi=72,
                              size_inches=2.4)
            relative = f"examples/{name}/{kind}-{rank}.png"
            run_dir.write_bytes(relative, png)
            out[kind].append({"path": row.path, "label": int(images.labels[index]), "generator": row.generator,
                              "modality": row.modality, "score": float(scores[index]), "overlay": relative})
    return out
