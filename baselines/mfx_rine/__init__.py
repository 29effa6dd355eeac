"""``rine``: Koutlis & Papadopoulos, "Leveraging Representations from Intermediate Encoder-Blocks for
Synthetic Image Detection" (ECCV 2024).

RINE's point: CLIP's last layer carries mostly semantics, while forgery traces
live in the low-level information of earlier blocks. It reads the class token
of *every* block of a frozen CLIP image encoder (the ``ln_2`` output, i.e. the
block's MLP input, as the official code hooks it), projects each, weights the
blocks with a learnable softmax per feature dimension (the Trainable Importance
Estimator), and classifies with a small MLP. The recipe (config defaults, the
paper's best 4-class ProGAN model):

* frozen open_clip ``ViT-L-14`` / ``openai``, the 24 blocks' class tokens (1024-d);
* projection ``q = 2`` layers of ``Linear + ReLU + Dropout(0.5)`` to ``d' = 1024``
  (after a first dropout), importance-weighted sum over blocks, a second such
  projection, head ``Linear-ReLU-Dropout`` x2 + ``Linear(d', 1)``;
* loss: summed BCE + 0.2 x supervised contrastive loss (temperature 0.07) on
  the embedding after the second projection;
* training: blur sigma ~ U(0, 3) and JPEG at quality 30 or 100, each p = 0.5,
  random crop 224 + flip from the native image, CLIP normalisation; test:
  centre crop 224, no resize; Adam lr 1e-3, batch 128, **one** epoch (lr / 10
  at the start of epochs 6 and 11 for longer runs).

Feature cache: with augmentation off (``tiny``) the intermediate tokens are
computed once and cached on disk (``blocks x width`` numbers per image), so the
head trains in seconds; with the paper's augmentation they are recomputed each
epoch. Scoring runs the image tower once, skipping the last block's MLP and the
final projection, so it is never slower than ``encode_image``.
"""

from __future__ import annotations

from medforensics_core.hookspecs import hookimpl

from .detector import RINEConfig, RINEDetector

__all__ = ["RINEConfig", "RINEDetector"]


@hookimpl
def register_detectors(register):
    register(RINEDetector)
