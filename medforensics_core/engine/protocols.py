"""Evaluation protocols: each one a small strategy that cuts a dataset into train/test folds.

A protocol answers one question: *which images train, which images test?*
The engine runs every detector on every fold the protocol returns, identically.
Protocols are looked up by name in :data:`PROTOCOLS`, so adding one is adding
one function, never an ``if protocol == ...`` branch elsewhere.

* ``in-domain``: train on the train split, test on the test split (all generators);
* ``leave-one-generator-out``: one fold per fake generator ``g``: train on reals
  and the other generators' fakes, test on the test reals plus ``g``'s fakes;
* ``cross-modality``: train on ``--train-modalities``, test on every other modality;
* ``few-shot``: hold one generator out as in leave-one-generator-out, then give
  detectors that declare a reference bank (:class:`~medforensics_core.contract.ReferenceBank`) ``--shots``
  support fakes of it from the train split and score again.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..data.dataset import ImageSet
from ..data.manifest import Manifest
from ..errors import MfxError

REAL = "real"


class DataBundle:
    """A dataset decoded once: one :class:`ImageSet` per split, built on first use, shared by every detector."""

    def __init__(self, manifest: Manifest, path: str | Path, *, on_bad: str = "fail", progress=None):
        self.manifest = manifest
        self.path = str(path)
        self.on_bad = on_bad
        self.progress = progress
        self._splits: dict[str, ImageSet] = {}

    def split(self, name: str) -> ImageSet:
        if name not in self._splits:
            self._splits[name] = ImageSet(self.manifest.split(name), on_bad=self.on_bad, progress=self.progress)
        return self._splits[name]

    def split_rows(self, name: str) -> Manifest:
        """The manifest rows of a split, without decoding anything."""
        return self.manifest.split(name)

    def fake_generators(self, split: str | None = None) -> list[str]:
        rows = self.manifest if split is None else self.manifest.split(split)
        return sorted({r.generator for r in rows.rows if r.label == 1})

    @property
    def skipped(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for images in self._splits.values():
            found.extend(s for s in images.skipped if s not in found)
        return found


@dataclasses.dataclass
class ProtocolOptions:
    """What the command line passes to a protocol."""

    test_split: str = "test"
    train_modalities: Sequence[str] = ()
    shots: int = 5
    holdout: str | None = None
    seed: int = 0


@dataclasses.dataclass
class Fold:
    """One train/test cut. Image sets are built lazily, so evaluating a checkpoint never decodes training images."""

    name: str
    make_train: Callable[[], ImageSet]
    make_val: Callable[[], ImageSet | None]
    make_test: Callable[[], ImageSet]
    make_support: Callable[[], ImageSet] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @functools.cached_property
    def train(self) -> ImageSet:
        return self.make_train()

    @functools.cached_property
    def val(self) -> ImageSet | None:
        return self.make_val()

    @functools.cached_property
    def test(self) -> ImageSet:
        return self.make_test()

    @functools.cached_property
    def support(self) -> ImageSet | None:
        return self.make_support() if self.make_support is not None else None


def _val_or_none(data: DataBundle, **conditions) -> ImageSet | None:
    if len(data.split_rows("val")) == 0:
        return None
    val = data.split("val").where(**conditions) if conditions else data.split("val")
    return val if len(val) else None


def in_domain(data: DataBundle, options: ProtocolOptions) -> list[Fold]:
    """Train on the train split, test on the test split: every generator and modality seen in training."""
    return [Fold("", lambda: data.split("train"), lambda: _val_or_none(data),
                 lambda: data.split(options.test_split))]


def _without_generator(data: DataBundle, held_out: str, options: ProtocolOptions) -> Fold:
    """Train on reals + every fake generator but ``held_out``; test on test reals + ``held_out``'s fakes."""
    seen = tuple(g for g in {r.generator for r in data.manifest.rows} if g != held_out)
    return Fold(held_out,
                lambda: data.split("train").where(generator=seen),
                lambda: _val_or_none(data, generator=seen),
                lambda: data.split(options.test_split).where(generator=(REAL, held_out)))


def leave_one_generator_out(data: DataBundle, options: ProtocolOptions) -> list[Fold]:
    """One fold per fake generator of the test split, each scored against the test reals."""
    generators = data.fake_generators(options.test_split)
    if len(generators) < 2:
        raise MfxError(f"leave-one-generator-out needs at least 2 fake generators in the {options.test_split!r} "
                       f"split of {data.path}; found {generators or 'none'}")
    return [_without_generator(data, g, options) for g in generators]


def cross_modality(data: DataBundle, options: ProtocolOptions) -> list[Fold]:
    """Train on the chosen modalities, test on all the others (the unseen-scanner/anatomy question)."""
    known = data.manifest.modalities
    chosen = tuple(options.train_modalities)
    if not chosen:
        raise MfxError(f"--protocol cross-modality needs --train-modalities (known: {', '.join(known)})")
    unknown = [m for m in chosen if m not in known]
    if unknown:
        raise MfxError(f"--train-modalities: unknown modality {', '.join(unknown)} (known: {', '.join(known)})")
    others = tuple(m for m in known if m not in chosen)
    if not others:
        raise MfxError("--train-modalities covers every modality; nothing is left to test on")
    return [Fold("", lambda: data.split("train").where(modality=chosen), lambda: _val_or_none(data, modality=chosen),
                 lambda: data.split(options.test_split).where(modality=others),
                 notes=[f"trained on {', '.join(chosen)}; tested on {', '.join(others)}"])]


def few_shot(data: DataBundle, options: ProtocolOptions) -> list[Fold]:
    """Hold one generator out; detectors with a reference bank then get ``shots`` of its training fakes."""
    generators = data.fake_generators(options.test_split)
    held_out = options.holdout or (generators[0] if generators else None)
    if held_out not in generators:
        raise MfxError(f"few-shot: generator {held_out!r} has no fakes in the {options.test_split!r} split "
                       f"(known: {', '.join(generators) or 'none'})")
    if options.shots < 1:
        raise MfxError(f"--shots must be at least 1, not {options.shots}")
    fold = _without_generator(data, held_out, options)
    fold.make_support = lambda: _support_shots(data.split("train"), held_out, options.shots, options.seed)
    fold.notes.append(f"few-shot: {held_out} held out of training; detectors with a reference bank then get "
                      f"{options.shots} of its training fakes ('+{options.shots}-shot' rows)")
    return [fold]


def _support_shots(train: ImageSet, generator: str, shots: int, seed: int) -> ImageSet:
    """``shots`` fakes of ``generator`` drawn from the training split with the run's seed."""
    candidates = [i for i, r in enumerate(train.rows) if r.generator == generator and r.label == 1]
    if not candidates:
        raise MfxError(f"few-shot: the train split has no fakes of {generator!r} to draw support images from")
    chosen = np.random.default_rng(seed).permutation(candidates)[:shots]
    return train.subset(sorted(int(i) for i in chosen))


PROTOCOLS: dict[str, Callable[[DataBundle, ProtocolOptions], list[Fold]]] = {
    "in-domain": in_domain,
    "leave-one-generator-out": leave_one_generator_out,
    "cross-modality": cross_modality,
    "few-shot": few_shot,
}


def make_folds(name: str, data: DataBundle, options: ProtocolOptions) -> list[Fold]:
    if name not in PROTOCOLS:
        raise MfxError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    if len(data.split_rows(options.test_split)) == 0:
        present = sorted({r.split for r in data.manifest.rows})
        raise MfxError(f"{data.path}: the {options.test_split!r} split is empty (splits present: "
                       f"{', '.join(repr(p) for p in present) or 'none'})")
    return PROTOCOLS[name](data, options)
