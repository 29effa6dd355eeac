"""The CLIP-era peers of DSKI (fatformer, rine): their recipes, the open_clip pieces they drive, training, state.

Reference formulas here are rewritten from reading the official code (FatFormer:
Michel-liu/FatFormer; RINE: mever-team/rine), never copied: RINE's forward hooks
on every ``ln_2``, FatFormer's stage rule ``(i + 1) * (layers // n) - 1``, the
pywt Haar DWT, SupCon as a per-anchor loop.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import pywt
import torch
from sklearn.metrics import roc_auc_score

from medforensics_core.backbones import load_clip
from medforensics_core.clip_parts import (block_class_tokens, encode_text_embeddings, evenly_spaced_blocks,
                                          project_tokens, run_image_tower, used_length)
from medforensics_core.data.dataset import ImageSet
from medforensics_core.data.manifest import read_manifest
from medforensics_core.engine.context import FitContext
from medforensics_core.engine.evaluate import score
from medforensics_core.errors import CheckpointError
from medforensics_core.plugins import get_registry

PEERS = ("fatformer", "rine")
# Held-out AUC on the v1 quick build with the tiny presets (random tiny CLIP), seed 0 on CPU:
# fatformer 0.74, rine 0.71 (univfd 0.65 on the same backbone). These are mechanics tests (it learns,
# saves, reloads): on the v2 build's realistic fakes tiny random-init detectors sit near chance.
MIN_TEST_AUC = {"fatformer": 0.62, "rine": 0.6}


@pytest.fixture(scope="module")
def splits(quick_benchmark_v1):
    manifest = read_manifest(Path(quick_benchmark_v1) / "manifest.csv")
    return {name: ImageSet(manifest.split(name)) for name in ("train", "val", "test")}


@pytest.fixture(scope="module")
def trained(splits, tmp_path_factory):
    cache = tmp_path_factory.mktemp("peer-cache")
    out = {}
    for name in PEERS:
        detector = get_registry().detector(name)(preset="tiny")
        ctx = FitContext(seed=0, cache_dir=cache)
        start = time.perf_counter()
        detector.fit(splits["train"], splits["val"], ctx)
        out[name] = (detector, score(detector, splits["test"], ctx), time.perf_counter() - start, ctx)
    return out


@pytest.fixture(scope="module")
def tiny_clip():
    return load_clip("mfx-tiny-clip", "random", seed=3)


# --------------------------------------------------------------------------- the open_clip pieces


def test_tower_pieces_reproduce_encode_image_and_encode_text(tiny_clip):
    model = tiny_clip.model
    images = torch.randn(3, 3, 64, 64)
    tokens = run_image_tower(model.visual, images)
    assert torch.allclose(project_tokens(model.visual, tokens)[:, 0], model.encode_image(images), atol=1e-5)
    text = tiny_clip.tokenizer(["X X X X real.", "a much longer prompt about a fake CT image."])
    length = used_length(text, model)
    assert length < text.shape[1]  # the padding is cut
    from_embeddings = encode_text_embeddings(model, model.token_embedding(text[:, :length]), text)
    assert torch.allclose(from_embeddings, model.encode_text(text), atol=1e-5)


def test_block_class_tokens_are_what_hooks_on_every_ln_2_see(tiny_clip):
    """RINE's official code registers a forward hook on every ``ln_2`` and keeps token 0 of its output."""
    visual = tiny_clip.model.visual
    seen = []
    hooks = [block.ln_2.register_forward_hook(lambda mod, inp, out: seen.append(out))
             for block in visual.transformer.resblocks]
    images = torch.randn(2, 3, 64, 64)
    try:
        tiny_clip.model.encode_image(images)
    finally:
        for hook in hooks:
            hook.remove()
    reference = torch.stack([out[:, 0] for out in seen], dim=1)
    assert torch.allclose(block_class_tokens(visual, images), reference, atol=1e-6)


@pytest.mark.parametrize("layers,count", [(24, 3), (24, 2), (24, 4), (12, 3), (24, 8)])
def test_adapter_blocks_follow_fatformers_stage_rule(layers, count):
    official = tuple((i + 1) * (layers // count) - 1 for i in range(count))
    assert evenly_spaced_blocks(layers, count) == official


# --------------------------------------------------------------------------- fatformer


def test_fatformer_full_preset_is_the_paper_recipe():
    cfg = get_registry().detector("fatformer").make_config()
    assert (cfg.clip_model, cfg.pretrained, cfg.adapters, cfg.bottleneck, cfg.adapter_scale) == \
        ("ViT-L-14", "openai", 3, 64, 0.1)
    assert (cfg.n_ctx, tuple(cfg.class_names), cfg.wavelet) == (8, ("real", "fake"), "haar")
    assert (cfg.lr, tuple(cfg.betas), cfg.batch_size, cfg.epochs) == (4e-4, (0.9, 0.999), 256, 25)
    assert (cfg.lr_step_every, cfg.lr_step_gamma, cfg.load_size, cfg.flip) == (10, 0.9, 256, True)
    assert evenly_spaced_blocks(24, cfg.adapters) == (7, 15, 23)


def test_haar_dwt_matches_pywt_and_inverts_exactly():
    from mfx_fatformer.modules import dwt_level, haar_kernels, idwt_level

    kernels = haar_kernels()
    maps = torch.randn(2, 5, 8, 6, dtype=torch.float64)
    bands = dwt_level(maps, kernels.double())
    approx, (horizontal, vertical, diagonal) = pywt.dwt2(maps[1, 3].numpy(), "haar")
    for index, expected in enumerate((approx, horizontal, vertical, diagonal)):
        assert np.allclose(bands[1, 3, index].numpy(), expected, atol=1e-12)
    assert torch.allclose(idwt_level(bands, kernels.double()), maps, atol=1e-12)


def test_fatformer_adapter_sits_beside_the_mlp_and_its_gate_starts_closed(tiny_clip):
    from mfx_fatformer.modules import ForgeryAwareAdapter

    visual = tiny_clip.model.visual
    adapter = ForgeryAwareAdapter(64, tuple(visual.grid_size), 16, 0.1, 0.0, 4, 16, "haar").eval()
    assert float(adapter.freq_scale.detach()) == 0.0  # frequency branch gated off at the start
    images = torch.randn(2, 3, 64, 64)
    plain = run_image_tower(visual, images)
    adapted = run_image_tower(visual, images, {1: adapter})
    assert not torch.allclose(plain, adapted)  # the image branch is live from the start
    # by hand: block 1 = x + mlp(ln_2 x) + adapter(x), x = tokens after block 1's attention
    from medforensics_core.clip_parts import attention_step

    block0, block1 = visual.transformer.resblocks
    x = attention_step(block1, block0(visual._embeds(images)))
    expected = x + block1.mlp(block1.ln_2(x)) + 0.1 * adapter.up(torch.relu(adapter.down(x)))
    assert torch.allclose(adapted, expected, atol=1e-5)
    with torch.no_grad():
        adapter.up.weight.zero_(), adapter.up.bias.zero_()
        adapter.freq_scale.fill_(1.0)
    assert not torch.allclose(run_image_tower(visual, images, {1: adapter})[:, 1:], plain[:, 1:])
    assert torch.allclose(run_image_tower(visual, images, {1: adapter})[:, 0], plain[:, 0], atol=1e-5)


def test_fatformer_logit_difference_is_two_class_cross_entropy(splits):
    detector = get_registry().detector("fatformer")(preset="tiny")
    batch = torch.stack([detector.preprocess(splits["test"][i][0]) for i in range(4)])
    labels = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        logits = detector.logits(batch)
        diff = detector.forward(batch)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(diff, labels.float())
    assert torch.allclose(ce, bce, atol=1e-5)
    assert np.allclose(detector.predict_proba(batch), torch.softmax(logits, 1)[:, 1].numpy(), atol=1e-6)


def test_fatformer_prompts_are_image_conditioned(splits):
    detector = get_registry().detector("fatformer")(preset="tiny")
    batch = torch.stack([detector.preprocess(splits["test"][i][0]) for i in (0, 200)])
    with torch.no_grad():
        model, clip = detector.ensure_model(), detector.backbone.model
        image = project_tokens(clip.visual, run_image_tower(clip.visual, batch))
        text = detector.text_features(model.alignment.image_context(image))
    assert text.shape == (2, 2, detector.backbone.embed_dim)
    assert not torch.allclose(text[0], text[1])  # two images, two sets of prompts


def test_fatformer_trains_only_adapters_and_alignment(splits, tmp_path):
    detector = get_registry().detector("fatformer")(get_registry().detector("fatformer").make_config(
        "tiny", epochs=1, flip=True))
    before = {k: v.clone() for k, v in detector.backbone.model.state_dict().items()}
    detector.fit(splits["train"].subset(range(0, 392, 16)), None, FitContext(seed=0, cache_dir=tmp_path))
    assert all(torch.equal(before[k], v) for k, v in detector.backbone.model.state_dict().items())
    assert not any(p.requires_grad for p in detector.backbone.model.parameters())
    grads = {name: p.grad for name, p in detector.model.named_parameters()}
    assert grads["alignment.context"] is not None and grads["adapters.0.down.weight"] is not None
    assert set(detector.state_tensors()) == {f"model.{k}" for k in detector.model.state_dict()}


# --------------------------------------------------------------------------- rine


def test_rine_full_preset_is_the_papers_best_four_class_model():
    cfg = get_registry().detector("rine").make_config()
    assert (cfg.clip_model, cfg.pretrained, cfg.proj_layers, cfg.proj_dim, cfg.dropout) == \
        ("ViT-L-14", "openai", 2, 1024, 0.5)
    assert (cfg.contrastive_factor, cfg.temperature, cfg.lr, cfg.batch_size, cfg.epochs) == (0.2, 0.07, 1e-3, 128, 1)
    assert (cfg.blur_prob, tuple(cfg.blur_sigma), cfg.jpeg_prob, tuple(cfg.jpeg_qualities), cfg.flip) == \
        (0.5, (0.0, 3.0), 0.5, (30, 100), True)
    # official: lr = 1e-3 / 10 ** k at the start of epochs 6 and 11 (k = drops so far), for up to 15 epochs
    lrs, lr = [], cfg.lr
    for epoch in range(15):
        lrs.append(lr)
        if (epoch + 1) % cfg.lr_drop_every == 0:
            lr /= cfg.lr_drop
    official = [1e-3 / 10 ** sum(epoch + 1 >= m for m in (6, 11)) for epoch in range(15)]
    assert np.allclose(lrs, official)


def test_rine_head_shapes_and_block_softmax():
    from mfx_rine.model import RINEHead

    head = RINEHead(blocks=24, width=1024, dim=1024, layers=2, dropout=0.5).eval()
    logit, embedding = head(torch.randn(3, 24, 1024))
    assert logit.shape == (3,) and embedding.shape == (3, 1024)
    linears = [m for m in head.first if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1024, 1024), (1024, 1024)]
    assert torch.allclose(torch.softmax(head.alpha, 1).sum(1), torch.ones(1, 1024))


class OfficialRineTrainable(torch.nn.Module):
    """The trainable part of RINE's ``Model`` (mever-team/rine ``src/models.py:43-89``), rewritten: alpha, proj1 and
    proj2 (Dropout, then nproj x Linear/ReLU/Dropout), the three-layer head; forward from the hooked tokens."""

    def __init__(self, blocks: int, width: int, nproj: int, proj_dim: int):
        super().__init__()
        self.alpha = torch.nn.Parameter(torch.randn([1, blocks, proj_dim]))
        nn = torch.nn

        def stack(first_in: int) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Dropout()]
            for i in range(nproj):
                layers += [nn.Linear(first_in if i == 0 else proj_dim, proj_dim), nn.ReLU(), nn.Dropout()]
            return nn.Sequential(*layers)

        self.proj1, self.proj2 = stack(width), stack(proj_dim)
        self.head = nn.Sequential(nn.Linear(proj_dim, proj_dim), nn.ReLU(), nn.Dropout(), nn.Linear(proj_dim, proj_dim),
                                  nn.ReLU(), nn.Dropout(), nn.Linear(proj_dim, 1))

    def forward(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.proj1(g.float())
        z = torch.sum(torch.softmax(self.alpha, dim=1) * g, dim=1)
        z = self.proj2(z)
        return self.head(z), z


def test_rine_head_forward_equals_the_official_model_on_the_same_weights():
    from mfx_rine.model import RINEHead

    torch.manual_seed(0)
    ours = RINEHead(blocks=6, width=32, dim=16, layers=2, dropout=0.5).eval()
    official = OfficialRineTrainable(blocks=6, width=32, nproj=2, proj_dim=16).eval()
    renamed = {"first": "proj1", "second": "proj2", "classifier": "head", "alpha": "alpha"}
    official.load_state_dict({renamed[k.split(".")[0]] + k[len(k.split(".")[0]):]: v
                              for k, v in ours.state_dict().items()}, strict=True)
    tokens = torch.randn(5, 6, 32)  # (N, blocks, width): the class token each ln_2 hook saw
    logit, embedding = ours(tokens)
    p, z = official(tokens)
    assert torch.equal(logit, p.reshape(-1)) and torch.equal(embedding, z)


@pytest.mark.parametrize("layers,dim,official", [(1, 128, 183937), (2, 1024, 6323201), (4, 1024, 10521601),
                                                 (2, 256, 597761)])
def test_rine_trainable_parameters_match_the_official_counts(layers, dim, official):
    """The official repo lists its trainable parameter counts for ViT-L/14 (scripts/results.py)."""
    from mfx_rine.model import RINEHead

    head = RINEHead(blocks=24, width=1024, dim=dim, layers=layers, dropout=0.5)
    assert sum(p.numel() for p in head.parameters()) == official


def test_supervised_contrastive_matches_a_per_anchor_loop():
    from mfx_rine.model import supervised_contrastive

    torch.manual_seed(0)
    z, labels, t = torch.randn(7, 5), torch.tensor([0, 1, 1, 0, 1, 0, 2]), 0.07
    f = torch.nn.functional.normalize(z, dim=1)
    losses = []
    for i in range(7):
        others = [j for j in range(7) if j != i]
        denominator = torch.logsumexp(torch.stack([f[i] @ f[j] / t for j in others]), 0)
        positives = [j for j in others if labels[j] == labels[i]]
        losses.append(-sum(f[i] @ f[j] / t - denominator for j in positives) / max(len(positives), 1)
                      if positives else torch.tensor(0.0))
    assert torch.allclose(supervised_contrastive(z, labels, t), torch.stack(losses).mean(), atol=1e-5)


def test_rine_augmentation_draws_follow_the_official_code():
    from mfx_rine.detector import RineAugment

    augment = RineAugment(get_registry().detector("rine").make_config())
    generator = torch.Generator().manual_seed(0)
    draws = [augment.draw(generator) for _ in range(4000)]
    assert {d.quality for d in draws} == {30, 100}  # a choice of two values, not a range
    assert abs(np.mean([d.blur for d in draws]) - 0.5) < 0.03
    assert abs(np.mean([d.jpeg for d in draws]) - 0.5) < 0.03
    sigmas = [d.sigma for d in draws]
    assert 0.0 <= min(sigmas) < 0.05 and 2.95 < max(sigmas) <= 3.0


def test_rine_tiny_caches_the_intermediate_tokens(trained, splits):
    detector, _, _, ctx = trained["rine"]
    assert detector.train_info["feature_cache"]["misses"] == len(splits["train"]) + len(splits["val"])
    again = get_registry().detector("rine")(preset="tiny").fit(splits["train"], None, ctx)
    assert again.train_info["feature_cache"] == {"hits": len(splits["train"]), "misses": 0}
    assert len(detector.train_info["block_importance"]) == 2


# --------------------------------------------------------------------------- both


@pytest.mark.parametrize("name", PEERS)
def test_peer_beats_chance_on_held_out_split(trained, splits, name):
    _, scores, _, _ = trained[name]
    assert roc_auc_score(splits["test"].labels, scores) >= MIN_TEST_AUC[name]


@pytest.mark.parametrize("name", PEERS)
def test_peer_save_load_round_trip(trained, splits, tmp_path, name):
    detector, scores, _, ctx = trained[name]
    path = detector.save(tmp_path / f"{name}.safetensors")
    loaded = get_registry().detector(name).load(path)
    assert np.allclose(score(loaded, splits["test"], ctx), scores, atol=1e-5)
    with pytest.raises(CheckpointError):
        get_registry().detector(PEERS[1 - PEERS.index(name)]).load(path)


@pytest.mark.parametrize("name", PEERS)
def test_peer_reports_random_init(trained, name):
    detector = trained[name][0]
    assert "NOT pretrained" in detector.weights_info()
    assert any("randomly initialised" in w for w in detector.warnings())


def test_rine_keeps_the_last_epoch_validation_only_reported(trained, splits):
    """Official RINE prints validation accuracy but keeps the last epoch: a validation split changes nothing."""
    detector, scores, _, ctx = trained["rine"]
    without_val = get_registry().detector("rine")(preset="tiny").fit(splits["train"], None, ctx)
    assert np.allclose(score(without_val, splits["test"], ctx), scores, atol=1e-6)
    assert "val_acc" in detector.train_info and "best_val_acc" not in detector.train_info


def test_bad_peer_configs_fail_in_one_line():
    from medforensics_core.errors import ConfigError

    with pytest.raises(ConfigError, match="dropout"):
        get_registry().detector("rine").make_config("tiny", dropout=1.5)
    with pytest.raises(ConfigError, match="jpeg_qualities"):
        get_registry().detector("rine").make_config(jpeg_qualities="30,120")
    with pytest.raises(ConfigError, match="adapters"):
        get_registry().detector("fatformer").make_config("tiny", adapters=0)
    cls = get_registry().detector("fatformer")
    with pytest.raises(ConfigError, match="adapter_heads"):  # 64-wide tiny blocks, 5 heads
        cls(cls.make_config("tiny", adapter_heads=5)).ensure_model()
    with pytest.raises(ConfigError, match="normalisation"):
        cls(cls.make_config("tiny", normalisation="zscore"))
