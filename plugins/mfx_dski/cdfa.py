"""CDFA — the cross-domain fine-trace adapter — and the adapted forward pass of open_clip's image tower.

Why a forward loop of our own instead of patching open_clip's modules: the
frozen backbone stays exactly the object :func:`load_clip` returned (shared
caches, ``encode_image`` untouched), the adapters live in one small module that
is all the checkpoint needs, and the noise tokens are computed once per image
and handed to every adapted block explicitly rather than through hidden state.
The loop reuses open_clip's own pieces (``_embeds``, each block's ``ln_1``,
``attention``, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``, then ``_pool`` and
``proj``), so with zero-initialised adapters it reproduces ``encode_image``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medforensics_core.errors import ConfigError
from medforensics_core.interfaces import NoiseExtractor

BLOCK_PARTS = ("ln_1", "attention", "ls_1", "ln_2", "mlp", "ls_2")


def evenly_spaced_blocks(num_blocks: int, count: int) -> tuple[int, ...]:
    """``count`` block indices spread over ``num_blocks``, the last block included (24, 3 -> 7, 15, 23)."""
    count = max(1, min(count, num_blocks))
    return tuple(sorted({round((i + 1) * num_blocks / count) - 1 for i in range(count)}))


class NoiseTokens(nn.Module):
    """Noise residuals of the input pixels as tokens on the ViT's patch grid, shared by every adapter.

    Each extractor's residual map is patch-embedded by a convolution whose kernel
    and stride equal the ViT patch size in the residual's own resolution (patch /
    the extractor's down-sampling), so one noise token covers the same pixels as
    one image token; odd sizes are brought to the grid by adaptive pooling. The
    tokens of all extractors are concatenated along the sequence, so the
    cross-attention can choose both position and kind of trace.
    """

    def __init__(self, extractors: Mapping[str, NoiseExtractor], patch_size: int, grid: tuple[int, int], dim: int):
        super().__init__()
        self.grid = grid
        self.extractors = nn.ModuleDict(dict(extractors))
        self.embeds = nn.ModuleDict({
            name: nn.Conv2d(ex.out_channels, dim, kernel_size=max(1, patch_size // ex.downsample),
                            stride=max(1, patch_size // ex.downsample))
            for name, ex in extractors.items()})
        self.position = nn.Parameter(torch.randn(len(extractors) * grid[0] * grid[1], dim) * 0.02)
        self.norm = nn.LayerNorm(dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels`` ``(N, 3, H, W)`` in [0, 1] -> noise tokens ``(N, extractors x grid cells, dim)``."""
        tokens = []
        for name, extractor in self.extractors.items():
            embedded = self.embeds[name](extractor(pixels).to(pixels.dtype))
            if tuple(embedded.shape[-2:]) != self.grid:
                embedded = F.adaptive_avg_pool2d(embedded, self.grid)
            tokens.append(embedded.flatten(2).transpose(1, 2))
        return self.norm(torch.cat(tokens, dim=1) + self.position.to(pixels.dtype))


class CDFAAdapter(nn.Module):
    """One adapter, run in parallel with a block's MLP on the block's normalised tokens.

    Spatial branch: a bottleneck (down, GELU) whose tokens, when a noise branch
    exists, attend to the noise tokens; the attended result enters through
    ``tanh(gate)`` with ``gate`` initialised to 0. The up-projection back to the
    block width is zero-initialised and scaled by ``scale`` (FatFormer: 0.1), so an
    untrained adapter adds exactly nothing: training starts from plain CLIP.
    """

    def __init__(self, width: int, bottleneck: int, scale: float, noise_heads: int | None):
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.cross = None
        if noise_heads:
            self.cross = nn.MultiheadAttention(bottleneck, noise_heads, batch_first=True)
            self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, tokens: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        hidden = F.gelu(self.down(tokens))
        if self.cross is not None and noise is not None:
            attended, _ = self.cross(hidden, noise, noise, need_weights=False)
            hidden = hidden + torch.tanh(self.gate) * attended
        return self.scale * self.up(hidden)


class CDFA(nn.Module):
    """All trainable image-side parameters: one adapter per chosen block plus the shared noise tokens."""

    def __init__(self, visual: Any, blocks: Sequence[int], bottleneck: int, scale: float,
                 extractors: Mapping[str, NoiseExtractor], noise_heads: int):
        super().__init__()
        check_vision_tower(visual, blocks)
        width = visual.transformer.width
        patch = visual.patch_size[0] if isinstance(visual.patch_size, (tuple, list)) else int(visual.patch_size)
        grid = tuple(visual.grid_size)
        self.blocks = tuple(blocks)
        self.noise = NoiseTokens(extractors, patch, grid, bottleneck) if extractors else None
        heads = noise_heads if extractors else None
        self.adapters = nn.ModuleDict({str(i): CDFAAdapter(width, bottleneck, scale, heads) for i in self.blocks})


def check_vision_tower(visual: Any, blocks: Sequence[int]) -> None:
    """Refuse, in one line, an image tower the adapted forward cannot drive faithfully."""
    if not all(hasattr(visual, attr) for attr in ("_embeds", "_pool", "transformer", "grid_size")):
        raise ConfigError(f"CDFA needs an open_clip VisionTransformer (open_clip >= 2.30); got "
                          f"{type(visual).__name__}")
    resblocks = visual.transformer.resblocks
    bad = [i for i in blocks if not 0 <= i < len(resblocks)]
    if bad:
        raise ConfigError(f"adapter_blocks {bad} out of range: the image encoder has {len(resblocks)} blocks")
    for i in blocks:
        missing = [p for p in BLOCK_PARTS if not hasattr(resblocks[i], p)]
        if missing:
            raise ConfigError(f"block {i} ({type(resblocks[i]).__name__}) lacks {', '.join(missing)}; "
                              f"CDFA supports open_clip's ResidualAttentionBlock")


def adapted_image_features(visual: Any, images: torch.Tensor, cdfa: CDFA | None,
                           pixels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """open_clip's ``visual(images)`` with the CDFA adapters added in their blocks.

    ``pixels`` are the same images in [0, 1] for the noise branch (needed only when it exists).
    Returns the unnormalised image features and the noise tokens (``None`` without a noise branch).
    """
    tokens = visual._embeds(images)
    batch_first = getattr(visual.transformer, "batch_first", True)
    noise = cdfa.noise(pixels) if cdfa is not None and cdfa.noise is not None else None
    for index, block in enumerate(visual.transformer.resblocks):
        adapter = cdfa.adapters[str(index)] if cdfa is not None and index in cdfa.blocks else None
        if adapter is None:
            tokens = block(tokens) if batch_first else block(tokens.transpose(0, 1)).transpose(0, 1)
            continue
        tokens = _adapted_block(block, tokens, adapter, noise, batch_first)
    pooled, _ = visual._pool(tokens)
    return (pooled @ visual.proj if visual.proj is not None else pooled), noise


def _adapted_block(block: Any, tokens: torch.Tensor, adapter: CDFAAdapter, noise: torch.Tensor | None,
                   batch_first: bool) -> torch.Tensor:
    """``x + attn(ln_1 x)``, then ``x + mlp(ln_2 x) + adapter(ln_2 x)`` (FatFormer's parallel placement)."""
    attn_in = block.ln_1(tokens)
    if not batch_first:
        attended = block.attention(attn_in.transpose(0, 1)).transpose(0, 1)
    else:
        attended = block.attention(attn_in)
    tokens = tokens + block.ls_1(attended)
    normed = block.ln_2(tokens)
    return tokens + block.ls_2(block.mlp(normed)) + adapter(normed, noise)
