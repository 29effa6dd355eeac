"""DSKI's typed configuration: every design choice the paper's abstract leaves open, made visible.

The DSKI paper (MICCAI 2025) publishes no code, so each default below states
where it comes from: FatFormer (CVPR 2024) for the adapters and the recipe,
CoOp for the learnable prompt context, Tip-Adapter for the retrieval fusion.
The ``full`` preset is these defaults (CLIP ViT-L/14, OpenAI weights, a GPU);
``tiny`` is the CPU configuration of the tests and the offline benchmark.
"""

from __future__ import annotations

import dataclasses

REAL_TEMPLATES = (
    "a real {} image.",
    "an authentic {} image acquired by a scanner.",
    "a genuine {} scan of a patient.",
    "an unaltered clinical {} image.",
)
FAKE_TEMPLATES = (
    "an AI-generated {} image.",
    "a synthetic {} image made by a generative model.",
    "a fake {} scan.",
    "a computer-generated {} image.",
)


@dataclasses.dataclass
class DSKIConfig:
    """DSKI = frozen CLIP + CDFA adapters (stage 1, trained) + MFRM retrieval (stage 2, test time).

    Backbone
      ``clip_model`` / ``pretrained``: the frozen open_clip model (both towers) and its weights
      (``"random"``, a local checkpoint path, or an open_clip tag such as ``"openai"``);
      ``backbone_seed`` seeds a random-init backbone so a checkpoint can rebuild it exactly, and the
      initialisation of the trainable parts (the fit's shuffling and augmentation follow the run's seed).
      ``preprocess_mode``: ``"crop"`` centre-crops at native resolution (resizing only images smaller
      than the input size), as UnivFD and FatFormer evaluate, because resampling erases the
      pixel-level traces the noise branch looks for; ``"resize"`` resizes the whole image.

    Prompts (vision-language space)
      Per-modality class prompts, ``real_templates`` / ``fake_templates`` averaged (CLIP's prompt
      ensembling); an image of unknown modality uses ``generic_modality``.
      ``n_ctx`` learnable CoOp context tokens are prepended to every template (0 = fixed templates).
      FatFormer's ablation puts learnable context above fixed templates, and it costs only
      ``n_ctx x text_width`` parameters, so it is on by default (8 tokens, FatFormer's count).
      ``generic_loss_weight``: the generic prompts are trained too, so a caller that cannot give the
      modality (the engine hands ``predict_proba`` only pixels) still gets trained prompts.

    CDFA (cross-domain fine-trace adapter)
      ``use_cdfa``: insert adapters into ``adapter_blocks`` of the image encoder (empty = ``num_adapters``
      evenly spaced blocks ending at the last one: 7, 15, 23 of ViT-L/14's 24, FatFormer's choice, which
      its ablation puts above 2 or 4 adapters). Each adapter runs in parallel with its block's MLP
      (``x + mlp(ln_2 x) + adapter(ln_2 x)``) with bottleneck ``bottleneck_dim`` (FatFormer: 64) and
      output scale ``adapter_scale`` (FatFormer: 0.1); its up-projection starts at zero so training
      starts from plain CLIP.
      ``use_noise``: the noise branch. ``noise_extractors`` (registered noise-extractor names) are applied
      to the input pixels, patch-embedded onto the ViT's token grid and fused into each adapter's
      bottleneck tokens by cross-attention (``noise_heads`` heads) through a gate initialised to 0.
      Default ``("srm", "wavelet")``: SRM high-pass residuals see local pixel correlations (the
      up-sampling and denoising footprints of generators), wavelet sub-bands see band energy (FatFormer's
      frequency branch); they are complementary and cost two small patch embeddings.

    Training (FatFormer's recipe)
      Adam ``lr`` 4e-4, ``epochs`` 25, ``batch_size`` 256, lr x ``lr_decay`` every ``lr_decay_every``
      epochs. Loss: cross-entropy over the image-text logits, plus ``contrastive_weight`` x a supervised
      contrastive term on the adapted embeddings (temperature ``contrastive_temperature``). It is small
      by default (0.1): MFRM votes among neighbours, so embeddings that cluster by real/fake help it,
      but a large weight collapses the per-generator structure that few-shot references rely on.

    MFRM (medical forensic retrieval module)
      ``use_mfrm``: at the end of ``fit`` the adapted, L2-normalised embeddings of a labelled support
      bank go into the ``retriever`` (a registered retriever name). ``bank_shots``: 0 = the whole
      training set, K = K images per (label, modality, generator). ``bank_noise_weight`` > 0 appends the
      CDFA noise descriptor (mean noise token, L2-normalised, times this weight) to each embedding before
      retrieval: neighbours then share how an image was made, not only what it shows (with a weak,
      e.g. random-init, backbone the embedding alone is dominated by content). A test image's ``top_k`` neighbours
      vote (weights softmax(similarity / ``knn_temperature``)) for a fake probability that is fused with
      the stage-1 probability: ``p = (1 - mfrm_weight) * p_clip + mfrm_weight * p_knn`` (Tip-Adapter's
      alpha, in probability form so that it stays in [0, 1] whatever k is). ``tune_on_val``: pick
      ``mfrm_weight`` and ``knn_temperature`` on the validation set (val AUC, grids below), as
      Tip-Adapter tunes alpha and beta; the defaults are used when no usable validation set is given.
      The weight grid starts at 0.25, not 0: validation holds only generators seen in training, where
      stage 1 alone may look best, yet MFRM's purpose is the generators it has not seen (references
      added later); weight 0 is the ``dski-no-mfrm`` ablation, not a tuning outcome.
    """

    # backbone
    clip_model: str = "ViT-L-14"
    pretrained: str = "openai"
    backbone_seed: int = 0
    preprocess_mode: str = "crop"
    # prompts
    real_templates: tuple[str, ...] = REAL_TEMPLATES
    fake_templates: tuple[str, ...] = FAKE_TEMPLATES
    generic_modality: str = "medical"
    n_ctx: int = 8
    generic_loss_weight: float = 1.0
    # CDFA
    use_cdfa: bool = True
    num_adapters: int = 3
    adapter_blocks: tuple[int, ...] = ()
    bottleneck_dim: int = 64
    adapter_scale: float = 0.1
    use_noise: bool = True
    noise_extractors: tuple[str, ...] = ("srm", "wavelet")
    noise_heads: int = 4
    # training
    lr: float = 4e-4
    epochs: int = 25
    batch_size: int = 256
    lr_decay: float = 0.9
    lr_decay_every: int = 10
    contrastive_weight: float = 0.1
    contrastive_temperature: float = 0.1
    # MFRM
    use_mfrm: bool = True
    retriever: str = "faiss-flat"
    bank_shots: int = 0
    bank_noise_weight: float = 1.0
    top_k: int = 16
    knn_temperature: float = 0.05
    mfrm_weight: float = 0.5
    tune_on_val: bool = True
    weight_grid: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    temperature_grid: tuple[float, ...] = (0.02, 0.05, 0.1)


# The tiny preset runs on a random-init 2-block CLIP in seconds on a CPU. Its real and fake prompts are
# nearly parallel (cosine 0.93-0.96: a random text tower barely separates the words), so the image
# embedding must move far within ~120 steps: hence adapter scale 1.0 and lr 5e-3 instead of 0.1 and 4e-4.
TINY = {
    "clip_model": "mfx-tiny-clip",
    "pretrained": "random",
    "n_ctx": 4,
    "num_adapters": 2,
    "bottleneck_dim": 16,
    "adapter_scale": 1.0,
    "noise_heads": 2,
    "lr": 5e-3,
    "epochs": 10,
    "batch_size": 16,
    "top_k": 8,
}

PRESETS = {"tiny": TINY}
