"""Fixtures: real CT crops from DICOM files that ship with pydicom, and fakes made by this plugin's generator.

Tests use real medical pixels (never random arrays standing in for images):
``693_J2KI.dcm`` and ``J2K_pixelrep_mismatch.dcm`` (two head CT slices, JPEG
2000) from pydicom's test data. Training crops come from the left half of each
slice and test crops from the right half, so no pixel is in both.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

CROP = 32
SOURCES = ("693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm")
MIN_CROP_STD = 0.03  # leave out crops of air/background: they carry no texture to learn from


def real_crops(half: str) -> torch.Tensor:
    """Non-overlapping 32x32 crops of the left or right half of each source slice, textured ones only."""
    from pydicom.data import get_testdata_file

    from medforensics_core.data.readers import read_image

    crops = []
    for name in SOURCES:
        image = read_image(get_testdata_file(name)).tensor
        width = image.shape[-1]
        columns = range(0, width // 2 - CROP + 1, CROP) if half == "left" else range(width // 2, width - CROP + 1, CROP)
        for top in range(0, image.shape[-2] - CROP + 1, CROP):
            for left in columns:
                crop = image[:, top:top + CROP, left:left + CROP]
                if float(crop.std()) >= MIN_CROP_STD:
                    crops.append(crop)
    return torch.stack(crops)


def write_image_set(folder, real: torch.Tensor, fake: torch.Tensor, split: str):
    """Save crops as 8-bit PNGs, write a manifest, and read them back as an mfx ImageSet."""
    from medforensics_core.data.dataset import ImageSet
    from medforensics_core.data.manifest import ManifestRow, read_manifest, write_manifest

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, images in ((0, real), (1, fake)):
        for i, image in enumerate(images):
            name = f"{'fake' if label else 'real'}_{i:03d}.png"
            array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(array).save(folder / name)
            rows.append(ManifestRow(path=name, label=label, modality="ct",
                                    generator="example-spectral" if label else "real", split=split))
    write_manifest(rows, folder / "manifest.csv")
    return ImageSet(read_manifest(folder / "manifest.csv"))


@pytest.fixture(scope="session")
def plugin_registered():
    """The plugin in the mfx registry, whether or not its distribution is pip-installed."""
    import mfx_example_detector
    from medforensics_core import plugins

    plugins.register_plugin(mfx_example_detector, "example")
    yield plugins.get_registry()
    plugins.unregister_plugin(mfx_example_detector)


@pytest.fixture(scope="session")
def crops_and_fakes(plugin_registered, tmp_path_factory):
    """Train and test ImageSets: real CT crops vs ``example-spectral`` fakes fitted on the training crops."""
    generator_class = plugin_registered.generator("example-spectral")
    train_real, test_real = real_crops("left"), real_crops("right")
    generator = generator_class(generator_class.make_config(size=CROP)).fit(train_real)
    seeded = torch.Generator().manual_seed(0)
    train_fake = generator.sample(len(train_real), generator=seeded)
    test_fake = generator.sample(len(test_real), generator=seeded)
    root = tmp_path_factory.mktemp("example-data")
    return {
        "train": write_image_set(root / "train", train_real, train_fake, "train"),
        "test": write_image_set(root / "test", test_real, test_fake, "test"),
        "generator": generator,
        "train_real": train_real,
    }
