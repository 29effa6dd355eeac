"""Parity of the baselines with their official code, piece by piece, on identical inputs.

Each "official" function below is our own rewrite of the formula in the
official repository (read, never copied; file and line in
docs/explanations/baselines.md), and each test runs it and the mfx code on the
same tensors or the same scripted sequence. The measured max abs difference of
every piece is printed (``pytest -s``) so the docs table can quote it.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from medforensics_core.backbones import load_clip
from medforensics_core.engine.schedules import Schedule, ScheduleState
from medforensics_core.errors import WeightsNotFoundError
from medforensics_core.plugins import get_registry


def report(piece: str, value: float) -> None:
    print(f"\nPARITY {piece}: max abs difference {value:.3g}")


# --------------------------------------------------------------------------- CLIP activation (QuickGELU)


@pytest.fixture(scope="module")
def tiny_clip_file(tmp_path_factory):
    """A locally saved open_clip checkpoint (the tiny CLIP's random weights) and its reference model."""
    original = load_clip("mfx-tiny-clip", "random", seed=3)
    path = tmp_path_factory.mktemp("weights") / "tiny-clip.pt"
    torch.save(original.model.state_dict(), path)
    return path, original.model.state_dict()


def reference_encode(state: dict, quick_gelu: bool, images: torch.Tensor) -> torch.Tensor:
    import open_clip

    model = open_clip.create_model("mfx-tiny-clip", force_quick_gelu=quick_gelu)
    model.load_state_dict(state)
    with torch.no_grad():
        return model.eval().encode_image(images)


def test_openai_tagged_local_checkpoint_builds_quick_gelu(tiny_clip_file):
    path, state = tiny_clip_file
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for spec in (f"openai:{path}", str(path.with_name("x"))):
        if spec.endswith("x"):  # the tag spelled in the file name, as in ViT-L-14-openai.pt
            spec = str(path.with_name("tiny-clip-openai.pt"))
            path.with_name("tiny-clip-openai.pt").write_bytes(path.read_bytes())
        backbone = load_clip("mfx-tiny-clip", spec)
        assert backbone.activation == "QuickGELU" and "QuickGELU" in backbone.weights_info
        with torch.no_grad():
            ours = backbone.model.encode_image(images)
        torch.testing.assert_close(ours, reference_encode(state, True, images), rtol=0, atol=1e-6)
        assert (ours - reference_encode(state, False, images)).abs().max() > 1e-4  # GELU would differ
    untagged = load_clip("mfx-tiny-clip", str(path))
    assert untagged.activation == "GELU"
    report("CLIP activation for openai weights (QuickGELU encode vs open_clip force_quick_gelu)",
           float((ours - reference_encode(state, True, images)).abs().max()))


def test_univfd_full_recipe_asks_for_quick_gelu_openai_weights(tiny_clip_file):
    path, _ = tiny_clip_file
    cls = get_registry().detector("univfd")
    detector = cls(cls.make_config("tiny", pretrained=f"openai:{path}"))
    assert detector.backbone.activation == "QuickGELU"
    assert cls.make_config().pretrained == "openai"


def test_quick_gelu_model_with_gelu_trained_weights_fails_in_one_line(tiny_clip_file):
    path, _ = tiny_clip_file
    with pytest.raises(WeightsNotFoundError, match="trained with GELU") as info:
        load_clip("ViT-B-32-quickgelu", f"laion2b_s34b_b79k:{path}")
    assert "\n" not in str(info.value)


def test_weights_that_do_not_fit_the_model_fail_in_one_line(tiny_clip_file):
    path, _ = tiny_clip_file
    with pytest.raises(WeightsNotFoundError, match="cannot load ViT-B-32") as info:
        load_clip("ViT-B-32", f"openai:{path}")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- schedules and early stopping


class OfficialEarlyStopping:
    """CNNDetection earlystop.py: ``score < best - delta`` (delta negative) is no improvement."""

    def __init__(self, patience: int, delta: float):
        self.patience, self.delta, self.best, self.counter, self.early_stop = patience, delta, None, 0, False
        self.saved = False

    def __call__(self, score: float) -> None:
        self.saved = False
        if self.best is None:
            self.best, self.saved = score, True
        elif score < self.best - self.delta:
            self.counter += 1
            self.early_stop = self.counter >= self.patience
        else:
            self.best, self.saved, self.counter = score, True, 0


def official_early_stopping_run(scores: list[float], lr: float, patience: int = 5) -> dict:
    """CNNDetection/UniversalFakeDetect train.py loop: lr per epoch, save epochs, the epoch training stops."""
    stopper = OfficialEarlyStopping(patience, -0.001)
    lrs, saves, stop = [], [], None
    for epoch, score in enumerate(scores):
        lrs.append(lr)
        stopper(score)
        if stopper.saved:
            saves.append(epoch)
        if stopper.early_stop:
            lr /= 10.0  # adjust_learning_rate, then its min_lr check
            if lr < 1e-6:
                stop = epoch
                break
            stopper = OfficialEarlyStopping(patience, -0.002)
    return {"lr": lrs, "saves": saves, "stop": stop}


def mfx_schedule_run(schedule: Schedule, scores: list[float | None], lr: float) -> dict:
    """The same sequence through mfx's decision rule, applying its lr decisions as train_binary does."""
    from medforensics_core.engine.schedules import apply_lr_decision

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    state, lrs, saves, stop = ScheduleState(schedule), [], [], None
    for epoch, score in enumerate(scores):
        current = optimizer.param_groups[0]["lr"]
        lrs.append(current)
        decision = state.end_epoch(epoch, score, current)
        if decision.saved:
            saves.append(epoch)
        if decision.stop:
            stop = epoch
            break
        apply_lr_decision(optimizer, decision)
    return {"lr": lrs, "saves": saves, "stop": stop}


# Validation accuracies: a gain of 0.0015 (an improvement before the first lr drop, not after it),
# a gain of 0.0005 (never), a worse score right after a drop (saved: the stopper starts afresh), plateaus.
SCRIPTED_SCORES = ([0.60, 0.70, 0.7015, 0.702, 0.70, 0.70, 0.70, 0.70]
                   + [0.65, 0.6515, 0.653, 0.65, 0.65, 0.65, 0.65, 0.65]
                   + [0.66] * 6 + [0.9] * 4)
EXPECTED = {"saves": [0, 1, 2, 8, 10, 16], "stop": 21}


@pytest.mark.parametrize("name", ["cnnspot", "univfd"])
def test_early_stopping_decisions_match_the_official_loop(name):
    cls = get_registry().detector(name)
    cfg = cls.make_config()
    schedule = Schedule(len(SCRIPTED_SCORES), patience=cfg.patience, first_delta=cfg.first_delta, delta=cfg.delta,
                        lr_drop=cfg.lr_drop, min_lr=cfg.min_lr, keep=cfg.model_selection)
    ours = mfx_schedule_run(schedule, SCRIPTED_SCORES, cfg.lr)
    official = official_early_stopping_run(SCRIPTED_SCORES, cfg.lr)
    assert official["saves"] == EXPECTED["saves"] and official["stop"] == EXPECTED["stop"]  # the script's point
    assert ours["saves"] == official["saves"] and ours["stop"] == official["stop"]
    assert len(ours["lr"]) == len(official["lr"])
    difference = max(abs(a - b) for a, b in zip(ours["lr"], official["lr"]))
    assert difference == 0.0
    report(f"{name} early-stop decisions + lr per epoch ({len(ours['lr'])} epochs, stop at {ours['stop']})",
           difference)


def official_npr_lrs(epochs: int, lr: float, delr_freq: int) -> list[float]:
    """NPR train.py: after epoch ``e`` (0-based), if ``e % delr_freq == 0 and e != 0``: lr *= 0.9."""
    lrs = []
    for epoch in range(epochs):
        lrs.append(lr)
        if epoch % delr_freq == 0 and epoch != 0:
            lr *= 0.9
    return lrs


def test_npr_lr_at_every_epoch_matches_the_official_step_decay():
    cls = get_registry().detector("npr")
    cfg = cls.make_config()
    schedule = Schedule(cfg.epochs, decay_every=cfg.lr_decay_every, decay=cfg.lr_decay, keep=cfg.model_selection)
    ours = mfx_schedule_run(schedule, [None] * cfg.epochs, cfg.lr)["lr"]
    official = official_npr_lrs(cfg.epochs, cfg.lr, 10)
    assert len(ours) == 50 and ours == official
    assert ours[10] == 2e-4 and ours[11] == pytest.approx(1.8e-4) and ours[49] == pytest.approx(2e-4 * 0.9**4)
    report("npr lr at each of 50 epochs", max(abs(a - b) for a, b in zip(ours, official)))


def test_model_selection_keeps_the_last_save_or_the_last_epoch(monkeypatch):
    """CNNSpot restores the stopper's last save (which follows each lr drop); NPR and UnivFD keep the last epoch."""
    from medforensics_core.engine.context import FitContext
    from medforensics_core.engine.schedules import train_binary

    for keep, expected_epoch in (("last-saved", 2), ("last", 4)):
        module = torch.nn.Linear(1, 1)
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        seen = []

        def predict(batch, module=module):
            return np.full(len(batch), 1.0)

        def loader(epoch, module=module):
            with torch.no_grad():
                module.bias.fill_(float(epoch + 1))
            seen.append(epoch)
            return []

        scores = iter([0.5, 0.9, 0.6, 0.6])  # validation accuracy after epochs 1-4: the best is epoch 2
        monkeypatch.setattr("medforensics_core.engine.schedules.accuracy", lambda *args: next(scores))
        info = train_binary(module, module, predict, optimizer, loader, [(torch.zeros(1, 1), torch.ones(1), 0)],
                            FitContext(), Schedule(4, patience=5, keep=keep), "test")
        assert float(module.bias.detach()) == expected_epoch and info["epochs"] == 4 and len(info["lr"]) == 4
