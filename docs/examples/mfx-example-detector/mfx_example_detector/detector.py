"""Detector ``example``: residual statistics + logistic regression.

Why this works at all: generators reproduce what an image *looks like* far
better than its fine pixel statistics. After a high-pass filter, real medical
images keep heavy-tailed residuals (edges, anatomy, acquisition noise), while
many fakes have residuals that are too smooth, too Gaussian or periodic. A
handful of numbers per image — mean absolute residual, spread, upper quantiles
and kurtosis, at a few scales — already separates several generator families,
and a logistic regression on them trains in well under a second.

How it fits mfx:

* the residual comes from a *noise extractor plugin looked up by name*
  (``noise_extractor = "example-laplacian"`` by default), so
  ``--set example.noise_extractor=npr`` swaps in another plugin's residual
  without any import between the two packages;
* ``preprocess`` turns one image into its feature vector, so the engine's
  batching, devices and progress bars work unchanged;
* the fitted scaler and coefficients live in a tiny ``torch.nn.Module`` as
  buffers, so :meth:`Detector.save` writes them to safetensors (no pickle) and
  :meth:`Detector.load` restores them strictly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from medforensics_core.contract import Batch
from medforensics_core.decision import accuracy
from medforensics_core.errors import MfxError
from medforensics_core.interfaces import Detector
from medforensics_core.plugins import get_registry

LOG_EPS = 1e-6
QUANTILES = (0.5, 0.9, 0.99)
FEATURES_PER_SCALE = 3 + len(QUANTILES)  # log mean |r|, log std, log kurtosis, log quantiles of |r|
MAX_QUANTILE_SAMPLES = 1 << 20  # torch.quantile is O(n log n); a strided sample of a big slide is enough
MIN_SIDE = 8  # a scale is used only while the down-sampled image keeps at least this many pixels per side


# --8<-- [start:config]
@dataclasses.dataclass
class ExampleConfig:
    """Settings of the ``example`` detector (there is no paper: the defaults are simply sensible).

    ``noise_extractor``: registry name of the residual (any noise extractor plugin).
    ``scales``: average-pooling factors at which residual statistics are taken;
    coarser scales see traces of up-sampling layers, the finest sees pixel noise.
    ``C``/``max_iter``: scikit-learn ``LogisticRegression`` (L2, lbfgs).
    ``batch_size``: images per batch while extracting features.
    """

    noise_extractor: str = "example-laplacian"
    scales: tuple[int, ...] = (1, 2, 4)
    C: float = 1.0
    max_iter: int = 1000
    batch_size: int = 64
# --8<-- [end:config]


def residual_statistics(residual: torch.Tensor) -> torch.Tensor:
    """Six numbers describing one residual map ``(C, H, W)``, all on a log scale.

    Logs make multiplicative differences (a fake with half the noise energy)
    additive, which is what a linear classifier can use.
    """
    values = residual.float().flatten()
    magnitude = values.abs()
    centred = values - values.mean()
    variance = centred.pow(2).mean()
    kurtosis = centred.pow(4).mean() / (variance.pow(2) + LOG_EPS**2)
    stride = max(1, magnitude.numel() // MAX_QUANTILE_SAMPLES)
    quantiles = torch.quantile(magnitude[::stride], torch.tensor(QUANTILES))
    stats = torch.cat([magnitude.mean().view(1), variance.sqrt().view(1), kurtosis.view(1), quantiles])
    return torch.log(stats + LOG_EPS)


class LinearProbe(torch.nn.Module):
    """A fitted ``StandardScaler`` + ``LogisticRegression`` as buffers (saved as safetensors)."""

    def __init__(self, n_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(n_features, dtype=torch.float64))
        self.register_buffer("coef", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("intercept", torch.zeros(1, dtype=torch.float64))

    def copy_from(self, scaler: Any, classifier: Any) -> None:
        self.mean.copy_(torch.as_tensor(scaler.mean_))
        self.scale.copy_(torch.as_tensor(scaler.scale_))
        self.coef.copy_(torch.as_tensor(classifier.coef_[0]))
        self.intercept.copy_(torch.as_tensor(classifier.intercept_))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Fake probability; equals the scikit-learn pipeline's ``predict_proba[:, 1]``."""
        standardised = (features.double() - self.mean) / self.scale
        return torch.sigmoid(standardised @ self.coef + self.intercept)


# --8<-- [start:class]
class ExampleDetector(Detector):
    """Residual statistics at several scales + logistic regression (the mfx example plugin).

    Presets: ``full`` (defaults: scales 1, 2, 4) and ``tiny`` (scale 1 only,
    for CPU tests). No backbone, hence no pretrained weights.
    """

    name: ClassVar[str] = "example"
    description: ClassVar[str] = "residual statistics + logistic regression (example third-party plugin)"
    config_class: ClassVar[type] = ExampleConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"scales": (1,), "max_iter": 300}}

    def __init__(self, config: Any = None, *, preset: str | None = None, device: str | torch.device = "cpu"):
        super().__init__(config, preset=preset, device=device)
        if not self.config.scales or min(self.config.scales) < 1:
            raise MfxError(f"{self.name}: scales must be positive integers, got {self.config.scales}")
        extractor_class = get_registry().noise_extractor(self.config.noise_extractor)
        # The extractor runs inside preprocess (data-loading side, CPU), so it is not one of modules().
        self.extractor = extractor_class(in_channels=3).eval()
        self.model = LinearProbe(FEATURES_PER_SCALE * len(self.config.scales))

    # --8<-- [end:class]
    @property
    def n_features(self) -> int:
        return FEATURES_PER_SCALE * len(self.config.scales)

    @torch.no_grad()
    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Feature vector ``(n_features,)`` of one image ``(3, H, W)``, at its native size.

        A scale too coarse for a small image reuses the finest scale's pixels
        rather than failing, so images of any size give vectors of one length.
        """
        features = []
        for factor in self.config.scales:
            usable = factor if min(image.shape[-2:]) // factor >= MIN_SIDE else 1
            scaled = F.avg_pool2d(image[None].float(), usable) if usable > 1 else image[None].float()
            features.append(residual_statistics(self.extractor(scaled)[0]))
        return torch.cat(features)

    def features(self, images: Any, ctx: Any) -> tuple[np.ndarray, np.ndarray]:
        """Feature vectors and labels of every image of an ImageSet, in order."""
        loader = ctx.loader(images, self.preprocess, ctx.batch_size_for(self.config.batch_size), shuffle=False)
        features, labels = [], []
        for batch in ctx.track(loader, len(loader), f"{self.name}: residual statistics"):
            features.append(batch.inputs.numpy())  # a Batch: inputs, labels, rows (modality, generator...)
            labels.append(batch.labels.numpy())
        if not features:
            raise MfxError(f"{self.name}: no images to fit on")
        return np.concatenate(features), np.concatenate(labels)

    # --8<-- [start:fit]
    def fit(self, train: Any, val: Any | None = None, ctx: Any | None = None) -> "ExampleDetector":
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        from medforensics_core.engine.context import FitContext

        ctx = ctx or FitContext()
        features, labels = self.features(train, ctx)
        if len(np.unique(labels)) < 2:
            raise MfxError(f"{self.name}: the training set needs both real (0) and fake (1) images")
        scaler = StandardScaler().fit(features)
        classifier = LogisticRegression(C=self.config.C, max_iter=self.config.max_iter, random_state=ctx.seed)
        classifier.fit(scaler.transform(features), labels)
        self.model.copy_from(scaler, classifier)
        self.train_info = {"epochs": 1, "train_images": int(len(labels)),
                           "train_acc": float(classifier.score(scaler.transform(features), labels))}
        if val is not None and len(val):
            val_features, val_labels = self.features(val, ctx)
            val_scores = self.predict_proba(Batch(torch.from_numpy(val_features)))
            self.train_info["val_acc"] = accuracy(val_scores, val_labels)
        self.fitted = True
        return self

    @torch.no_grad()
    def predict_proba(self, batch: Batch) -> np.ndarray:
        features = batch.inputs  # what preprocess made of each image
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise MfxError(f"{self.name}: expected feature vectors of shape (N, {self.n_features}), got "
                           f"{tuple(features.shape)} (pass images through detector.preprocess first)")
        return self.model(features.to(self.model.mean.device)).float().cpu().numpy()

    # --8<-- [end:fit]
    def weights_info(self) -> str:
        return (f"no backbone: {self.config.noise_extractor} residual statistics at scales "
                f"{list(self.config.scales)} + logistic regression fitted on the training set")
