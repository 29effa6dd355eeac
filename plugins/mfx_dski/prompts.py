"""Class prompts per modality, with optional CoOp-style learnable context, on open_clip's text tower.

Each (modality, class) pair gets several templates ("a real CT image.", ...);
their normalised text embeddings are averaged (CLIP's prompt ensembling). With
``n_ctx > 0`` every prompt starts with ``n_ctx`` learnable token embeddings
(CoOp), shared by all classes and modalities, so that the only trainable text
parameters are ``n_ctx x width`` numbers and the frozen text tower still
carries the meaning of the words that follow.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medforensics_core.errors import ConfigError

# How a manifest's modality key is said in a prompt (unknown keys are used as written).
MODALITY_PHRASES = {
    "ct": "CT",
    "mr": "MR",
    "mri": "MRI",
    "xray": "X-ray",
    "x-ray": "X-ray",
    "cxr": "chest X-ray",
    "us": "ultrasound",
    "nm": "nuclear medicine",
    "pet": "PET",
}

CLASS_NAMES = ("real", "fake")
PLACEHOLDER = "X"


def modality_phrase(modality: str) -> str:
    """The words that stand for ``modality`` in a prompt ("xray" -> "X-ray", "skin_lesion" -> "skin lesion")."""
    key = modality.strip().lower()
    return MODALITY_PHRASES.get(key, key.replace("_", " ").replace("-", " "))


class PromptContext(nn.Module):
    """The learnable CoOp context: ``n_ctx`` token embeddings (initialised N(0, 0.02) as in CoOp)."""

    def __init__(self, n_ctx: int, width: int):
        super().__init__()
        self.vectors = nn.Parameter(torch.randn(n_ctx, width) * 0.02)

    @property
    def n_ctx(self) -> int:
        return self.vectors.shape[0]


class PromptEncoder:
    """Turns modalities into class text embeddings ``(2, d)`` (row 0 real, row 1 fake), L2-normalised.

    Holds no parameters itself (the context lives in :class:`PromptContext`, which
    the detector saves); caches the embeddings while no gradient is needed.
    """

    def __init__(self, clip_model: Any, tokenizer: Any, real_templates: Sequence[str],
                 fake_templates: Sequence[str], context: PromptContext | None):
        if context is not None and not hasattr(clip_model, "token_embedding"):
            raise ConfigError(f"n_ctx > 0 needs an open_clip model with its own token embedding "
                              f"({type(clip_model).__name__} has none); set n_ctx=0")
        self.model = clip_model
        self.tokenizer = tokenizer
        self.templates = (tuple(real_templates), tuple(fake_templates))
        self.context = context
        self._cache: dict[str, torch.Tensor] = {}

    def clear_cache(self) -> None:
        """Forget cached embeddings (after a training step or loading new context vectors)."""
        self._cache.clear()

    def prompts(self, modality: str) -> list[str]:
        """All prompt strings for ``modality``, real templates first."""
        phrase = modality_phrase(modality)
        prefix = " ".join([PLACEHOLDER] * self.context.n_ctx) + " " if self.context is not None else ""
        return [prefix + t.format(phrase) for templates in self.templates for t in templates]

    def class_embeddings(self, modalities: Sequence[str]) -> torch.Tensor:
        """``(len(modalities), 2, d)`` class embeddings; cached per modality unless gradients are on."""
        track = torch.is_grad_enabled() and self.context is not None and self.context.vectors.requires_grad
        if track:
            unique = list(dict.fromkeys(modalities))
            table = dict(zip(unique, self._encode_modalities(unique)))
            return torch.stack([table[m] for m in modalities])
        missing = [m for m in dict.fromkeys(modalities) if m not in self._cache]
        if missing:
            with torch.no_grad():
                for m, emb in zip(missing, self._encode_modalities(missing)):
                    self._cache[m] = emb.detach()
        return torch.stack([self._cache[m] for m in modalities])

    def _encode_modalities(self, modalities: Sequence[str]) -> torch.Tensor:
        n_real, n_fake = (len(t) for t in self.templates)
        prompts = [p for m in modalities for p in self.prompts(m)]
        features = F.normalize(self._encode_text(prompts).float(), dim=-1)
        features = features.view(len(modalities), n_real + n_fake, -1)
        real = features[:, :n_real].mean(1)
        fake = features[:, n_real:].mean(1)
        return F.normalize(torch.stack([real, fake], dim=1), dim=-1)

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(prompts).to(device)
        if self.context is None:
            return self.model.encode_text(tokens)
        return self._encode_with_context(tokens)

    def _encode_with_context(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's ``CLIP.encode_text`` with the placeholder embeddings (positions 1..n_ctx) replaced."""
        model = self.model
        cast = model.transformer.get_cast_dtype()
        length = _used_length(tokens, model)
        tokens = tokens[:, :length]
        embeddings = model.token_embedding(tokens).to(cast)
        n = self.context.n_ctx
        ctx = self.context.vectors.to(cast).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        x = torch.cat([embeddings[:, :1], ctx, embeddings[:, 1 + n:]], dim=1)
        x = x + model.positional_embedding[:length].to(cast)
        mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
        x = model.transformer(x, attn_mask=mask)
        x = model.ln_final(x)
        from open_clip.transformer import text_global_pool

        x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
        projection = model.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def _used_length(tokens: torch.Tensor, model: Any) -> int:
    """Sequence length up to the last end-of-text token, when dropping the padding is exact.

    Under CLIP's causal mask a token sees only earlier positions, so the pooled
    end-of-text output is the same with the padding cut off, at a fraction of the
    cost (prompts are ~15 tokens of 77). Other pooling types keep everything.
    """
    if getattr(model, "text_pool_type", "argmax") != "argmax" or getattr(model, "attn_mask", None) is None:
        return tokens.shape[1]
    return int(tokens.argmax(dim=-1).max()) + 1
