"""FatFormer's trainable parts: forgery-aware adapters (image + DWT frequency branch) and language-guided alignment.

Written from the paper (Liu et al., CVPR 2024, Sec. 3.2-3.3) and a reading of
the official evaluation code (Michel-liu/FatFormer, ``models/clip/model.py``
and ``models/clip_models.py``); shapes and placements follow that code, which
is the only ground truth for details the paper leaves open (see the baselines
page for where and why this differs).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pywt
import torch
import torch.nn.functional as F
from torch import nn

from medforensics_core.errors import ConfigError


def haar_kernels(wavelet: str = "haar") -> torch.Tensor:
    """The four 2-D analysis kernels ``(4, 2, 2)`` (LL, LH, HL, HH) of a length-2 orthogonal pywt wavelet.

    A length-2 filter bank acts on disjoint 2x2 blocks, so one DWT level is a
    stride-2 convolution and its exact inverse the transposed convolution with
    the same (orthonormal) kernels — no boundary mode is involved.
    """
    bank = pywt.Wavelet(wavelet)
    if bank.dec_len != 2 or not bank.orthogonal:
        raise ConfigError(f"the frequency branch needs a length-2 orthogonal wavelet (haar), not {wavelet!r}")
    low = torch.tensor(np.asarray(bank.dec_lo[::-1]), dtype=torch.float32)
    high = torch.tensor(np.asarray(bank.dec_hi[::-1]), dtype=torch.float32)
    return torch.stack([torch.outer(a, b) for a, b in ((low, low), (high, low), (low, high), (high, high))])


def dwt_level(maps: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` (H, W even) -> bands ``(N, C, 4, H/2, W/2)``."""
    n, c, h, w = maps.shape
    bands = F.conv2d(maps.reshape(n * c, 1, h, w), kernels.unsqueeze(1).to(maps.dtype), stride=2)
    return bands.reshape(n, c, 4, h // 2, w // 2)


def idwt_level(bands: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dwt_level`: ``(N, C, 4, h, w)`` -> ``(N, C, 2h, 2w)``."""
    n, c, _, h, w = bands.shape
    maps = F.conv_transpose2d(bands.reshape(n * c, 4, h, w), kernels.unsqueeze(1).to(bands.dtype), stride=2)
    return maps.reshape(n, c, 2 * h, 2 * w)


class FeedForward(nn.Module):
    """Post-norm FFN ``norm(x + W2 drop(relu(W1 x)))``, the form every FatFormer attention is followed by."""

    def __init__(self, width: int, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(width, 4 * width)
        self.linear2 = nn.Linear(4 * width, width)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class FrequencyBranch(nn.Module):
    """Patch-token map -> Haar DWT -> attention across bands, then across positions -> FFN -> inverse DWT.

    The four sub-bands (LL, LH, HL, HH) of the token map are normalised with a
    GroupNorm over channels, then each position attends across its four bands
    ("inter-band") and each band across its positions ("intra-band"), both
    post-norm residual; the inverse DWT brings the result back onto the token
    grid. An odd grid (e.g. ViT-B/32 at 224 px: 7x7) is zero-padded to even and
    cropped back.
    """

    def __init__(self, width: int, heads: int, groups: int, dropout: float, wavelet: str = "haar"):
        super().__init__()
        if width % heads or width % groups:
            raise ConfigError(f"fatformer: width {width} must be divisible by adapter_heads ({heads}) "
                              f"and dwt_groups ({groups})")
        self.register_buffer("kernels", haar_kernels(wavelet), persistent=False)
        self.norm_in = nn.GroupNorm(groups, width)
        self.across_bands = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_bands = nn.LayerNorm(width)
        self.across_positions = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_positions = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.ffn = FeedForward(width, dropout)

    def forward(self, patches: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """``patches`` ``(N, gh*gw, D)`` -> frequency features on the same tokens."""
        n, _, d = patches.shape
        gh, gw = grid
        maps = patches.transpose(1, 2).reshape(n, d, gh, gw)
        maps = F.pad(maps, (0, gw % 2, 0, gh % 2))
        bands = dwt_level(maps, self.kernels)  # (N, D, 4, h, w)
        h, w = bands.shape[-2:]
        x = self.norm_in(bands.flatten(3)).permute(0, 2, 3, 1)  # (N, 4, P, D)
        cells = x.shape[2]
        seq = x.transpose(1, 2).reshape(n * cells, 4, d)  # each position: a sequence of 4 bands
        seq = self.norm_bands(seq + self.dropout(self.across_bands(seq, seq, seq, need_weights=False)[0]))
        seq = seq.reshape(n, cells, 4, d).transpose(1, 2).reshape(n * 4, cells, d)  # each band: its positions
        seq = self.norm_positions(seq + self.dropout(self.across_positions(seq, seq, seq, need_weights=False)[0]))
        x = self.ffn(seq).reshape(n, 4, h, w, d).permute(0, 4, 1, 2, 3)  # (N, D, 4, h, w)
        maps = idwt_level(x, self.kernels)[..., :gh, :gw]
        return maps.flatten(2).transpose(1, 2)


class ForgeryAwareAdapter(nn.Module):
    """One adapter beside a block's MLP: ``scale * up(drop(relu(down(x)))) + lambda * freq(x)``.

    ``x`` are the block's tokens after its attention (not layer-normed, as in the
    official code). The frequency branch sees the patch tokens only (the class
    token receives zero from it); ``lambda`` is a learnable scalar initialised
    to 0, so training starts from the image branch alone.
    """

    def __init__(self, width: int, grid: Sequence[int], bottleneck: int, scale: float, dropout: float,
                 heads: int, groups: int, wavelet: str):
        super().__init__()
        self.grid = tuple(grid)
        self.scale = scale
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        self.dropout = nn.Dropout(dropout)
        self.freq = FrequencyBranch(width, heads, groups, dropout, wavelet)
        self.freq_scale = nn.Parameter(torch.zeros(1))

    def forward(self, tokens: torch.Tensor, normed: torch.Tensor | None = None) -> torch.Tensor:
        image = self.scale * self.up(self.dropout(F.relu(self.down(tokens))))
        freq = self.freq(tokens[:, 1:], self.grid)
        freq = torch.cat([torch.zeros_like(tokens[:, :1]), freq], dim=1)
        return image + self.freq_scale.to(tokens.dtype) * freq


class LanguageGuidedAlignment(nn.Module):
    """Image-conditioned prompt context (patch-based enhancer) and the text-guided interactor.

    * enhancer: the ``n_ctx`` learnable context vectors attend to the image's
      projected tokens (class + patches, as in the official code), post-norm
      residual + FFN, giving per-image context for the prompts "<ctx> real." /
      "<ctx> fake.";
    * interactor: each projected patch token attends to the image's two text
      embeddings, post-norm residual + FFN; their mean is the second image
      feature whose cosine to the text embeddings is the second logit.
    """

    def __init__(self, n_ctx: int, text_width: int, embed_dim: int, heads: int):
        super().__init__()
        for width in (text_width, embed_dim):
            if width % heads:
                raise ConfigError(f"fatformer: lga_heads ({heads}) must divide the text width and embed dim ({width})")
        self.context = nn.Parameter(torch.randn(n_ctx, text_width) * 0.02)
        self.enhancer = nn.MultiheadAttention(text_width, heads, kdim=embed_dim, vdim=embed_dim, batch_first=True)
        self.enhancer_norm = nn.LayerNorm(text_width)
        self.enhancer_ffn = FeedForward(text_width)
        self.interactor = nn.MultiheadAttention(embed_dim, heads, batch_first=True)
        self.interactor_norm = nn.LayerNorm(embed_dim)
        self.interactor_ffn = FeedForward(embed_dim)

    @property
    def n_ctx(self) -> int:
        return self.context.shape[0]

    def image_context(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Per-image context ``(N, n_ctx, text_width)`` from projected image tokens ``(N, L, E)``."""
        ctx = self.context.to(image_tokens.dtype).unsqueeze(0).expand(image_tokens.shape[0], -1, -1)
        attended = self.enhancer(ctx, image_tokens, image_tokens, need_weights=False)[0]
        return self.enhancer_ffn(self.enhancer_norm(ctx + attended))

    def aligned_patches(self, patch_tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Mean of the text-aligned patch tokens ``(N, E)``; ``text`` is ``(N, 2, E)`` per image."""
        attended = self.interactor(patch_tokens, text, text, need_weights=False)[0]
        return self.interactor_ffn(self.interactor_norm(patch_tokens + attended)).mean(dim=1)


class FatFormerModule(nn.Module):
    """Everything FatFormer trains (the checkpoint): one adapter per chosen block plus the alignment."""

    def __init__(self, blocks: Sequence[int], width: int, grid: Sequence[int], text_width: int, embed_dim: int,
                 cfg) -> None:
        super().__init__()
        self.blocks = tuple(blocks)
        self.adapters = nn.ModuleDict({
            str(i): ForgeryAwareAdapter(width, grid, cfg.bottleneck, cfg.adapter_scale, cfg.adapter_dropout,
                                        cfg.adapter_heads, cfg.dwt_groups, cfg.wavelet) for i in self.blocks})
        self.alignment = LanguageGuidedAlignment(cfg.n_ctx, text_width, embed_dim, cfg.lga_heads)
