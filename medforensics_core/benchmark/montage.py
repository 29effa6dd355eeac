"""A montage of a dataset: one row per modality, one column for real images and one per generator setting.

Looking at the fakes is the first check of a benchmark: a setting whose images
are obviously broken, or indistinguishable from the reals, shows at a glance.
A local edit (inpainting) is judged beside the real it was made from: the
difference column shows where the edit is, the first two how it reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.manifest import Manifest, ManifestRow, read_manifest
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


DIFFERENCE_GAIN = 4.0  # the difference column is |fake - real| times this, so a faint edit still shows


def pick_pairs(manifest: Manifest, setting: str, split: str | None = "test",
               per_modality: int = 2) -> list[tuple[ManifestRow, ManifestRow]]:
    """Up to ``per_modality`` (fake, real it was made from) pairs per modality: a fake of ``setting`` and the
    real image of the same ``source`` and split (the benchmark builder records that source for every fake).
    A source shared by several reals (a volume's slices, in a user's manifest) names no single real, so its
    fakes are left out rather than shown beside the wrong image."""
    rows = [r for r in manifest.rows if split is None or r.split == split]
    reals_of: dict[tuple[str, str], list[ManifestRow]] = {}
    for r in rows:
        if r.label == 0 and r.source:
            reals_of.setdefault((r.source, r.split), []).append(r)
    reals = {key: found[0] for key, found in reals_of.items() if len(found) == 1}
    pairs: list[tuple[ManifestRow, ManifestRow]] = []
    taken: dict[str, int] = {}
    for row in rows:
        if row.label != 1 or row.generator != setting or taken.get(row.modality, 0) >= per_modality:
            continue
        real = reals.get((row.source, row.split))
        if real is not None:
            pairs.append((row, real))
            taken[row.modality] = taken.get(row.modality, 0) + 1
    return sorted(pairs, key=lambda pair: pair[0].modality)


def _save(fig, output: Path) -> Path:
    """Lay out, write and close a figure; the folder is made if missing."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def _rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def draw_pairs(dataset: Path, output: Path, setting: str, *, split: str | None = "test", per_modality: int = 2,
               tile_inches: float = 1.6) -> Path:
    """Write a PNG of fakes of ``setting`` beside their source reals and the amplified difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = Path(dataset)
    manifest = read_manifest(dataset / "manifest.csv" if dataset.is_dir() else dataset)
    settings = sorted({r.generator for r in manifest.rows if r.label == 1})
    if setting not in settings:
        raise BadInputError(dataset, f"no generator setting {setting!r} in the manifest; it has: "
                                     f"{', '.join(settings) or 'no fakes'}")
    pairs = pick_pairs(manifest, setting, split, per_modality)
    if not pairs:
        raise BadInputError(dataset, f"no fake of {setting!r} in the {split or 'any'} split has a real image of "
                                     "the same source (the manifest's source column pairs them)")
    fig, axes = plt.subplots(len(pairs), 3, squeeze=False, figsize=(3 * tile_inches, tile_inches * len(pairs) + 0.4))
    titles = ("real (source)", "fake", f"|fake - real| x {DIFFERENCE_GAIN:g}")
    for i, (fake_row, real_row) in enumerate(pairs):
        real, fake = _rgb(manifest.path_of(real_row)), _rgb(manifest.path_of(fake_row))
        difference = np.clip(np.abs(fake - real) * DIFFERENCE_GAIN, 0, 1) if fake.shape == real.shape else None
        for j, picture in enumerate((real, fake, difference)):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if picture is not None:
                ax.imshow(picture)
            if i == 0:
                ax.set_title(titles[j], fontsize=8)
        axes[i][0].set_ylabel(fake_row.modality, fontsize=8)
    fig.suptitle(f"{setting} beside its source reals\n{dataset.name}, {split or 'all'} split", fontsize=8)
    return _save(fig, output)


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
    return _save(fig, output)
