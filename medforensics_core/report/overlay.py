"""Heat-map overlays: the tile scores of an image drawn over the image (``mfx predict --explain``, report.html).

Drawn with matplotlib's object API on an Agg canvas (no pyplot state, works headless),
like the report plots.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def _grey(image: np.ndarray) -> np.ndarray:
    """``(3, H, W)`` or ``(H, W)`` in [0, 1] -> ``(H, W, 3)`` for imshow."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.clip(array, 0.0, 1.0)


def overlay_png(image: np.ndarray, heat: np.ndarray, *, title: str = "", boxes: list[tuple[int, int, int, int]] = (),
                threshold: float | None = None, dpi: int = 100, size_inches: float = 4.0) -> bytes:
    """The image, its heat map (fake probability, 0..1, ``jet``-like ``inferno``), and boxes (y, x, h, w).

    The first box (the top tile) is drawn solid, the others dashed. With ``threshold``, the
    colour bar marks it.
    """
    figure = Figure(figsize=(size_inches * 1.25, size_inches), dpi=dpi)
    axes = figure.add_subplot()
    axes.imshow(_grey(image), interpolation="nearest")
    masked = np.ma.masked_invalid(np.asarray(heat, dtype=np.float32))
    shown = axes.imshow(masked, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.45, interpolation="nearest")
    for i, (y, x, h, w) in enumerate(boxes):
        axes.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, linewidth=2 if i == 0 else 1,
                                 linestyle="-" if i == 0 else "--", edgecolor="#00e5ff"))
    bar = figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    bar.set_label("fake probability (tile)")
    if threshold is not None:
        bar.ax.axhline(threshold, color="white", linewidth=1.5)
    axes.set_axis_off()
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()
