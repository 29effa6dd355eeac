"""``cnnspot``: Wang et al., "CNN-generated images are surprisingly easy to spot... for now" (CVPR 2020).

A ResNet-50 binary classifier (ImageNet-initialised in the paper) trained with
blur + JPEG augmentation; the paper's finding is that this simple recipe
generalises across GAN families. The recipe is the config's defaults (checked
against the official CNNDetection code; docs/explanations/baselines.md lists
each piece with its file and line):

* torchvision ResNet-50 from ImageNet weights (``pretrained``), ``fc`` replaced
  by ``Linear(2048, 1)`` whose weight is drawn N(0, 0.02) (bias: PyTorch's default);
* BCE with logits, Adam lr 1e-4, betas (0.9, 0.999), batch 64;
* training: blur/JPEG (each p=0.5; the "0.1" variant via ``blur_prob=0.1
  jpeg_prob=0.1``) -> random crop 224 -> horizontal flip, ImageNet normalisation;
* validation: resize 256 -> blur sigma 1.5 / JPEG quality 65 (each with the
  training probability) -> centre crop 224, as the official ``get_val_opt``;
* test (``eval_geometry="native-crop"``): no resize, centre crop 224 — the
  official ``eval.py``; training then crops at native scale too, so train and
  test see one scale (the official resize to 256 is the identity on its 256 px
  training images);
* early stopping as CNNDetection: no gain > 0.001 in validation accuracy for 5
  epochs -> lr / 10 and a fresh stopper (threshold 0.002); stop once lr < 1e-6;
  the weights kept are the stopper's last save (``model_selection="last-saved"``).

ImageNet weights cannot be downloaded on an offline machine: ``pretrained`` is
``"torchvision"`` (torchvision's own cache), a ResNet state-dict file (``.pth``
loaded with ``weights_only=True`` or ``.safetensors``; strictly), or
``"random"``. When the ``full`` preset's weights are missing, ``fit`` fails in one
line naming ``pretrained`` and the file it expects — unless the run allows
random initialisation (``--allow-random-init``), which is then reported on
every row.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from medforensics_core.checkpoint import load_state_strict
from medforensics_core.contract import Batch, SupportsDistributed
from medforensics_core.errors import MfxError, WeightsNotFoundError
from medforensics_core.hookspecs import hookimpl
from medforensics_core.interfaces import Detector
from medforensics_core.lazy import lazy_module
from medforensics_core.toolkit import (IMAGENET_MEAN, IMAGENET_STD, BlurJpegRecipe, Schedule, blur_jpeg_transform,
                                       check_geometry, detector_loaders, eval_geometry_transform, linear_head,
                                       normalise, seeded, train_binary, train_geometry,
                                       train_resize_for, validation_recipe, validation_steps)

torchvision = lazy_module("torchvision")
v2 = lazy_module("torchvision.transforms.v2")

log = logging.getLogger(__name__)

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
RANDOM_INIT = "random init (no ImageNet weights supplied)"
RANDOM_SPECS = ("random", "none", "")


@dataclasses.dataclass
class CNNSpotConfig:
    """CNNSpot recipe (defaults: Wang et al. 2020, "Blur+JPEG (0.5)")."""

    arch: str = "resnet50"
    pretrained: str | None = "torchvision"
    load_size: int = 256
    crop_size: int = 224
    eval_geometry: str = "native-crop"
    flip: bool = True
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 100)
    val_blur_sigma: float = 1.5
    val_jpeg_quality: int = 65
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 64
    epochs: int = 100
    patience: int = 5
    first_delta: float = 0.001
    delta: float = 0.002
    lr_drop: float = 10.0
    min_lr: float = 1e-6
    model_selection: str = "last-saved"
    fc_init_std: float = 0.02

    @property
    def augmentation(self) -> BlurJpegRecipe:
        return BlurJpegRecipe(self.blur_prob, tuple(self.blur_sigma), self.jpeg_prob, tuple(self.jpeg_quality))


def build_resnet(arch: str, fc_init_std: float) -> torch.nn.Module:
    """A torchvision ResNet with a 1-logit head initialised N(0, ``fc_init_std``)."""
    if arch not in ARCHS:
        raise MfxError(f"cnnspot: unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = new_head(model.fc.in_features, fc_init_std)
    return model


def new_head(in_features: int, std: float) -> torch.nn.Linear:
    """``Linear(in_features, 1)``: weight N(0, ``std``), bias left at PyTorch's default (as the official trainer)."""
    return linear_head(in_features, std, zero_bias=False)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a tensors-only ``.pth`` (``torch.load(weights_only=True)``)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many types for a bad file
        raise WeightsNotFoundError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsNotFoundError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def imagenet_weights_file(arch: str, spec: str) -> Path:
    """Resolve ``pretrained`` to an existing file, or fail in one line naming the key and the file it expects."""
    if spec == "torchvision":
        weights_enum = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights_enum.url).name
        if cached.is_file():
            return cached
        raise WeightsNotFoundError(
            f"cnnspot: pretrained='torchvision' expects ImageNet weights for {arch} at {cached} (not there); "
            f"copy {Path(weights_enum.url).name} there, pass pretrained=PATH, or --allow-random-init")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"cnnspot: pretrained={spec} expects a torchvision {arch} ImageNet state dict "
                                   f"there (file not found); fix the path or pass --allow-random-init")
    return path


def wants_weights(spec: str | None) -> bool:
    return spec is not None and spec.lower() not in RANDOM_SPECS


class CNNSpotDetector(Detector, SupportsDistributed):
    """CNNSpot (Wang et al., CVPR 2020) — see the module docstring for the recipe.

    Presets: ``full`` = the paper (ResNet-50, 256 -> 224 px, batch 64, up to 100
    epochs with early stopping); ``tiny`` = ResNet-18 at 64 -> 56 px, batch 32,
    6 epochs, patience 2, lr 1e-3 and the paper's lighter "Blur+JPEG (0.1)"
    variant — a random-init network given six epochs on a few hundred images
    stayed near chance at lr 1e-4 with p=0.5 blur in our runs — and random
    initialisation (``pretrained="random"``): what the tests and the offline
    benchmark run on CPU.
    """

    name: ClassVar[str] = "cnnspot"
    description: ClassVar[str] = "ResNet-50 + blur/JPEG augmentation (Wang et al., CVPR 2020)"
    config_class: ClassVar[type] = CNNSpotConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"arch": "resnet18", "pretrained": "random", "load_size": 64, "crop_size": 56, "batch_size": 32,
                 "epochs": 6, "patience": 2, "lr": 1e-3, "blur_prob": 0.1, "jpeg_prob": 0.1},
    }

    def __init__(self, config: Any = None, *, preset: str | None = None, device: str | torch.device = "cpu"):
        super().__init__(config, preset=preset, device=device)
        self.model = build_resnet(self.config.arch, self.config.fc_init_std).to(self.device)
        self.backbone_weights = RANDOM_INIT
        self.random_init_fallback = False
        cfg = self.config
        check_geometry(self.name, cfg.eval_geometry)
        self._normalise = normalise(IMAGENET_MEAN, IMAGENET_STD)
        self._test_geometry = eval_geometry_transform(cfg.eval_geometry, cfg.load_size, cfg.crop_size)
        self._train_steps = v2.Compose([train_resize_for(cfg.eval_geometry, cfg.load_size),
                                        blur_jpeg_transform(cfg.augmentation),
                                        train_geometry(cfg.crop_size, cfg.flip)])
        val_recipe = validation_recipe(cfg.augmentation, cfg.val_blur_sigma, cfg.val_jpeg_quality)
        self._val_steps = validation_steps(cfg.eval_geometry, cfg.load_size, cfg.crop_size, val_recipe)

    # -- preprocessing
    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        return self._normalise(self._test_geometry(image))

    def train_transform(self, image: torch.Tensor) -> torch.Tensor:
        return self._normalise(self._train_steps(image))

    def val_transform(self, image: torch.Tensor) -> torch.Tensor:
        """The official validation (blur sigma 1.5 / JPEG 65 at the training rates, centre crop) at the training
        scale: the official resizes validation images as it resizes training images (see ``validation_steps``)."""
        return self._normalise(self._val_steps(image))

    # -- weights
    def load_imagenet_weights(self) -> None:
        """Initialise the backbone from the configured ImageNet file, strictly (the 1000-way fc included)."""
        path = imagenet_weights_file(self.config.arch, self.config.pretrained)
        reference = getattr(torchvision.models, self.config.arch)(weights=None)
        load_state_strict(reference, read_state_dict(path), str(path))
        reference.fc = new_head(reference.fc.in_features, self.config.fc_init_std)
        self.model = reference.to(self.device)
        self.backbone_weights = f"ImageNet weights from {path.name}"

    # -- training
    def fit(self, train: Any, val: Any | None = None, ctx: Any | None = None) -> "CNNSpotDetector":
        from medforensics_core.engine.context import FitContext

        ctx = ctx or FitContext(device=self.device)
        with seeded(ctx.seed):
            self.model = build_resnet(self.config.arch, self.config.fc_init_std).to(self.device)
            self.backbone_weights = RANDOM_INIT
            self.random_init_fallback = False
            if wants_weights(self.config.pretrained):
                self._load_or_fall_back(ctx)
            self.train_info = self._train(train, val, ctx)
        self.fitted = True
        return self

    def _load_or_fall_back(self, ctx: Any) -> None:
        """ImageNet weights, or (only when the run allows it) random initialisation, reported on every row."""
        try:
            self.load_imagenet_weights()
        except WeightsNotFoundError as exc:
            if not getattr(ctx, "allow_random_init", False):
                raise
            log.warning("%s; --allow-random-init: training from random initialisation", exc)
            self.random_init_fallback = True
            self.backbone_weights = f"{RANDOM_INIT}; pretrained={self.config.pretrained} missing, allowed"

    def _train(self, train: Any, val: Any | None, ctx: Any) -> dict[str, Any]:
        """Adam + CNNDetection's early-stopping schedule (see :mod:`medforensics_core.engine.schedules`)."""
        cfg = self.config
        optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        batch_size = ctx.batch_size_for(cfg.batch_size)
        train_loader, val_loader = detector_loaders(self, train, val, ctx, batch_size)

        schedule = Schedule(ctx.epochs_for(cfg.epochs), patience=cfg.patience, first_delta=cfg.first_delta,
                            delta=cfg.delta, lr_drop=cfg.lr_drop, min_lr=cfg.min_lr, keep=cfg.model_selection)
        return train_binary(self.model, None, self.predict_proba, optimizer, train_loader, val_loader, ctx,
                            schedule, self.name)

    @torch.no_grad()
    def predict_proba(self, batch: Batch) -> np.ndarray:
        self.model.eval()
        logits = self.model(batch.inputs.to(self.device))
        return torch.sigmoid(logits.float().reshape(-1)).cpu().numpy()

    # -- reporting and state
    def weights_info(self) -> str:
        return f"{self.config.arch}, {self.backbone_weights}"

    def weights_status(self) -> str:
        return "random-init" if self.backbone_weights.startswith(RANDOM_INIT) else "pretrained"

    def warnings(self) -> list[str]:
        if self.backbone_weights.startswith(RANDOM_INIT):
            return [f"cnnspot: {self.config.arch} trained from random initialisation — the paper starts from "
                    f"ImageNet weights (give pretrained=PATH); scores are not comparable to the paper's"]
        return []

    def extra_state(self) -> dict[str, Any]:
        return {"backbone_weights": self.backbone_weights, "random_init_fallback": self.random_init_fallback}

    def load_state(self, tensors: Any, extra: Any, source: str = "checkpoint") -> None:
        self.load_module_tensors(tensors, source)
        self.backbone_weights = extra.get("backbone_weights", RANDOM_INIT)
        self.random_init_fallback = bool(extra.get("random_init_fallback", False))


@hookimpl
def register_detectors(register):
    register(CNNSpotDetector)
