"""DSKI's typed configuration: every design choice the paper's abstract leaves open, made visible.

The DSKI paper (MICCAI 2025) publishes no code, so each default below states
where it comes from: FatFormer (CVPR 2024) for the adapters and the recipe,
CoOp for the learnable prompt context, Tip-Adapter for the retrieval fusion.
The ``full`` preset is these defaults (CLIP ViT-L/14, OpenAI weights, a GPU);
``tiny`` is the CPU configuration of the tests and the offline benchmark.
"""

from __future__ import annotations

import dataclasses
import typing

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
      initial trainable parts of an unfitted model; ``fit`` re-initialises every trainable module from a
      seed derived from (run seed, module name), so ablations share the initial weights of shared parts.
      ``preprocess_mode``: ``"crop"`` centre-crops at native resolution (resizing only images smaller
      than the input size), as UnivFD and FatFormer evaluate, because resampling erases the
      pixel-level traces the noise branch looks for; ``"resize"`` resizes the whole image.
      ``eval_views``: at test time (and for the MFRM bank) an ``n x n`` grid of crops evenly spaced
      over the image, their adapted embeddings averaged (noise statistics too), so an image larger
      than the backbone's input is seen whole; 1 = the centre crop (UnivFD, FatFormer). ``tiny`` uses
      2: its 64-pixel backbone on 128-pixel images would otherwise look at a quarter of each image,
      and a local edit (an inpainted region) outside it would never be seen. Training takes one
      random crop per image and epoch, which covers the image over the epochs.

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
      ``use_noise``: the noise branch. ``noise_extractors`` (registered, parameter-free noise-extractor
      names) run on each image's native-resolution pixels before any resize (in ``preprocess``, float32),
      their per-pixel maps travel with the image as extra channels through crop and flip, and are pooled
      per patch onto the ViT's token grid; a small MLP (nonlinear) embeds each patch's statistics into a
      noise token, and each adapter's bottleneck tokens attend to the noise tokens (``noise_heads`` heads)
      through a gate initialised to 0. Default ``("noise-stats", "grid-phase")``: SRM + Haar residuals
      divided by the image's own robust noise level, then clipped magnitudes, log local energies and
      cross-band correlations -- noise *structure*, not noise *level*, which a smoother unseen generator
      would invert (see ``mfx_noise.stats``); and the up-sampling grid (log max/min ratio of neighbour
      differences over the phases of a 2/4/8-pixel grid, ``mfx_noise.phase``), a cue whose direction is
      the same for every up-sampling generator, seen or not. ``noise_dropout``: during training the whole branch is dropped
      for an image with this probability, and its parameters get weight decay ``noise_weight_decay``,
      so the adapters cannot lean on it alone and the gate does not open on a shortcut.
      ``noise_cache_mb``: the maps of un-augmented images are kept in memory (keyed by their pixels) up to
      this many megabytes (the statistic maps and the trace maps together), because every epoch and every
      tuning pass would compute them again (0 = recompute always; the cache changes no number, only the time).
      ``trace_extractor``: one more registered, parameter-free extractor (e.g. ``npr``) whose per-pixel map
      is *not* pooled: it travels at full resolution with each view, is divided by its own mean magnitude
      (pattern, not level), and a small trained convolution (two 3x3 layers, ``trace_channels`` wide, the
      first with stride 2 as in NPR's stem) reads it before pooling per token cell; its features join the
      cell statistics in the noise-token MLP. Why: a cell mean of a signed residual is about 0, so the
      spatial pattern inside each 2x2 block that NPR's network learns from is lost to cell statistics.
      Default ``npr`` (empty: off; a checkpoint saved before this key existed loads with it off): on
      MedForensics-mini's leave-one-network-out folds it lifted the held-out network's fused AUC on all 10
      fold-seeds screened, most on the resize-conv up-sampler (0.88 -> 0.95), see docs/explanations/dski.md.

    Training (FatFormer's recipe, plus regularisation for unseen generators)
      Adam(W) ``lr`` 4e-4, ``epochs`` 25, ``batch_size`` 256, lr x ``lr_decay`` every ``lr_decay_every``
      epochs. Loss: cross-entropy over the image-text logits, plus ``contrastive_weight`` x a supervised
      contrastive term on the adapted embeddings (temperature ``contrastive_temperature``).
      Augmentation on both classes (``aug_*_prob``: blur, down-up resampling with a random kernel, JPEG,
      mild Gaussian noise; :class:`~medforensics_core.engine.augment.TraceRecipe`), so high-frequency
      level alone stops being a label. ``self_blend_share``: partial fakes are added to stage-1 training,
      this many per real image: a few soft blobs of the real, down-up resampled, blurred and re-noised,
      blended back (self-blended images, Shiohara & Yamasaki 2022;
      :func:`~medforensics_core.engine.augment.self_blend`), so a detector that has only seen whole-image
      fakes also learns that *part* of an image made differently from the rest is fake -- the only
      trace an inpainting or splicing generator leaves. Off (0) by default: on MedForensics-mini's
      held-out inpainting network it did not help (tiny preset, seed 0: held-out AUC 0.557 without,
      0.583 with 0.5, 0.548 with 1.0 -- within the seed-to-seed spread), and with 0.5 the held-out
      ``sr-resizeconv`` fold fell from 0.944 to 0.910. The run always trains ``epochs`` epochs
      (ablations compare at equal training); ``select_best_epoch`` keeps the weights of the epoch with the
      best stage-1 AUC on the tuning hold-out (below). ``average_last_fraction`` > 0 keeps instead the mean
      of the weights after each of the last that share of the epochs (stochastic weight averaging;
      :class:`~mfx_dski.training.WeightAverage`; at least one epoch); 0 (the papers' recipe) keeps one
      epoch's weights. ``tiny`` averages the last half: its high learning rate scatters the epochs'
      weights, so one epoch's hold-out AUC swings by 0.1-0.3 between neighbours and the stage-1 AUC on
      a held-out network moved with the seed (``sr-resizeconv`` 0.92 / 0.85 / 0.90 over seeds 0-2;
      averaged: 0.895 / 0.894 / 0.903).
      ``max_grad_norm`` > 0 clips each step's gradient (all trainable parameters) to that L2 norm
      (``engine.training.run_epoch``); 0, the papers' recipe (FatFormer's released code holds no training
      loop to say otherwise), leaves it alone. ``train_info["grad_norms"]`` records each epoch's median
      and largest norm before clipping either way, and ``mfx.log`` prints them per epoch.
      A ``--budget-minutes`` run may stop early: its train_info and
      warnings say so, and its ablation rows are then not comparable.

    Tuning for generalisation
      ``tune_holdout``: ``"network"`` (default) holds the fakes of one trained network of the *training*
      data out of stage-1 training (with a matching share of the reals), chosen from the run's seed,
      and tunes the fusion (alpha, beta, descriptor weight) and the best epoch on it: tuning rewards
      what transfers to a generator the model did not see, not memorisation. By network, not by
      generator setting, because two settings of one network (an autoencoder's reconstructions and
      its img2img outputs) share its traces: holding one out while training on the other is not
      "unseen". A manifest that records no networks falls back to ``"generator"`` (said in
      ``train_info``). Any manifest column works; ``"val"`` tunes on the engine's validation set;
      ``"none"`` keeps the defaults. The held-out images join the MFRM bank after tuning (``bank_shots`` of
      them per group, like the rest), except the engine's validation set: the decision threshold is fixed
      on it next, and a bank holding those images would vote for each one's own label.
      By ``network``, networks that share an id (``vae-a`` and ``vae-a+unet-b``) are held out together.
      ``holdout_significance``: a hold-out only steers what it can tell apart. When its best stage-1 AUC
      over the epochs is not above chance at this level (one-sided, normal approximation of an AUC's
      null spread for its class counts, Bonferroni over the epochs compared), the held-out network is
      one stage 1 cannot detect yet, and choosing an epoch or a fusion by its noise is a coin toss that
      varies with the seed: the last epoch is kept instead (``train_info`` says so:
      ``holdout_informative``). The fusion is judged the same way by its own best hold-out AUC
      (Bonferroni over the grid): retrieval often ranks a network stage 1 cannot, and then it is tuned;
      otherwise the default fusion stays (``holdout.tuned: false``; with the grid's largest alpha when
      retrieval leads, below). Measured before this rule: a seed whose hold-out was the
      undetectable inpainting network (hold-out AUC 0.58-0.63) kept epoch 7 of 20 and fell to 0.85 on
      the held-out resize-conv network, against 0.93-0.96 for seeds tuned on a detectable network.
      ``0`` trusts every hold-out (the rule off).
      ``retrieval_leads_at_chance``: when the kept stage 1 ranks the hold-out no better than chance
      (one-sided ``holdout_significance``, one comparison), only the largest alpha of the grid is
      tried (``holdout.retrieval_leads``): a stage 1 that cannot see an unseen network adds noise on
      the next one, and MFRM is the part meant to carry unseen generators. See ``bank.alphas_for``.
      Tried and not kept: holding the default fusion unless a tuned one beats it by one standard error
      of its hold-out AUC; it fell back to alpha 1 and ``dski`` dropped 0.924 -> 0.821 on one fold.

    MFRM (medical forensic retrieval module)
      ``use_mfrm``: at the end of ``fit`` the adapted, L2-normalised embeddings of a labelled support
      bank go into the ``retriever`` (a registered retriever name). ``bank_shots``: 0 = the whole
      training set, K = K images per (label, modality, generator). ``use_descriptor`` with
      ``descriptor_weight`` > 0 appends a fixed noise descriptor (the image's mean noise statistics
      minus those of white Gaussian noise, L2-normalised, times the weight) to each embedding:
      neighbours then share how an image was made, not only what it shows. It does not depend on the
      CDFA noise branch, so ``dski-no-noise`` keeps it and ``dski-no-descriptor`` drops it.
      Fusion (Tip-Adapter): affinities ``exp(-beta (1 - cos))`` of the ``top_k`` nearest references give
      fake and real evidence ``F`` and ``R`` (sums over the k neighbours divided by k); the fused logit
      is ``logit(p_stage1) + alpha (F - R)``. A query far from every reference has affinities near 0
      and keeps its stage-1 score; a top-k softmax vote would be as confident for far neighbours as
      for near ones. ``same_modality`` restricts the neighbours to the query's modality when known.
      ``alpha_grid`` x ``beta_grid`` x ``descriptor_grid`` (0 included) are tuned on the hold-out; ties
      (a hold-out stage 1 already ranks perfectly) go to the largest alpha (see ``mfrm.tune_fusion``).

    Local inconsistency (partial fakes; :mod:`mfx_dski.inconsistency`)
      ``use_inconsistency``: the fusion may add ``w x z`` to the fused logit, ``z`` = how far the
      smoothest token cell's noise energy lies below the image's median cell, standardised against the
      bank's training reals of the image's modality (``z = 0`` for a modality without them). An inpainted region re-synthesised by a decoder is
      smoother than the sensor noise around it; stage 1, trained on whole-image fakes, does not see it.
      ``inconsistency_weight`` is ``w`` when nothing is tuned (0: off). After (alpha, beta, descriptor
      weight) are tuned, ``w`` is the largest of ``inconsistency_grid`` that costs the hold-out's fused AUC
      at most ``inconsistency_tolerance`` (0 when every one costs more): the hold-out holds a whole-image
      generator, never a partial fake, so it can only say how much of the score whole-image detection
      tolerates, not how much partial fakes need. Works with MFRM only (the fused logit is MFRM's).
    """

    # backbone
    clip_model: str = "ViT-L-14"
    pretrained: str = "openai"
    backbone_seed: int = 0
    preprocess_mode: str = "crop"
    eval_views: int = 1
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
    noise_extractors: tuple[str, ...] = ("noise-stats", "grid-phase")
    noise_heads: int = 4
    noise_dropout: float = 0.2
    noise_weight_decay: float = 0.05
    noise_cache_mb: float = 2048.0
    trace_extractor: str = dataclasses.field(default="npr",
                                                metadata={"plugin_kind": "noise_extractor", "optional": True})
    trace_channels: int = 16
    # training
    lr: float = 4e-4
    epochs: int = 25
    batch_size: int = 256
    lr_decay: float = 0.9
    lr_decay_every: int = 10
    contrastive_weight: float = 0.1
    contrastive_temperature: float = 0.1
    aug_blur_prob: float = 0.1
    aug_resample_prob: float = 0.1
    aug_jpeg_prob: float = 0.1
    aug_noise_prob: float = 0.1
    self_blend_share: float = 0.0
    select_best_epoch: bool = True
    average_last_fraction: float = 0.0
    max_grad_norm: float = 0.0
    # tuning
    tune_holdout: str = "network"
    holdout_significance: float = 0.05
    retrieval_leads_at_chance: bool = True
    # MFRM
    use_mfrm: bool = True
    retriever: str = "faiss-flat"
    bank_shots: int = 0
    use_descriptor: bool = True
    descriptor_weight: float = 0.5
    top_k: int = 16
    same_modality: bool = False
    mfrm_alpha: float = 1.0
    mfrm_beta: float = 5.0
    alpha_grid: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    beta_grid: tuple[float, ...] = (1.0, 5.0, 20.0)
    descriptor_grid: tuple[float, ...] = (0.0, 0.5, 1.0)
    use_inconsistency: bool = True
    inconsistency_weight: float = 0.0
    inconsistency_grid: tuple[float, ...] = (0.25, 0.5, 1.0)
    inconsistency_tolerance: float = 0.005

    legacy_values: typing.ClassVar[dict[str, typing.Any]] = {"trace_extractor": ""}
    """What a checkpoint saved before a key existed meant by it (see ``config_from_dict``)."""

# The tiny preset runs on a random-init 2-block CLIP in seconds on a CPU. Its real and fake prompts are
# nearly parallel (cosine 0.93-0.96: a random text tower barely separates the words), so the image
# embedding must move far within a few hundred steps: hence adapter scale 1.0 and lr 5e-3 instead of 0.1 and 4e-4.
# 20 epochs, not 10: at 10 the loss was still falling on most runs, and on 2 of 15 leave-one-network-out
# fold-seeds of MedForensics-mini stage 1 never left chance (loss 1.66 -> 1.59, hold-out AUC 0.49 and 0.72).
# Chosen on the *tuning* hold-out inside each fold's training data (mean stage-1 AUC over the 12 fold-seeds
# whose hold-out is detectable: 0.899 at 10 epochs, 0.966 at 20, lowest 0.491 -> 0.898), against dropping
# the noise-branch dropout (0.946, lowest 0.865); see docs/explanations/dski.md.
TINY = {
    "clip_model": "mfx-tiny-clip",
    "pretrained": "random",
    "eval_views": 2,
    "n_ctx": 4,
    "num_adapters": 2,
    "bottleneck_dim": 16,
    "adapter_scale": 1.0,
    "noise_heads": 2,
    "lr": 5e-3,
    "epochs": 20,
    "batch_size": 16,
    "top_k": 8,
    "average_last_fraction": 0.5,
}

PRESETS = {"tiny": TINY}
