"""A montage of a dataset: one row per modality, one column for real images and one per generator setting.

Looking at the fakes is the first check of a benchmark: a setting whose images
are obviously broken, or indistinguishable from the reals, shows at a glance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.manifest import Manifest, read_manifest
from ..errors import BadInputError


def pick_examples(manifest: Manifest, split: str | None = "test") -> tuple[list[str], list[str], dict]:
    """Modalities, columns (``real`` first) and the first image path of each (modality, column) cell."""
    rows = [r for r in manifest.rows if split is None or r.split == split] or list(manifest.rows)
    modalities = sorted({r.modality for r in rows})
    columns = ["real", *sorted({r.generator for r in rows if r.label == 1})]
    cells: dict[tuple[str, str], Path] = {}
    for r in rows:
        key = (r.modality, "real" if r.label == 0 else r.generator)
        cells.setdefault(key, manifest.path_of(r))
    return modalities, columns, cells


def draw_montage(dataset: Path, output: Path, *, split: str | None = "test", tile_inches: float = 1.3) -> Path:
    """Write a PNG grid of example images of ``dataset`` (a folder with manifest.csv, or the CSV) to ``output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    dataset = Path(dataset)
    manifest = read_manifest(dataset / "manifest.csv" if dataset.is_dir() else dataset)
    modalities, columns, cells = pick_examples(manifest, split)
    if not modalities:
        raise BadInputError(dataset, "the manifest lists no images")
    fig, axes = plt.subplots(len(modalities), len(columns), squeeze=False,
                             figsize=(tile_inches * len(columns), tile_inches * len(modalities) + 0.4))
    for i, modality in enumerate(modalities):
        for j, column in enumerate(columns):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            path = cells.get((modality, column))
            if path is not None:
                with Image.open(path) as img:
                    ax.imshow(np.asarray(img.convert("RGB")))
            if i == 0:
                ax.set_title(column, fontsize=8)
            if j == 0:
                ax.set_ylabel(modality, fontsize=8)
    fig.suptitle(f"{dataset.name}: real and generated examples ({split or 'all'} split)", fontsize=9)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output
