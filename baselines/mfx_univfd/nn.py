"""``univfd-nn``: UnivFD's nearest-neighbour variant (Ojha et al., CVPR 2023).

No training: a bank of the training images' frozen CLIP features (the
``faiss-flat`` retriever plugin), and a test image is called fake when its
nearest fake neighbour is closer (cosine) than its nearest real one; the score
is the core's neighbour vote (:func:`medforensics_core.retrieval.knn_fake_probability`)
over those two neighbours, a sigmoid of the similarity gap. It declares the
:class:`~medforensics_core.contract.ReferenceBank` capability, so ``mfx index add``
and the few-shot protocol add references to its bank without retraining. It
shares the frozen features (:class:`~.features.ClipFeatureDetector`) with the
probe, not the probe itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

from medforensics_core.contract import Batch, ReferenceBank
from medforensics_core.errors import CheckpointError, MfxError
from medforensics_core.retrieval import (bank_labels, bank_state, knn_fake_probability, nearest_per_label, restore_bank,
                                         split_bank_tensors)

from .features import ClipFeatureDetector


@dataclasses.dataclass
class UnivFDNNConfig:
    """UnivFD nearest-neighbour variant: same frozen backbone, a labelled bank instead of a head."""

    clip_model: str = "ViT-L-14"
    pretrained: str = "openai"
    backbone_seed: int = 0
    load_size: int = 256
    eval_geometry: str = "native-crop"
    retriever: str = "faiss-flat"
    temperature: float = 0.01
    search_k: int = 512
    encode_batch_size: int = 64


class UnivFDNNDetector(ClipFeatureDetector, ReferenceBank):
    """UnivFD-NN (Ojha et al. 2023, k = 1 cosine nearest neighbour per class over the training features).

    The score is ``sigmoid((s_fake - s_real) / temperature)`` — the shared
    neighbour vote over the nearest real and the nearest fake neighbour — so
    0.5 is exactly the paper's rule (the closer class wins). Presets: ``full`` =
    ViT-L/14 OpenAI weights; ``tiny`` = mfx's tiny random-init CLIP.
    """

    name: ClassVar[str] = "univfd-nn"
    description: ClassVar[str] = "nearest neighbour (cosine) over frozen CLIP features (Ojha et al., CVPR 2023)"
    config_class: ClassVar[type] = UnivFDNNConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"clip_model": "mfx-tiny-clip", "pretrained": "random",
                                                             "load_size": 64}}

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
        self.ensure_backbone(ctx)
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
        return {**super().extra_state(), "bank": bank_state(self.bank)[1]}

    def load_state(self, tensors: Mapping[str, torch.Tensor], extra: Mapping[str, Any],
                   source: str = "checkpoint") -> None:
        self.check_backbone(extra, source)
        bank_tensors, stray = split_bank_tensors(tensors)
        if stray:
            raise CheckpointError(f"{source}: unexpected tensor {sorted(stray)[0]!r} for detector {self.name!r}")
        self.bank = restore_bank(bank_tensors, extra.get("bank"), self.bank_info(), source)
