"""``univfd-nn``: UnivFD's nearest-neighbour variant (Ojha et al., CVPR 2023).

No training: a bank of the training images' frozen CLIP features (the
``faiss-flat`` retriever plugin), and a test image is called fake when its
nearest fake neighbour is closer (cosine) than its nearest real one; the score
is the shared neighbour vote of ``mfx_retrieval`` over those two neighbours, a
sigmoid of the similarity gap. It shares the frozen features
(:class:`~.features.ClipFeatureDetector`) with the probe, not the probe itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

from medforensics_core.errors import CheckpointError, MfxError

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


class UnivFDNNDetector(ClipFeatureDetector):
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
    BANK_PREFIX: ClassVar[str] = "bank."

    def __init__(self, config: Any = None, *, preset: str | None = None, device: str | torch.device = "cpu"):
        super().__init__(config, preset=preset, device=device)
        self.bank = None
        self._pending_bank: Mapping[str, Any] = {}

    def modules(self) -> dict[str, torch.nn.Module]:
        return {}

    def train_transform(self, image: torch.Tensor) -> torch.Tensor:
        return self.preprocess(image)

    def bank_info(self) -> dict[str, Any]:
        """What produced the bank's vectors; a bank of another backbone is refused."""
        return {"backbone": self.backbone.key(), "preprocess": self.preprocess_key()}

    def new_bank(self, dim: int | None = None) -> Any:
        from medforensics_core.plugins import get_registry

        return get_registry().retriever(self.config.retriever)(dim=dim, info=self.bank_info())

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
        meta = [{"generator": r.generator, "modality": r.modality, "path": r.path} for r in train.rows]
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
        from mfx_retrieval import knn_fake_probability  # the shared neighbour vote (see mfx_retrieval.scoring)

        if self.bank is None or len(self.bank) == 0:
            raise MfxError(f"{self.name}: no feature bank — fit the detector or load a checkpoint first")
        k = min(len(self.bank), self.config.search_k)
        similarities, indices = self.bank.search(features, k)
        labels = np.where(indices >= 0, self.bank.labels[np.clip(indices, 0, None)], -1)
        nearest = np.stack([first_of_label(similarities, labels, 0), first_of_label(similarities, labels, 1)], 1)
        pair_labels = np.broadcast_to(np.array([0, 1]), nearest.shape)
        pair_labels = np.where(np.isfinite(nearest), pair_labels, -1)
        return knn_fake_probability(nearest, pair_labels, temperature=self.config.temperature)

    @torch.no_grad()
    def predict_proba(self, batch: torch.Tensor) -> np.ndarray:
        return self.scores_from_features(self.encode(batch).float().cpu().numpy())

    def weights_info(self) -> str:
        size = len(self.bank) if self.bank is not None else 0
        return f"frozen {self.backbone.weights_info} + nearest-neighbour bank of {size} training features"

    # -- state: the bank's tensors under a prefix, its JSON state in extra_state
    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.bank is None:
            raise MfxError(f"{self.name}: nothing to save — fit the detector first")
        return {self.BANK_PREFIX + key: value for key, value in self.bank.state_tensors().items()}

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "bank": self.bank.extra_state() if self.bank is not None else {},
                "bank_dim": self.bank.dim if self.bank is not None else None, "bank_info": self.bank_info()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        super().load_extra_state(state)
        self._pending_bank = state

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
        from mfx_retrieval import check_compatible

        stray = sorted(k for k in tensors if not k.startswith(self.BANK_PREFIX))
        if stray:
            raise CheckpointError(f"{source}: unexpected tensor {stray[0]!r} for detector {self.name!r}")
        state = self._pending_bank
        bank = self.new_bank(state.get("bank_dim"))
        bank.info = dict(state.get("bank_info", {}))
        check_compatible(bank, self.bank_info())
        bank.load_state_tensors({k[len(self.BANK_PREFIX):]: v for k, v in tensors.items()}, state.get("bank", {}))
        self.bank = bank


def first_of_label(similarities: np.ndarray, labels: np.ndarray, label: int) -> np.ndarray:
    """Per row, the similarity of the best-ranked neighbour with ``label`` (``-inf`` when none is in the top k)."""
    hit = labels == label
    first = np.argmax(hit, axis=1)
    found = hit[np.arange(len(hit)), first]
    return np.where(found, similarities[np.arange(len(hit)), first], -np.inf)
