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


# --------------------------------------------------------------------------- v2: latent diffusion, super-resolution


@pytest.fixture(scope="module")
def mixed_crops(ct_crops, histo_crops) -> tuple[torch.Tensor, torch.Tensor]:
    """A grey and a colour modality together, with their condition ids: how the conditional networks train."""
    images = torch.cat([ct_crops[:8], histo_crops[:8]])
    return images, torch.tensor([0] * 8 + [1] * 8)


@pytest.fixture(scope="module")
def ldm(mixed_crops):
    images, conditions = mixed_crops
    return _make("ldm", ae_steps=40, unet_steps=20).fit(images, FitContext(seed=0), conditions=conditions)


def test_v2_generators_are_conditional_and_have_their_families():
    registry = get_registry()
    assert registry.generator("ldm").conditional and registry.generator("superres").conditional
    assert _make("ldm", mode="reconstruct").family == "autoencoder"
    assert _make("ldm", mode="sample").family == "latent-diffusion" and not _make("ldm", mode="sample").is_img2img
    assert registry.generator("superres").family == "super-resolution"


def test_ldm_modes_keep_range_grey_and_colour_and_are_deterministic(ldm, mixed_crops):
    images, conditions = mixed_crops
    real, cond = images[6:10], conditions[6:10]  # two CT, two histopathology
    for mode in ("reconstruct", "img2img", "inpaint"):
        gen = _make("ldm", ae_steps=40, unet_steps=20, mode=mode).adopt(ldm)
        out = gen.transform(real, torch.Generator().manual_seed(3), conditions=cond)
        assert out.shape == real.shape and float(out.min()) >= 0 and float(out.max()) <= 1, mode
        assert torch.equal(out[:2, 0], out[:2, 1]) and torch.equal(out[:2, 0], out[:2, 2]), f"{mode}: grey stays grey"
        assert not torch.equal(out[2:, 0], out[2:, 1]), f"{mode}: colour stays colour"
        assert torch.equal(out, gen.transform(real, torch.Generator().manual_seed(3), conditions=cond)), mode
    sampler = _make("ldm", ae_steps=40, unet_steps=20, mode="sample").adopt(ldm)
    samples = sampler.sample(4, torch.Generator().manual_seed(1), conditions=torch.tensor([0, 0, 1, 1]))
    assert samples.shape == (4, 3, SIZE, SIZE)
    assert torch.equal(samples[:2, 0], samples[:2, 2]) and not torch.equal(samples[2:, 0], samples[2:, 2])


def test_ldm_inpaint_keeps_the_real_outside_the_feathered_square(ldm, mixed_crops):
    images, conditions = mixed_crops
    gen = _make("ldm", ae_steps=40, unet_steps=20, mode="inpaint", region=0.25, feather=2.0).adopt(ldm)
    real = images[:3]
    out = gen.transform(real, torch.Generator().manual_seed(0), conditions=conditions[:3])
    for fake, original in zip(out, real):
        rows, cols = torch.nonzero((fake - original).abs().amax(dim=0) > 1e-6, as_tuple=True)
        assert len(rows) > 0
        side = round(0.25 * SIZE / 4) * 4
        assert int(rows.max() - rows.min()) < side and int(cols.max() - cols.min()) < side


def test_ldm_inpaint_at_low_strength_regenerates_the_region_near_its_own_reconstruction(ldm, mixed_crops):
    """Below strength 1 the region starts from the noised real latent (its layout kept); at 1, from pure noise."""
    images, conditions = mixed_crops
    real, cond = images[:4], conditions[:4]
    reconstruction = _make("ldm", ae_steps=40, unet_steps=20, mode="reconstruct").adopt(ldm).transform(
        real, conditions=cond)
    distance = {}
    for strength in (0.05, 1.0):
        gen = _make("ldm", ae_steps=40, unet_steps=20, mode="inpaint", region=0.4, strength=strength,
                    feather=0.0).adopt(ldm)  # no blend ramp: every changed pixel is a regenerated one
        out = gen.transform(real, torch.Generator().manual_seed(0), conditions=cond)
        region = (out - real).abs().amax(dim=1, keepdim=True).expand_as(out) > 1e-6  # same masks: same seed
        distance[strength] = float((out - reconstruction).abs()[region].mean())
    assert distance[0.05] < 0.1 * distance[1.0], distance


def test_ldm_autoencoder_learns_to_reconstruct(mixed_crops):
    images, conditions = mixed_crops
    untrained = _make("ldm", ae_steps=0, unet_steps=0, mode="reconstruct").fit(images, FitContext(seed=0),
                                                                                conditions=conditions)
    trained = _make("ldm", ae_steps=80, unet_steps=0, mode="reconstruct").fit(images, FitContext(seed=0),
                                                                              conditions=conditions)
    losses = np.asarray(trained.losses)
    assert len(losses) == 80 and losses[-10:].mean() < 0.85 * losses[:10].mean()
    error = [float((g.transform(images, conditions=conditions) - images).abs().mean()) for g in (untrained, trained)]
    assert error[1] < 0.9 * error[0], error
    with pytest.raises(RuntimeError, match="U-Net"):
        _make("ldm", mode="img2img").adopt(trained).transform(images[:1], conditions=conditions[:1])


def test_superres_upsamplers_are_different_networks_close_to_the_source(mixed_crops):
    images, conditions = mixed_crops
    outs = {}
    for kind in ("pixelshuffle", "transposed", "resizeconv"):
        gen = _make("superres", upsampler=kind, steps=40).fit(images, FitContext(seed=0), conditions=conditions)
        outs[kind] = gen.transform(images[:4])
        assert outs[kind].shape == images[:4].shape
        assert float((outs[kind] - images[:4]).abs().mean()) < 0.1, kind  # a regeneration, not a new image
        assert torch.equal(outs[kind][:2, 0], outs[kind][:2, 1]), "grey stays grey"
    assert not torch.equal(outs["pixelshuffle"], outs["transposed"])
    with pytest.raises(ValueError, match="up-sampler"):
        _make("superres", upsampler="lanczos")
