"""How hard each generator setting is: held-out AUC of a trivial detector, leave one generator out.

A benchmark on which every detector scores AUC 1.0 cannot rank detectors. The
probe here is the classic radial power-spectrum + logistic-regression detector
(``freq``, asked from the registry by name): for each setting G it trains on
the training reals plus the training fakes of every *other* setting, and is
scored on the test reals plus the test fakes of G. A setting on which this
probe stays well below AUC 1.0 leaves traces a spectrum cannot see, and is
where better detectors can show what they add.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..data.dataset import ImageSet
from ..data.manifest import Manifest, read_manifest
from ..engine.context import FitContext
from ..engine.evaluate import score
from ..plugins import get_registry


@dataclasses.dataclass
class HeldOutResult:
    """Held-out AUC of the probe on one generator setting."""

    setting: str
    auc: float
    train_images: int
    test_images: int


def leave_one_generator_out(dataset: Path, *, detector: str = "freq", preset: str | None = None,
                            seed: int = 0, max_train: int | None = 1500, progress=None) -> list[HeldOutResult]:
    """Held-out AUC per generator setting of ``dataset`` (a folder holding manifest.csv).

    Training uses at most ``max_train`` images (a seeded, label-stratified
    draw) so a default build is probed in minutes; testing uses every test fake
    of the held-out setting and as many test reals (balanced, so AUC is not
    dominated by the reals shared between folds).
    """
    from sklearn.metrics import roc_auc_score

    manifest = read_manifest(Path(dataset) / "manifest.csv")
    settings = sorted({r.generator for r in manifest.rows if r.label == 1})
    detector_cls = get_registry().detector(detector)
    rng = np.random.default_rng(seed)
    results = []
    iterator = settings if progress is None else progress(settings, len(settings), "leave-one-generator-out")
    for held_out in iterator:
        train_rows = [r for r in manifest.rows if r.split == "train" and r.generator != held_out]
        fakes = [r for r in manifest.rows if r.split == "test" and r.generator == held_out]
        reals = [r for r in manifest.rows if r.split == "test" and r.label == 0]
        test_rows = fakes + _draw(reals, len(fakes), rng)
        train = ImageSet(Manifest(_stratified(train_rows, max_train, rng), manifest.root))
        test = ImageSet(Manifest(test_rows, manifest.root))
        ctx = FitContext(seed=seed)
        model = detector_cls(preset=preset).fit(train, None, ctx)
        auc = float(roc_auc_score(test.labels, score(model, test, ctx)))
        results.append(HeldOutResult(held_out, auc, len(train), len(test)))
    return results


def _draw(rows: list, count: int, rng: np.random.Generator) -> list:
    if count >= len(rows):
        return list(rows)
    return [rows[i] for i in np.sort(rng.choice(len(rows), size=count, replace=False))]


def _stratified(rows: list, limit: int | None, rng: np.random.Generator) -> list:
    """At most ``limit`` rows keeping the real/fake proportion."""
    if limit is None or len(rows) <= limit:
        return rows
    reals = [r for r in rows if r.label == 0]
    fakes = [r for r in rows if r.label == 1]
    n_reals = round(limit * len(reals) / len(rows))
    return _draw(reals, n_reals, rng) + _draw(fakes, limit - n_reals, rng)


def hard_settings(results: list[HeldOutResult], threshold: float = 0.9) -> list[str]:
    """Settings on which the probe's held-out AUC stays below ``threshold``."""
    return [r.setting for r in results if r.auc < threshold]


__all__ = ["HeldOutResult", "hard_settings", "leave_one_generator_out"]
