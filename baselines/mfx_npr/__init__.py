"""``npr``: Tan et al., "Rethinking the Up-Sampling Operations in CNN-based Generative Network for
Generalizable Deepfake Detection" (CVPR 2024).

Generators up-sample, and up-sampling ties neighbouring pixels together. NPR
(neighbouring pixel relationships) makes that tie visible as a residual
``x - up(down(x, 0.5))`` (nearest both ways, scaled by 2/3) and trains a small
ResNet on the residual alone. The residual is the registry's ``npr`` noise
extractor (``mfx_noise``; one implementation shared with DSKI's noise branch),
never re-implemented here. The recipe (config defaults, from the official
NPR-DeepfakeDetection code):

* ImageNet normalisation -> NPR residual -> ResNet-50 stem with a 3x3 stride-2
  first convolution, batch norm, ReLU, max-pool -> ``layer1`` + ``layer2``
  (bottlenecks, 512 channels out) -> global average pool -> ``Linear(512, 1)``;
  random initialisation (Kaiming for convolutions);
* BCE with logits, Adam lr 2e-4, betas (0.9, 0.999), batch 32, 50 epochs; lr x 0.9
  after the epochs whose 0-based index is 10, 20, 30, 40 (the official rule
  ``epoch % delr_freq == 0 and epoch != 0``; the repository used 0.8 until
  February 2024); no blur/JPEG augmentation; the last epoch's weights are kept;
* test (``eval_geometry="native"``): the whole image at its own size — a 512 px
  scan resized to 256 loses most of its up-sampling trace; training random-crops
  224 at native scale (the official square resize to 256 is the identity on its
  256 px training images), validation (logged only) resizes to 256 x 256 and
  centre-crops 224 as the official ``get_val_opt``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch

from medforensics_core.contract import Batch, SupportsDistributed
from medforensics_core.errors import MfxError
from medforensics_core.hookspecs import hookimpl
from medforensics_core.interfaces import Detector
from medforensics_core.lazy import lazy_module
from medforensics_core.toolkit import (IMAGENET_MEAN, IMAGENET_STD, Schedule, check_geometry, detector_loaders,
                                       eval_geometry_transform, normalise, seeded, train_binary, train_geometry,
                                       train_resize_for, variable_size)

torchvision = lazy_module("torchvision")
v2 = lazy_module("torchvision.transforms.v2")

ARCHS = ("resnet18", "resnet34", "resnet50")


@dataclasses.dataclass
class NPRConfig:
    """NPR recipe (defaults: Tan et al. 2024, official training command)."""

    arch: str = "resnet50"
    noise_extractor: str = "npr"
    load_size: int = 256
    crop_size: int = 224
    eval_geometry: str = "native"
    val_geometry: str = "resize-square-crop"
    flip: bool = True
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 32
    epochs: int = 50
    lr_decay_every: int = 10
    lr_decay: float = 0.9
    model_selection: str = "last"


class NPRNet(torch.nn.Module):
    """Residual extractor + the first two stages of a torchvision ResNet + a 1-logit head."""

    def __init__(self, residual: torch.nn.Module, arch: str):
        super().__init__()
        if arch not in ARCHS:
            raise MfxError(f"npr: unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
        resnet = getattr(torchvision.models, arch)(weights=None)
        conv1 = torch.nn.Conv2d(residual.out_channels, 64, kernel_size=3, stride=2, padding=1, bias=False)
        torch.nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
        self.residual = residual
        self.stem = torch.nn.Sequential(conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        width = self.layer2[-1].conv3.out_channels if hasattr(self.layer2[-1], "conv3") \
            else self.layer2[-1].conv2.out_channels
        self.fc = torch.nn.Linear(width, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.layer2(self.layer1(self.stem(self.residual(images))))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(features, 1), 1))


class NPRDetector(Detector, SupportsDistributed):
    """NPR (Tan et al., CVPR 2024) — see the module docstring for the recipe.

    Presets: ``full`` = the paper (ResNet-50 stages, 224 px crops, batch 32, 50
    epochs); ``tiny`` = ResNet-18 stages on 56 px crops, batch 32, 6 epochs, lr
    x 0.9 after epochs 2 and 4 (0-based) — what the tests and the offline
    benchmark run on CPU. The network is always trained from random
    initialisation, as in the paper.
    """

    name: ClassVar[str] = "npr"
    description: ClassVar[str] = "ResNet on the NPR up-sampling residual (Tan et al., CVPR 2024)"
    config_class: ClassVar[type] = NPRConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"arch": "resnet18", "load_size": 64, "crop_size": 56, "batch_size": 32, "epochs": 6,
                 "lr_decay_every": 2},
    }

    def __init__(self, config: Any = None, *, preset: str | None = None, device: str | torch.device = "cpu"):
        super().__init__(config, preset=preset, device=device)
        self.model = self.build_model().to(self.device)
        cfg = self.config
        check_geometry(self.name, cfg.eval_geometry)
        check_geometry(self.name, cfg.val_geometry)
        self._normalise = normalise(IMAGENET_MEAN, IMAGENET_STD)
        self._test_geometry = eval_geometry_transform(cfg.eval_geometry, cfg.load_size, cfg.crop_size)
        self._val_geometry = eval_geometry_transform(cfg.val_geometry, cfg.load_size, cfg.crop_size)
        self._train_geometry = v2.Compose([train_resize_for(cfg.eval_geometry, cfg.load_size),
                                           train_geometry(cfg.crop_size, cfg.flip)])

    @property
    def variable_input_size(self) -> bool:
        """Test images keep their own sizes (``eval_geometry="native"``): the scorer batches them by size."""
        return variable_size(self.config.eval_geometry)

    def build_model(self) -> NPRNet:
        """The network around the registry's residual extractor (``config.noise_extractor``)."""
        from medforensics_core.plugins import get_registry

        extractor = get_registry().noise_extractor(self.config.noise_extractor)()
        return NPRNet(extractor, self.config.arch)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        return self._normalise(self._test_geometry(image))

    def train_transform(self, image: torch.Tensor) -> torch.Tensor:
        return self._normalise(self._train_geometry(image))

    def val_transform(self, image: torch.Tensor) -> torch.Tensor:
        return self._normalise(self._val_geometry(image))

    def fit(self, train: Any, val: Any | None = None, ctx: Any | None = None) -> "NPRDetector":
        from medforensics_core.engine.context import FitContext

        ctx = ctx or FitContext(device=self.device)
        with seeded(ctx.seed):
            self.model = self.build_model().to(self.device)
            self.train_info = self._train(train, val, ctx)
        self.fitted = True
        return self

    def _train(self, train: Any, val: Any | None, ctx: Any) -> dict[str, Any]:
        """Adam with NPR's step decay (lr x ``lr_decay`` after every ``lr_decay_every``-th epoch), no early stopping."""
        cfg = self.config
        optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        batch_size = ctx.batch_size_for(cfg.batch_size)
        train_loader, val_loader = detector_loaders(self, train, val, ctx, batch_size)

        schedule = Schedule(ctx.epochs_for(cfg.epochs), decay_every=cfg.lr_decay_every, decay=cfg.lr_decay,
                            keep=cfg.model_selection)
        return train_binary(self.model, None, self.predict_proba, optimizer, train_loader, val_loader, ctx,
                            schedule, self.name)

    @torch.no_grad()
    def predict_proba(self, batch: Batch) -> np.ndarray:
        self.model.eval()
        return torch.sigmoid(self.model(batch.inputs.to(self.device)).float().reshape(-1)).cpu().numpy()

    def weights_info(self) -> str:
        return f"{self.config.arch} stem + layer1-2 on the {self.config.noise_extractor} residual, random init " \
               f"(as in the paper)"


@hookimpl
def register_detectors(register):
    register(NPRDetector)
