"""The ``dski`` detector: frozen CLIP + CDFA (stage 1, trained) + MFRM (stage 2, test time), and its ablations.

Stage 1 trains only the CDFA adapters (with their noise branch) and the prompt
context against cross-entropy over image-text logits; the CLIP backbone stays
frozen and is rebuilt from its name, weights and seed, so a checkpoint holds
just the adapters, the context and the MFRM bank. Stage 2 needs no training: the
adapted embeddings of labelled references go into a retriever and a test
image's neighbours vote; references can be added later (:meth:`add_references`,
``mfx index add``) to adapt to a new generator or scanner without retraining.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from medforensics_core.contract import Batch, ReferenceBank, SupportsDistributed
from medforensics_core.data.dataset import ImageSet
from medforensics_core.engine.context import FitContext
from medforensics_core.engine.distributed import average_gradients, gather_tensor_rows
from medforensics_core.errors import CheckpointError, ConfigError, MfxError
from medforensics_core.interfaces import Detector, Retriever
from medforensics_core.plugins import get_registry
from medforensics_core.retrieval import bank_state, check_compatible, restore_bank, split_bank_tensors
from medforensics_core.toolkit import ClipBackbone, load_clip, normalise, resize_shorter, train_geometry

from . import mfrm
from .cdfa import CDFA, adapted_image_features, evenly_spaced_blocks
from .config import PRESETS, DSKIConfig
from .prompts import PromptContext, PromptEncoder

log = logging.getLogger(__name__)

EVAL_BATCH = 64


class DSKIModules(nn.Module):
    """Every trainable (and saved) part of DSKI: the CDFA adapters and the prompt context, each optional."""

    def __init__(self, cdfa: CDFA | None, context: PromptContext | None):
        super().__init__()
        self.cdfa = cdfa
        self.context = context


class DSKIBase(Detector, SupportsDistributed):
    """Everything of DSKI but the few-shot reference API (see :class:`DSKIDetector`); not registered.

    ``dski-no-mfrm`` derives from this class, not from ``dski``, so that it does not declare
    :class:`~medforensics_core.contract.ReferenceBank`: the engine's few-shot protocol offers
    references only to detectors that declare it.
    """

    config_class: ClassVar[type] = DSKIConfig
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = PRESETS

    def __init__(self, config: Any = None, *, preset: str | None = None, device: str | torch.device = "cpu"):
        super().__init__(config, preset=preset, device=device)
        cfg = self.config
        self.backbone: ClipBackbone = load_clip(cfg.clip_model, cfg.clip_pretrained, device="cpu",
                                                seed=cfg.backbone_seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.backbone_seed)
            self.net = DSKIModules(self._build_cdfa(), self._build_context())
        self.prompts = PromptEncoder(self.backbone.model, self.backbone.tokenizer, cfg.real_templates,
                                     cfg.fake_templates, self.net.context)
        self.bank: Retriever | None = None
        self.known_modalities: list[str] = []
        self.mfrm_weight = cfg.mfrm_weight
        self.knn_temperature = cfg.knn_temperature
        self._empty_bank_logged = False
        size = self.backbone.image_size
        self._normalise = normalise(self.backbone.mean, self.backbone.std)
        self._test_geometry = v2.CenterCrop(size)
        self._train_geometry = train_geometry(size, flip=True)
        self._upscale = resize_shorter(size)
        self.to(device)

    # ------------------------------------------------------------------ construction
    def _build_cdfa(self) -> CDFA | None:
        cfg = self.config
        if not cfg.use_cdfa:
            return None
        visual = self.backbone.model.visual
        depth = len(visual.transformer.resblocks)
        blocks = tuple(cfg.adapter_blocks) or evenly_spaced_blocks(depth, cfg.num_adapters)
        registry = get_registry()
        extractors = {name: registry.noise_extractor(name)() for name in cfg.noise_extractors} \
            if cfg.use_noise else {}
        if cfg.use_noise and not extractors:
            raise ConfigError("use_noise=True needs at least one name in noise_extractors")
        return CDFA(visual, blocks, cfg.bottleneck_dim, cfg.adapter_scale, extractors, cfg.noise_heads)

    def _build_context(self) -> PromptContext | None:
        if self.config.n_ctx <= 0:
            return None
        width = self.backbone.model.token_embedding.weight.shape[1] \
            if hasattr(self.backbone.model, "token_embedding") else 0
        if not width:
            raise ConfigError(f"n_ctx > 0 needs an open_clip model with a token embedding; "
                              f"{self.config.clip_model} has none (set n_ctx=0)")
        return PromptContext(self.config.n_ctx, width)

    # ------------------------------------------------------------------ device and modules
    def modules(self) -> dict[str, nn.Module]:
        return {"dski": self.net}

    def to(self, device: str | torch.device) -> "DSKIBase":
        self.device = torch.device(device)
        self.backbone.model.to(self.device)
        self.net.to(self.device)
        self.prompts.clear_cache()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters stage 1 trains: adapters, noise branch, prompt context (never the backbone)."""
        return [p for p in self.net.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Centre crop at native resolution (``crop``) or a full resize (``resize``), then CLIP normalisation."""
        return self._normalise(self._test_geometry(self._fit_size(image)))

    def train_transform(self, image: torch.Tensor) -> torch.Tensor:
        """Random crop at native resolution plus a horizontal flip (no resampling of the traces)."""
        return self._normalise(self._train_geometry(self._fit_size(image)))

    def _fit_size(self, image: torch.Tensor) -> torch.Tensor:
        size = self.backbone.image_size
        if self.config.preprocess_mode == "resize":
            return v2.functional.resize(image, [size, size], antialias=True)
        if self.config.preprocess_mode != "crop":
            raise ConfigError(f"preprocess_mode must be 'crop' or 'resize', not {self.config.preprocess_mode!r}")
        return self._upscale(image) if min(image.shape[-2:]) < size else image

    def _pixels(self, batch: torch.Tensor) -> torch.Tensor:
        """Undo CLIP normalisation: the noise extractors work on pixels in [0, 1]."""
        mean = torch.tensor(self.backbone.mean, device=batch.device, dtype=batch.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.backbone.std, device=batch.device, dtype=batch.dtype).view(1, -1, 1, 1)
        return batch * std + mean

    # ------------------------------------------------------------------ forward
    def encode(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Adapted, L2-normalised image embeddings ``(N, d)`` and the noise tokens (or ``None``)."""
        batch = batch.to(self.device)
        pixels = self._pixels(batch) if self.net.cdfa is not None and self.net.cdfa.noise is not None else None
        features, noise = adapted_image_features(self.backbone.model.visual, batch, self.net.cdfa, pixels)
        return F.normalize(features.float(), dim=-1), noise

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """Adapted, L2-normalised image embeddings ``(N, d)`` of a preprocessed batch."""
        return self.encode(batch)[0]

    def bank_dim(self) -> int:
        """Length of the MFRM vectors: the embedding, plus the noise descriptor when it is used."""
        return self.backbone.embed_dim + (self.config.bottleneck_dim if self._uses_noise_descriptor() else 0)

    def _uses_noise_descriptor(self) -> bool:
        return self.config.bank_noise_weight > 0 and self.net.cdfa is not None and self.net.cdfa.noise is not None

    def retrieval_vectors(self, embeddings: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """What MFRM stores and searches: the adapted embedding, joined by the CDFA noise descriptor.

        The descriptor is the mean of the noise tokens (L2-normalised, weighted by ``bank_noise_weight``).
        Why: a random-content neighbour search is dominated by *what* an image shows; the noise
        tokens describe *how* it was made, which is what a new generator's references share.
        """
        if not self._uses_noise_descriptor() or noise is None:
            return embeddings
        descriptor = F.normalize(noise.float().mean(dim=1), dim=-1) * self.config.bank_noise_weight
        return F.normalize(torch.cat([embeddings, descriptor], dim=-1), dim=-1)

    def _modalities(self, modalities: Sequence[str | None] | None, n: int) -> list[str]:
        """The prompt modality of each image: its own if trained on, else the (trained) generic prompts.

        A modality never seen in training would get prompts whose words the model never learned to
        use (cross-modality protocol), while the generic prompts are trained on every image.
        """
        generic = self.config.generic_modality
        if modalities is None:
            return [generic] * n
        if len(modalities) != n:
            raise ValueError(f"{n} images but {len(modalities)} modalities")
        known = set(self.known_modalities)
        return [m if m and m != "unknown" and (not known or m in known) else generic for m in modalities]

    def clip_logits(self, embeddings: torch.Tensor, modalities: Sequence[str]) -> torch.Tensor:
        """Stage-1 logits ``(N, 2)`` (real, fake): logit_scale x cosine(image, class prompt of its modality)."""
        text = self.prompts.class_embeddings(list(modalities)).to(embeddings.device)
        scale = self.backbone.model.logit_scale.exp().clamp(max=100.0).float()
        return scale * torch.einsum("nd,ncd->nc", embeddings, text)

    def predict_proba(self, batch: Batch) -> np.ndarray:
        """Fake probability of each preprocessed image: stage 1 fused with the MFRM vote.

        The batch's rows select each image's class prompts (its modality); a batch without
        rows (a bare tensor) uses the generic prompts, which stage 1 trains as well.
        """
        embeddings, noise = self.encode(batch.inputs)
        stage1 = torch.softmax(self.clip_logits(embeddings, self._modalities(batch.modalities, len(batch))),
                               dim=-1)[:, 1]
        return self._fuse(stage1.detach().cpu().numpy().astype(np.float64), self.retrieval_vectors(embeddings, noise))

    def _fuse(self, stage1: np.ndarray, vectors: torch.Tensor | np.ndarray) -> np.ndarray:
        if not self.mfrm_active():
            if self.config.use_mfrm and not self._empty_bank_logged:
                log.warning("DSKI: MFRM skipped, the reference bank is empty (stage-1 scores only)")
                self._empty_bank_logged = True
            return stage1
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.detach().cpu().numpy()
        neighbours = mfrm.search(self.bank, vectors, self.config.top_k)
        return mfrm.fused_probability(stage1, neighbours, self.mfrm_weight, self.knn_temperature)

    def mfrm_active(self) -> bool:
        """Whether test-time retrieval is used: MFRM on and a non-empty bank."""
        return bool(self.config.use_mfrm and self.bank is not None and len(self.bank) > 0)

    # ------------------------------------------------------------------ stage 1: training
    def fit(self, train: ImageSet, val: ImageSet | None = None, ctx: FitContext | None = None) -> "DSKIBase":
        """Train CDFA + prompt context (stage 1), then build the MFRM bank and tune its fusion on ``val``."""
        ctx = ctx or FitContext()
        self.to(ctx.device)
        self.known_modalities = sorted({row.modality for row in train.rows})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)  # the random crops and flips of train_transform
            losses = self._train_stage1(train, ctx) if self.trainable_parameters() else []
        self.prompts.clear_cache()
        self.train_info = {"losses": losses, "train_images": len(train),
                           "trainable_parameters": sum(p.numel() for p in self.trainable_parameters()),
                           "modalities": self.known_modalities}
        if self.config.use_mfrm:
            self._build_bank(train, ctx)
            if val is not None and self.config.tune_on_val:
                self._tune_fusion(val, ctx)
        self.fitted = True
        return self

    def _train_stage1(self, train: ImageSet, ctx: FitContext) -> list[float]:
        """FatFormer's recipe (Adam, step decay) over CE on image-text logits (+ optional contrastive term).

        A loop of its own rather than ``engine.training.run_epoch``: the loss needs each image's
        modality (``batch.modalities``), and the adapters run inside the frozen backbone's forward,
        not through one module's ``forward``, so under ``torchrun`` the gradients are averaged by
        hand (the ``DistributedDataParallel`` rule) instead of by a DDP wrapper.
        """
        cfg = self.config
        params = self.trainable_parameters()
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.lr_decay_every),
                                                    gamma=cfg.lr_decay)
        batch_size = min(ctx.batch_size_for(cfg.batch_size), max(1, len(train)))
        losses = []
        self.net.train()
        try:
            for epoch in range(ctx.epochs_for(cfg.epochs)):
                loader = ctx.loader(train, self.train_transform, batch_size, shuffle=True,
                                    drop_last=len(train) > batch_size, epoch_offset=epoch)
                losses.append(self._train_epoch(loader, optimizer, ctx, epoch))
                scheduler.step()
                if ctx.out_of_time():
                    log.warning("DSKI: time budget spent after epoch %d", epoch + 1)
                    break
        finally:
            self.net.eval()
            self.prompts.clear_cache()
        return losses

    def _train_epoch(self, loader, optimizer, ctx: FitContext, epoch: int) -> float:
        total, count = 0.0, 0
        for batch in ctx.track(loader, len(loader), f"dski epoch {epoch + 1}"):
            with ctx.autocast():
                loss = self.stage1_loss(batch.inputs, batch.labels, batch.modalities)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if ctx.distributed:
                average_gradients(optimizer, ctx.world_size)
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        return total / max(count, 1)

    def stage1_loss(self, inputs: torch.Tensor, labels: torch.Tensor, modalities: Sequence[str]) -> torch.Tensor:
        """CE over image-text logits for the images' modalities and for the generic prompts, + contrastive."""
        cfg = self.config
        labels = labels.to(self.device).long()
        embeddings = self.embed(inputs)
        loss = F.cross_entropy(self.clip_logits(embeddings, self._modalities(modalities, len(labels))), labels)
        if cfg.generic_loss_weight > 0:
            generic = self.clip_logits(embeddings, self._modalities(None, len(labels)))
            loss = loss + cfg.generic_loss_weight * F.cross_entropy(generic, labels)
        if cfg.contrastive_weight > 0:
            loss = loss + cfg.contrastive_weight * supervised_contrastive(embeddings, labels,
                                                                          cfg.contrastive_temperature)
        return loss

    # ------------------------------------------------------------------ stage 2: MFRM bank
    def bank_info(self) -> dict[str, Any]:
        """What produced the bank's vectors; a bank is only used by a model with the same info."""
        return {"backbone": self.backbone.key(), "preset": self.preset, "adapters": self.adapter_digest()}

    def adapter_digest(self) -> str:
        """A short hash of the image-side adapters (the bank's embeddings depend on them)."""
        if self.net.cdfa is None:
            return "none"
        digest = hashlib.sha256()
        for key, value in sorted(self.net.cdfa.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def _new_bank(self) -> Retriever:
        return mfrm.new_bank(self.config.retriever, self.bank_dim(), self.bank_info())

    def _build_bank(self, train: ImageSet, ctx: FitContext) -> None:
        chosen = mfrm.support_indices(train.rows, self.config.bank_shots, ctx.rng(offset=101))
        support = train.subset(chosen)
        self.bank = self._new_bank()
        embeddings, _ = self.embed_imageset(support, ctx)
        self.bank.add(embeddings, support.labels, [_row_meta(r) for r in support.rows])
        self._empty_bank_logged = False

    def _tune_fusion(self, val: ImageSet, ctx: FitContext) -> None:
        if len(val) == 0 or not self.mfrm_active():
            return
        embeddings, stage1 = self.embed_imageset(val, ctx)
        neighbours = mfrm.search(self.bank, embeddings, self.config.top_k)
        best = mfrm.tune_fusion(stage1, neighbours, val.labels, self.config.weight_grid,
                                self.config.temperature_grid, (self.mfrm_weight, self.knn_temperature))
        if best is not None:
            self.mfrm_weight, self.knn_temperature, auc = best
            self.train_info["mfrm_tuning"] = {"weight": self.mfrm_weight, "temperature": self.knn_temperature,
                                              "val_auc": auc}

    @torch.no_grad()
    def embed_imageset(self, images: ImageSet, ctx: FitContext | None = None) -> tuple[np.ndarray, np.ndarray]:
        """MFRM vectors ``(n, bank_dim)`` and stage-1 fake probabilities ``(n,)`` with each row's modality.

        Under ``torchrun`` each rank embeds its shard and the shards are gathered (every rank gets all rows).
        """
        ctx = ctx or FitContext(device=self.device)
        loader = ctx.loader(images, self.preprocess, EVAL_BATCH, shuffle=False)
        features, probs, seen = [], [], []
        for batch in loader:
            embeddings, noise = self.encode(batch.inputs)
            logits = self.clip_logits(embeddings, self._modalities(batch.modalities, len(batch)))
            probs.append(torch.softmax(logits, -1)[:, 1].float().cpu())
            features.append(self.retrieval_vectors(embeddings, noise).float().cpu())
            seen.append(batch.indices.numpy())
        if not features:
            return np.zeros((0, self.bank_dim()), np.float32), np.zeros(0)
        index = np.concatenate(seen)
        vectors = gather_tensor_rows(torch.cat(features), index, len(images), ctx.world_size)
        stage1 = gather_tensor_rows(torch.cat(probs), index, len(images), ctx.world_size)
        return vectors.numpy(), stage1.numpy().astype(np.float64)

    def check_modalities(self, modalities: Sequence[str]) -> None:
        """Refuse, in one line naming the known ones, modalities this model was not trained on."""
        unknown = sorted(set(modalities) - set(self.known_modalities))
        if unknown and self.known_modalities:
            raise MfxError(f"modality {', '.join(map(repr, unknown))} is unknown to this model; "
                           f"known modalities: {', '.join(self.known_modalities)}")

    def attach_bank(self, bank: Retriever) -> None:
        """Use ``bank`` (e.g. ``Retriever.load(path)``) as the MFRM bank; a bank of another model is refused."""
        check_compatible(bank, self.bank_info())
        self.bank = bank
        self._empty_bank_logged = False

    # ------------------------------------------------------------------ reporting
    def weights_info(self) -> str:
        parts = []
        if self.net.cdfa is not None:
            parts.append("CDFA adapters" + (" with noise branch" if self.net.cdfa.noise is not None else ""))
        if self.net.context is not None:
            parts.append(f"{self.config.n_ctx} prompt context tokens")
        trained = " + ".join(parts) if parts else "nothing (fixed prompts)"
        return f"{self.backbone.weights_info}; trained by mfx: {trained}"

    def warnings(self) -> list[str]:
        notes = []
        if self.backbone.is_random:
            notes.append(f"DSKI backbone {self.config.clip_model} is randomly initialised, NOT pretrained CLIP: "
                         f"scores test the pipeline, not DSKI's published accuracy")
        if self.config.use_mfrm and not self.mfrm_active():
            notes.append("DSKI: MFRM skipped, the reference bank is empty (stage-1 scores only)")
        return notes

    # ------------------------------------------------------------------ persistence
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().state_tensors(), **bank_state(self.bank)[0]}

    def extra_state(self) -> dict[str, Any]:
        return {"backbone": self.backbone.key(), "known_modalities": self.known_modalities,
                "mfrm_weight": self.mfrm_weight, "knn_temperature": self.knn_temperature,
                "bank": bank_state(self.bank)[1]}

    def load_state(self, tensors: Mapping[str, torch.Tensor], extra: Mapping[str, Any],
                   source: str = "checkpoint") -> None:
        """Adapters, prompt context, fusion settings and the MFRM bank, in one call."""
        saved = extra.get("backbone")
        if saved is not None and saved != self.backbone.key():
            raise CheckpointError(f"{source}: checkpoint trained on backbone {saved!r}, but this config builds "
                                  f"{self.backbone.key()!r}")
        self.known_modalities = list(extra.get("known_modalities", []))
        self.mfrm_weight = float(extra.get("mfrm_weight", self.config.mfrm_weight))
        self.knn_temperature = float(extra.get("knn_temperature", self.config.knn_temperature))
        bank_tensors, model_tensors = split_bank_tensors(tensors)
        self.load_module_tensors(model_tensors, source)
        self.prompts.clear_cache()
        self.bank = restore_bank(bank_tensors, extra.get("bank"), self.bank_info(), source)
        self._empty_bank_logged = False


def _row_meta(row: Any) -> dict[str, Any]:
    return {"label": int(row.label), "modality": row.modality, "generator": row.generator,
            "source": row.source, "path": row.path}


def supervised_contrastive(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon (Khosla et al. 2020) on unit embeddings: pull same-label images together, push others apart."""
    n = len(labels)
    if n < 2:
        return embeddings.sum() * 0.0
    similarities = embeddings @ embeddings.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    similarities = similarities.masked_fill(self_mask, float("-inf"))
    log_prob = similarities - torch.logsumexp(similarities, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positives.sum(1)
    has_positive = counts > 0
    if not bool(has_positive.any()):
        return embeddings.sum() * 0.0
    summed = log_prob.masked_fill(~positives, 0.0).sum(1)
    return -(summed[has_positive] / counts[has_positive]).mean()


class DSKIDetector(DSKIBase, ReferenceBank):
    """DSKI (MICCAI 2025) as built in mfx: see :class:`~mfx_dski.config.DSKIConfig` for every choice."""

    name: ClassVar[str] = "dski"
    description: ClassVar[str] = ("DSKI: frozen CLIP + CDFA noise-aware adapters (training) + MFRM retrieval "
                                  "bank (testing)")

    @torch.no_grad()
    def add_references(self, images: Sequence[torch.Tensor] | torch.Tensor, labels: Sequence[int],
                       modalities: Sequence[str], generators: Sequence[str],
                       sources: Sequence[str] | None = None) -> int:
        """Add labelled reference images (raw ``(3, H, W)`` in [0, 1]) to the MFRM bank, without retraining.

        Returns the bank size. A modality the model was not trained on is refused (its prompts and
        adapters have never seen it), as is a model trained without MFRM.
        """
        n = len(images)
        if not (len(labels) == len(modalities) == len(generators) == n):
            raise ValueError(f"{n} images but {len(labels)} labels, {len(modalities)} modalities, "
                             f"{len(generators)} generators")
        self.check_modalities(modalities)
        if not self.config.use_mfrm:
            raise MfxError(f"detector {self.name!r} was trained without MFRM: it has no reference bank")
        if any(int(label) not in (0, 1) for label in labels):
            raise MfxError("reference labels must be 0 (real) or 1 (fake)")
        if self.bank is None:
            self.bank = self._new_bank()
        sources = sources if sources is not None else [""] * n
        for start in range(0, n, EVAL_BATCH):
            stop = min(n, start + EVAL_BATCH)
            batch = torch.stack([self.preprocess(images[i]) for i in range(start, stop)])
            meta = [{"label": int(labels[i]), "modality": modalities[i], "generator": generators[i],
                     "source": sources[i], "added": "reference"} for i in range(start, stop)]
            vectors = self.retrieval_vectors(*self.encode(batch))
            self.bank.add(vectors.cpu().numpy(), [int(x) for x in labels[start:stop]], meta)
        self._empty_bank_logged = False
        return len(self.bank)

    def check_reference_modalities(self, modalities: Sequence[str]) -> None:
        self.check_modalities(modalities)


# ---------------------------------------------------------------------- ablations


@dataclasses.dataclass
class DSKINoNoiseConfig(DSKIConfig):
    """DSKI without the CDFA noise branch (spatial adapters only)."""

    use_noise: bool = False


@dataclasses.dataclass
class DSKINoCDFAConfig(DSKIConfig):
    """DSKI without CDFA: frozen CLIP, (learnable) prompts and MFRM."""

    use_cdfa: bool = False


@dataclasses.dataclass
class DSKINoMFRMConfig(DSKIConfig):
    """DSKI without MFRM: stage-1 scores only."""

    use_mfrm: bool = False


class DSKINoNoise(DSKIDetector):
    name: ClassVar[str] = "dski-no-noise"
    description: ClassVar[str] = "DSKI ablation: CDFA without its noise branch (spatial adapters + MFRM)"
    config_class: ClassVar[type] = DSKINoNoiseConfig


class DSKINoCDFA(DSKIDetector):
    name: ClassVar[str] = "dski-no-cdfa"
    description: ClassVar[str] = "DSKI ablation: frozen CLIP + prompts + MFRM, no adapters"
    config_class: ClassVar[type] = DSKINoCDFAConfig


class DSKINoMFRM(DSKIBase):
    name: ClassVar[str] = "dski-no-mfrm"
    description: ClassVar[str] = "DSKI ablation: CDFA only, no retrieval at test time"
    config_class: ClassVar[type] = DSKINoMFRMConfig


DETECTORS = (DSKIDetector, DSKINoNoise, DSKINoCDFA, DSKINoMFRM)
