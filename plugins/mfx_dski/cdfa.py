"""CDFA — the cross-domain fine-trace adapter — and the adapted forward pass of open_clip's image tower.

Why a forward loop of our own instead of patching open_clip's modules: the
frozen backbone stays exactly the object :func:`load_clip` returned (shared
caches, ``encode_image`` untouched), the adapters live in one small module that
is all the checkpoint needs, and the noise tokens are computed once per image
and handed to every adapted block explicitly rather than through hidden state.
Per-module initialisation (each adapter, the noise branch) is done by
:func:`~mfx_dski.model.reset_parameters` from seeds derived from the module's
name, so two ablations share the initial weights of the parts they share.
The loop reuses open_clip's own pieces (``_embeds``, each block's ``ln_1``,
``attention``, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``, then ``_pool`` and
``proj``), so with zero-initialised adapters it reproduces ``encode_image``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medforensics_core.errors import ConfigError, MfxError

BLOCK_PARTS = ("ln_1", "attention", "ls_1", "ln_2", "mlp", "ls_2")


def evenly_spaced_blocks(num_blocks: int, count: int) -> tuple[int, ...]:
    """``count`` block indices spread over ``num_blocks``, the last block included (24, 3 -> 7, 15, 23)."""
    count = max(1, min(count, num_blocks))
    return tuple(sorted({round((i + 1) * num_blocks / count) - 1 for i in range(count)}))


class NoiseTokens(nn.Module):
    """Per-cell noise statistics as tokens on the ViT's patch grid, shared by every adapter.

    The statistics maps (computed by the preprocessing at native resolution,
    ``in_channels`` of them) arrive averaged over each cell of the token grid
    (:class:`~mfx_dski.model.CellStats`), so one noise token summarises exactly
    the pixels of one image token, and are embedded by a two-layer MLP: a
    nonlinear function of the statistics, not one more linear view of the pixels.
    During training the whole branch is dropped for an image with probability
    ``dropout``: :meth:`forward` also returns a per-image keep mask that the
    adapters apply to what they attend. The mask draws from a generator of its own
    (``dropout_generator``, seeded with the weights): drawing from the global stream
    would shift every later augmentation draw, so ``dski`` and ``dski-no-noise`` would
    train on differently augmented images and their difference would not be the
    branch alone.
    """

    def __init__(self, in_channels: int, grid: tuple[int, int], dim: int, dropout: float = 0.0,
                 trace_in: int = 0, trace_channels: int = 16):
        super().__init__()
        self.grid = grid
        self.in_channels = in_channels
        self.dropout = dropout
        self.trace = TraceStem(trace_in, trace_channels, grid) if trace_in else None
        width = in_channels + (trace_channels if trace_in else 0)
        self.embed = nn.Sequential(nn.Linear(width, dim), nn.GELU(), nn.Linear(dim, dim))
        self.position = nn.Parameter(torch.randn(grid[0] * grid[1], dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.dropout_generator = torch.Generator()

    def forward(self, cells: torch.Tensor, trace: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``cells`` ``(N, grid cells, C)`` (and, with a trace stem, full-resolution maps ``(N, T, S, S)``) ->
        noise tokens ``(N, grid cells, dim)`` and a keep mask ``(N, 1, 1)`` or None."""
        features = cells.float()
        if self.trace is not None:
            if trace is None:
                raise MfxError("this noise branch reads a full-resolution trace map; pass images through "
                               "detector.preprocess")
            features = torch.cat([features, self.trace(trace)], dim=-1)
        tokens = self.norm(self.embed(features) + self.position)
        keep = None
        if self.training and self.dropout > 0:
            draws = torch.rand(len(cells), 1, 1, generator=self.dropout_generator)  # on the CPU: any device, one stream
            keep = (draws >= self.dropout).to(device=tokens.device, dtype=tokens.dtype)
        return tokens, keep


class TraceStem(nn.Module):
    """A small convolution over a full-resolution trace map (e.g. NPR's residual), pooled per token cell.

    Why: the cell statistics keep one mean per cell, and the cell mean of a signed residual is about 0;
    the arrangement of the residual inside each 2x2 block, which NPR's network learns from, is lost. Two
    3x3 layers (the first with stride 2, as in NPR's ResNet stem) see that arrangement. Each view's map is
    first divided by its own mean magnitude, so the stem reads the residual's pattern, not its level (a
    smoother unseen generator would otherwise land beyond the reals, as the first build's linear branch did).
    """

    def __init__(self, in_channels: int, channels: int, grid: tuple[int, int]):
        super().__init__()
        self.grid = grid
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """``(N, T, S, S)`` -> per-cell features ``(N, grid cells, channels)``."""
        maps = maps.float()
        maps = maps / (maps.abs().mean(dim=(1, 2, 3), keepdim=True) + TRACE_FLOOR)
        hidden = F.gelu(self.conv2(F.gelu(self.conv1(maps))))
        return F.adaptive_avg_pool2d(hidden, self.grid).flatten(2).transpose(1, 2)


TRACE_FLOOR = 1.0 / 255
"""Added to a view's mean trace magnitude before dividing by it: a flat view (black background) has a residual
of about 0, and one grey level is the smallest level that means anything."""


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

    def forward(self, tokens: torch.Tensor, noise: torch.Tensor | None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        hidden = F.gelu(self.down(tokens))
        if self.cross is not None and noise is not None:
            context = noise if noise.dtype == hidden.dtype else noise.to(hidden.dtype)
            attended = cross_attend(self.cross, hidden, context)
            if keep is not None:
                attended = attended * keep.to(attended.dtype)
            hidden = hidden + torch.tanh(self.gate) * attended
        out = self.up(hidden)
        # the tiny preset's scale is 1.0: skipping the multiply saves a dispatch and changes no bit
        return out if self.scale == 1.0 else self.scale * out


def cross_attend(attention: nn.MultiheadAttention, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """``attention(queries, context, context)`` (batch first, no dropout) on its own weights, without the module's
    generic path: one projection for the queries, one for keys and values together, then
    ``scaled_dot_product_attention``. Equal to the module's output (a test checks), ~25 % faster on small inputs,
    where the module's argument checks and reshapes cost more than the arithmetic; the module stays, so the
    parameters (and checkpoints) are the same."""
    width, heads = queries.shape[-1], attention.num_heads
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    # slices rather than ``split``: the same views, at a fraction of the dispatch cost on a 16-token model
    keys, values = F.linear(context, weight[width:], bias[width:]).chunk(2, dim=-1)
    queries = F.linear(queries, weight[:width], bias[:width])

    def by_head(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (heads, width // heads)).transpose(1, 2)

    out = F.scaled_dot_product_attention(by_head(queries), by_head(keys), by_head(values))
    return attention.out_proj(out.transpose(1, 2).flatten(2))


class CDFA(nn.Module):
    """All trainable image-side parameters: one adapter per chosen block plus the shared noise tokens.

    ``noise_channels`` is the number of statistics maps the preprocessing packs after the three
    colour channels (0 = no noise branch).
    """

    def __init__(self, visual: Any, blocks: Sequence[int], bottleneck: int, scale: float,
                 noise_channels: int, noise_heads: int, noise_dropout: float = 0.0,
                 trace_in: int = 0, trace_channels: int = 16):
        super().__init__()
        check_vision_tower(visual, blocks)
        width = visual.transformer.width
        grid = tuple(visual.grid_size)
        self.blocks = tuple(blocks)
        self.noise = NoiseTokens(noise_channels, grid, bottleneck, noise_dropout, trace_in,
                                 trace_channels) if noise_channels else None
        heads = noise_heads if noise_channels else None
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
                           stats: torch.Tensor | None = None, trace: torch.Tensor | None = None) -> torch.Tensor:
    """open_clip's ``visual(images)`` with the CDFA adapters added in their blocks.

    ``stats`` are the images' per-cell noise statistics ``(N, cells, C)`` for the noise branch (needed only when
    it exists), ``trace`` its full-resolution trace maps ``(N, T, S, S)`` (only with a trace stem).
    Returns the unnormalised image features.
    """
    tokens = visual._embeds(images)
    batch_first = getattr(visual.transformer, "batch_first", True)
    noise, keep = (cdfa.noise(stats, trace) if cdfa is not None and cdfa.noise is not None and stats is not None
                   else (None, None))
    for index, block in enumerate(visual.transformer.resblocks):
        adapter = cdfa.adapters[str(index)] if cdfa is not None and index in cdfa.blocks else None
        if adapter is None:
            tokens = block(tokens) if batch_first else block(tokens.transpose(0, 1)).transpose(0, 1)
            continue
        tokens = _adapted_block(block, tokens, adapter, noise, keep, batch_first)
    pooled, _ = visual._pool(tokens)
    return pooled @ visual.proj if visual.proj is not None else pooled


def _adapted_block(block: Any, tokens: torch.Tensor, adapter: CDFAAdapter, noise: torch.Tensor | None,
                   keep: torch.Tensor | None, batch_first: bool) -> torch.Tensor:
    """``x + attn(ln_1 x)``, then ``x + mlp(ln_2 x) + adapter(ln_2 x)`` (FatFormer's parallel placement)."""
    attn_in = block.ln_1(tokens)
    if not batch_first:
        attended = block.attention(attn_in.transpose(0, 1)).transpose(0, 1)
    else:
        attended = block.attention(attn_in)
    tokens = tokens + block.ls_1(attended)
    normed = block.ln_2(tokens)
    return tokens + block.ls_2(block.mlp(normed)) + adapter(normed, noise, keep)
