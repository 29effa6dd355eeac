"""Self-blended partial fakes (engine.augment): what they change, what they keep, and the set that adds them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medforensics_core.data.dataset import ImageSet
from medforensics_core.data.manifest import Manifest
from medforensics_core.engine.augment import (SELF_BLEND, SelfBlendRecipe, SelfBlendedSet, blob_mask, self_blend,
                                              with_self_blends)


def _real_ct(size: int = 128) -> torch.Tensor:
    """A grey ``(3, size, size)`` crop of pydicom's real CT slice, in [0, 1]."""
    import pydicom
    from pydicom.data import get_testdata_file

    pixels = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype("float64")
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    grey = torch.tensor(pixels[:size, :size], dtype=torch.float32)
    return grey[None].expand(3, -1, -1).contiguous()


def test_blob_masks_cover_part_of_the_image_with_soft_edges():
    recipe = SelfBlendRecipe()
    generator = torch.Generator().manual_seed(0)
    covered = []
    for _ in range(40):
        mask = blob_mask(128, 128, recipe, generator)
        assert mask.shape == (1, 128, 128) and mask.min() >= 0 and mask.max() <= 1
        covered.append(float((mask > 0.5).float().mean()))
        soft = ((mask > 0.02) & (mask < 0.98)).float().sum()
        assert soft > 0  # a feathered edge, never a hard cut
    assert 0.005 < min(covered) and max(covered) < 0.6
    assert 0.05 < np.mean(covered) < 0.3


def test_self_blend_changes_the_blobs_only_and_keeps_a_grey_image_grey():
    image = _real_ct()
    fake = self_blend(image, SelfBlendRecipe(), torch.Generator().manual_seed(3))
    changed = (fake - image).abs().amax(dim=0) > 1e-6
    assert 0.01 < float(changed.float().mean()) < 0.7  # part of the image, not all of it
    assert bool((fake[0] == fake[1]).all() and (fake[1] == fake[2]).all())
    assert fake.min() >= 0 and fake.max() <= 1
    again = self_blend(image, SelfBlendRecipe(), torch.Generator().manual_seed(3))
    torch.testing.assert_close(fake, again, rtol=0, atol=0)
    other = self_blend(image, SelfBlendRecipe(), torch.Generator().manual_seed(4))
    assert not torch.equal(fake, other)


def test_self_blend_leaves_a_local_noise_trace():
    """Inside the blobs the noise statistics (log local residual energy) move; away from them they do not."""
    from medforensics_core.plugins import get_registry

    image = _real_ct()
    stats = get_registry().noise_extractor("noise-stats")()
    for seed in range(4):
        fake = self_blend(image, SelfBlendRecipe(), torch.Generator().manual_seed(seed))
        inside = (fake - image).abs().amax(dim=0) > 1e-3
        far = ~torch.nn.functional.max_pool2d(inside[None, None].float(), 15, 1, 7)[0, 0].bool()
        moved = (stats(fake[None]) - stats(image[None]))[0, 6:12].abs().mean(dim=0)
        assert float(moved[inside].mean()) > 2 * float(moved[far].mean()), seed  # far moves a little: the
        # statistics divide by the image's own noise level, which the blobs change


def _image_set(folder, count: int) -> ImageSet:
    """PNG crops of the real CT slice on disk (every fourth labelled fake), read back as an :class:`ImageSet`."""
    from PIL import Image

    from medforensics_core.data.manifest import ManifestRow

    grey = (_real_ct(160)[0].numpy() * 255).round().astype(np.uint8)
    rows = []
    for i in range(count):
        label = int(i % 4 == 3)
        Image.fromarray(grey[i % 32:i % 32 + 128, i:i + 128]).save(folder / f"img-{i}.png")
        rows.append(ManifestRow(path=f"img-{i}.png", label=label, modality="ct", generator="g" if label else "real",
                                source=f"src-{i}"))
    return ImageSet(Manifest(rows, folder))


def test_with_self_blends_adds_labelled_partial_fakes_of_reals(tmp_path):
    images = _image_set(tmp_path, 12)  # 9 reals, 3 fakes
    assert with_self_blends(images, 0.0, SelfBlendRecipe(), seed=0) is images
    grown = with_self_blends(images, 0.5, SelfBlendRecipe(), seed=0)
    assert isinstance(grown, SelfBlendedSet)
    added = len(grown) - len(images)
    assert added == round(0.5 * 9)
    assert list(grown.labels[:12]) == list(images.labels)
    assert all(grown.labels[12:] == 1)
    for row in grown.rows[12:]:
        assert (row.generator, row.family, row.network) == (SELF_BLEND,) * 3
        original = next(r for r in images.rows if r.path == row.path)
        assert original.label == 0 and row.source == original.source  # made from a real, same side of a split
    for index in range(12):
        torch.testing.assert_close(grown[index][0], images[index][0])
    for index in range(12, len(grown)):
        image, label = grown[index]
        original = images[[r.path for r in images.rows].index(grown.rows[index].path)][0]
        assert label == 1 and not torch.equal(image, original)
        torch.testing.assert_close(image, grown[index][0], rtol=0, atol=0)  # the same partial fake every epoch
    same_seed = with_self_blends(images, 0.5, SelfBlendRecipe(), seed=0)
    torch.testing.assert_close(same_seed[len(grown) - 1][0], grown[len(grown) - 1][0], rtol=0, atol=0)


def test_a_subset_of_a_self_blended_set_keeps_each_image_with_its_label(tmp_path):
    grown = with_self_blends(_image_set(tmp_path, 12), 0.5, SelfBlendRecipe(), seed=1)
    picked = [13, 2, 12]
    view = grown.subset(picked)
    assert list(view.labels) == [grown.labels[i] for i in picked]
    for position, index in enumerate(picked):
        torch.testing.assert_close(view[position][0], grown[index][0], rtol=0, atol=0)


@pytest.mark.parametrize("share", [0.25, 1.0])
def test_self_blend_share_counts_reals_only(tmp_path, share):
    images = _image_set(tmp_path, 16)  # 12 reals
    assert len(with_self_blends(images, share, SelfBlendRecipe(), seed=2)) - 16 == round(share * 12)
