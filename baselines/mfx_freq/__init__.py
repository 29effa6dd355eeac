"""``freq``: the classic radial power-spectrum detector (spectrum profile + logistic regression).

Up-sampling layers of generators (transposed convolutions, nearest/bilinear
up-sampling) leave periodic traces and a distorted high-frequency tail in the
spectrum of the images they make. Durall et al. 2020 ("Watch your
up-convolution", CVPR) and Dzanic et al. 2020 ("Fourier spectrum discrepancies
in deep network generated images", NeurIPS) showed that the azimuthally
averaged power spectrum — a 1-D profile over spatial frequency — separates real
from generated images with a simple linear classifier. It needs no backbone
weights, trains in seconds, and so doubles as a cheap probe of how hard each
fake generator is.

Recipe here, as Durall et al.'s released notebook
(``Experiments_DeepFakeDetection/Vis_clas.ipynb`` of the UpConv repository):
grey image (ITU-R BT.601 luma, 8-bit scale) -> 2-D FFT -> ``20 log |F|`` -> mean
over rings of equal radius, the DC ring left out (the notebook's cumulative-sum
binning drops it) -> cubic interpolation (``scipy.interpolate.griddata``) to
``n_bins`` = 300 points -> divided by its first value -> scikit-learn
``LogisticRegression(solver="liblinear", max_iter=1000)`` on the raw profile.
One deliberate difference: the rings run out to the corner of the spectrum
(radius sqrt(2) x Nyquist), where the (pi, pi) frequency of a transposed
convolution's checkerboard lives; the notebook's binning drops that outermost
ring, and a profile cut at the Nyquist radius never sees it
(``spectrum_extent="nyquist"``). The fitted coefficients are saved as tensors
(no pickle), so a checkpoint is as safe as every other mfx checkpoint. A
checkpoint saved before this recipe (min-max scaled, DC ring kept, linear
resampling, ``StandardScaler`` + lbfgs) loads with that recipe
(``FreqConfig.legacy_values``) and scores as it was trained.

``preprocess`` returns the profile itself (shape ``(n_bins,)``), not an image:
the spectrum is computed at the image's native size (resampling would change the
very frequencies it measures), and a fixed-length profile batches for any mix of
image sizes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import numpy as np
import torch

from medforensics_core.contract import Batch
from medforensics_core.decision import accuracy
from medforensics_core.errors import MfxError
from medforensics_core.hookspecs import hookimpl
from medforensics_core.interfaces import Detector

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
LOG_EPS = 1e-8


@dataclasses.dataclass
class FreqConfig:
    """Radial-spectrum detector settings; the defaults are Durall et al.'s notebook (but the corner ring).

    ``n_bins``: length of the 1-D spectrum profile (the notebook's ``N = 300``), so images of any size compare.
    ``log_scale``: ``"magnitude255"`` is the notebook's ``20 ln|F|`` of the 8-bit image; ``"power01"``,
    ``ln|F|^2`` of the [0, 1] image, is what mfx computed before 2026-12-04 (the same profile after min-max
    scaling, not without it).
    ``normalise_profile`` / ``profile_scaling``: ``"first"`` divides each profile by its first value (the
    notebook); ``"minmax"`` scales it to [0, 1] (mfx before 2026-12-04); off keeps the absolute spectrum.
    ``drop_dc``: leave the DC ring out of the profile (the notebook's binning does).
    ``interpolation``: ``"cubic"`` (the notebook's ``griddata``) or ``"linear"`` resampling of the rings.
    ``spectrum_extent``: ``"corner"`` averages rings out to the spectrum's corner (the (pi, pi)
    checkerboard frequency included); ``"nyquist"`` stops at the Nyquist radius of the shorter side.
    ``standardise``: a ``StandardScaler`` before the classifier (the notebook has none).
    ``solver``/``C``/``max_iter``: scikit-learn ``LogisticRegression`` (the notebook: liblinear, 1000).
    ``batch_size``: images per batch while extracting profiles.
    """

    n_bins: int = dataclasses.field(default=300, metadata={"min": 4})
    log_scale: str = "magnitude255"
    normalise_profile: bool = True
    profile_scaling: str = "first"
    drop_dc: bool = True
    interpolation: str = "cubic"
    spectrum_extent: str = "corner"
    standardise: bool = False
    solver: str = "liblinear"
    C: float = dataclasses.field(default=1.0, metadata={"min": 1e-12})
    max_iter: int = dataclasses.field(default=1000, metadata={"min": 1})
    batch_size: int = 64

    legacy_values: ClassVar[dict[str, Any]] = {"log_scale": "power01", "profile_scaling": "minmax", "drop_dc": False,
                                               "interpolation": "linear", "standardise": True, "solver": "lbfgs"}
    """What a checkpoint saved before these keys existed was trained with (see ``config_from_dict``)."""


def grey_levels(image: torch.Tensor) -> torch.Tensor:
    """Luma of a ``(3, H, W)`` image (a 1-channel image is used as is)."""
    if image.shape[0] == 1:
        return image[0]
    weights = torch.tensor(LUMA_WEIGHTS, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image[:3] * weights).sum(0)


EXTENTS = ("corner", "nyquist")


@functools.lru_cache(maxsize=32)
def ring_layout(height: int, width: int, extent: str = "corner") -> tuple[np.ndarray, np.ndarray, int]:
    """Ring index of every kept frequency of an ``height x width`` FFT, the kept mask, and the outermost ring.

    Ring ``k`` holds the frequencies whose radius, in units of the shorter
    side's frequency step, rounds to ``k``. ``extent="corner"`` keeps every
    frequency (the outermost ring reaches the (pi, pi) corner, radius about
    sqrt(2) x Nyquist); ``"nyquist"`` keeps rings up to ``min(H, W) // 2``.
    Cached per image size, since a dataset has few sizes.
    """
    if extent not in EXTENTS:
        raise MfxError(f"freq: spectrum_extent {extent!r} is not one of {', '.join(EXTENTS)}")
    nyquist = min(height, width) // 2
    fy = np.fft.fftfreq(height)[:, None] / 0.5
    fx = np.fft.fftfreq(width)[None, :] / 0.5
    ring = np.floor(np.sqrt(fy**2 + fx**2) * nyquist + 1e-9).astype(np.int64)
    outer = int(ring.max()) if extent == "corner" else nyquist
    inside = ring <= outer
    return ring[inside], inside, outer


MIN_SIDE = 8
"""Smallest image side with enough rings beyond DC (four) for a cubic profile."""
SCALINGS = ("first", "minmax")
INTERPOLATIONS = ("cubic", "linear")
LOG_SCALES = ("magnitude255", "power01")
SOLVERS = ("liblinear", "lbfgs", "newton-cg", "newton-cholesky", "sag", "saga")


def radial_power_profile(image: torch.Tensor, n_bins: int, normalise: bool = True, extent: str = "corner",
                         scaling: str = "first", drop_dc: bool = True, interpolation: str = "cubic",
                         log_scale: str = "magnitude255") -> torch.Tensor:
    """Azimuthally averaged log magnitude spectrum of one image, resampled to ``n_bins`` points, DC outwards.

    NumPy's FFT, not torch's: on a 64 px image it is ~50x faster on the CPU
    (measured), and this runs once per image in the data loader.
    """
    check_choices(scaling=scaling, interpolation=interpolation, log_scale=log_scale)
    grey = grey_levels(image.float()).numpy().astype(np.float64)
    if log_scale == "magnitude255":
        grey = grey * 255.0  # the notebook reads 8-bit images
    height, width = grey.shape
    if min(height, width) < MIN_SIDE:
        raise MfxError(f"freq: image of {height}x{width} pixels is too small for a spectrum "
                       f"(need >= {MIN_SIDE}x{MIN_SIDE})")
    ring, inside, outer = ring_layout(int(height), int(width), extent)
    magnitude = np.abs(np.fft.fft2(grey))
    log_magnitude = 20.0 * np.log(magnitude + LOG_EPS) if log_scale == "magnitude255" else \
        np.log(magnitude ** 2 + LOG_EPS)
    sums = np.bincount(ring, weights=log_magnitude[inside], minlength=outer + 1)
    counts = np.bincount(ring, minlength=outer + 1)
    first = 1 if drop_dc else 0
    radii = np.arange(outer + 1)
    kept = (counts > 0) & (radii >= first)  # rings with no frequency (beyond Nyquist) are bridged, not zero power
    samples = np.linspace(first, outer, n_bins)
    profile = sums[kept] / counts[kept]
    if interpolation == "cubic":
        from scipy.interpolate import griddata

        resampled = griddata(radii[kept].astype(np.float64), profile, samples, method="cubic")
    else:
        resampled = np.interp(samples, radii[kept], profile)
    if normalise:
        resampled = scaled_profile(resampled, scaling)
    return torch.from_numpy(resampled.astype(np.float32))


def check_choices(**values: str) -> None:
    """Refuse, in one line, a text option outside its choices (before any spectrum is computed)."""
    choices = {"scaling": SCALINGS, "profile_scaling": SCALINGS, "interpolation": INTERPOLATIONS,
               "log_scale": LOG_SCALES, "solver": SOLVERS, "spectrum_extent": EXTENTS}
    for key, value in values.items():
        if value not in choices[key]:
            raise MfxError(f"freq: {key} must be one of {', '.join(choices[key])}, not {value!r}")


def scaled_profile(profile: np.ndarray, scaling: str) -> np.ndarray:
    """``profile / profile[0]`` (the notebook) or min-max to [0, 1]; zeros where that is undefined."""
    if scaling == "first":
        return profile / profile[0] if abs(profile[0]) > 1e-12 else np.zeros_like(profile)
    span = profile.max() - profile.min()
    return (profile - profile.min()) / span if span > 0 else np.zeros_like(profile)


class StandardisedLogistic(torch.nn.Module):
    """A fitted binary ``LogisticRegression``, after an optional ``StandardScaler``, held as buffers.

    Holding them as a module's buffers lets the detector save and strictly
    reload them through the same safetensors path as every torch model.
    """

    def __init__(self, n_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(n_features, dtype=torch.float64))
        self.register_buffer("coef", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("intercept", torch.zeros(1, dtype=torch.float64))

    def set_from_sklearn(self, scaler: Any | None, classifier: Any) -> None:
        """Copy the fitted parameters (``scaler=None``: the identity, mean 0 and scale 1)."""
        self.mean.copy_(torch.as_tensor(scaler.mean_) if scaler is not None else torch.zeros_like(self.mean))
        self.scale.copy_(torch.as_tensor(scaler.scale_) if scaler is not None else torch.ones_like(self.scale))
        self.coef.copy_(torch.as_tensor(classifier.coef_[0]))
        self.intercept.copy_(torch.as_tensor(classifier.intercept_))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Fake probability, equal to the scikit-learn pipeline's ``predict_proba[:, 1]``."""
        standardised = (features.double() - self.mean) / self.scale
        return torch.sigmoid(standardised @ self.coef + self.intercept)


class FreqDetector(Detector):
    """Radial power spectrum + logistic regression (Durall et al. 2020; Dzanic et al. 2020).

    Presets: ``full`` (default) uses 300 spectrum bins (the notebook's N); ``tiny`` uses 32 bins,
    enough for the 32-128 px crops of the offline benchmark and fast on a CPU.
    There is no backbone, so no pretrained weights are involved.
    """

    name: ClassVar[str] = "freq"
    description: ClassVar[str] = "radial power spectrum + logistic regression (Durall et al. 2020)"
    config_class: ClassVar[type] = FreqConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"n_bins": 32}}

    def __init__(self, config: Any = None, *, preset: str | None = None, device: str | torch.device = "cpu"):
        super().__init__(config, preset=preset, device=device)
        cfg = self.config  # a misspelt option fails here, not after every spectrum is computed
        check_choices(profile_scaling=cfg.profile_scaling, interpolation=cfg.interpolation, log_scale=cfg.log_scale,
                      solver=cfg.solver, spectrum_extent=cfg.spectrum_extent)
        self.model = StandardisedLogistic(self.config.n_bins)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """The image's radial spectrum profile ``(n_bins,)`` (see the module docstring for why)."""
        cfg = self.config
        return radial_power_profile(image, cfg.n_bins, cfg.normalise_profile, cfg.spectrum_extent,
                                    cfg.profile_scaling, cfg.drop_dc, cfg.interpolation, cfg.log_scale)

    def profiles(self, images: Any, ctx: Any) -> tuple[np.ndarray, np.ndarray]:
        """Profiles and labels of every image of an ImageSet, in order."""
        loader = ctx.loader(images, self.preprocess, ctx.batch_size_for(self.config.batch_size), shuffle=False)
        features, labels = [], []
        for batch in ctx.track(loader, len(loader), f"{self.name}: spectra"):
            features.append(batch.inputs.numpy())
            labels.append(batch.labels.numpy())
        return np.concatenate(features), np.concatenate(labels)

    def fit(self, train: Any, val: Any | None = None, ctx: Any | None = None) -> "FreqDetector":
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        from medforensics_core.engine.context import FitContext

        ctx = ctx or FitContext()
        features, labels = self.profiles(train, ctx)
        if len(np.unique(labels)) < 2:
            raise MfxError(f"{self.name}: the training set needs both real and fake images")
        scaler = StandardScaler().fit(features) if self.config.standardise else None
        inputs = scaler.transform(features) if scaler is not None else features
        classifier = LogisticRegression(solver=self.config.solver, C=self.config.C, max_iter=self.config.max_iter,
                                        random_state=ctx.seed)
        classifier.fit(inputs, labels)
        self.model.set_from_sklearn(scaler, classifier)
        self.train_info = {"epochs": 1, "train_images": int(len(labels)),
                           "train_acc": float(classifier.score(inputs, labels)),
                           "lr_iterations": int(np.max(classifier.n_iter_))}
        if val is not None and len(val):
            val_features, val_labels = self.profiles(val, ctx)
            val_scores = self.predict_proba(Batch(torch.from_numpy(val_features)))
            self.train_info["val_acc"] = accuracy(val_scores, val_labels)
        self.fitted = True
        return self

    @torch.no_grad()
    def predict_proba(self, batch: Batch) -> np.ndarray:
        batch = batch.inputs
        if batch.ndim != 2 or batch.shape[1] != self.config.n_bins:
            raise MfxError(f"{self.name}: expected spectrum profiles of shape (N, {self.config.n_bins}), "
                           f"got {tuple(batch.shape)} (pass images through detector.preprocess)")
        return self.model(batch.to(self.model.mean.device)).float().cpu().numpy()

    def weights_info(self) -> str:
        return f"no backbone: {self.config.n_bins}-bin radial spectrum + logistic regression fitted on the training set"


@hookimpl
def register_detectors(register):
    register(FreqDetector)
