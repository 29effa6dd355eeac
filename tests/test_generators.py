"""The benchmark generators on real medical crops: shapes, range, determinism, training that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medforensics_core.data.readers import read_image
from medforensics_core.engine.context import FitContext
from medforensics_core.plugins import get_registry
from medforensics_core.benchmark.sources import SOURCES, locate

SIZE = 32


def _tiles(relpath: str, count: int) -> torch.Tensor:
    """``count`` non-overlapping SIZE x SIZE crops from the centre of a real source image."""
    source = next(s for s in SOURCES if s.relpath == relpath)
    image = read_image(locate(source)).tensor
    _, h, w = image.shape
    top, left = h // 2 - 2 * SIZE, w // 2 - 2 * SIZE
    tiles = [image[:, top + r * SIZE: top + (r + 1) * SIZE, left + c * SIZE: left + (c + 1) * SIZE]
             for r in range(4) for c in range(4)]
    return torch.stack(tiles[:count]).contiguous()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one torch thread is faster (and reproducible) on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ct_crops() -> torch.Tensor:
    return _tiles("data/693_UNCR.dcm", 16)


@pytest.fixture(scope="module")
def histo_crops() -> torch.Tensor:
    return _tiles("data/ihc.png", 16)


def _make(name: str, **overrides):
    cls = get_registry().generator(name)
    return cls(cls.make_config("tiny", **overrides))


def test_all_families_registered():
    registry = get_registry()
    families = {registry.generator(n).family for n in ("dcgan", "ddpm", "sdedit", "autoencoder", "inpaint")}
    assert families == {"gan", "diffusion", "autoencoder", "local-regeneration"}
    for name in registry.names("generator"):
        cls = registry.generator(name)
        assert cls.description and cls.family


@pytest.mark.parametrize("name", ["dcgan", "ddpm"])
def test_unconditional_samples_shape_range_grey_and_determinism(name, ct_crops):
    gen = _make(name).fit(ct_crops, FitContext(seed=3))
    a = gen.sample(5, torch.Generator().manual_seed(1))
    b = gen.sample(5, torch.Generator().manual_seed(1))
    c = gen.sample(5, torch.Generator().manual_seed(2))
    assert a.shape == (5, 3, SIZE, SIZE) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 0], a[:, 2]), "grey data must give grey fakes"
    assert torch.equal(a, b) and not torch.equal(a, c)
    again = _make(name).fit(ct_crops, FitContext(seed=3)).sample(5, torch.Generator().manual_seed(1))
    assert torch.equal(a, again), "same seed, same training, same samples"


@pytest.mark.parametrize("name,overrides", [("sdedit", {"strength": 0.4}), ("inpaint", {}),
                                            ("autoencoder", {"upsample": "bilinear"}),
                                            ("autoencoder", {"upsample": "pixelshuffle"})])
def test_img2img_keeps_shape_range_colour_and_is_deterministic(name, overrides, histo_crops):
    gen = _make(name, **overrides).fit(histo_crops, FitContext(seed=0))
    real = histo_crops[:4]
    out = gen.transform(real, torch.Generator().manual_seed(5))
    assert out.shape == real.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.equal(out[:, 0], out[:, 1]), "colour data stays colour"
    assert torch.equal(out, gen.transform(real, torch.Generator().manual_seed(5)))
    assert not torch.equal(out, real)


@pytest.mark.parametrize("name,overrides", [("ddpm", {}), ("autoencoder", {"upsample": "pixelshuffle"})])
def test_fit_reduces_the_loss(name, overrides, ct_crops):
    gen = _make(name, steps=60, **overrides).fit(ct_crops, FitContext(seed=0))
    losses = np.asarray(gen.losses)
    assert len(losses) == 60
    assert losses[-10:].mean() < 0.7 * losses[:10].mean()


def test_dcgan_training_moves_samples_towards_the_data(ct_crops):
    def histogram_distance(images: torch.Tensor) -> float:
        bins = np.linspace(0, 1, 17)
        h_fake = np.histogram(images.numpy(), bins)[0] / images.numel()
        h_real = np.histogram(ct_crops.numpy(), bins)[0] / ct_crops.numel()
        return float(np.abs(h_fake - h_real).sum())

    untrained = _make("dcgan", steps=0).fit(ct_crops, FitContext(seed=0)).sample(32)
    trained_gen = _make("dcgan", steps=120).fit(ct_crops, FitContext(seed=0))
    assert len(trained_gen.losses) == 120
    assert histogram_distance(trained_gen.sample(32)) < histogram_distance(untrained)


def test_sdedit_strength_controls_closeness_and_reuses_the_ddpm_model(ct_crops):
    ddpm = _make("ddpm").fit(ct_crops, FitContext(seed=0))
    real = ct_crops[:6]
    errors = []
    for strength in (0.1, 0.7):
        sdedit = _make("sdedit", strength=strength).adopt(ddpm)
        assert sdedit.model is ddpm.model
        errors.append(float((sdedit.transform(real, torch.Generator().manual_seed(0)) - real).abs().mean()))
    assert errors[0] < errors[1]


def test_inpaint_changes_only_one_square(ct_crops):
    inpaint = _make("inpaint", region=0.25).adopt(_make("ddpm").fit(ct_crops, FitContext(seed=0)))
    real = ct_crops[:3]
    out = inpaint.transform(real, torch.Generator().manual_seed(0))
    for fake, original in zip(out, real):
        changed = (fake != original).any(dim=0)
        rows, cols = torch.nonzero(changed, as_tuple=True)
        assert len(rows) > 0
        side = round(0.25 * SIZE)
        assert int(rows.max() - rows.min()) < side and int(cols.max() - cols.min()) < side


def test_autoencoder_decoders_differ_and_bad_kind_is_refused(histo_crops):
    outs = [_make("autoencoder", upsample=kind).fit(histo_crops, FitContext(seed=0)).transform(histo_crops[:2])
            for kind in ("bilinear", "pixelshuffle")]
    assert not torch.equal(outs[0], outs[1])
    with pytest.raises(ValueError, match="up-sampling"):
        _make("autoencoder", upsample="lanczos")


def test_unfitted_generator_says_so():
    with pytest.raises(RuntimeError, match="fit"):
        _make("dcgan").sample(1)
