"""``univfd`` and ``univfd-nn``: Ojha et al., "Towards Universal Fake Image Detectors..." (CVPR 2023).

UnivFD's point is that a *frozen* CLIP image encoder already separates real from
generated images; training only a linear probe on its features generalises to
unseen generators far better than training a CNN end to end. The recipe
(config defaults):

* frozen open_clip ``ViT-L-14`` / ``openai`` image encoder (768-d features),
  loaded through :func:`medforensics_core.backbones.load_clip`;
* ``Linear(d, 1)`` initialised N(0, 0.02), BCE with logits, AdamW lr 1e-4,
  weight decay 0, batch 256;
* training: resize (shorter side) 256 -> blur/JPEG (each p=0.5) -> random crop to
  the backbone's input size -> flip, CLIP normalisation; test: resize + centre
  crop to the backbone's input size;
* early stopping on validation accuracy with lr / 10 as in CNNDetection.

Feature cache trade-off: with augmentation off, every epoch sees the same
pixels, so the frozen features are computed once and cached on disk
(:mod:`medforensics_core.engine.features`) — the probe then trains in seconds and
``univfd-nn`` (or a second run) reuses them. With the paper's blur/JPEG/crop
augmentation on, features must be recomputed every epoch and the cache is not
used. The ``tiny`` preset turns augmentation off and uses the cache; ``full``
keeps the paper's augmentation.

``univfd-nn`` is the paper's nearest-neighbour variant: no training, a bank of
the training images' features (the ``faiss-flat`` retriever plugin), and a test
image is called fake when its nearest fake neighbour is closer (cosine) than its
nearest real one; the score is the core's neighbour vote
(:func:`medforensics_core.retrieval.knn_fake_probability`) over those two
neighbours, a sigmoid of the similarity gap. It declares the
:class:`~medforensics_core.contract.ReferenceBank` capability, so ``mfx index add``
and the few-shot protocol add references to its bank without retraining.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torchvision.transforms import v2

from medforensics_core import toolkit
from medforensics_core.contract import Batch, ReferenceBank, SupportsDistributed
from medforensics_core.errors import CheckpointError, MfxError
from medforensics_core.hookspecs import hookimpl
from medforensics_core.interfaces import Detector
from medforensics_core.retrieval import (bank_labels, bank_state, knn_fake_probability, nearest_per_label, restore_bank,
                                         split_bank_tensors)
from medforensics_core.toolkit import (BlurJpegRecipe, Schedule, blur_jpeg_transform, detector_loaders, linear_head,
                                       normalise, resize_shorter, seeded, test_geometry, train_binary, train_geometry)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class UnivFDConfig:
    """UnivFD recipe (defaults: Ojha et al. 2023, official UniversalFakeDetect options)."""

    clip_model: str = "ViT-L-14"
    pretrained: str = "openai"
    backbone_seed: int = 0
    load_size: int = 256
    flip: bool = True
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 100)
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 100
    patience: int = 5
    lr_drop: float = 10.0
    min_lr: float = 1e-6
    head_init_std: float = 0.02
    encode_batch_size: int = 64

    @property
    def augmentation(self) -> BlurJpegRecipe:
        return BlurJpegRecipe(self.blur_prob, tuple(self.blur_sigma), self.jpeg_prob, tuple(self.jpeg_quality))

    @property
    def augments(self) -> bool:
        """Whether training images differ from test-time ones (then the feature cache cannot be used)."""
        return self.augmentation.enabled or self.flip


TINY_BACKBONE = {"clip_model": "mfx-tiny-clip", "pretrained": "random", "load_size": 64}


class UnivFDDetector(Detector, SupportsDistributed):
    """UnivFD linear probe on a frozen CLIP image encoder (see the module docstring).

    Presets: ``full`` = the paper (ViT-L/14 OpenAI weights, which must be on the
    machine; blur/JPEG/crop/flip augmentation, batch 256); ``tiny`` = mfx's tiny
    random-init CLIP (64 px), no augmentation so cached features are used,
    batch 64, lr 1e-2 (random features need a larger step), 60 epochs, patience 10 — what the tests and offline benchmark run.
    """

    name: ClassVar[str] = "univfd"
    description: ClassVar[str] = "linear probe on frozen CLIP image features (Ojha et al., CVPR 2023)"
    config_class: ClassVar[type] = UnivFDConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {**TINY_BACKBONE, "blur_prob": 0.0, "jpeg_prob": 0.0, "flip": False, "batch_size": 64,
                 "epochs": 60, "patience": 10, "lr": 1e-2},
    }

    def __init__(self, config: Any = None, *, preset: str | None = None, device: str | torch.device = "cpu"):
        super().__init__(config, preset=preset, device=device)
        self._backbone = None
        self._test_steps: Any = None
        self._train_steps: Any = None
        self.head: torch.nn.Linear | None = None
        self.feature_cache_stats: dict[str, int] = {}

    # -- the frozen backbone, loaded on first use (constructing a detector never touches weights)
    @property
    def backbone(self) -> Any:
        if self._backbone is None:
            cfg = self.config
            self._backbone = toolkit.load_clip(cfg.clip_model, cfg.pretrained, device=self.device, seed=cfg.backbone_seed)
        return self._backbone

    @property
    def feature_dim(self) -> int:
        """Dimension of ``encode_image`` output (the head's input)."""
        return int(self.backbone.embed_dim)

    def ensure_head(self) -> torch.nn.Linear:
        if self.head is None:
            self.head = linear_head(self.feature_dim, self.config.head_init_std).to(self.device)
        return self.head

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"head": self.ensure_head()}

    def to(self, device: str | torch.device) -> "UnivFDDetector":
        super().to(device)
        if self._backbone is not None:
            self._backbone.model.to(self.device)
        return self

    # -- preprocessing
    def preprocess_key(self) -> str:
        """Identity of the test-time preprocessing (part of the feature-cache key)."""
        bb = self.backbone
        return f"resize{bb.image_size}-centrecrop{bb.image_size}-norm{bb.mean}{bb.std}"

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        if self._test_steps is None:
            bb = self.backbone
            self._test_steps = v2.Compose([test_geometry(bb.image_size, bb.image_size), normalise(bb.mean, bb.std)])
        return self._test_steps(image)

    def train_transform(self, image: torch.Tensor) -> torch.Tensor:
        if self._train_steps is None:
            cfg, bb = self.config, self.backbone
            self._train_steps = v2.Compose([resize_shorter(max(cfg.load_size, bb.image_size)),
                                            blur_jpeg_transform(cfg.augmentation),
                                            train_geometry(bb.image_size, cfg.flip), normalise(bb.mean, bb.std)])
        return self._train_steps(image)

    @torch.no_grad()
    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """Frozen image features of a preprocessed batch."""
        return self.backbone.model.encode_image(batch.to(self.device))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.ensure_head()(self.encode(batch).float())

    def cached_features(self, images: Any, ctx: Any) -> torch.Tensor:
        """Test-time features of every image, through the on-disk cache."""
        features, stats = toolkit.cached_features(images, self.encode, self.preprocess,
                                                  backbone_key=self.backbone.key(),
                                                  preprocess_key=self.preprocess_key(), ctx=ctx,
                                                  batch_size=self.config.encode_batch_size)
        for key, value in dataclasses.asdict(stats).items():
            self.feature_cache_stats[key] = self.feature_cache_stats.get(key, 0) + value
        return features

    # -- training
    def fit(self, train: Any, val: Any | None = None, ctx: Any | None = None) -> "UnivFDDetector":
        from medforensics_core.engine.context import FitContext

        ctx = ctx or FitContext(device=self.device)
        self.to(ctx.device)
        self.feature_cache_stats = {}
        with seeded(ctx.seed):
            self.head = None
            self._train_head(self.ensure_head(), train, val, ctx)
        self.fitted = True
        return self

    def _train_head(self, head: torch.nn.Linear, train: Any, val: Any | None, ctx: Any) -> None:
        cfg = self.config
        optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = Schedule(ctx.epochs_for(cfg.epochs), patience=cfg.patience, lr_drop=cfg.lr_drop, min_lr=cfg.min_lr)
        batch_size = ctx.batch_size_for(cfg.batch_size)
        if cfg.augments:
            self.train_info = train_probe_on_images(self, optimizer, train, val, ctx, schedule, batch_size)
        else:
            self.train_info = train_probe_on_features(self, optimizer, train, val, ctx, schedule, batch_size)
            self.train_info["feature_cache"] = dict(self.feature_cache_stats)

    @torch.no_grad()
    def predict_proba(self, batch: Batch) -> np.ndarray:
        return torch.sigmoid(self.forward(batch.inputs).reshape(-1)).cpu().numpy()

    # -- reporting and state
    def weights_info(self) -> str:
        return f"frozen {self.backbone.weights_info} + trained linear head"

    def warnings(self) -> list[str]:
        if self.backbone.is_random:
            return [f"{self.name}: the CLIP backbone {self.config.clip_model} is randomly initialised, not "
                    f"pretrained — UnivFD's premise is pretrained CLIP features; give pretrained=PATH for real runs"]
        return []

    def extra_state(self) -> dict[str, Any]:
        return {"backbone": self.backbone.key()}

    def load_state(self, tensors: Mapping[str, torch.Tensor], extra: Mapping[str, Any],
                   source: str = "checkpoint") -> None:
        self.check_backbone(extra, source)
        self.load_module_tensors(tensors, source)

    def check_backbone(self, extra: Mapping[str, Any], source: str) -> None:
        """Refuse a checkpoint trained on another backbone, in one line."""
        toolkit.check_backbone(extra, self.backbone, self.name, source)


def train_probe_on_features(detector: UnivFDDetector, optimizer: torch.optim.Optimizer, train: Any, val: Any | None,
                            ctx: Any, schedule: Schedule, batch_size: int) -> dict[str, Any]:
    """Train the head on cached frozen features (no augmentation): seconds instead of minutes."""
    features = detector.cached_features(train, ctx)
    val_loader = None
    if val is not None and len(val):
        val_loader = ctx.tensor_loader(detector.cached_features(val, ctx), val.labels, batch_size, shuffle=False)
    head = detector.ensure_head()
    predict = lambda batch: torch.sigmoid(head(batch.inputs.float()).reshape(-1)).cpu().numpy()  # noqa: E731

    loader = ctx.tensor_loader(features, train.labels, batch_size, shuffle=True)  # one shuffling stream for all epochs

    def train_loader(epoch: int):
        if hasattr(loader.sampler, "set_epoch"):  # DistributedSampler: a new shard order per epoch
            loader.sampler.set_epoch(epoch)
        return loader

    return train_binary(head, None, predict, optimizer, train_loader, val_loader, ctx, schedule, detector.name)


def train_probe_on_images(detector: UnivFDDetector, optimizer: torch.optim.Optimizer, train: Any, val: Any | None,
                          ctx: Any, schedule: Schedule, batch_size: int) -> dict[str, Any]:
    """Train the head on augmented images, encoding each batch with the frozen backbone (the paper's recipe)."""
    train_loader, val_loader = detector_loaders(detector, train, val, ctx, batch_size)

    return train_binary(detector.ensure_head(), None, detector.predict_proba, optimizer, train_loader,
                        val_loader, ctx, schedule, detector.name, frozen=detector.encode)


# --------------------------------------------------------------------------- nearest neighbour


@dataclasses.dataclass
class UnivFDNNConfig:
    """UnivFD nearest-neighbour variant: same frozen backbone, a labelled bank instead of a head."""

    clip_model: str = "ViT-L-14"
    pretrained: str = "openai"
    backbone_seed: int = 0
    retriever: str = "faiss-flat"
    temperature: float = 0.01
    search_k: int = 512
    encode_batch_size: int = 64


class UnivFDNNDetector(UnivFDDetector, ReferenceBank):
    """UnivFD-NN (Ojha et al. 2023, k = 1 cosine nearest neighbour per class over the training features).

    The score is ``sigmoid((s_fake - s_real) / temperature)`` — the shared
    neighbour vote over the nearest real and the nearest fake neighbour — so
    0.5 is exactly the paper's rule (the closer class wins). Presets: ``full`` =
    ViT-L/14 OpenAI weights; ``tiny`` = mfx's tiny random-init CLIP.
    """

    name: ClassVar[str] = "univfd-nn"
    description: ClassVar[str] = "nearest neighbour (cosine) over frozen CLIP features (Ojha et al., CVPR 2023)"
    config_class: ClassVar[type] = UnivFDNNConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"clip_model": "mfx-tiny-clip", "pretrained": "random"}}

    def __init__(self, config: Any = None, *, preset: str | None = None, device: str | torch.device = "cpu"):
        super().__init__(config, preset=preset, device=device)
        self.bank = None

    def modules(self) -> dict[str, torch.nn.Module]:
        return {}

    def train_transform(self, image: torch.Tensor) -> torch.Tensor:
        return self.preprocess(image)

    def bank_info(self) -> dict[str, Any]:
        """What produced the bank's vectors; a bank of another backbone is refused."""
        return {"backbone": self.backbone.key(), "preprocess": self.preprocess_key()}

    def new_bank(self, dim: int | None = None) -> Any:
        from medforensics_core.retrieval import new_bank

        return new_bank(self.config.retriever, dim, self.bank_info())

    def fit(self, train: Any, val: Any | None = None, ctx: Any | None = None) -> "UnivFDNNDetector":
        from medforensics_core.engine.context import FitContext

        ctx = ctx or FitContext(device=self.device)
        self.to(ctx.device)
        self.feature_cache_stats = {}
        features = self.cached_features(train, ctx)
        if len(np.unique(train.labels)) < 2:
            raise MfxError(f"{self.name}: the training set needs both real and fake images")
        self.bank = self.new_bank(features.shape[1])
        meta = [{"generator": r.generator, "modality": r.modality, "source": r.source, "path": r.path}
                for r in train.rows]
        self.bank.add(features.numpy(), train.labels, meta)
        self.train_info = {"epochs": 0, "bank_size": len(self.bank), "feature_cache": dict(self.feature_cache_stats)}
        if val is not None and len(val):
            from medforensics_core.decision import accuracy

            scores = self.scores_from_features(self.cached_features(val, ctx).numpy())
            self.train_info["val_acc"] = accuracy(scores, val.labels)
        self.fitted = True
        return self

    def scores_from_features(self, features: np.ndarray) -> np.ndarray:
        """Fake probability from the nearest real and nearest fake bank neighbours."""
        if self.bank is None or len(self.bank) == 0:
            raise MfxError(f"{self.name}: no feature bank — fit the detector or load a checkpoint first")
        k = min(len(self.bank), self.config.search_k)
        similarities, indices = self.bank.search(features, k)
        labels = bank_labels(self.bank, indices)
        nearest = np.stack([nearest_per_label(similarities, labels, 0), nearest_per_label(similarities, labels, 1)],
                           1)
        pair_labels = np.broadcast_to(np.array([0, 1]), nearest.shape)
        pair_labels = np.where(np.isfinite(nearest), pair_labels, -1)
        return knn_fake_probability(nearest, pair_labels, temperature=self.config.temperature)

    @torch.no_grad()
    def predict_proba(self, batch: Batch) -> np.ndarray:
        return self.scores_from_features(self.encode(batch.inputs).float().cpu().numpy())

    @torch.no_grad()
    def add_references(self, images: Any, labels: Any, modalities: Any, generators: Any,
                       sources: Any = None) -> int:
        """Add labelled raw images to the nearest-neighbour bank (no retraining): UnivFD-NN's few-shot path."""
        n = len(images)
        if not (len(labels) == len(modalities) == len(generators) == n):
            raise ValueError(f"{n} images but {len(labels)} labels, {len(modalities)} modalities, "
                             f"{len(generators)} generators")
        if any(int(label) not in (0, 1) for label in labels):
            raise MfxError("reference labels must be 0 (real) or 1 (fake)")
        sources = sources if sources is not None else [""] * n
        step = self.config.encode_batch_size
        for start in range(0, n, step):
            stop = min(n, start + step)
            features = self.encode(torch.stack([self.preprocess(images[i]) for i in range(start, stop)]))
            if self.bank is None:
                self.bank = self.new_bank(features.shape[1])
            meta = [{"generator": generators[i], "modality": modalities[i], "source": sources[i],
                     "added": "reference"} for i in range(start, stop)]
            self.bank.add(features.float().cpu().numpy(), [int(x) for x in labels[start:stop]], meta)
        return len(self.bank) if self.bank is not None else 0

    def weights_info(self) -> str:
        size = len(self.bank) if self.bank is not None else 0
        return f"frozen {self.backbone.weights_info} + nearest-neighbour bank of {size} training features"

    # -- state: the bank in the core's bank layout (tensors under ``bank.``, one JSON entry)
    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.bank is None:
            raise MfxError(f"{self.name}: nothing to save — fit the detector first")
        return bank_state(self.bank)[0]

    def extra_state(self) -> dict[str, Any]:
        return {"backbone": self.backbone.key(), "bank": bank_state(self.bank)[1]}

    def load_state(self, tensors: Mapping[str, torch.Tensor], extra: Mapping[str, Any],
                   source: str = "checkpoint") -> None:
        self.check_backbone(extra, source)
        bank_tensors, stray = split_bank_tensors(tensors)
        if stray:
            raise CheckpointError(f"{source}: unexpected tensor {sorted(stray)[0]!r} for detector {self.name!r}")
        self.bank = restore_bank(bank_tensors, extra.get("bank"), self.bank_info(), source)


@hookimpl
def register_detectors(register):
    register(UnivFDDetector)
    register(UnivFDNNDetector)
