"""The example plugin's own tests: each class does its job on real CT pixels, and the detector round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medforensics_core.engine.context import FitContext
from medforensics_core.engine.evaluate import score
from medforensics_core.errors import CheckpointError, UnknownPluginError


def test_registry_serves_all_three_classes(plugin_registered):
    assert plugin_registered.detector("example").name == "example"
    assert plugin_registered.noise_extractor("example-laplacian").name == "example-laplacian"
    assert plugin_registered.generator("example-spectral").family == "spectral"


def test_laplacian_removes_smooth_content_and_keeps_texture(plugin_registered, crops_and_fakes):
    extractor = plugin_registered.noise_extractor("example-laplacian")()
    height, width = 32, 48
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ramp = (0.01 * ys + 0.005 * xs).float().expand(1, 3, height, width)  # a linear ramp has zero Laplacian
    residual = extractor(ramp)
    assert residual.shape == ramp.shape
    assert residual[..., 1:-1, 1:-1].abs().max() < 1e-5
    real = crops_and_fakes["train_real"][:8]
    assert extractor(real).abs().mean() > 1e-3  # real CT texture survives the filter


def test_spectral_fakes_keep_the_power_spectrum_of_real_images(crops_and_fakes):
    generator, real = crops_and_fakes["generator"], crops_and_fakes["train_real"]
    fakes = generator.sample(64, generator=torch.Generator().manual_seed(1))
    assert fakes.shape == (64, 3, 32, 32) and fakes.min() >= 0 and fakes.max() <= 1

    def log_spectrum(images):
        grey = images.mean(1)
        return torch.log(torch.fft.fft2(grey - grey.mean(dim=(1, 2), keepdim=True)).abs().mean(0) + 1e-6).flatten()

    correlation = np.corrcoef(log_spectrum(real).numpy(), log_spectrum(fakes).numpy())[0, 1]
    assert correlation > 0.8
    assert not torch.equal(fakes[0], fakes[1])


@pytest.fixture(scope="module")
def fitted(plugin_registered, crops_and_fakes):
    """The ``tiny`` detector with two scales, fitted on the training crops, and its test-set scores."""
    detector_class = plugin_registered.detector("example")
    detector = detector_class(detector_class.make_config("tiny", scales="1,2"), preset="tiny")
    detector.fit(crops_and_fakes["train"], ctx=FitContext())
    return detector, score(detector, crops_and_fakes["test"], FitContext())


def test_detector_separates_real_ct_from_spectral_fakes_on_unseen_regions(fitted, crops_and_fakes):
    detector, scores = fitted
    test = crops_and_fakes["test"]
    assert scores.shape == (len(test),)
    assert roc_auc_score(test.labels, scores) > 0.9
    assert detector.train_info["train_images"] == len(crops_and_fakes["train"])


def test_checkpoint_round_trip_and_refusals(plugin_registered, fitted, crops_and_fakes, tmp_path):
    detector, scores = fitted
    path = detector.save(tmp_path / "example.safetensors")
    restored = plugin_registered.detector("example").load(path)
    assert restored.config.scales == (1, 2)
    np.testing.assert_allclose(score(restored, crops_and_fakes["test"]), scores, rtol=1e-6)
    with pytest.raises(CheckpointError):
        plugin_registered.detector("freq").load(path)


def test_unknown_noise_extractor_is_one_clear_error(plugin_registered):
    with pytest.raises(UnknownPluginError, match="example-laplacian"):
        plugin_registered.detector("example")(plugin_registered.detector("example").make_config(
            noise_extractor="example-laplacien"))
