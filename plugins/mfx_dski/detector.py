"""The ``dski`` detector: frozen CLIP + CDFA (stage 1, trained) + MFRM (stage 2, test time).

Stage 1 trains only the CDFA adapters (with their noise branch) and the prompt
context against cross-entropy over image-text logits (:mod:`.training`); the
CLIP backbone stays frozen and is rebuilt from its name, weights and seed, so a
checkpoint holds just the adapters, the context and the MFRM bank. Stage 2
needs no training: the adapted embeddings of labelled references go into a
retriever and a test image's neighbours add evidence (:mod:`.bank`,
:mod:`.mfrm`); references of both classes can be added later
(:meth:`DSKIDetector.add_references`, ``mfx index add``) to adapt to a new
generator or scanner without retraining. The ablations are in :mod:`.ablations`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import Counter
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medforensics_core.backbones import ClipBackbone, load_clip
from medforensics_core.contract import Batch, ReferenceBank, SupportsDistributed
from medforensics_core.data.dataset import ImageSet
from medforensics_core.engine.augment import (SelfBlendRecipe, TraceAugment, TraceRecipe, resize_shorter,
                                              train_geometry, with_self_blends)
from medforensics_core.engine.context import FitContext
from medforensics_core.errors import ConfigError, MfxError
from medforensics_core.toolkit import check_backbone
from medforensics_core.interfaces import Detector, Retriever
from medforensics_core.lazy import lazy_module
from medforensics_core.plugins import get_registry
from medforensics_core.seeding import rank_seed
from medforensics_core.retrieval import bank_state, check_compatible, new_bank, restore_bank, split_bank_tensors

from . import bank as mfrm_bank
from . import mfrm, training
from .cdfa import CDFA, evenly_spaced_blocks
from .config import PRESETS, DSKIConfig
from .inconsistency import RealReference, smoothest_cell_deviation
from .model import (CacheBudget, CellStats, DSKIModules, GridViews, NoiseMaps, check_extractors, descriptor,
                    mean_over_views, noise_channel_count, pixel_digest, reset_parameters, split_channels)
from .prompts import PromptContext, PromptEncoder

v2 = lazy_module("torchvision.transforms.v2")

log = logging.getLogger(__name__)

EVAL_BATCH = mfrm_bank.EVAL_BATCH


@dataclasses.dataclass
class Encoded:
    """What one forward pass gives: adapted embeddings ``(N, d)``, and retrieval descriptors ``(N, C)`` and raw
    local-inconsistency scores ``(N,)`` (these two ``None`` when not used)."""

    embeddings: torch.Tensor
    descriptors: torch.Tensor | None
    inconsistency: torch.Tensor | None


class DSKIBase(Detector, SupportsDistributed):
    """Everything of DSKI but the few-shot reference API (see :class:`DSKIDetector`); not registered.

    ``dski-no-mfrm`` derives from this class, not from ``dski``, so that it does not declare ReferenceBank:
    the engine's few-shot protocol offers references only to detectors that have that method.
    """

    config_class: ClassVar[type] = DSKIConfig
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = PRESETS

    def __init__(self, config: Any = None, *, preset: str | None = None, device: str | torch.device = "cpu"):
        super().__init__(config, preset=preset, device=device)
        cfg = self.config
        self.backbone: ClipBackbone = load_clip(cfg.clip_model, cfg.pretrained, device="cpu",
                                                seed=cfg.backbone_seed)
        self._cache_budget = CacheBudget(int(cfg.noise_cache_mb * 2**20))  # one budget for both kinds of map
        self.noise_maps = self._build_noise_maps()
        self.trace_maps = self._build_trace_maps()
        self.cell_stats = self._build_cell_stats()
        self.net = DSKIModules(self._build_cdfa(), self._build_context())
        reset_parameters(self.net, cfg.backbone_seed)
        self.net.eval()  # training mode (noise-branch dropout) only inside the stage-1 loop
        self.prompts = PromptEncoder(self.backbone.model, self.backbone.tokenizer, cfg.real_templates,
                                     cfg.fake_templates, self.net.context)
        self.bank: Retriever | None = None
        self.known_modalities: list[str] = []
        self.fusion = self.default_fusion()
        self.inconsistency_reference: RealReference | None = None
        self._empty_bank_logged = False
        size = self.backbone.image_size
        self._mean = torch.tensor(self.backbone.mean).view(-1, 1, 1)
        self._std = torch.tensor(self.backbone.std).view(-1, 1, 1)
        self._test_geometry = GridViews(size, cfg.eval_views)
        self._train_geometry = train_geometry(size, flip=True)
        self._upscale = resize_shorter(size)
        self._augment = TraceAugment(TraceRecipe(blur_prob=cfg.aug_blur_prob, resample_prob=cfg.aug_resample_prob,
                                                 jpeg_prob=cfg.aug_jpeg_prob, noise_prob=cfg.aug_noise_prob))
        self.to(device)

    # ------------------------------------------------------------------ construction
    def _needs_noise_maps(self) -> bool:
        cfg = self.config
        return (cfg.use_cdfa and cfg.use_noise) or (cfg.use_mfrm and (cfg.use_descriptor or cfg.use_inconsistency))

    def _build_noise_maps(self) -> NoiseMaps | None:
        if not self._needs_noise_maps():
            return None
        check_extractors(self.config.noise_extractors)
        registry = get_registry()
        return NoiseMaps({name: registry.noise_extractor(name)() for name in self.config.noise_extractors},
                         budget=self._cache_budget)

    def _build_trace_maps(self) -> NoiseMaps | None:
        """The full-resolution trace map of the noise branch's convolution (``trace_extractor``), or None."""
        cfg = self.config
        if not (cfg.trace_extractor and cfg.use_cdfa and cfg.use_noise):
            return None
        extractor = get_registry().noise_extractor(cfg.trace_extractor)()
        return NoiseMaps({cfg.trace_extractor: extractor}, budget=self._cache_budget)

    def _build_cell_stats(self) -> CellStats | None:
        if self.noise_maps is None:
            return None
        grid = getattr(self.backbone.model.visual, "grid_size", None) or (1, 1)  # a tower without a patch grid
        return CellStats(self.noise_maps.channels, grid, self.backbone.image_size)

    def default_fusion(self) -> mfrm.Fusion:
        """The fusion of the config (before, or without, tuning)."""
        cfg = self.config
        return mfrm.Fusion(cfg.mfrm_alpha, cfg.mfrm_beta, cfg.descriptor_weight if cfg.use_descriptor else 0.0,
                           cfg.inconsistency_weight if self.uses_inconsistency() else 0.0)

    def _stat_channels(self) -> int:
        """Channels per view that carry the packed per-cell statistics (0 without noise maps)."""
        return self.cell_stats.packed_channels if self.cell_stats is not None else 0

    def _trace_channels(self) -> int:
        """Channels per view that carry the full-resolution trace map (0 without ``trace_extractor``)."""
        return noise_channel_count(self.trace_maps)

    def _build_cdfa(self) -> CDFA | None:
        cfg = self.config
        if not cfg.use_cdfa:
            return None
        visual = self.backbone.model.visual
        depth = len(visual.transformer.resblocks)
        blocks = tuple(cfg.adapter_blocks) or evenly_spaced_blocks(depth, cfg.num_adapters)
        channels = noise_channel_count(self.noise_maps) if cfg.use_noise else 0
        return CDFA(visual, blocks, cfg.bottleneck_dim, cfg.adapter_scale, channels, cfg.noise_heads,
                    cfg.noise_dropout, self._trace_channels() if channels else 0, cfg.trace_channels)

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
        """Noise statistics at native resolution, then centre crop (``crop``) or resize, CLIP normalisation.

        Returns ``V (3 + P + T)`` channels: per view, the CLIP input, then the ``C`` noise statistics averaged over
        each cell of the token grid and packed into ``P`` channels (:class:`CellStats`; none when neither the noise
        branch nor the retrieval descriptor is used), then the ``T`` channels of the trace map at full
        resolution (only with ``trace_extractor``).
        """
        return self._prepare(image, self._test_geometry)

    def train_transform(self, image: torch.Tensor) -> torch.Tensor:
        """Trace augmentation (both classes), noise statistics, random crop at native resolution and flip."""
        augmented = self._augment(image)
        return self._prepare(augmented, self._train_geometry, keep_maps=augmented is image)

    def _prepare(self, image: torch.Tensor, geometry, keep_maps: bool = True) -> torch.Tensor:
        found = [maps for maps in (self.noise_maps, self.trace_maps) if maps is not None]
        key = pixel_digest(image) if keep_maps and any(maps.caches(image) for maps in found) else None
        parts = [image] + [maps.image_maps(image, keep=keep_maps, key=key) for maps in found]
        packed = geometry(self._fit_size(torch.cat(parts)))
        stats_end = 3 + noise_channel_count(self.noise_maps)
        views = packed.reshape(-1, stats_end + self._trace_channels(), *packed.shape[-2:])
        colour = (views[:, :3] - self._mean) / self._std
        if self.cell_stats is None:
            return colour.flatten(0, 1)
        return torch.cat([colour, self.cell_stats.pack(views[:, 3:stats_end]), views[:, stats_end:]],
                         dim=1).flatten(0, 1)

    def _fit_size(self, image: torch.Tensor) -> torch.Tensor:
        size = self.backbone.image_size
        if self.config.preprocess_mode == "resize":
            return v2.functional.resize(image, [size, size], antialias=True)
        if self.config.preprocess_mode != "crop":
            raise ConfigError(f"preprocess_mode must be 'crop' or 'resize', not {self.config.preprocess_mode!r}")
        return self._upscale(image) if min(image.shape[-2:]) < size else image

    # ------------------------------------------------------------------ forward
    def encode(self, batch: torch.Tensor, with_descriptor: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Adapted, L2-normalised image embeddings ``(N, d)`` and retrieval descriptors ``(N, C)`` (or ``None``).

        ``with_descriptor=False`` skips the descriptor (``None``): training and :meth:`embed` never use it.
        """
        encoded = self.encode_all(batch, with_extras=with_descriptor)
        return encoded.embeddings, encoded.descriptors

    def encode_all(self, batch: torch.Tensor, with_extras: bool = True) -> Encoded:
        """:meth:`encode` plus the raw local-inconsistency score of each image (``with_extras=False``: neither)."""
        from .cdfa import adapted_image_features

        images, extra, views = split_channels(batch.to(self.device), self._stat_channels() + self._trace_channels())
        packed, trace = (extra[:, :self._stat_channels()], extra[:, self._stat_channels():]) if extra is not None \
            else (None, None)
        stats = self.cell_stats.unpack(packed) if packed is not None else None
        noise_stats = stats if self.net.cdfa is not None and self.net.cdfa.noise is not None else None
        features = adapted_image_features(self.backbone.model.visual, images, self.net.cdfa, noise_stats,
                                          trace if self.trace_maps is not None else None)
        features = mean_over_views(F.normalize(features.float(), dim=-1), views)
        desc = local = None
        if with_extras and self.uses_descriptor() and stats is not None:
            desc = descriptor(mean_over_views(stats, views), self.noise_maps.reference())
        if with_extras and self.uses_inconsistency() and stats is not None:
            local = smoothest_cell_deviation(stats, views, self.noise_maps.energy_channels())
        return Encoded(F.normalize(features, dim=-1), desc, local)

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """Adapted, L2-normalised image embeddings ``(N, d)`` of a preprocessed batch (no retrieval descriptor)."""
        return self.encode(batch, with_descriptor=False)[0]

    def uses_descriptor(self) -> bool:
        return bool(self.config.use_mfrm and self.config.use_descriptor and self.noise_maps is not None)

    def uses_inconsistency(self) -> bool:
        """Whether the fusion may add the local-inconsistency score (MFRM on, energy statistics computed)."""
        return bool(self.config.use_mfrm and self.config.use_inconsistency and self.noise_maps is not None
                    and self.noise_maps.energy_channels())

    def inconsistency_z(self, raw: np.ndarray | torch.Tensor | None,
                        modalities: Sequence[str] | None) -> np.ndarray | None:
        """Raw scores standardised against the training reals of each image's modality (``None``: not fitted)."""
        if raw is None or self.inconsistency_reference is None:
            return None
        values = raw.detach().float().cpu().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
        return self.inconsistency_reference.standardise(values, modalities)

    def bank_dim(self) -> int:
        """Length of the MFRM vectors: the embedding, plus the noise descriptor when it is used."""
        extra = noise_channel_count(self.noise_maps) if self.uses_descriptor() and self.fusion.descriptor_weight > 0 \
            else 0
        return self.backbone.embed_dim + extra

    def retrieval_vectors(self, embeddings: torch.Tensor, desc: torch.Tensor | None) -> torch.Tensor:
        """What MFRM stores and searches: the embedding joined by the weighted noise descriptor, L2-normalised."""
        weight = self.fusion.descriptor_weight
        if desc is None or weight <= 0:
            return embeddings
        return F.normalize(torch.cat([embeddings, weight * desc.to(embeddings.dtype)], dim=-1), dim=-1)

    def prompt_modalities(self, modalities: Sequence[str | None] | None, n: int) -> list[str]:
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

    def stage1_probability(self, embeddings: torch.Tensor, modalities: Sequence[str] | None) -> np.ndarray:
        logits = self.clip_logits(embeddings, self.prompt_modalities(modalities, len(embeddings)))
        return torch.softmax(logits, dim=-1)[:, 1].detach().float().cpu().numpy().astype(np.float64)

    def stage_scores(self, batch: torch.Tensor, modalities: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Each stage's score: ``stage1`` probability, ``retrieval`` evidence ``F - R`` (0 without a bank), ``fused``.

        With a fitted local-inconsistency score also ``inconsistency`` (its standardised value) and
        ``fused_without_inconsistency``. The engine reports each one's AUC (``stage1_auc``, ``retrieval_auc``,
        ``fused_auc``, ...), so a comparison shows which stage carries (or loses) a held-out generator.
        """
        encoded = self.encode_all(batch)
        stage1 = self.stage1_probability(encoded.embeddings, modalities)
        if not self.mfrm_active():
            return {"stage1": stage1, "retrieval": np.zeros_like(stage1), "fused": stage1}
        neighbours = self._search(self.retrieval_vectors(encoded.embeddings, encoded.descriptors), modalities)
        scores = {"stage1": stage1, "retrieval": mfrm.evidence(neighbours, self.fusion.beta),
                  "fused": mfrm.fused_probability(stage1, neighbours, self.fusion.alpha, self.fusion.beta)}
        z = self.inconsistency_z(encoded.inconsistency, modalities)
        if z is not None:
            scores["inconsistency"] = z
            scores["fused_without_inconsistency"] = scores["fused"]
            scores["fused"] = mfrm.fused_probability(stage1, neighbours, self.fusion.alpha, self.fusion.beta,
                                                     self.fusion.inconsistency_weight * z)
        return scores

    def predict_proba(self, batch: Batch) -> np.ndarray:
        """Fake probability of each preprocessed image: stage 1 fused with the MFRM evidence.

        The batch's rows give each image's modality, which selects its class prompts (and, with
        ``same_modality``, its references); a batch without rows (a bare tensor) uses the generic
        prompts, which stage 1 trains as well.
        """
        if not self.mfrm_active() and self.config.use_mfrm and not self._empty_bank_logged:
            log.warning("DSKI: MFRM skipped, the reference bank is empty (stage-1 scores only)")
            self._empty_bank_logged = True
        return self.stage_scores(batch.inputs, batch.modalities)["fused"]

    def _search(self, vectors: torch.Tensor, modalities: Sequence[str] | None) -> mfrm.Neighbours:
        restrict = list(modalities) if self.config.same_modality and modalities is not None else None
        return mfrm.search(self.bank, vectors.detach().float().cpu().numpy(), self.config.top_k, restrict)

    def mfrm_active(self) -> bool:
        """Whether test-time retrieval is used: MFRM on and a non-empty bank."""
        return bool(self.config.use_mfrm and self.bank is not None and len(self.bank) > 0)

    def reset_bank_warning(self) -> None:
        self._empty_bank_logged = False

    # ------------------------------------------------------------------ stage 1 + tuning
    def fit(self, train: ImageSet, val: ImageSet | None = None, ctx: FitContext | None = None) -> "DSKIBase":
        """Train CDFA + prompt context (stage 1) on all but a held-out generator, tune MFRM on it, build the bank."""
        ctx = ctx or FitContext()
        self.to(ctx.device)
        reset_parameters(self.net, ctx.seed, ctx.rank)
        self.net.to(self.device)
        self.known_modalities = sorted({row.modality for row in train.rows})
        self.fusion, self.inconsistency_reference = self.default_fusion(), None
        rest, holdout, how = training.tuning_split(self, train, val, ctx.seed)
        with torch.random.fork_rng(devices=[]):
            # the random crops, flips and trace augmentation of train_transform: each rank its own draws
            torch.manual_seed(rank_seed(ctx.seed, ctx.rank))
            stage1_set = with_self_blends(rest, self.config.self_blend_share, SelfBlendRecipe(), ctx.seed)
            info = training.train_stage1(self, stage1_set, holdout, ctx) if self.trainable_parameters() \
                else {"losses": []}
        self.prompts.clear_cache()
        self.train_info = {**info, "train_images": len(train), "tuning": how,
                           "self_blended_fakes": len(stage1_set) - len(rest),
                           "tuning_images": len(holdout) if holdout is not None else 0,
                           "trainable_params": sum(p.numel() for p in self.trainable_parameters()),
                           "modalities": self.known_modalities}
        if self.config.use_mfrm:
            self._build_and_tune_bank(rest, holdout, ctx)
        self.fitted = True
        return self

    def stage1_auc(self, images: ImageSet, ctx: FitContext) -> float | None:
        """Stage-1 AUC on a labelled set (the best-epoch criterion)."""
        embedded = mfrm_bank.embed_imageset(self, images, ctx)
        return mfrm.auc_or_none(embedded.labels, embedded.stage1)

    def _build_and_tune_bank(self, rest: ImageSet, holdout: ImageSet | None, ctx: FitContext) -> None:
        """Tune the fusion on the hold-out against a bank of the rest (unless no fusion beats chance there: then the
        default stays), then bank the training images: ``bank_shots`` per (label, modality, generator) over the rest
        and the hold-out together. The engine's validation split (``tune_holdout="val"``) stays out of the
        bank: the engine fixes the decision threshold on it next, and a bank holding those very images would
        vote for each one's own label (affinity 1 to itself) and make the threshold look better than it is."""
        chosen = mfrm.support_indices(rest.rows, self.config.bank_shots, ctx.rng(offset=101))
        support_set = rest.subset(chosen)
        support = mfrm_bank.embed_imageset(self, support_set, ctx)
        if support.inconsistency is not None:
            self.inconsistency_reference = RealReference.fit(support.inconsistency, support.labels, support.modalities)
        parts, rows = [support], [mfrm_bank.row_meta(r) for r in support_set.rows]
        if holdout is not None and len(support.labels):
            held = mfrm_bank.embed_imageset(self, holdout, ctx)
            self.train_info["holdout"] = mfrm_bank.tune(self, held, support)
            if self.config.tune_holdout != "val":
                already = Counter(mfrm.bank_group(r) for r in support_set.rows)
                banked = mfrm.support_indices(holdout.rows, self.config.bank_shots, ctx.rng(offset=102), already)
                parts.append(held.subset(banked))
                rows += [mfrm_bank.row_meta(holdout.rows[i]) for i in banked]
        mfrm_bank.build(self, mfrm_bank.concat(parts), rows)

    # ------------------------------------------------------------------ stage 2: MFRM bank
    def bank_info(self) -> dict[str, Any]:
        """What produced the bank's vectors; a bank is only used by a model with the same info."""
        return {"backbone": self.backbone.key(), "preset": self.preset, "adapters": self.adapter_digest(),
                "descriptor_weight": self.fusion.descriptor_weight}

    def adapter_digest(self) -> str:
        """A short hash of the image-side adapters (the bank's embeddings depend on them)."""
        if self.net.cdfa is None:
            return "none"
        digest = hashlib.sha256()
        for key, value in sorted(self.net.cdfa.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def new_bank(self) -> Retriever:
        return new_bank(self.config.retriever, self.bank_dim(), self.bank_info())

    def embed_imageset(self, images: ImageSet, ctx: FitContext | None = None) -> tuple[np.ndarray, np.ndarray]:
        """MFRM vectors ``(n, bank_dim)`` and stage-1 fake probabilities ``(n,)`` with each row's modality."""
        embedded = mfrm_bank.embed_imageset(self, images, ctx)
        return embedded.vectors(self.fusion.descriptor_weight), embedded.stage1

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
        if self.train_info.get("stopped_by_budget"):
            notes.append(f"DSKI: the time budget stopped training after {self.train_info.get('epochs_trained')} of "
                         f"{self.train_info.get('epochs_planned')} epochs; ablations trained for different lengths "
                         f"cannot be compared (use --epochs, not --budget-minutes)")
        return notes

    # ------------------------------------------------------------------ persistence
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().state_tensors(), **bank_state(self.bank)[0]}

    def extra_state(self) -> dict[str, Any]:
        return {"backbone": self.backbone.key(), "known_modalities": self.known_modalities,
                "fusion": dataclasses.asdict(self.fusion), "bank": bank_state(self.bank)[1],
                "inconsistency_reference": self.inconsistency_reference.state() if self.inconsistency_reference
                else None}

    def load_state(self, tensors: Mapping[str, torch.Tensor], extra: Mapping[str, Any],
                   source: str = "checkpoint") -> None:
        """Adapters, prompt context, fusion settings and the MFRM bank, in one call."""
        check_backbone(extra, self.backbone, self.name, source)
        self.known_modalities = list(extra.get("known_modalities", []))
        fusion = extra.get("fusion")
        if fusion is not None:
            self.fusion = mfrm.Fusion(float(fusion["alpha"]), float(fusion["beta"]),
                                      float(fusion["descriptor_weight"]), float(fusion.get("inconsistency_weight", 0)))
        self.inconsistency_reference = RealReference.from_state(extra.get("inconsistency_reference"))
        bank_tensors, model_tensors = split_bank_tensors(tensors)
        self.load_module_tensors(model_tensors, source)
        self.prompts.clear_cache()
        self.bank = restore_bank(bank_tensors, extra.get("bank"), self.bank_info(), source)
        self._empty_bank_logged = False


class DSKIDetector(DSKIBase, ReferenceBank):
    """DSKI (MICCAI 2025) as built in mfx: see :class:`~mfx_dski.config.DSKIConfig` for every choice."""

    name: ClassVar[str] = "dski"
    description: ClassVar[str] = ("DSKI: frozen CLIP + CDFA noise-aware adapters (training) + MFRM retrieval "
                                  "bank (testing)")

    @torch.no_grad()
    def add_references(self, images: Sequence[torch.Tensor] | torch.Tensor, labels: Sequence[int],
                       modalities: Sequence[str], generators: Sequence[str],
                       sources: Sequence[str] | None = None) -> int:
        """Add labelled reference images (raw ``(3, H, W)`` in [0, 1]) of either class to the bank, no retraining.

        Reals count as much as fakes: reals of a new scanner keep its images from being voted fake
        by the new generator's references. Returns the bank size. A modality the model was not
        trained on is refused (its prompts and adapters have never seen it), as is a model
        trained without MFRM.
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
            self.bank = self.new_bank()
        sources = sources if sources is not None else [""] * n
        for start in range(0, n, EVAL_BATCH):
            stop = min(n, start + EVAL_BATCH)
            batch = torch.stack([self.preprocess(images[i]) for i in range(start, stop)])
            meta = [{"label": int(labels[i]), "modality": modalities[i], "generator": generators[i],
                     "source": sources[i], "added": "reference"} for i in range(start, stop)]
            vectors = self.retrieval_vectors(*self.encode(batch))
            self.bank.add(vectors.float().cpu().numpy(), [int(x) for x in labels[start:stop]], meta)
        self._empty_bank_logged = False
        return len(self.bank)

    def check_reference_modalities(self, modalities: Sequence[str]) -> None:
        self.check_modalities(modalities)
