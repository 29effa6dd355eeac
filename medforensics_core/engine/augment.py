"""The blur + JPEG training augmentation of CNNSpot (Wang et al. 2020), shared by the detectors that use it.

Wang et al. showed that training with random Gaussian blur (sigma ~ U(0, 3)) and
JPEG re-compression (quality ~ U{30..100}), each applied with probability 0.5
(or 0.1 in their lighter variant), is what makes a detector survive the
post-processing real images go through. UnivFD (Ojha et al. 2023) trains its
probe with the same recipe. The draw is separated from its application so a
test can check the recipe's ranges and rates statistically, and the blur and
JPEG themselves are the registry's ``blur`` and ``jpeg`` perturbations — the
same operations robustness protocols apply at test time.

Images stay float tensors ``(3, H, W)`` in [0, 1]; geometry (resize, crop,
flip, normalisation) uses ``torchvision.transforms.v2`` on tensors.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch

from ..data.dataset import ImageSet
from ..lazy import lazy_module
from ..seeding import numpy_rng, torch_generator

v2 = lazy_module("torchvision.transforms.v2")

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class BlurJpegRecipe:
    """Probabilities and ranges of the augmentation (defaults: Wang et al.'s "Blur+JPEG (0.5)")."""

    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 100)

    @property
    def enabled(self) -> bool:
        return self.blur_prob > 0 or self.jpeg_prob > 0


@dataclasses.dataclass(frozen=True)
class BlurJpegDraw:
    """What the augmentation does to one image: whether to blur (and sigma), whether to JPEG (and quality)."""

    blur: bool
    sigma: float
    jpeg: bool
    quality: int


def validation_recipe(recipe: BlurJpegRecipe, sigma: float, quality: int) -> BlurJpegRecipe:
    """The official validation's version of a training recipe: same rates, fixed mid-range sigma and quality.

    CNNDetection's and UniversalFakeDetect's ``get_val_opt`` keep ``blur_prob`` and
    ``jpg_prob`` and replace the ranges by their midpoints: sigma (0 + 3) / 2 = 1.5,
    quality int((30 + 100) / 2) = 65.
    """
    return BlurJpegRecipe(recipe.blur_prob, (float(sigma), float(sigma)), recipe.jpeg_prob, (int(quality), int(quality)))


def draw_blur_jpeg(recipe: BlurJpegRecipe, generator: torch.Generator | None = None) -> BlurJpegDraw:
    """One random draw of the recipe (torch RNG, so DataLoader workers get distinct streams)."""
    u = torch.rand(4, generator=generator).tolist()
    low, high = recipe.blur_sigma
    q_low, q_high = recipe.jpeg_quality
    quality = q_low + min(int(u[3] * (q_high - q_low + 1)), q_high - q_low)
    return BlurJpegDraw(blur=u[0] < recipe.blur_prob, sigma=low + u[1] * (high - low),
                        jpeg=u[2] < recipe.jpeg_prob, quality=int(quality))


def apply_blur_jpeg(image: torch.Tensor, draw: BlurJpegDraw) -> torch.Tensor:
    """Blur, then JPEG, as drawn; uses the registry's ``blur`` and ``jpeg`` perturbations."""
    from ..plugins import get_registry

    registry = get_registry()
    rng = np.random.default_rng(0)  # both perturbations are deterministic; the rng is unused
    if draw.blur and draw.sigma > 0:
        image = registry.perturbation("blur")(draw.sigma)(image, rng)
    if draw.jpeg:
        image = registry.perturbation("jpeg")(draw.quality)(image, rng)
    return image


class BlurJpegAugment:
    """A transform applying a fresh draw of ``recipe`` to each image (a class, so loaders can pickle it)."""

    def __init__(self, recipe: BlurJpegRecipe):
        self.recipe = recipe

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if not self.recipe.enabled:
            return image
        return apply_blur_jpeg(image, draw_blur_jpeg(self.recipe))


def blur_jpeg_transform(recipe: BlurJpegRecipe) -> Transform:
    return BlurJpegAugment(recipe)


@dataclasses.dataclass(frozen=True)
class TraceRecipe:
    """Degradations that make "how much high frequency" useless as a label (applied to reals and fakes alike).

    A detector that sees blur, down-up resampling, JPEG and mild sensor-like noise
    on both classes cannot separate them by high-frequency *level*: smoothing and
    re-noising move every image along that axis. Each step fires with its own
    probability, in this order (blur, resample, JPEG, noise); ranges are in
    [0, 1] pixel units. Defaults are mild, so the traces a generator leaves are
    damaged on some images only; a detector's preset sets its own probabilities.
    Blur, JPEG and noise are the registry's perturbations (the same operations
    robustness protocols apply at test time); resampling draws its kernel.
    """

    blur_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 1.5)
    resample_prob: float = 0.1
    resample_scale: tuple[float, float] = (0.5, 0.9)
    resample_modes: tuple[str, ...] = ("nearest", "bilinear", "bicubic", "area")
    jpeg_prob: float = 0.1
    jpeg_quality: tuple[int, int] = (65, 100)
    noise_prob: float = 0.1
    noise_sigma: tuple[float, float] = (0.002, 0.02)

    @property
    def enabled(self) -> bool:
        return any(p > 0 for p in (self.blur_prob, self.resample_prob, self.jpeg_prob, self.noise_prob))


def _uniform(u: float, bounds: tuple[float, float]) -> float:
    return bounds[0] + u * (bounds[1] - bounds[0])


def resample(image: torch.Tensor, scale: float, mode: str) -> torch.Tensor:
    """Down-sample by ``scale`` with ``mode`` and back to the original size with ``mode`` (a resampling trace)."""
    import torch.nn.functional as F

    h, w = image.shape[-2:]
    small = (max(1, round(h * scale)), max(1, round(w * scale)))
    down = F.interpolate(image[None], size=small, mode=mode)
    up_mode = "bilinear" if mode == "area" else mode
    return F.interpolate(down, size=(h, w), mode=up_mode)[0].clamp(0, 1)


class TraceAugment:
    """A transform applying a fresh draw of a :class:`TraceRecipe` to each image (picklable for loaders)."""

    def __init__(self, recipe: TraceRecipe):
        self.recipe = recipe

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from ..plugins import get_registry

        recipe = self.recipe
        if not recipe.enabled:
            return image
        u = torch.rand(9).tolist()
        registry = get_registry()
        unused = np.random.default_rng(0)  # blur and JPEG are deterministic; the draw above is the randomness
        if u[0] < recipe.blur_prob:
            image = registry.perturbation("blur")(_uniform(u[1], recipe.blur_sigma))(image, unused)
        if u[2] < recipe.resample_prob and recipe.resample_modes:
            mode = recipe.resample_modes[min(int(u[4] * len(recipe.resample_modes)), len(recipe.resample_modes) - 1)]
            image = resample(image, _uniform(u[3], recipe.resample_scale), mode)
        if u[5] < recipe.jpeg_prob:
            quality = round(_uniform(u[6], (float(recipe.jpeg_quality[0]), float(recipe.jpeg_quality[1]))))
            image = registry.perturbation("jpeg")(quality)(image, unused)
        if u[7] < recipe.noise_prob:
            sigma = _uniform(u[8], recipe.noise_sigma)
            image = (image + sigma * torch.randn(image.shape)).clamp(0, 1)
        return image


def resize_shorter(size: int) -> Transform:
    """Resize so the shorter side is ``size`` (bilinear, antialiased), keeping the aspect ratio."""
    return v2.Resize(size, antialias=True)


def train_geometry(crop_size: int, flip: bool = True) -> Transform:
    """Random crop (padded if the image is smaller) and an optional random horizontal flip."""
    steps: list[Transform] = [v2.RandomCrop(crop_size, pad_if_needed=True, padding_mode="reflect")]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def test_geometry(resize_to: int, crop_size: int) -> Transform:
    """Deterministic test-time geometry: shorter side to ``resize_to``, then centre crop."""
    return v2.Compose([resize_shorter(resize_to), v2.CenterCrop(crop_size)])


def resize_square(size: int) -> Transform:
    """Resize to ``size x size`` (aspect ratio not kept), bilinear, antialiased — NPR's ``Resize((256, 256))``."""
    return v2.Resize((size, size), antialias=True)


class _Identity:
    """The do-nothing transform (a class, so loaders can pickle it)."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image


# Test-time geometry is part of each recipe (the official test scripts differ):
EVAL_GEOMETRIES: dict[str, str] = {
    "native-crop": "no resize, centre crop (CNNDetection eval.py, UniversalFakeDetect validate.py)",
    "native": "no resize, no crop: the whole image at its own size (NPR test.py on GANGen/AIGCDetect)",
    "resize-crop": "shorter side to load_size, centre crop (the official validation splits)",
    "resize-square": "load_size x load_size, no crop (NPR test.py on ForenSynths)",
    "resize-square-crop": "load_size x load_size, centre crop (NPR's validation split)",
}


def check_geometry(name: str, geometry: str) -> None:
    from ..errors import ConfigError

    if geometry not in EVAL_GEOMETRIES:
        raise ConfigError(f"{name}: eval_geometry {geometry!r} is not one of {', '.join(EVAL_GEOMETRIES)}")


def eval_geometry_transform(geometry: str, load_size: int, crop_size: int) -> Transform:
    """The deterministic geometry of ``geometry`` (one of :data:`EVAL_GEOMETRIES`)."""
    check_geometry("detector", geometry)
    steps = {
        "native-crop": [v2.CenterCrop(crop_size)],
        "native": [],
        "resize-crop": [resize_shorter(load_size), v2.CenterCrop(crop_size)],
        "resize-square": [resize_square(load_size)],
        "resize-square-crop": [resize_square(load_size), v2.CenterCrop(crop_size)],
    }[geometry]
    return v2.Compose(steps) if steps else _Identity()


def train_resize_for(geometry: str, load_size: int) -> Transform:
    """The resize that training applies before augmentation and the random crop, consistent with ``geometry``.

    A test at native scale (``native-crop``, ``native``) trains at native scale
    too; the official scripts resize to 256 first, which is the same thing on
    their 256 px training images but a scale mismatch on any other size (a 512
    px scan would be trained at half scale and tested at full). A resizing test
    geometry trains after the same resize.
    """
    check_geometry("detector", geometry)
    if geometry.startswith("native"):
        return _Identity()
    return resize_square(load_size) if geometry.startswith("resize-square") else resize_shorter(load_size)


def validation_steps(geometry: str, load_size: int, crop_size: int, recipe: BlurJpegRecipe) -> Transform:
    """The official validation pipeline (resize, blur/JPEG at the validation recipe, centre crop) on the scale
    training uses.

    CNNDetection's and UniversalFakeDetect's ``get_val_opt`` resize validation images exactly as training images
    (both to 256), so the accuracy that drives early stopping is measured at the training scale. Training here
    follows the test geometry (:func:`train_resize_for`: native scale for a native test), and validation follows
    training: a fixed resize to ``load_size`` would score a native-scale model at another scale (a 128 px crop
    doubled, a 512 px scan halved) and move the epoch at which it stops.
    """
    return v2.Compose([train_resize_for(geometry, load_size), blur_jpeg_transform(recipe), v2.CenterCrop(crop_size)])


def variable_size(geometry: str) -> bool:
    """Whether ``geometry`` leaves test images at their own (possibly different) sizes."""
    return geometry in ("native",)


def normalise(mean: tuple[float, ...], std: tuple[float, ...]) -> Transform:
    return v2.Normalize(list(mean), list(std))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- partial fakes (self-blending)


@dataclasses.dataclass(frozen=True)
class SelfBlendRecipe:
    """How a real image becomes a *partial* fake: a few smooth blobs of it re-processed and blended back.

    Why: an inpainting or splicing generator rewrites part of an image and keeps the
    rest, so its only trace is that one region was made differently from its
    surroundings. A detector trained on whole-image fakes never sees that: it learns
    what a generator's output looks like everywhere, and a local edit is diluted
    among real pixels. Self-blended images (Shiohara & Yamasaki, CVPR 2022; Li et al.'s
    Face X-ray, CVPR 2020, for blending boundaries) teach the missing case without
    any generator: blend a processed copy of a real image back into it through a
    soft mask and call the result fake. Nothing here is a generator's trace, only
    "these pixels went through a different pipeline than those", the cue every
    local edit leaves. Blobs (random ellipses, random orientation) rather than one
    shape, so the detector does not learn a particular mask; several of them so that
    a random training crop usually contains a blended edge.
    """

    blobs: tuple[int, int] = (1, 3)
    """How many blobs, inclusive range."""
    radius: tuple[float, float] = (0.08, 0.22)
    """Semi-axes of each ellipse, as fractions of the shorter image side."""
    feather: tuple[float, float] = (1.0, 8.0)
    """Width of the soft edge, in pixels (Gaussian blur sigma of the hard mask)."""
    resample_scale: tuple[float, float] = (0.4, 0.8)
    """Down-up resampling factor of the processed copy (a different up-sampling history)."""
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    """Blur of the processed copy (a different smoothness)."""
    noise_sigma: tuple[float, float] = (0.0, 0.01)
    """Gaussian noise added to the processed copy (a different noise texture), [0, 1] pixel units."""


def _draw(generator: torch.Generator, bounds: tuple[float, float]) -> float:
    """One uniform draw in ``bounds`` from ``generator``."""
    return _uniform(float(torch.rand(1, generator=generator)), bounds)


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(C, H, W)`` through the registry's ``blur`` perturbation (the one TraceAugment and robustness tests use)."""
    from ..plugins import get_registry

    return get_registry().perturbation("blur")(sigma)(image, np.random.default_rng(0))  # deterministic; rng unused


def blob_mask(height: int, width: int, recipe: SelfBlendRecipe, generator: torch.Generator) -> torch.Tensor:
    """A soft ``(1, H, W)`` mask in [0, 1]: the union of a few random rotated ellipses, edges blurred."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    side = float(min(height, width))
    count = recipe.blobs[0] + int(torch.randint(0, recipe.blobs[1] - recipe.blobs[0] + 1, (1,), generator=generator))
    hard = torch.zeros(height, width)
    for _ in range(count):
        cy, cx = _draw(generator, (0.0, height - 1.0)), _draw(generator, (0.0, width - 1.0))
        a, b = _draw(generator, recipe.radius) * side, _draw(generator, recipe.radius) * side
        angle = _draw(generator, (0.0, float(np.pi)))
        cos, sin = float(np.cos(angle)), float(np.sin(angle))
        u, v = (xs - cx) * cos + (ys - cy) * sin, -(xs - cx) * sin + (ys - cy) * cos
        hard = torch.maximum(hard, ((u / a) ** 2 + (v / b) ** 2 <= 1).float())
    return _blur(hard[None], _draw(generator, recipe.feather)).clamp(0, 1)


def self_blend(image: torch.Tensor, recipe: SelfBlendRecipe, generator: torch.Generator) -> torch.Tensor:
    """A partial fake of a real ``(3, H, W)`` image: a re-processed copy blended back through :func:`blob_mask`.

    The copy is down-up resampled (random factor and kernel), blurred and re-noised, so inside the
    blobs the pixels carry a different interpolation grid, smoothness and noise than outside.
    """
    height, width = image.shape[-2:]
    modes = ("nearest", "bilinear", "bicubic")
    mode = modes[int(torch.randint(0, len(modes), (1,), generator=generator))]
    processed = resample(image, _draw(generator, recipe.resample_scale), mode)
    processed = _blur(processed, _draw(generator, recipe.blur_sigma))
    noise = _draw(generator, recipe.noise_sigma) * torch.randn(image.shape, generator=generator, dtype=image.dtype)
    processed = (processed + noise).clamp(0, 1)
    if image.shape[0] == 3 and bool((image[0] == image[1]).all() and (image[1] == image[2]).all()):
        processed = processed.mean(dim=0, keepdim=True).expand_as(image)  # a grey image stays grey
    mask = blob_mask(height, width, recipe, generator).to(image.dtype)
    return mask * processed + (1 - mask) * image


SELF_BLEND = "self-blend"
"""Generator, family and network name of the partial fakes :func:`with_self_blends` adds."""


def with_self_blends(images: ImageSet, share: float, recipe: SelfBlendRecipe, seed: int) -> ImageSet:
    """``images`` plus partial fakes (label 1) made by :func:`self_blend` from ``share`` x its reals.

    Each partial fake is drawn once from ``(seed, its index)``, so every epoch sees the same one (a
    detector's per-image caches stay valid) and two runs with one seed train on identical images.
    Its manifest row is its real's, with label 1 and generator/family/network ``"self-blend"``; the
    source is kept, so a partial fake never leaves its real's side of a split.
    """
    reals = [i for i, label in enumerate(images.labels) if label == 0]
    count = int(round(share * len(reals)))
    if count <= 0:
        return images
    drawn = numpy_rng(seed, "self-blend", "sources").choice(reals, size=min(count, len(reals)), replace=False)
    chosen = sorted(int(i) for i in drawn)
    return SelfBlendedSet(images, chosen, recipe, seed)


class SelfBlendedSet(ImageSet):
    """An :class:`ImageSet` followed by self-blended partial fakes of some of its reals (:func:`with_self_blends`).

    ``blend_keys[i]`` is None for an image of the original set and the key of its draw for a partial
    fake, so a :meth:`subset` keeps each image with its label.
    """

    def __init__(self, images: ImageSet, sources: list[int], recipe: SelfBlendRecipe, seed: int):
        view = images.subset(list(range(len(images))) + list(sources))
        self.__dict__.update(view.__dict__)
        base = len(images)
        self.recipe, self.seed = recipe, seed
        self.blend_keys: list[int | None] = [None] * base + list(range(base, base + len(sources)))
        self.rows = self.rows[:base] + [dataclasses.replace(row, label=1, generator=SELF_BLEND, family=SELF_BLEND,
                                                            network=SELF_BLEND) for row in self.rows[base:]]
        self.labels = self.labels.copy()
        self.labels[base:] = 1

    def image(self, index: int) -> torch.Tensor:
        image = super().image(index)
        key = self.blend_keys[index]
        if key is None:
            return image
        return self_blend(image, self.recipe, torch_generator(self.seed, "self-blend", key))

    def subset(self, indices) -> "SelfBlendedSet":
        idx = list(indices)
        view = super().subset(idx)
        view.__class__ = SelfBlendedSet
        view.recipe, view.seed = self.recipe, self.seed
        view.blend_keys = [self.blend_keys[i] for i in idx]
        return view
