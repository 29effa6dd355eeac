"""Group-aware train/val/test splits: every image of one ``source`` (and of one ``scan``) lands in the same split.

Why not scikit-learn's ``GroupShuffleSplit``: it splits groups in two, with no
notion of labels, so on a small medical set one split easily ends up with no
fakes (or no reals) and its ACC/AUC mean nothing. Why not a hash of the source
(stable as a dataset grows): it gives no control over the fractions or the
labels either. So the splitter here is a stratified group shuffle:

1. groups (sources) are put into strata by the labels and modalities they hold;
2. each stratum's groups are sorted by name (so file-system order does not
   matter) and shuffled with ``numpy.random.default_rng(seed)``;
3. each group goes, in that order, to the split furthest below its target
   share of the stratum's images;
4. a split that wants images (fraction > 0) but lacks a label that has at least
   three groups gets the smallest such group moved over from the largest split.

The result depends only on the rows and the seed. Rows that already carry a
split (a layout with split folders) keep it.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Sequence

import numpy as np

from ..errors import MfxError
from .manifest import SPLITS, ManifestRow, bootstrap_clusters

_ORDER = ("test", "val", "train")  # tie-break: fill the small held-out splits first


@dataclasses.dataclass
class _Group:
    source: str
    rows: list[ManifestRow]

    @property
    def labels(self) -> frozenset[int]:
        return frozenset(r.label for r in self.rows)

    @property
    def stratum(self) -> tuple:
        return tuple(sorted(self.labels)), tuple(sorted({r.modality for r in self.rows}))


def assign_splits(rows: Sequence[ManifestRow], *, val: float = 0.1, test: float = 0.2,
                  seed: int = 0) -> list[ManifestRow]:
    """Copies of ``rows`` with ``split`` set for those that have none (see the module docstring)."""
    fractions = _fractions(val, test)
    out = [dataclasses.replace(r) for r in rows]
    groups = _groups([r for r in out if not r.split])
    rng = np.random.default_rng(seed)
    by_stratum: dict[tuple, list[_Group]] = defaultdict(list)
    for group in groups:
        by_stratum[group.stratum].append(group)
    chosen: dict[str, str] = {}
    for stratum in sorted(by_stratum):
        members = sorted(by_stratum[stratum], key=lambda g: g.source)
        order = rng.permutation(len(members))
        chosen.update(_fill([members[i] for i in order], fractions))
    _ensure_labels(groups, chosen, fractions)
    for group in groups:
        for row in group.rows:
            row.split = chosen[group.source]
    return out


def _fractions(val: float, test: float) -> dict[str, float]:
    for name, value in (("val", val), ("test", test)):
        if not 0.0 <= value < 1.0:
            raise MfxError(f"--{name} must be a fraction in [0, 1), not {value}")
    if val + test >= 1.0:
        raise MfxError(f"--val + --test must leave images for training (got {val} + {test} >= 1)")
    return {"train": 1.0 - val - test, "val": val, "test": test}


def _groups(rows: Sequence[ManifestRow]) -> list[_Group]:
    """Rows grouped by source, sources of one scan together (a row without either is its own group, keyed by its
    path): the units that bootstrap intervals resample, so a patient never sits on both sides of a split."""
    by_source: dict[str, list[ManifestRow]] = defaultdict(list)
    for row, cluster in zip(rows, bootstrap_clusters(rows)):
        by_source[cluster].append(row)
    return [_Group(source, members) for source, members in sorted(by_source.items())]


def _fill(groups: list[_Group], fractions: dict[str, float]) -> dict[str, str]:
    total = sum(len(g.rows) for g in groups)
    targets = {name: share * total for name, share in fractions.items()}
    filled = dict.fromkeys(fractions, 0)
    chosen = {}
    for group in groups:
        split = max(_ORDER, key=lambda s: (targets[s] - filled[s], -_ORDER.index(s)) if fractions[s] > 0
                    else (-np.inf, 0))
        chosen[group.source] = split
        filled[split] += len(group.rows)
    return chosen


def _ensure_labels(groups: list[_Group], chosen: dict[str, str], fractions: dict[str, float]) -> None:
    """Give every wanted split each label that has enough groups to spare (step 4 of the docstring)."""
    for label in (0, 1):
        holders = [g for g in groups if label in g.labels]
        if len(holders) < 3:
            continue
        for split in ("test", "val", "train"):
            if fractions[split] <= 0 or any(chosen[g.source] == split for g in holders):
                continue
            sizes = _split_sizes(groups, chosen)
            donors = [g for g in holders if chosen[g.source] != split
                      and sum(chosen[h.source] == chosen[g.source] for h in holders) > 1]
            if not donors:
                continue
            donor = min(donors, key=lambda g: (-sizes[chosen[g.source]], len(g.rows), g.source))
            chosen[donor.source] = split


def _split_sizes(groups: list[_Group], chosen: dict[str, str]) -> dict[str, int]:
    sizes = dict.fromkeys(SPLITS, 0)
    for group in groups:
        sizes[chosen[group.source]] += len(group.rows)
    return sizes


def split_summary(rows: Sequence[ManifestRow]) -> dict[str, dict[int, int]]:
    """Images per split and label, e.g. ``{"train": {0: 70, 1: 68}, ...}``."""
    summary: dict[str, dict[int, int]] = {}
    for row in rows:
        summary.setdefault(row.split, {0: 0, 1: 0})[row.label] += 1
    return summary
