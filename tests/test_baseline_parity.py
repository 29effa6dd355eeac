"""Parity of the baselines with their official code, piece by piece, on identical inputs.

Each "official" function below is our own rewrite of the formula in the
official repository (read, never copied; file and line in
docs/explanations/baselines.md), and each test runs it and the mfx code on the
same tensors or the same scripted sequence. The measured max abs difference of
every piece is printed (``pytest -s``) so the docs table can quote it.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from medforensics_core.backbones import load_clip
from medforensics_core.engine.schedules import Schedule, ScheduleState
from medforensics_core.errors import WeightsNotFoundError
from medforensics_core.plugins import get_registry


def report(piece: str, value: float) -> None:
    print(f"\nPARITY {piece}: max abs difference {value:.3g}")


# --------------------------------------------------------------------------- CLIP activation (QuickGELU)


@pytest.fixture(scope="module")
def tiny_clip_file(tmp_path_factory):
    """A locally saved open_clip checkpoint (the tiny CLIP's random weights) and its reference model."""
    original = load_clip("mfx-tiny-clip", "random", seed=3)
    path = tmp_path_factory.mktemp("weights") / "tiny-clip.pt"
    torch.save(original.model.state_dict(), path)
    return path, original.model.state_dict()


def reference_encode(state: dict, quick_gelu: bool, images: torch.Tensor) -> torch.Tensor:
    import open_clip

    model = open_clip.create_model("mfx-tiny-clip", force_quick_gelu=quick_gelu)
    model.load_state_dict(state)
    with torch.no_grad():
        return model.eval().encode_image(images)


def test_openai_tagged_local_checkpoint_builds_quick_gelu(tiny_clip_file):
    path, state = tiny_clip_file
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for spec in (f"openai:{path}", str(path.with_name("x"))):
        if spec.endswith("x"):  # the tag spelled in the file name, as in ViT-L-14-openai.pt
            spec = str(path.with_name("tiny-clip-openai.pt"))
            path.with_name("tiny-clip-openai.pt").write_bytes(path.read_bytes())
        backbone = load_clip("mfx-tiny-clip", spec)
        assert backbone.activation == "QuickGELU" and "QuickGELU" in backbone.weights_info
        with torch.no_grad():
            ours = backbone.model.encode_image(images)
        torch.testing.assert_close(ours, reference_encode(state, True, images), rtol=0, atol=1e-6)
        assert (ours - reference_encode(state, False, images)).abs().max() > 1e-4  # GELU would differ
    untagged = load_clip("mfx-tiny-clip", str(path))
    assert untagged.activation == "GELU"
    report("CLIP activation for openai weights (QuickGELU encode vs open_clip force_quick_gelu)",
           float((ours - reference_encode(state, True, images)).abs().max()))


def test_univfd_full_recipe_asks_for_quick_gelu_openai_weights(tiny_clip_file):
    path, _ = tiny_clip_file
    cls = get_registry().detector("univfd")
    detector = cls(cls.make_config("tiny", pretrained=f"openai:{path}"))
    assert detector.backbone.activation == "QuickGELU"
    assert cls.make_config().pretrained == "openai"


def test_quick_gelu_model_with_gelu_trained_weights_fails_in_one_line(tiny_clip_file):
    path, _ = tiny_clip_file
    with pytest.raises(WeightsNotFoundError, match="trained with GELU") as info:
        load_clip("ViT-B-32-quickgelu", f"laion2b_s34b_b79k:{path}")
    assert "\n" not in str(info.value)


def test_weights_that_do_not_fit_the_model_fail_in_one_line(tiny_clip_file):
    path, _ = tiny_clip_file
    with pytest.raises(WeightsNotFoundError, match="cannot load ViT-B-32") as info:
        load_clip("ViT-B-32", f"openai:{path}")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- schedules and early stopping


class OfficialEarlyStopping:
    """CNNDetection earlystop.py: ``score < best - delta`` (delta negative) is no improvement."""

    def __init__(self, patience: int, delta: float):
        self.patience, self.delta, self.best, self.counter, self.early_stop = patience, delta, None, 0, False
        self.saved = False

    def __call__(self, score: float) -> None:
        self.saved = False
        if self.best is None:
            self.best, self.saved = score, True
        elif score < self.best - self.delta:
            self.counter += 1
            self.early_stop = self.counter >= self.patience
        else:
            self.best, self.saved, self.counter = score, True, 0


def official_early_stopping_run(scores: list[float], lr: float, patience: int = 5) -> dict:
    """CNNDetection/UniversalFakeDetect train.py loop: lr per epoch, save epochs, the epoch training stops."""
    stopper = OfficialEarlyStopping(patience, -0.001)
    lrs, saves, stop = [], [], None
    for epoch, score in enumerate(scores):
        lrs.append(lr)
        stopper(score)
        if stopper.saved:
            saves.append(epoch)
        if stopper.early_stop:
            lr /= 10.0  # adjust_learning_rate, then its min_lr check
            if lr < 1e-6:
                stop = epoch
                break
            stopper = OfficialEarlyStopping(patience, -0.002)
    return {"lr": lrs, "saves": saves, "stop": stop}


def mfx_schedule_run(schedule: Schedule, scores: list[float | None], lr: float) -> dict:
    """The same sequence through mfx's decision rule, applying its lr decisions as train_binary does."""
    from medforensics_core.engine.schedules import apply_lr_decision

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    state, lrs, saves, stop = ScheduleState(schedule), [], [], None
    for epoch, score in enumerate(scores):
        current = optimizer.param_groups[0]["lr"]
        lrs.append(current)
        decision = state.end_epoch(epoch, score, current)
        if decision.saved:
            saves.append(epoch)
        if decision.stop:
            stop = epoch
            break
        apply_lr_decision(optimizer, decision)
    return {"lr": lrs, "saves": saves, "stop": stop}


# Validation accuracies: a gain of 0.0015 (an improvement before the first lr drop, not after it),
# a gain of 0.0005 (never), a worse score right after a drop (saved: the stopper starts afresh), plateaus.
SCRIPTED_SCORES = ([0.60, 0.70, 0.7015, 0.702, 0.70, 0.70, 0.70, 0.70]
                   + [0.65, 0.6515, 0.653, 0.65, 0.65, 0.65, 0.65, 0.65]
                   + [0.66] * 6 + [0.9] * 4)
EXPECTED = {"saves": [0, 1, 2, 8, 10, 16], "stop": 21}


@pytest.mark.parametrize("name", ["cnnspot", "univfd"])
def test_early_stopping_decisions_match_the_official_loop(name):
    cls = get_registry().detector(name)
    cfg = cls.make_config()
    schedule = Schedule(len(SCRIPTED_SCORES), patience=cfg.patience, first_delta=cfg.first_delta, delta=cfg.delta,
                        lr_drop=cfg.lr_drop, min_lr=cfg.min_lr, keep=cfg.model_selection)
    ours = mfx_schedule_run(schedule, SCRIPTED_SCORES, cfg.lr)
    official = official_early_stopping_run(SCRIPTED_SCORES, cfg.lr)
    assert official["saves"] == EXPECTED["saves"] and official["stop"] == EXPECTED["stop"]  # the script's point
    assert ours["saves"] == official["saves"] and ours["stop"] == official["stop"]
    assert len(ours["lr"]) == len(official["lr"])
    difference = max(abs(a - b) for a, b in zip(ours["lr"], official["lr"]))
    assert difference == 0.0
    report(f"{name} early-stop decisions + lr per epoch ({len(ours['lr'])} epochs, stop at {ours['stop']})",
           difference)


def official_npr_lrs(epochs: int, lr: float, delr_freq: int) -> list[float]:
    """NPR train.py: after epoch ``e`` (0-based), if ``e % delr_freq == 0 and e != 0``: lr *= 0.9."""
    lrs = []
    for epoch in range(epochs):
        lrs.append(lr)
        if epoch % delr_freq == 0 and epoch != 0:
            lr *= 0.9
    return lrs


def test_npr_lr_at_every_epoch_matches_the_official_step_decay():
    cls = get_registry().detector("npr")
    cfg = cls.make_config()
    schedule = Schedule(cfg.epochs, decay_every=cfg.lr_decay_every, decay=cfg.lr_decay, keep=cfg.model_selection)
    ours = mfx_schedule_run(schedule, [None] * cfg.epochs, cfg.lr)["lr"]
    official = official_npr_lrs(cfg.epochs, cfg.lr, 10)
    assert len(ours) == 50 and ours == official
    assert ours[10] == 2e-4 and ours[11] == pytest.approx(1.8e-4) and ours[49] == pytest.approx(2e-4 * 0.9**4)
    report("npr lr at each of 50 epochs", max(abs(a - b) for a, b in zip(ours, official)))


def test_model_selection_keeps_the_last_save_or_the_last_epoch(monkeypatch):
    """CNNSpot restores the stopper's last save (which follows each lr drop); NPR and UnivFD keep the last epoch."""
    from medforensics_core.engine.context import FitContext
    from medforensics_core.engine.schedules import train_binary

    for keep, expected_epoch in (("last-saved", 2), ("last", 4)):
        module = torch.nn.Linear(1, 1)
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        seen = []

        def predict(batch, module=module):
            return np.full(len(batch), 1.0)

        def loader(epoch, module=module):
            with torch.no_grad():
                module.bias.fill_(float(epoch + 1))
            seen.append(epoch)
            return []

        scores = iter([0.5, 0.9, 0.6, 0.6])  # validation accuracy after epochs 1-4: the best is epoch 2
        monkeypatch.setattr("medforensics_core.engine.schedules.accuracy", lambda *args: next(scores))
        ctx = FitContext()
        val_loader = ctx.tensor_loader(torch.zeros(1, 1), [1], 1, shuffle=False)
        info = train_binary(module, module, predict, optimizer, loader, val_loader, ctx,
                            Schedule(4, patience=5, keep=keep), "test")
        assert float(module.bias.detach()) == expected_epoch and info["epochs"] == 4 and len(info["lr"]) == 4


# --------------------------------------------------------------------------- test-time geometry


@pytest.fixture(scope="module")
def scans():
    """A real 512 px head CT slice (pydicom's J2K_pixelrep_mismatch.dcm) as 8-bit RGB, and the same slice at 256 px.

    Not liver_1frame.dcm, which earlier versions used: that file is a DICOM segmentation (a 0/1 liver mask)."""
    from pydicom.data import get_testdata_file

    from medforensics_core.data.readers import read_image

    image = read_image(get_testdata_file("J2K_pixelrep_mismatch.dcm"))
    image = image.tensor
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    big = Image.fromarray(array)
    return {512: big, 256: big.resize((256, 256), Image.BILINEAR)}


def as_tensor(image: Image.Image) -> torch.Tensor:
    """How mfx hands an 8-bit image to ``preprocess``: float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0


IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CLIP = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])


def official_test_transform(image: Image.Image, resize: int | tuple | None, crop: int | None,
                            stats: tuple) -> torch.Tensor:
    """The official test pipelines on a PIL image: optional resize, optional centre crop, ToTensor, Normalize."""
    import torchvision.transforms as T

    steps = ([T.Resize(resize)] if resize else []) + ([T.CenterCrop(crop)] if crop else [])
    return T.Compose(steps + [T.ToTensor(), T.Normalize(*stats)])(image)


@pytest.mark.parametrize("size", [256, 512])
@pytest.mark.parametrize("name,official", [
    ("cnnspot", dict(resize=None, crop=224, stats=IMAGENET)),  # CNNDetection eval.py: no_resize, CenterCrop
    ("univfd", dict(resize=None, crop=224, stats=CLIP)),  # UniversalFakeDetect validate.py: CenterCrop(224)
    ("npr", dict(resize=None, crop=None, stats=IMAGENET)),  # NPR test.py (GANGen/AIGCDetect): no resize, no crop
])
def test_eval_transform_matches_the_official_test_pipeline(scans, size, name, official):
    cls = get_registry().detector(name)
    overrides = {"clip_model": "ViT-B-32", "pretrained": "random"} if name == "univfd" else {}
    detector = cls(cls.make_config(**overrides))
    ours = detector.preprocess(as_tensor(scans[size]))
    theirs = official_test_transform(scans[size], **official)
    assert ours.shape == theirs.shape
    difference = float((ours - theirs).abs().max())
    assert difference < 1e-5
    report(f"{name} eval transform, {size} px image ({detector.config.eval_geometry}) -> {tuple(ours.shape)}",
           difference)


def test_npr_square_resize_geometry_is_close_to_the_official_pil_resize(scans):
    """NPR's ForenSynths test resizes to 256 x 256 with PIL; mfx resizes float tensors (antialiased bilinear)."""
    cls = get_registry().detector("npr")
    detector = cls(cls.make_config(eval_geometry="resize-square"))
    ours = detector.preprocess(as_tensor(scans[512]))
    theirs = official_test_transform(scans[512], resize=(256, 256), crop=None, stats=IMAGENET)
    difference = float((ours - theirs).abs().max())
    grey_levels = difference * 0.229 * 255  # back to 8-bit grey levels (smallest ImageNet std)
    assert ours.shape == theirs.shape == (3, 256, 256) and grey_levels < 3
    report("npr resize-square 512 -> 256 (normalised units; PIL uint8 vs float resize)", difference)


def test_train_and_test_see_one_scale(scans):
    """A random training crop of a 512 px scan is a piece of the test image at the same scale (no resize)."""
    for name in ("cnnspot", "npr"):
        cls = get_registry().detector(name)
        detector = cls(cls.make_config(blur_prob=0.0, jpeg_prob=0.0, flip=False) if name == "cnnspot"
                       else cls.make_config(flip=False))
        texture = torch.rand(3, 512, 512, generator=torch.Generator().manual_seed(1)) * 0.01  # no flat regions
        image = (as_tensor(scans[512]) * 0.98 + texture).clamp(0, 1)
        crop = detector.train_transform(image)
        whole = detector.preprocess(image) if name == "npr" else detector._normalise(image)
        assert crop.shape == (3, 224, 224)
        corner = (whole - crop[:, :1, :1]).abs().amax(0)[: 512 - 223, : 512 - 223]  # top-left pixel candidates
        candidates = torch.nonzero(corner < 1e-6).tolist()
        found = min(float((whole[:, i:i + 224, j:j + 224] - crop).abs().max()) for i, j in candidates)
        assert found < 1e-5, name


@pytest.mark.parametrize("name,stats", [("cnnspot", IMAGENET), ("univfd", CLIP)])
def test_validation_sees_the_training_scale(scans, name, stats):
    """The official ``get_val_opt`` resizes validation images as training images are resized (256 px, then
    centre crop 224). On the official's own 256 px images mfx's validation is that pipeline; on a 512 px scan it
    stays at the native scale training and test use, not halved (blur/JPEG off: the geometry alone)."""
    cls = get_registry().detector(name)
    overrides = {"clip_model": "ViT-B-32", "pretrained": "random"} if name == "univfd" else {}
    detector = cls(cls.make_config(blur_prob=0.0, jpeg_prob=0.0, **overrides))
    official = official_test_transform(scans[256], resize=256, crop=224, stats=stats)
    ours = detector.val_transform(as_tensor(scans[256]))
    assert ours.shape == official.shape and float((ours - official).abs().max()) < 1e-5
    native = as_tensor(scans[512])
    torch.testing.assert_close(detector.val_transform(native), detector.preprocess(native), atol=1e-6, rtol=0)
    halved = official_test_transform(scans[512], resize=256, crop=224, stats=stats)  # what a fixed resize gave
    assert float((detector.val_transform(native) - halved).abs().max()) > 0.1


# --------------------------------------------------------------------------- augmentation


def official_blur_jpeg_draws(n: int, blur_prob: float, jpg_prob: float, seed: int) -> dict:
    """CNNDetection data_augment's draws: blur if random() < blur_prob with sigma = random() * 3,
    JPEG if random() < jpg_prob with quality = choice(range(30, 101))."""
    import random

    rng = random.Random(seed)
    blur, sigma, jpeg, quality = [], [], [], []
    for _ in range(n):
        b = rng.random() < blur_prob
        blur.append(b)
        if b:
            sigma.append(rng.random() * 3.0)
        j = rng.random() < jpg_prob
        jpeg.append(j)
        if j:
            quality.append(rng.choice(list(range(30, 101))))
    return {"blur": np.mean(blur), "jpeg": np.mean(jpeg), "sigma": np.array(sigma), "quality": np.array(quality)}


@pytest.mark.parametrize("name", ["cnnspot", "univfd"])
def test_augmentation_parameter_ranges_match_the_official_options(name):
    from medforensics_core.engine.augment import draw_blur_jpeg, validation_recipe

    cfg = get_registry().detector(name).make_config()
    generator = torch.Generator().manual_seed(0)
    draws = [draw_blur_jpeg(cfg.augmentation, generator) for _ in range(20000)]
    ours = {"blur": np.mean([d.blur for d in draws]), "jpeg": np.mean([d.jpeg for d in draws]),
            "sigma": np.array([d.sigma for d in draws]), "quality": np.array([d.quality for d in draws])}
    theirs = official_blur_jpeg_draws(20000, 0.5, 0.5, seed=0)
    assert abs(ours["blur"] - theirs["blur"]) < 0.02 and abs(ours["jpeg"] - theirs["jpeg"]) < 0.02
    assert set(np.unique(ours["quality"])) == set(np.unique(theirs["quality"])) == set(range(30, 101))
    assert 0.0 <= ours["sigma"].min() < 0.01 and 2.99 < ours["sigma"].max() <= 3.0
    for a, b in ((ours["sigma"], theirs["sigma"]), (ours["quality"], theirs["quality"])):
        assert abs(a.mean() - b.mean()) < 0.02 * b.mean() and abs(a.std() - b.std()) < 0.03 * b.std()
    validation = validation_recipe(cfg.augmentation, cfg.val_blur_sigma, cfg.val_jpeg_quality)
    assert validation.blur_sigma == (1.5, 1.5) and validation.jpeg_quality == (65, 65)  # get_val_opt's midpoints
    assert validation.blur_prob == cfg.blur_prob == 0.5 and validation.jpeg_prob == cfg.jpeg_prob == 0.5
    report(f"{name} augmentation draw rates (blur, JPEG) vs official",
           max(abs(ours["blur"] - theirs["blur"]), abs(ours["jpeg"] - theirs["jpeg"])))


def test_jpeg_step_is_the_official_pil_round_trip(scans):
    from medforensics_core.engine.augment import BlurJpegDraw, apply_blur_jpeg

    image = scans[256]
    ours = apply_blur_jpeg(as_tensor(image), BlurJpegDraw(blur=False, sigma=0.0, jpeg=True, quality=65))
    buffer = io.BytesIO()
    image.save(buffer, format="jpeg", quality=65)  # pil_jpg in datasets.py
    theirs = torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1).float() / 255.0
    difference = float((ours - theirs).abs().max())
    assert difference < 1e-6
    report("JPEG q65 (PIL) round trip", difference)


def test_blur_step_is_close_to_the_official_scipy_filter(scans):
    """Official: scipy gaussian_filter on uint8 (truncate 4 sigma, half-sample reflection); mfx: float, 3 sigma."""
    from scipy.ndimage import gaussian_filter

    from medforensics_core.engine.augment import BlurJpegDraw, apply_blur_jpeg

    array = np.array(scans[256])
    ours = apply_blur_jpeg(as_tensor(scans[256]), BlurJpegDraw(blur=True, sigma=1.5, jpeg=False, quality=0))
    theirs = array.copy()
    for channel in range(3):
        gaussian_filter(array[:, :, channel], output=theirs[:, :, channel], sigma=1.5)
    theirs = torch.from_numpy(theirs).permute(2, 0, 1).float() / 255.0
    difference = float((ours - theirs).abs().max())
    assert difference * 255 < 2.5  # within two grey levels (uint8 rounding + kernel truncation)
    report("Gaussian blur sigma 1.5 (grey levels / 255)", difference)


# --------------------------------------------------------------------------- NPR


def official_npr_interpolate(x: torch.Tensor) -> torch.Tensor:
    """NPR networks/resnet.py: nearest down by 0.5, nearest up by 2 (recompute_scale_factor=True)."""
    half = F.interpolate(x, scale_factor=0.5, mode="nearest", recompute_scale_factor=True)
    return F.interpolate(half, scale_factor=2.0, mode="nearest", recompute_scale_factor=True)


def official_npr_forward(net, x: torch.Tensor) -> torch.Tensor:
    """NPR ResNet.forward with the same weights: conv1 on NPR * 2/3, bn, relu, maxpool, layer1, layer2, avgpool, fc."""
    residual = x - official_npr_interpolate(x)
    stem_conv, bn, relu, pool = net.stem
    y = pool(relu(bn(stem_conv(residual * 2.0 / 3.0))))
    y = net.layer2(net.layer1(y))
    return net.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


@pytest.mark.parametrize("size", [256, 512])
def test_npr_residual_and_network_forward_match_the_official_formula(scans, size):
    from mfx_noise.npr import npr_residual

    cls = get_registry().detector("npr")
    detector = cls(cls.make_config())
    x = detector.preprocess(as_tensor(scans[size]))[None]
    residual_difference = float((npr_residual(x) - (x - official_npr_interpolate(x)) * 2.0 / 3.0).abs().max())
    net = detector.model.eval()
    with torch.no_grad():
        torch.nn.init.normal_(net.fc.weight, 0, 1.0)
        ours, theirs = net(x), official_npr_forward(net, x)
    forward_difference = float((ours - theirs).abs().max())
    assert residual_difference < 1e-6 and forward_difference < 1e-4 * max(1.0, float(theirs.abs().max()))
    assert net.stem[0].kernel_size == (3, 3) and net.stem[0].stride == (2, 2) and net.fc.in_features == 512
    report(f"npr residual, {size} px", residual_difference)
    report(f"npr network forward, {size} px (logit {float(theirs):.3f})", forward_difference)


# --------------------------------------------------------------------------- freq


def notebook_azimuthal_average(image: np.ndarray) -> np.ndarray:
    """UpConv ``radialProfile.azimuthalAverage``: radii about the (fractional) centre of the shifted spectrum,
    sorted, integer parts binned by a cumulative sum whose differences drop the first and the last bin."""
    y, x = np.indices(image.shape)
    radius = np.hypot(x - (x.max() - x.min()) / 2.0, y - (y.max() - y.min()) / 2.0)
    order = np.argsort(radius.flat)
    whole = radius.flat[order].astype(int)
    changes = np.where(whole[1:] - whole[:-1])[0]
    running = np.cumsum(image.flat[order], dtype=float)
    return (running[changes[1:]] - running[changes[:-1]]) / (changes[1:] - changes[:-1])


def notebook_features(grey: np.ndarray, n: int = 300) -> np.ndarray:
    """Vis_clas.ipynb on one 8-bit grey image: 20 ln|fftshift(fft2)|, azimuthal average, cubic griddata to N
    points, divided by the first."""
    from scipy.interpolate import griddata

    profile = notebook_azimuthal_average(20 * np.log(np.abs(np.fft.fftshift(np.fft.fft2(grey))) + 1e-8))
    resampled = griddata(np.linspace(0, n, num=profile.size), profile, np.linspace(0, n, num=n), method="cubic")
    return resampled / resampled[0]


def test_freq_features_follow_the_notebook_on_a_real_ct():
    """Same steps as Durall et al.'s notebook; the rings differ where documented: mfx's are centred on DC (the
    notebook's centre is half a pixel off it on even sides) and run to the corner (the notebook drops its last).
    On the same rings the resampling and scaling are the notebook's to float rounding."""
    from pydicom.data import get_testdata_file

    from medforensics_core.data.readers import read_image
    from mfx_freq import grey_levels, radial_power_profile

    image = read_image(get_testdata_file("CT_small.dcm")).tensor
    grey = np.round(grey_levels(image).numpy().astype(np.float64) * 255)
    ours = radial_power_profile(torch.from_numpy(grey / 255).float().expand(3, -1, -1), 300).numpy()
    theirs = notebook_features(grey)
    assert ours.shape == theirs.shape == (300,)
    difference = float(np.abs(ours - theirs).max())
    assert difference < 0.2 and np.corrcoef(ours, theirs)[0, 1] > 0.99  # measured 0.116 and 0.9975
    report("freq features vs the notebook on CT_small (ring centre and corner differ)", difference)
    from scipy.interpolate import griddata  # mfx's own rings through the notebook's resampling and scaling

    from mfx_freq import ring_layout

    ring, inside, outer = ring_layout(*grey.shape)
    magnitude = 20 * np.log(np.abs(np.fft.fft2(grey)) + 1e-8)
    rings = (np.bincount(ring, weights=magnitude[inside]) / np.bincount(ring))[1:]  # DC left out
    notebook = griddata(np.linspace(0, 300, num=rings.size), rings, np.linspace(0, 300, num=300), method="cubic")
    np.testing.assert_allclose(ours, notebook / notebook[0], rtol=1e-5)


def test_freq_profile_sees_the_checkerboard_corner(scans):
    """A +-1 grey-level checkerboard lives at (pi, pi), beyond the Nyquist radius of the shorter side."""
    cls = get_registry().detector("freq")
    image = as_tensor(scans[256]) * 0.8 + 0.1  # away from 0 and 1, so the board is not clipped
    board = ((torch.arange(256)[:, None] + torch.arange(256)[None, :]) % 2 * 2 - 1).float() / 255.0
    moved = {}
    for extent in ("nyquist", "corner"):
        detector = cls(cls.make_config(spectrum_extent=extent))
        moved[extent] = float((detector.preprocess(image) - detector.preprocess((image + board).clamp(0, 1))).abs().max())
    assert cls.make_config().spectrum_extent == "corner"
    assert moved["nyquist"] < 1e-3 and moved["corner"] > 0.03
    report("freq profile change from a +-1 checkerboard (corner kept; nyquist cut gives "
           f"{moved['nyquist']:.2g})", moved["corner"])
