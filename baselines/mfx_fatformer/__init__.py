"""``fatformer``: Liu et al., "Forgery-aware Adaptive Transformer for Generalizable Synthetic Image Detection" (CVPR 2024).

FatFormer's point is that a frozen CLIP probed only at its output (UnivFD)
learns too little about forgeries: it adapts the image encoder itself, cheaply,
and supervises the adaptation through CLIP's text side. The recipe (config
defaults, from the paper and the official evaluation code):

* frozen open_clip ``ViT-L-14`` / ``openai``; a *forgery-aware adapter* in the
  last block of each of 3 equal stages (blocks 7, 15, 23), beside the block's
  MLP: ``x + mlp(ln_2 x) + adapter(x)``;
* adapter = image branch (1024 -> 64 -> 1024 with ReLU and dropout 0.1, x0.1)
  + ``lambda`` x frequency branch (patch tokens as a 16x16 map, one-level Haar
  DWT, attention across the 4 bands and across positions, FFN, inverse DWT),
  ``lambda`` learnable and initialised to 0;
* language-guided alignment: 8 learnable context tokens conditioned on the
  image's tokens (patch-based enhancer) form the prompts "<ctx> real." /
  "<ctx> fake."; logit 1 = scaled cosine(class token, prompts), logit 2 =
  scaled cosine(mean of patch tokens aligned to the prompts, prompts);
  cross-entropy over their sum;
* resize to 256x256, random crop 224 + flip at training, centre crop at test,
  no other augmentation; Adam lr 4e-4 betas (0.9, 0.999), batch 256, 25
  epochs, lr x0.9 every 10 epochs.

Cost: unlike UnivFD there is no feature cache (the adapters change the
features) and every image runs the text tower twice (its prompts depend on it),
so scoring costs more than a bare ``encode_image`` — ``benchmarks/bench_baselines.py``
measures how much.
"""

from __future__ import annotations

from medforensics_core.hookspecs import hookimpl

from .detector import FatFormerConfig, FatFormerDetector

__all__ = ["FatFormerConfig", "FatFormerDetector"]


@hookimpl
def register_detectors(register):
    register(FatFormerDetector)
