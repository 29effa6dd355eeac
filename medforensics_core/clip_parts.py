"""Pieces of open_clip's towers that detectors drive themselves (adapters in blocks, intermediate taps, prompts).

Detectors built on a frozen CLIP often need more than ``encode_image`` /
``encode_text``: an adapter added inside chosen blocks (FatFormer, DSKI), the
tokens of every intermediate block (RINE), every output token projected into
the joint space, or the text tower run on token *embeddings* whose context
part is learned (CoOp-style prompts). Re-implementing the towers would drift
from open_clip; patching its modules would change the shared frozen model that
feature caches are keyed by. These helpers instead call open_clip's own
sub-modules (``_embeds``, each block's ``ln_1``/``attention``/``ls_1``/
``ln_2``/``mlp``/``ls_2``, ``ln_post``/``proj``, the text transformer and
``ln_final``) in open_clip's order, so a loop made of them with nothing added
reproduces ``encode_image`` / ``encode_text`` to float rounding (tested).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from .errors import ConfigError

BLOCK_PARTS = ("ln_1", "attention", "ls_1", "ln_2", "mlp", "ls_2")

# ``parallel(x, normed)`` -> a tensor added beside the MLP branch (x: tokens after attention, normed: ln_2(x))
Parallel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def evenly_spaced_blocks(num_blocks: int, count: int) -> tuple[int, ...]:
    """The last block of each of ``count`` equal stages of ``num_blocks`` (24 blocks, 3 -> 7, 15, 23).

    FatFormer splits the ViT into ``count`` stages and adapts the last block of
    each; ``count`` above the number of blocks adapts every block.
    """
    count = max(1, min(count, num_blocks))
    return tuple(sorted({round((i + 1) * num_blocks / count) - 1 for i in range(count)}))


def check_vision_tower(visual: Any, blocks: Sequence[int] = ()) -> None:
    """Refuse, in one line, an image tower these helpers cannot drive faithfully."""
    needed = ("_embeds", "transformer", "grid_size", "ln_post", "proj")
    if not all(hasattr(visual, attr) for attr in needed):
        raise ConfigError(f"needs an open_clip VisionTransformer (open_clip >= 2.30); got {type(visual).__name__}")
    if getattr(visual, "attn_pool", None) is not None:
        raise ConfigError("open_clip image towers with attention pooling (CoCa) are not supported; use a CLIP ViT")
    resblocks = visual.transformer.resblocks
    bad = [i for i in blocks if not 0 <= i < len(resblocks)]
    if bad:
        raise ConfigError(f"block indices {bad} out of range: the image encoder has {len(resblocks)} blocks")
    for i, block in enumerate(resblocks):
        missing = [p for p in BLOCK_PARTS if not hasattr(block, p)]
        if missing:
            raise ConfigError(f"block {i} ({type(block).__name__}) lacks {', '.join(missing)}; "
                              f"only open_clip's ResidualAttentionBlock is supported")


def _batch_first(visual: Any) -> bool:
    return getattr(visual.transformer, "batch_first", True)


def attention_step(block: Any, tokens: torch.Tensor, batch_first: bool = True) -> torch.Tensor:
    """``x + ls_1(attention(ln_1(x)))`` on batch-first tokens ``(N, L, D)``."""
    normed = block.ln_1(tokens)
    attended = block.attention(normed) if batch_first else block.attention(normed.transpose(0, 1)).transpose(0, 1)
    return tokens + block.ls_1(attended)


def block_step(block: Any, tokens: torch.Tensor, parallel: Parallel | None = None,
               batch_first: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One residual block; returns ``(output tokens, ln_2 input of the MLP)``.

    With ``parallel`` the block computes ``x + mlp(ln_2 x) + parallel(x, ln_2 x)``
    (an adapter beside the MLP, FatFormer's placement).
    """
    tokens = attention_step(block, tokens, batch_first)
    normed = block.ln_2(tokens)
    out = tokens + block.ls_2(block.mlp(normed))
    if parallel is not None:
        out = out + parallel(tokens, normed)
    return out, normed


def run_image_tower(visual: Any, images: torch.Tensor,
                    parallel: dict[int, Parallel] | None = None) -> torch.Tensor:
    """Tokens ``(N, 1 + grid cells, width)`` after every block, ``parallel[i]`` added beside block ``i``'s MLP."""
    parallel = parallel or {}
    batch_first = _batch_first(visual)
    tokens = visual._embeds(images)
    for index, block in enumerate(visual.transformer.resblocks):
        tokens, _ = block_step(block, tokens, parallel.get(index), batch_first)
    return tokens


def block_class_tokens(visual: Any, images: torch.Tensor) -> torch.Tensor:
    """The class token of every block's MLP input (``ln_2`` output), ``(N, blocks, width)``.

    This is what RINE reads from each intermediate block. The last block's MLP
    and the final projection are never needed, so they are skipped: this costs
    slightly less than ``encode_image``.
    """
    batch_first = _batch_first(visual)
    tokens = visual._embeds(images)
    blocks = visual.transformer.resblocks
    taps = []
    for index, block in enumerate(blocks):
        if index == len(blocks) - 1:
            taps.append(block.ln_2(attention_step(block, tokens, batch_first))[:, 0])
            break
        tokens, normed = block_step(block, tokens, None, batch_first)
        taps.append(normed[:, 0])
    return torch.stack(taps, dim=1)


def project_tokens(visual: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Every token in the joint image-text space: ``ln_post`` then ``proj`` (token 0 = ``encode_image``).

    Only for towers that apply ``ln_post`` before pooling (OpenAI CLIP and most
    open_clip ViTs); others are refused in one line.
    """
    if getattr(visual, "final_ln_after_pool", False) or getattr(visual, "pool_type", "tok") != "tok":
        raise ConfigError("needs an image tower pooling the class token with ln_post before pooling "
                          "(OpenAI-style CLIP ViT)")
    tokens = visual.ln_post(tokens)
    return tokens @ visual.proj if visual.proj is not None else tokens


def used_length(tokens: torch.Tensor, model: Any) -> int:
    """Sequence length up to the last end-of-text token, where cutting the padding is exact.

    Under CLIP's causal mask a position sees only earlier ones, so the pooled
    end-of-text output is unchanged without the padding, at a fraction of the
    cost (prompts are ~12 tokens of 77). Other pooling types keep everything.
    """
    if getattr(model, "text_pool_type", "argmax") != "argmax" or getattr(model, "attn_mask", None) is None:
        return tokens.shape[1]
    return int(tokens.argmax(dim=-1).max()) + 1


def encode_text_embeddings(model: Any, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``encode_text`` from token *embeddings* ``(N, L, width)`` (L <= the tokens' length).

    ``tokens`` are the token ids the embeddings stand for (their end-of-text
    position chooses the pooled output); positions whose embedding was replaced
    (learned context) keep their placeholder ids there.
    """
    if not hasattr(model, "token_embedding"):
        raise ConfigError(f"needs an open_clip CLIP with its own text tower ({type(model).__name__} has none)")
    length = embeddings.shape[1]
    cast = model.transformer.get_cast_dtype()
    x = embeddings.to(cast) + model.positional_embedding[:length].to(cast)
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    from open_clip.transformer import text_global_pool

    x = text_global_pool(x, tokens[:, :length], model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection
