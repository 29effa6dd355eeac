"""Noise extractors (plugin mfx_noise): each residual checked against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medforensics_core.plugins import get_registry


def test_npr_matches_hand_computed_residual():
    # one 4x4 channel: each 2x2 block minus its top-left pixel, times 2/3
    x = torch.tensor([[1., 2., 3., 4.],
                      [5., 6., 7., 8.],
                      [9., 10., 11., 12.],
                      [13., 14., 15., 16.]]).view(1, 1, 4, 4)
    expected = torch.tensor([[0., 1., 0., 1.],
                             [4., 5., 4., 5.],
                             [0., 1., 0., 1.],
                             [4., 5., 4., 5.]]).view(1, 1, 4, 4) * 2 / 3
    extractor = get_registry().noise_extractor("npr")(in_channels=1)
    torch.testing.assert_close(extractor(x), expected)


def test_npr_equals_official_interpolate_pair_on_even_sizes():
    """The official code's two nearest F.interpolate calls give the same residual on even sizes."""
    x = torch.rand(2, 3, 16, 12, generator=torch.Generator().manual_seed(0))
    down = F.interpolate(x, scale_factor=0.5, mode="nearest", recompute_scale_factor=True)
    official = (x - F.interpolate(down, scale_factor=2, mode="nearest", recompute_scale_factor=True)) * 2.0 / 3.0
    torch.testing.assert_close(get_registry().noise_extractor("npr")()(x), official)


def test_npr_keeps_odd_sizes_and_is_zero_on_blocky_images():
    blocky = torch.rand(1, 3, 4, 3).repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :7, :5]
    out = get_registry().noise_extractor("npr")()(blocky)
    assert out.shape == blocky.shape
    assert out.abs().max() == 0


# --------------------------------------------------------------------------- real images, all extractors

def _real_ct(crop: tuple[int, int] = (96, 80)) -> torch.Tensor:
    """pydicom's real CT slice (128x128), min-max scaled to [0, 1], as a (1, 3, H, W) batch."""
    import pydicom
    from pydicom.data import get_testdata_file

    pixels = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype("float64")
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    image = torch.from_numpy(pixels[: crop[0], : crop[1]]).float()
    return image.expand(1, 3, *image.shape).contiguous()


def _real_fundus(size: int = 64) -> torch.Tensor:
    """A colour crop of scikit-image's real retina photograph, (1, 3, size, size) in [0, 1]."""
    from pathlib import Path

    import skimage
    from PIL import Image

    with Image.open(Path(skimage.__file__).parent / "data" / "retina.jpg") as img:
        crop = img.convert("RGB").crop((600, 600, 600 + size, 600 + size))
        array = torch.from_numpy(np.asarray(crop, dtype="float32") / 255.0)
    return array.permute(2, 0, 1)[None].contiguous()


NAMES = ["npr", "srm", "bayar", "wavelet", "noise-stats", "grid-phase", "npr-blocks"]


@pytest.mark.parametrize("name", NAMES)
def test_every_extractor_runs_by_name_on_a_real_image(name):
    cls = get_registry().noise_extractor(name)
    extractor = cls(cls.make_config())
    image = _real_fundus()
    out = extractor(image)
    s = cls.downsample
    assert out.shape == (1, extractor.out_channels, 64 // s, 64 // s)
    assert torch.isfinite(out).all() and out.abs().max() > 0


@pytest.mark.parametrize("wavelet", ["haar", "db2", "sym4", "bior2.2"])
@pytest.mark.parametrize("crop", [(96, 80), (95, 77)])
def test_wavelet_subbands_equal_pywt_dwt2(wavelet, crop):
    import pywt

    image = _real_ct(crop)
    cls = get_registry().noise_extractor("wavelet")
    out = cls(cls.make_config(wavelet=wavelet))(image)
    _, (c_h, c_v, c_d) = pywt.dwt2(image[0, 0].double().numpy(), wavelet, mode="periodization")
    assert out.shape == (1, 9, *c_h.shape)
    for band, expected in enumerate((c_h, c_v, c_d)):
        for channel in range(3):
            torch.testing.assert_close(out[0, channel * 3 + band].double(), torch.from_numpy(expected),
                                       atol=1e-5, rtol=1e-5)


def test_wavelet_second_level_is_pywt_level_two_on_the_level_one_grid():
    import pywt

    image = _real_ct((96, 80))
    cls = get_registry().noise_extractor("wavelet")
    extractor = cls(cls.make_config(wavelet="db2", levels=2), in_channels=1)
    out = extractor(image[:, :1])
    assert extractor.out_channels == 6 and out.shape == (1, 6, 48, 40)
    coeffs = pywt.wavedec2(image[0, 0].double().numpy(), "db2", mode="periodization", level=2)
    level_two = torch.from_numpy(np.stack(coeffs[1]))
    torch.testing.assert_close(out[0, 3:, ::2, ::2].double(), level_two, atol=1e-5, rtol=1e-5)


def test_srm_kernels_are_zero_sum_and_flat_images_give_zero():
    from mfx_noise import SRM_KERNELS

    torch.testing.assert_close(SRM_KERNELS.sum(dim=(1, 2)), torch.zeros(3))
    cls = get_registry().noise_extractor("srm")
    flat = torch.full((2, 3, 32, 32), 0.37)
    assert cls()(flat).abs().max() < 1e-5  # float rounding only; a non-zero-sum kernel would give ~1
    assert cls(cls.make_config(per_channel=True))(flat).shape == (2, 9, 32, 32)


def test_srm_equals_scipy_correlation_with_truncation():
    from scipy.ndimage import correlate

    from mfx_noise import SRM_KERNELS

    image = _real_fundus()
    out = get_registry().noise_extractor("srm")()(image)
    grey = image[0].mean(0).double().numpy() * 255.0
    for index, kernel in enumerate(SRM_KERNELS.double().numpy()):
        expected = np.clip(correlate(grey, kernel, mode="mirror"), -3, 3) / 3
        np.testing.assert_allclose(out[0, index].double().numpy(), expected, atol=1e-4)
    assert out.abs().max() <= 1.0 and (out.abs() == 1.0).any()  # truncation is active on a real photo


def _assert_bayar_constraint(kernel: torch.Tensor) -> None:
    c = kernel.shape[-1] // 2
    torch.testing.assert_close(kernel[..., c, c], torch.full(kernel.shape[:2], -1.0))
    torch.testing.assert_close(kernel.sum(dim=(-2, -1)), torch.zeros(kernel.shape[:2]), atol=1e-5, rtol=0)


def test_bayar_constraint_holds_after_an_optimiser_step():
    torch.manual_seed(0)
    cls = get_registry().noise_extractor("bayar")
    extractor = cls(cls.make_config(out_channels=4))
    image = _real_fundus()
    optimiser = torch.optim.SGD(extractor.parameters(), lr=0.5)
    before = extractor.kernel().detach().clone()
    loss = extractor(image).pow(2).mean() - extractor(image)[:, 0].mean()
    loss.backward()
    assert extractor.weight.grad is not None and extractor.weight.grad.abs().sum() > 0
    optimiser.step()
    out = extractor(image)
    kernel = extractor.kernel().detach()
    assert not torch.allclose(kernel, before)  # it did learn ...
    _assert_bayar_constraint(kernel)  # ... and the applied kernel still obeys the constraint
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2), mode="reflect")
    torch.testing.assert_close(out, torch.nn.functional.conv2d(padded, kernel))
    assert extractor(torch.full((1, 3, 16, 16), 0.6)).abs().max() < 1e-5  # prediction error of a flat image


def test_gradients_flow_through_wavelet_and_bayar_to_the_input():
    for name in ("wavelet", "bayar"):
        image = _real_ct().requires_grad_(True)
        get_registry().noise_extractor(name)()(image).pow(2).sum().backward()
        assert image.grad is not None and image.grad.abs().sum() > 0, name


def _textured(seed: int, sigma: float) -> torch.Tensor:
    """A smooth grey image plus white noise of standard deviation ``sigma`` (3 equal channels)."""
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(1, 1, 4, 4, generator=g), size=(64, 64), mode="bilinear", align_corners=False)
    noisy = 0.4 + 0.1 * smooth + sigma * torch.randn(1, 1, 64, 64, generator=g)
    return noisy.expand(1, 3, 64, 64).contiguous()


def test_noise_stats_ignore_the_noise_level_but_see_its_structure():
    """Per-image MAD normalisation: 4x more white noise leaves the statistics nearly unchanged,
    while smoothing the same noise (a low-pass generator's footprint) changes them clearly."""
    extractor = get_registry().noise_extractor("noise-stats")()
    weak, strong = _textured(0, 0.02), _textured(0, 0.08)
    stats = [extractor(x).mean(dim=(2, 3)) for x in (weak, strong)]
    assert extractor(weak).shape == (1, extractor.out_channels, 64, 64)
    raw_srm = [get_registry().noise_extractor("srm")(get_registry().noise_extractor("srm").make_config(
        normalise=False, truncation=1e9))(x).square().mean() for x in (weak, strong)]
    assert raw_srm[1] > 10 * raw_srm[0]  # the unnormalised residual energy tracks the level
    torch.testing.assert_close(stats[0], stats[1], atol=0.15, rtol=0.05)
    kernel = torch.tensor([1.0, 2.0, 1.0]) / 4
    blurred = F.conv2d(F.pad(strong, (1, 1, 1, 1), mode="circular"),
                       torch.outer(kernel, kernel).expand(3, 1, 3, 3).contiguous(), groups=3)
    smoothed = extractor(blurred).mean(dim=(2, 3))
    assert (smoothed - stats[1]).abs().max() > 0.3


def test_noise_stats_run_in_float32_under_autocast():
    extractor = get_registry().noise_extractor("noise-stats")()
    image = _textured(1, 0.02)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = extractor(image)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, extractor(image), atol=0, rtol=0)


def test_folded_kernels_equal_srm_and_haar_filters_applied_separately():
    from mfx_noise import SRM_KERNELS, folded_kernels

    image = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    padded = F.pad(image, (2, 2, 2, 2), mode="circular")
    folded = F.conv2d(padded, folded_kernels())
    torch.testing.assert_close(folded[:, :3], F.conv2d(padded, SRM_KERNELS.unsqueeze(1)))
    # Haar horizontal detail at (i, j) uses rows i, i+1 and columns j, j+1: (a + b - c - d) / 2
    x = padded[0, 0]
    expected = (x[2:-2, 2:-2] + x[2:-2, 3:-1] - x[3:-1, 2:-2] - x[3:-1, 3:-1]) / 2
    torch.testing.assert_close(folded[0, 3], expected)


# --------------------------------------------------------------------------- grid-phase


def _grid_phase_means(image: torch.Tensor) -> torch.Tensor:
    return get_registry().noise_extractor("grid-phase")()(image).mean(dim=(2, 3))[0]


def _upsampled_ct(mode: str) -> torch.Tensor:
    """The real CT slice down-sampled by 2 (area) and brought back by ``mode``: what an x2 up-sampler leaves."""
    ct = _real_ct((128, 128))
    small = F.interpolate(ct, scale_factor=0.5, mode="area")
    if mode == "pixel-shuffle":  # a fixed sub-pixel convolution: each output pixel a different mix of its block
        weights = torch.tensor([1.0, 0.9, 0.8, 0.7]).view(4, 1, 1, 1)
        return F.pixel_shuffle(F.conv2d(small[:, :1], weights), 2).expand(1, 3, 128, 128).clamp(0, 1)
    return F.interpolate(small, scale_factor=2, mode=mode).clamp(0, 1)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "pixel-shuffle"])
def test_grid_phase_sees_an_x2_upsampler_on_a_real_ct(mode):
    """A real slice has no preferred phase; the same slice through an x2 up-sampler has one, at period 2."""
    real, fake = _grid_phase_means(_real_ct((128, 128))), _grid_phase_means(_upsampled_ct(mode))
    assert real.shape == (3,) and torch.isfinite(real).all()
    assert fake[0] > 3 * real[0], (mode, real.tolist(), fake.tolist())  # measured: 4.5x shuffle, 6.8x bilinear, 185x nearest


def test_grid_phase_ignores_contrast_and_grid_offset_on_a_real_ct():
    """A ratio of phase means: halving the contrast changes nothing; shifting the crop by one pixel
    (the up-sampler's grid now starts at odd positions) keeps the up-sampled image's score (max/min)."""
    fake = _upsampled_ct("bilinear")
    base = _grid_phase_means(fake)
    dimmer = _grid_phase_means(0.25 + 0.5 * fake)
    torch.testing.assert_close(dimmer, base, atol=0.02, rtol=0.02)
    shifted = _grid_phase_means(fake[..., 1:, 1:].contiguous())
    assert (shifted[0] - base[0]).abs() < 0.1 * base[0]


def test_grid_phase_flat_and_tiny_images_give_zero():
    extractor = get_registry().noise_extractor("grid-phase")()
    assert extractor(torch.full((1, 3, 32, 32), 0.3)).abs().max() == 0
    assert extractor(torch.rand(1, 3, 5, 7)).shape == (1, 3, 5, 7)
    assert extractor(torch.rand(1, 3, 5, 7)).abs().max() == 0


# --------------------------------------------------------------------------- npr-blocks


def _block_means(image: torch.Tensor) -> torch.Tensor:
    return get_registry().noise_extractor("npr-blocks")()(image).mean(dim=(2, 3))[0]


def test_npr_blocks_are_the_differences_to_each_blocks_top_left_pixel_on_a_real_ct():
    """The h, v, d components are NPR's residual read block by block: x01 - x00, x10 - x00, x11 - x00."""
    from mfx_noise import block_differences

    grey = _real_ct((96, 80))[:, :1]
    blocks = block_differences(grey)
    x = grey[0, 0]
    expected = torch.stack([x[0::2, 1::2] - x[0::2, 0::2], x[1::2, 0::2] - x[0::2, 0::2],
                            x[1::2, 1::2] - x[0::2, 0::2]])
    torch.testing.assert_close(blocks[0], expected, atol=0, rtol=0)
    odd = block_differences(grey[..., :95, :79])  # a trailing row / column is a block of its own
    assert odd.shape == (1, 3, 48, 40) and torch.isfinite(odd).all()


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "pixel-shuffle"])
def test_npr_blocks_see_an_x2_upsampler_on_a_real_ct(mode):
    """The same real slice through an x2 up-sampler shapes the three differences of each block together:
    their energies relative to the diagonal one move (measured: the h - d log-energy gap is -1.09 on the real
    slice, -0.90 bilinear, -2.08 pixel shuffle; every difference is 0 after nearest), or their coupling does."""
    real, fake = _block_means(_real_ct((128, 128))), _block_means(_upsampled_ct(mode))
    assert real.shape == (6,) and torch.isfinite(fake).all()
    assert (fake - real).abs().max() > 0.4, (mode, real.tolist(), fake.tolist())


def test_npr_blocks_ignore_contrast_and_keep_odd_sizes():
    """Divided by the image's own noise level: halving the contrast changes nothing; any size comes back whole."""
    ct = _real_ct((128, 128))
    torch.testing.assert_close(_block_means(0.25 + 0.5 * ct), _block_means(ct), atol=1e-3, rtol=1e-3)
    extractor = get_registry().noise_extractor("npr-blocks")()
    assert extractor(torch.rand(1, 3, 5, 7)).shape == (1, 6, 5, 7)
    flat = extractor(torch.full((1, 3, 16, 16), 0.3))
    assert torch.isfinite(flat).all() and flat[:, 3:].abs().max() == 0  # no difference, no correlation
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert extractor(ct).dtype == torch.float32


# --------------------------------------------------------------------------- fast paths, bit for bit


def _grid_phase_by_definition(image: torch.Tensor, periods: tuple[int, ...], window: int,
                              floor: float) -> torch.Tensor:
    """Grid phase computed as its docstring defines it, one period and direction at a time: every phase's
    masked copy through a wrapped box mean, the log of every phase mean, then max minus min."""
    from mfx_noise.phase import box_mean, neighbour_differences, phase_masks

    grey = image.float().mean(dim=1, keepdim=True)
    maps = []
    for period in periods:
        spreads = []
        for axis in (-1, -2):
            differences = neighbour_differences(grey, axis)
            across = box_mean(differences, window, -2 if axis == -1 else -1)
            masks = phase_masks(differences.shape[axis], period)
            masks = masks.view((1, period, 1, -1) if axis == -1 else (1, period, -1, 1))
            logs = torch.log(box_mean(across * masks, window, axis) * period + floor)
            spreads.append(logs.amax(dim=1, keepdim=True) - logs.amin(dim=1, keepdim=True))
        maps.append((spreads[0] + spreads[1]) / 2)
    return torch.cat(maps, dim=1)


def _same_bits(found: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal float32 bit patterns: ``torch.equal`` would also accept -0.0 for +0.0."""
    return found.shape == expected.shape and torch.equal(found.view(torch.int32), expected.view(torch.int32))


@pytest.mark.parametrize("crop, periods, window", [
    ((128, 128), (2, 4, 8), 64),  # the default: row lengths a multiple of every period (the fast path)
    ((96, 80), (2, 4, 8), 64),  # the default window shrinks to the image
    ((97, 83), (2, 4, 8), 64),  # lengths no period divides: the masked path
    ((100, 100), (2, 4, 8), 64),  # 100 = 4 x 25: periods 2 and 4 on the fast path, 8 on the masked one
    ((120, 72), (3, 6), 24),  # a period that is not a power of two (sliding extremes by overlapping runs)
])
def test_grid_phase_equals_its_definition_bit_for_bit_on_a_real_ct(crop, periods, window):
    """The extractor shares the across-mean, sums each phase without masked copies and takes two logs
    instead of one per phase; none of that may change a bit of the maps DSKI was tuned with."""
    from mfx_noise.phase import GridPhaseConfig, GridPhaseExtractor

    config = GridPhaseConfig(periods=periods, window=window)
    extractor = GridPhaseExtractor(config)
    ct = _real_ct(crop)
    upsampled = _upsampled_ct("bilinear")[..., :crop[0], :crop[1]]
    # one image at a time, then both as one batch (the directions are batched together on square images)
    for image in (ct, upsampled.contiguous(), torch.cat([ct, upsampled])):
        expected = _grid_phase_by_definition(image, periods, extractor._window(image.shape[-2:]), config.floor)
        found = extractor(image)
        assert _same_bits(found, expected), (found - expected).abs().max()
        assert found.abs().max() > 0  # a real image: not the all-zero output of a too-small one


@pytest.mark.parametrize("window", [1, 3, 5, 7])
def test_noise_stats_local_mean_equals_average_pooling_bit_for_bit(window):
    """``local_mean`` adds shifted slices in ``avg_pool2d``'s order (slow with stride 1 on the CPU): same bits."""
    from mfx_noise.stats import local_mean

    bands = get_registry().noise_extractor("noise-stats")().residuals(_real_fundus(48))
    maps = torch.cat([bands, bands.square()], dim=1)
    half = window // 2
    wrapped = F.pad(maps, (half,) * 4, mode="circular")
    expected = F.avg_pool2d(F.avg_pool2d(wrapped, (1, window), 1), (window, 1), 1)
    found = local_mean(maps, window)
    assert found.shape == maps.shape
    assert _same_bits(found, expected)
    if window == 1:  # no filter at all: the maps come back as they are
        return
    # a flat image: its residuals are 0, their products -0.0 where a negative 0 meets a positive one
    flat = -torch.zeros(1, 2, 12, 12)
    pooled = F.avg_pool2d(F.avg_pool2d(F.pad(flat, (half,) * 4, mode="circular"), (1, window), 1), (window, 1), 1)
    assert _same_bits(local_mean(flat, window), pooled)


def test_noise_stats_correlations_do_not_amplify_rounding(quick_benchmark_v1, monkeypatch):
    """Where a band is flat beside a strong one, the correlation must not multiply the flat band's rounding residue.
    With the floor on the product of the two energies (before 2026-12-04) it did, by up to a thousand: on these
    benchmark images, the CUDA test found CPU and GPU maps 0.24 apart, the residual filter computed in float64 and
    rounded once moved correlations by 0.72, and a 1e-6 change of the pixels (a 4000th of a grey level) by 0.72.
    Now: the float64 filter gives the maps within the GPU test's 1e-3, the nudge moves no map by 0.05 (what
    remains is the log energy's and the clip's own slope at the level floor), and where both energies are at
    least the floor the correlation is the plain formula, bit for bit."""
    from pathlib import Path

    import mfx_noise.stats as stats

    from medforensics_core.data.dataset import ImageSet
    from medforensics_core.data.manifest import read_manifest

    test = ImageSet(read_manifest(Path(quick_benchmark_v1) / "manifest.csv").split("test"))
    images = torch.stack([test[i][0] for i in range(8)])  # the CUDA test's images
    nudged = images + 1e-6 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    extractor = get_registry().noise_extractor("noise-stats")()
    with torch.no_grad():
        maps, moved = extractor(images), extractor(nudged)
        bands = extractor.residuals(images)
        float32_conv = F.conv2d
        monkeypatch.setattr(stats.F, "conv2d", lambda x, w, *a, **k: float32_conv(x.double(), w.double(), *a, **k).float())
        rounded_once = extractor(images)
    torch.testing.assert_close(rounded_once, maps, atol=1e-3, rtol=1e-3)
    assert (maps - moved).abs().max() < 0.05
    first, second = [i for i, _ in stats.PAIRS], [j for _, j in stats.PAIRS]
    energy = stats.local_mean(bands.square(), extractor.config.window)
    products = stats.local_mean(bands[:, first] * bands[:, second], extractor.config.window)
    both_above = (energy[:, first] >= stats.ENERGY_FLOOR) & (energy[:, second] >= stats.ENERGY_FLOOR)
    assert 0.3 < both_above.float().mean() < 1  # both cases occur on these images
    formula = products / (energy[:, first] * energy[:, second]).sqrt()
    assert torch.equal(maps[:, 2 * len(stats.BAND_NAMES):][both_above], formula[both_above])
