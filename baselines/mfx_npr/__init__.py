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
* BCE with logits, Adam lr 2e-4, betas (0.9, 0.999), batch 32, 50 epochs, lr x 0.8
  every 10 epochs; no blur/JPEG augmentation;
* training: resize 256 -> random crop 224 -> flip; test: resize 256 -> centre crop 224.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
import torchvision
from torchvision.transforms import v2

from medforensics_core.contract import Batch, SupportsDistributed
from medforensics_core.errors import MfxError
from medforensics_core.hookspecs import hookimpl
from medforensics_core.interfaces import Detector
from medforensics_core.toolkit import (IMAGENET_MEAN, IMAGENET_STD, Schedule, detector_loaders, normalise,
                                       resize_shorter, seeded, test_geometry, train_binary, train_geometry)

ARCHS = ("resnet18", "resnet34", "resnet50")


@dataclasses.dataclass
class NPRConfig:
    """NPR recipe (defaults: Tan et al. 2024, official training command)."""

    arch: str = "resnet50"
    noise_extractor: str = "npr"
    load_size: int = 256
    crop_size: int = 224
    flip: bool = True
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 32
    epochs: int = 50
    lr_step_every: int = 10
    lr_step_gamma: float = 0.8


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

    Presets: ``full`` = the paper (ResNet-50 stages, 256 -> 224 px, batch 32, 50
    epochs); ``tiny`` = ResNet-18 stages at 64 -> 56 px, batch 32, 6 epochs, lr
    x 0.8 every 2 epochs — what the tests and the offline benchmark run on CPU.
    The network is always trained from random initialisation, as in the paper.
    """

    name: ClassVar[str] = "npr"
    description: ClassVar[str] = "ResNet on the NPR up-sampling residual (Tan et al., CVPR 2024)"
    config_class: ClassVar[type] = NPRConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"arch": "resnet18", "load_size": 64, "crop_size": 56, "batch_size": 32, "epochs": 6,
                 "lr_step_every": 2},
    }

    def __init__(self, config: Any = None, *, preset: str | None = None, device: str | torch.device = "cpu"):
        super().__init__(config, preset=preset, device=device)
        self.model = self.build_model().to(self.device)
        cfg = self.config
        self._normalise = normalise(IMAGENET_MEAN, IMAGENET_STD)
        self._test_geometry = test_geometry(cfg.load_size, cfg.crop_size)
        self._train_geometry = v2.Compose([resize_shorter(cfg.load_size), train_geometry(cfg.crop_size, cfg.flip)])

    def build_model(self) -> NPRNet:
        """The network around the registry's residual extractor (``config.noise_extractor``)."""
        from medforensics_core.plugins import get_registry

        extractor = get_registry().noise_extractor(self.config.noise_extractor)()
        return NPRNet(extractor, self.config.arch)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        return self._normalise(self._test_geometry(image))

    def train_transform(self, image: torch.Tensor) -> torch.Tensor:
        return self._normalise(self._train_geometry(image))

    def fit(self, train: Any, val: Any | None = None, ctx: Any | None = None) -> "NPRDetector":
        from medforensics_core.engine.context import FitContext

        ctx = ctx or FitContext(device=self.device)
        with seeded(ctx.seed):
            self.model = self.build_model().to(self.device)
            self.train_info = self._train(train, val, ctx)
        self.fitted = True
        return self

    def _train(self, train: Any, val: Any | None, ctx: Any) -> dict[str, Any]:
        """Adam with a step decay (lr x ``lr_step_gamma`` every ``lr_step_every`` epochs), no early stopping."""
        cfg = self.config
        optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        batch_size = ctx.batch_size_for(cfg.batch_size)
        train_loader, val_loader = detector_loaders(self, train, val, ctx, batch_size)

        schedule = Schedule(ctx.epochs_for(cfg.epochs), step_every=cfg.lr_step_every, step_gamma=cfg.lr_step_gamma)
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
