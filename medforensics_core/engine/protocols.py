"""Evaluation protocols: each one a small strategy that cuts a dataset into train/test folds.

A protocol answers one question: *which images train, which images test?*
The engine runs every detector on every fold the protocol returns, identically.
Protocols are looked up by name in :data:`PROTOCOLS`, so adding one is adding
one function, never an ``if protocol == ...`` branch elsewhere.

* ``in-domain``: train on the train split, test on the test split (all generators);
* ``leave-one-generator-out``: one fold per held-out unit (``--holdout-by``,
  below): train on reals and the other units' fakes, test on the test reals plus
  the unit's fakes;
* ``cross-modality``: train on ``--train-modalities``, test on every other modality;
* ``few-shot``: hold one generator out as in leave-one-generator-out, then give
  detectors that declare a reference bank (:class:`~medforensics_core.contract.ReferenceBank`) ``--shots``
  support fakes of it from the train split and score again.

**What is held out** (``--holdout-by``, leave-one-generator-out and few-shot):

* ``generator``: each generator setting alone (the v1 behaviour). When two
  settings share a trained network (``sdedit`` reuses ``ddpm``'s denoiser),
  the network's traces stay in training, and the fold's notes say so.
* ``network`` (the default): generator settings that share any trained network
  (the manifest's ``network`` column) are held out together, so no output of a
  held-out network reaches training. Settings with networks of their own are
  held out alone, exactly as with ``generator``. Network ids are per modality
  (one network per modality and setting); a fold holds the setting out in every
  modality at once.
* ``family``: every setting of one ``family`` (plus any setting that shares a
  network with it) is held out together: the unseen-architecture question.

In every fold, train, val and few-shot support images never share a
``source`` with a test image (a manifest whose given splits straddle a
source loses those training rows, and the fold's notes count them); since
detectors build their retrieval banks from the images they are given, no bank
sees a held-out network or a test source either. Without ``--holdout-by``, a
manifest that records no ``network`` at all falls back to ``generator``, with
a note; asking for ``network`` or ``family`` explicitly on such a manifest is
one error line naming what is missing.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable, Collection, Sequence

import numpy as np

from ..data.dataset import ImageSet
from ..data.manifest import Manifest, ManifestRow, linked_groups
from ..errors import MfxError

REAL = "real"
#: What leave-one-out protocols can hold out (``--holdout-by``); ``network`` is the default.
HOLDOUT_BY = ("generator", "network", "family")
DEFAULT_HOLDOUT_BY = "network"


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
        found: dict[tuple[str, str], None] = {}  # ordered set: 60k skipped files stay linear, not quadratic
        for images in self._splits.values():
            found.update(dict.fromkeys(images.skipped))
        return list(found)


@dataclasses.dataclass
class ProtocolOptions:
    """What the command line passes to a protocol."""

    test_split: str = "test"
    train_modalities: Sequence[str] = ()
    shots: int = 5
    holdout: str | None = None
    holdout_by: str | None = None  # None: "network", or "generator" when the manifest records no network
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
    holdout: dict | None = None  # what the fold holds out (leave-one-out protocols), for the report

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


RowTest = Callable[[ManifestRow], bool]


def _keep(images: ImageSet, wanted: RowTest) -> ImageSet:
    return images.subset([i for i, row in enumerate(images.rows) if wanted(row)])


def _test_sources(data: DataBundle, test_split: str, in_test: RowTest) -> frozenset[str]:
    """The sources of a fold's test images: nothing that shares one may train, validate or enter a bank."""
    return frozenset(r.source_key for r in data.split_rows(test_split).rows if in_test(r))


def _cut(data: DataBundle, name: str, options: ProtocolOptions, *, in_test: RowTest,
         in_train: RowTest = lambda row: True, notes: Sequence[str] = ()) -> Fold:
    """A fold whose train and val hold the rows ``in_train`` accepts, minus every source of the test rows."""
    test_sources = _test_sources(data, options.test_split, in_test)

    def trains(row: ManifestRow) -> bool:
        return in_train(row) and row.source_key not in test_sources

    fold = Fold(name,
                lambda: _keep(data.split("train"), trains),
                lambda: _val_or_none(data, trains),
                lambda: _keep(data.split(options.test_split), in_test),
                notes=list(notes))
    straddling = sum(1 for split in ("train", "val") if split != options.test_split
                     for r in data.split_rows(split).rows if in_train(r) and r.source_key in test_sources)
    if straddling:
        fold.notes.append(f"{straddling} train/val image(s) share a source with a test image and were left out "
                          "(the manifest's splits cut through those sources)")
    if data.manifest.splits_made:
        counts = {name: len(data.split_rows(name).rows) for name in ("train", "val", "test")}
        fold.notes.append(f"the dataset has no splits of its own: mfx cut it {data.manifest.splits_made} into "
                          f"train {counts['train']} / val {counts['val']} / test {counts['test']} images; this run "
                          f"tests on its {options.test_split} split (mfx data index DATA writes the cut to "
                          "manifest.csv, where it can be edited)")
    return fold


def _val_or_none(data: DataBundle, wanted: RowTest | None = None) -> ImageSet | None:
    if len(data.split_rows("val")) == 0:
        return None
    val = _keep(data.split("val"), wanted) if wanted is not None else data.split("val")
    return val if len(val) else None


def in_domain(data: DataBundle, options: ProtocolOptions) -> list[Fold]:
    """Train on the train split, test on the test split: every generator and modality seen in training."""
    return [_cut(data, "", options, in_test=lambda row: True)]


# --------------------------------------------------------------------------- what a leave-one-out fold holds out


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """One held-out unit: the generator settings a fold tests on, and the networks that made them."""

    name: str
    generators: frozenset[str]
    networks: frozenset[str]
    by: str

    def holds(self, row: ManifestRow) -> bool:
        """Whether ``row`` is held out of training: one of the unit's fakes or (unless by generator) its networks'."""
        if row.label != 1:
            return False
        return row.generator in self.generators or (self.by != "generator" and bool(row.networks & self.networks))

    def tests(self, row: ManifestRow) -> bool:
        """Whether ``row`` belongs in the fold's test set (with the test split's reals)."""
        return row.label == 0 or row.generator in self.generators

    def as_dict(self) -> dict:
        return {"by": self.by, "generators": sorted(self.generators), "networks": sorted(self.networks)}


def resolve_holdout_by(data: DataBundle, requested: str | None) -> tuple[str, list[str]]:
    """The unit to hold out and a note when the default had to fall back; a missing column is one error line."""
    check_holdout_by(requested)
    by = requested or DEFAULT_HOLDOUT_BY
    if by == "generator":
        return by, []
    fakes = [r for r in data.manifest.rows if r.label == 1]
    blank = [r for r in fakes if not getattr(r, by).strip()]
    if not blank:
        return by, []
    if requested is None and len(blank) == len(fakes):
        return "generator", [f"held out by generator: {data.path} records no network for its fakes, so settings "
                             "that share a trained network cannot be held out together (add a network column)"]
    option = f"--holdout-by {by}" + (" (the default)" if requested is None else "")
    if by not in data.manifest.columns:
        raise MfxError(f"{option}: {data.path} has no {by!r} column (which {_WHAT[by]} made each fake); "
                       "add it, or hold out by generator")
    if len(blank) == len(fakes):
        raise MfxError(f"{option}: no fake image in {data.path} records its {by} (the {by!r} column is "
                       "empty); fill it, or hold out by generator")
    raise MfxError(f"{option}: {len(blank)} of {len(fakes)} fake images in {data.path} have no {by} "
                   f"(first: {blank[0].path}); fill the {by!r} column, or hold out by generator")


_WHAT = {"network": "trained network", "family": "generator family"}


def check_holdout_by(value: str | None) -> None:
    """An unknown ``--holdout-by`` value is one error line (checked before any work)."""
    if value is not None and value not in HOLDOUT_BY:
        raise MfxError(f"--holdout-by must be {', '.join(HOLDOUT_BY[:-1])} or {HOLDOUT_BY[-1]}, not {value!r}")


def holdout_units(data: DataBundle, by: str, test_split: str) -> list[HeldOut]:
    """The units a leave-one-out protocol holds out, one per fold, for the generators of the test split.

    Generator settings are linked when they share a network (``by`` network or family) or a family
    (``by`` family); each connected group is one unit, so a network never sits on both sides of a fold.
    """
    fakes = [r for r in data.manifest.rows if r.label == 1]
    keys: dict[str, set[str]] = {r.generator: set() for r in fakes}
    for row in fakes:
        if by in ("network", "family"):
            keys[row.generator].update(f"network:{n}" for n in row.networks)
        if by == "family" and row.family:
            keys[row.generator].add(f"family:{row.family}")
    groups = linked_groups(keys)
    tested = set(data.fake_generators(test_split))
    units = []
    for members in groups:
        if members & tested:
            networks = frozenset(n for r in fakes if r.generator in members for n in r.networks)
            label = sorted({r.family for r in fakes if r.generator in members}) if by == "family" else sorted(members)
            units.append(HeldOut("+".join(label), frozenset(members), networks, by))
    return sorted(units, key=lambda u: u.name)


def _shared_network_note(data: DataBundle, unit: HeldOut) -> list[str]:
    """By generator: say which training generators share the held-out generator's networks (a known leak)."""
    if unit.by != "generator" or not unit.networks:
        return []
    sharing = sorted({r.generator for r in data.manifest.rows
                      if r.label == 1 and r.generator not in unit.generators and r.networks & unit.networks})
    if not sharing:
        return []
    return [f"{unit.name}: its network(s) also made {', '.join(sharing)}, which stay in training "
            "(--holdout-by network holds them out together)"]


def _held_out_fold(data: DataBundle, unit: HeldOut, options: ProtocolOptions, notes: Sequence[str]) -> Fold:
    """Train on reals + every fake the unit does not hold; test on the test reals + the unit's fakes."""
    fold = _cut(data, unit.name, options, in_test=unit.tests, in_train=lambda row: not unit.holds(row),
                notes=[*notes, *_shared_network_note(data, unit)])
    fold.holdout = unit.as_dict()
    return fold


def leave_one_generator_out(data: DataBundle, options: ProtocolOptions) -> list[Fold]:
    """One fold per held-out unit of the test split's generators, each scored against the test reals."""
    generators = data.fake_generators(options.test_split)
    if len(generators) < 2:
        raise MfxError(f"leave-one-generator-out needs at least 2 fake generators in the {options.test_split!r} "
                       f"split of {data.path}; found {generators or 'none'}")
    by, notes = resolve_holdout_by(data, options.holdout_by)
    units = holdout_units(data, by, options.test_split)
    if len(units) < 2:
        raise MfxError(f"leave-one-generator-out by {by}: the generators of {data.path} ({', '.join(generators)}) "
                       f"share one {by}, so nothing would be left to train on; hold out by generator")
    return [_held_out_fold(data, unit, options, notes) for unit in units]


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
    return [_cut(data, "", options, in_test=lambda row: row.modality in others,
                 in_train=lambda row: row.modality in chosen,
                 notes=[f"trained on {', '.join(chosen)}; tested on {', '.join(others)}"])]


def few_shot(data: DataBundle, options: ProtocolOptions) -> list[Fold]:
    """Hold one generator (and what ``--holdout-by`` ties to it) out; banks then get ``shots`` references per class."""
    generators = data.fake_generators(options.test_split)
    held_out = options.holdout or (generators[0] if generators else None)
    if held_out not in generators:
        raise MfxError(f"few-shot: generator {held_out!r} has no fakes in the {options.test_split!r} split "
                       f"(known: {', '.join(generators) or 'none'})")
    if options.shots < 1:
        raise MfxError(f"--shots must be at least 1, not {options.shots}")
    by, notes = resolve_holdout_by(data, options.holdout_by)
    unit = next(u for u in holdout_units(data, by, options.test_split) if held_out in u.generators)
    fold = _held_out_fold(data, unit, options, notes)
    test_sources = _test_sources(data, options.test_split, unit.tests)
    fold.make_support = lambda: _support_shots(
        _keep(data.split("train"), lambda row: row.source_key not in test_sources), unit, options.shots, options.seed)
    fold.notes.append(f"few-shot: {unit.name} held out of training; detectors with a reference bank then get "
                      f"{options.shots} of its training fakes and {options.shots} training reals of the same "
                      f"modalities ('+{options.shots}-shot' rows: K references per class)")
    return [fold]


def _support_shots(train: ImageSet, unit: HeldOut, shots: int, seed: int) -> ImageSet:
    """The few-shot references of a held-out unit: :func:`support_shots` of its generators."""
    return support_shots(train, unit.generators, shots, seed, name=unit.name)


def support_shots(train: ImageSet, generators: Collection[str], shots: int, seed: int,
                  name: str | None = None) -> ImageSet:
    """``shots`` fakes of ``generators`` and ``shots`` reals of the same modalities, drawn with ``seed``.

    References of both classes: fakes alone would pull every image that resembles
    them towards "fake", a new scanner's reals included; one real of the same
    modality per fake keeps the bank's evidence balanced where it grows.
    """
    candidates = [i for i, r in enumerate(train.rows) if r.label == 1 and r.generator in generators]
    if not candidates:
        raise MfxError(f"few-shot: the train split has no fakes of {name or ', '.join(sorted(generators))!r} "
                       f"to draw support images from")
    rng = np.random.default_rng(seed)
    fakes = [int(i) for i in rng.permutation(candidates)[:shots]]
    pools: dict[str, list[int]] = {}
    for i, row in enumerate(train.rows):
        if row.label == 0:
            pools.setdefault(row.modality, []).append(i)
    pools = {m: [int(i) for i in rng.permutation(members)] for m, members in sorted(pools.items())}
    reals = [pools[train.rows[i].modality].pop() for i in fakes if pools.get(train.rows[i].modality)]
    return train.subset(sorted(fakes + reals))


PROTOCOLS: dict[str, Callable[[DataBundle, ProtocolOptions], list[Fold]]] = {
    "in-domain": in_domain,
    "leave-one-generator-out": leave_one_generator_out,
    "cross-modality": cross_modality,
    "few-shot": few_shot,
}


def make_folds(name: str, data: DataBundle, options: ProtocolOptions) -> list[Fold]:
    check_holdout_by(options.holdout_by)
    if name not in PROTOCOLS:
        raise MfxError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    if len(data.split_rows(options.test_split)) == 0:
        present = sorted({r.split for r in data.manifest.rows})
        raise MfxError(f"{data.path}: the {options.test_split!r} split is empty (splits present: "
                       f"{', '.join(repr(p) for p in present) or 'none'})")
    return PROTOCOLS[name](data, options)
