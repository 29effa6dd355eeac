"""The canonical dataset form: a CSV manifest with one row per image.

Columns: ``path, label, modality, generator, family, network, split, source,
scan, sha256`` plus an optional free-form ``params`` column (JSON: a fake's
generator settings, a real crop's region). ``label`` is 0 for real and 1 for
fake; ``generator`` is ``"real"`` for real images; ``source`` groups images that
must never straddle two splits (one source image, volume or region). Relative
paths are resolved against the manifest's folder, so a dataset folder can be
moved as a whole.

``scan`` (optional) names the acquisition an image was cut from: the scan file,
series or patient. Images of one scan are not independent draws even when they
are different sources (two regions of one slice, two slices of one volume share
the patient, the scanner and the anatomy), so bootstrap intervals resample whole
scans when the column is filled (:func:`bootstrap_clusters`),
and the splitter keeps a scan in one split when it assigns splits. A dataset
that may split one scan by region on purpose (MedForensics-mini: few scan files)
says so in its card; the intervals still resample scans.

``family`` (``latent-diffusion``, ``autoencoder``, ``super-resolution``,
``gan``...) and ``network`` (an id unique per trained network) say how a fake
was made; they are blank for reals and for datasets that do not record them.
Several generator settings can share one trained network (an img2img setting
reuses the diffusion model of a sampling setting), and an image can come from
more than one network (an autoencoder and the latent denoiser working in its
space): ``network`` then lists the ids joined by ``+``. Leave-one-out
protocols use both columns so that a held-out network's output never reaches
training (see ``engine.protocols``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..checkpoint import atomic_write_bytes
from ..errors import BadInputError

COLUMNS = ("path", "label", "modality", "generator", "family", "network", "split", "source", "scan", "sha256",
           "params")
#: Separator of several network ids in the ``network`` column.
NETWORK_SEPARATOR = "+"
REQUIRED = ("path", "label")
SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class ManifestRow:
    """One image of a dataset."""

    path: str
    label: int
    modality: str = "unknown"
    generator: str = "unknown"
    split: str = ""
    source: str = ""
    sha256: str = ""
    params: str = ""
    family: str = ""   # how the fake was made (blank for reals and datasets that do not say)
    network: str = ""  # id(s) of the trained network(s) that made it, joined by "+" (blank when unknown)
    scan: str = ""     # the scan file, series or patient it was cut from (blank when unknown): intervals resample it

    @property
    def networks(self) -> frozenset[str]:
        """The network ids of this image (empty when the manifest does not record them)."""
        return frozenset(n.strip() for n in self.network.split(NETWORK_SEPARATOR) if n.strip())

    @property
    def source_key(self) -> str:
        """The group this image belongs to: its ``source``, else its file (frames of one file stay together).

        Splits never separate a group, and bootstrap CIs resample groups (whole scans, when the
        manifest has a ``scan`` column), not images.
        """
        return self.source or f"path:{self.path.split('#')[0]}"

    def resolved(self, root: Path) -> Path:
        p = Path(self.path)
        return p if p.is_absolute() else root / p

    def params_dict(self) -> dict[str, Any]:
        return json.loads(self.params) if self.params else {}


@dataclasses.dataclass
class Manifest:
    """Rows plus the folder that relative paths are resolved against."""

    rows: list[ManifestRow]
    root: Path
    #: The columns the manifest file had (``COLUMNS`` for manifests made in memory); lets a protocol say
    #: "the manifest has no network column" rather than "every network is blank".
    columns: tuple[str, ...] = COLUMNS
    #: How mfx cut a folder that has no splits of its own (``open_dataset``), "" when the splits are the data's:
    #: a run on such a folder says which share of it each split got.
    splits_made: str = ""

    def __len__(self) -> int:
        return len(self.rows)

    def split(self, name: str) -> "Manifest":
        return Manifest([r for r in self.rows if r.split == name], self.root, self.columns)

    def where(self, **conditions: Any) -> "Manifest":
        """Rows whose fields equal the given values (a tuple/list/set value means "any of")."""
        def ok(row: ManifestRow) -> bool:
            for key, want in conditions.items():
                have = getattr(row, key)
                if isinstance(want, (tuple, list, set, frozenset)):
                    if have not in want:
                        return False
                elif have != want:
                    return False
            return True
        return Manifest([r for r in self.rows if ok(r)], self.root, self.columns)

    def path_of(self, row: ManifestRow) -> Path:
        return row.resolved(self.root)

    def values(self, field: str) -> list[str]:
        return sorted({str(getattr(r, field)) for r in self.rows})

    @property
    def modalities(self) -> list[str]:
        return self.values("modality")

    @property
    def generators(self) -> list[str]:
        return self.values("generator")


def linked_groups(keys: Mapping[str, Iterable[str]]) -> list[frozenset[str]]:
    """Members linked when they share a key, transitively: each connected group once, in order of its
    smallest member. Why: a network, or a family, must never sit on both sides of a hold-out, and two
    settings can be tied only through a third (``a`` and ``c`` both share a network with ``b``); two
    sources of one scan must be resampled together (:func:`bootstrap_clusters`)."""
    parent = {member: member for member in keys}

    def root(member: str) -> str:
        while parent[member] != member:
            parent[member] = parent[parent[member]]
            member = parent[member]
        return member

    owner: dict[str, str] = {}
    for member in sorted(keys):
        for key in keys[member]:
            parent[root(member)] = root(owner.setdefault(key, member))
    groups: dict[str, set[str]] = {}
    for member in sorted(parent):
        groups.setdefault(root(member), set()).add(member)
    return sorted((frozenset(g) for g in groups.values()), key=min)


def bootstrap_clusters(rows: Sequence[ManifestRow]) -> list[str]:
    """One cluster id per row: the units a bootstrap interval or paired test resamples.

    Rows are linked when they share a source (a real crop and the fakes made from it) or a
    ``scan`` (regions and slices of one acquisition), transitively. Without a ``scan`` column
    this is exactly each row's :attr:`ManifestRow.source_key`. A cluster's id is its smallest source key, so it
    depends on which rows are given: tests that share a draw over several folds compute the clusters once over
    the union of their rows (:func:`medforensics_core.engine.compare.fold_merge.shared_clusters`). Why scans:
    crops of one slice and slices of one volume share the patient, the scanner and the anatomy, so resampling them
    apart treats one scan as many independent observations and the intervals come out too narrow.
    """
    scans: dict[str, set[str]] = {}
    for row in rows:
        scans.setdefault(row.source_key, set()).update([f"scan:{row.scan}"] if row.scan else [])
    cluster_of: dict[str, str] = {}
    for group in linked_groups(scans):
        cluster_of.update(dict.fromkeys(group, min(group)))
    return [cluster_of[row.source_key] for row in rows]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(rows: Iterable[ManifestRow], path: str | Path) -> Path:
    """Write rows as CSV atomically (a half-written manifest is never seen)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(dataclasses.asdict(row))
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))
    return Path(path)


def read_manifest(path: str | Path) -> Manifest:
    """Read a manifest CSV; a malformed file or row is one :class:`BadInputError` naming the line.

    CSVs are read the way spreadsheets write them: a UTF-8 byte-order mark,
    Windows line ends, ``;`` or tab as the separator (Excel in many locales),
    Latin-1/cp1252 text, header names in any case with spaces around them, and
    labels written as ``1.0``.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "manifest not found")
    text = _manifest_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    reader.fieldnames = [name.strip().lower() for name in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED if c not in reader.fieldnames]
    if missing:
        raise BadInputError(path, f"manifest lacks column(s) {', '.join(missing)}")
    rows = []
    for line_no, raw in enumerate(reader, start=2):
        raw = {k: (v.strip() if isinstance(v, str) else v) for k, v in raw.items() if k is not None}
        if not any(raw.values()):
            continue  # a blank line, as spreadsheets leave at the end
        label = _label(path, line_no, raw.get("label"))
        values = {c: (raw.get(c) or "") for c in COLUMNS if c not in ("label",)}
        values["modality"] = values["modality"] or "unknown"
        values["generator"] = values["generator"] or ("real" if label == 0 else "unknown")
        rows.append(ManifestRow(label=label, **values))
    present = tuple(c for c in COLUMNS if c in reader.fieldnames)
    return Manifest(rows, path.parent, present)


def _manifest_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInputError(path, f"unreadable manifest ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")  # what spreadsheets on Windows save as "CSV"


def _delimiter(text: str) -> str:
    """``,`` unless the header line is clearly split by ``;`` or tabs (spreadsheets in many locales)."""
    header = text.split("\n", 1)[0]
    counts = {sep: header.count(sep) for sep in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] > counts[","] else ","


def _label(path: Path, line_no: int, value: Any) -> int:
    try:
        number = float(value)
        if number not in (0.0, 1.0):
            raise ValueError
        return int(number)
    except (TypeError, ValueError):
        raise BadInputError(path, f"line {line_no}: label must be 0 (real) or 1 (fake), got {value!r}") from None


# --------------------------------------------------------------------------- sanity of a whole manifest

#: Problems a run refuses unless ``--allow KIND`` is given (``mfx data check`` lists them all).
PROBLEM_KINDS = ("split-overlap", "unknown-split", "outside-root")


@dataclasses.dataclass(frozen=True)
class ManifestProblem:
    """A whole-manifest problem that would silently change a result (leakage, dropped rows, stray files)."""

    kind: str
    message: str


def manifest_problems(manifest: Manifest, splits: Sequence[str] = SPLITS) -> list[ManifestProblem]:
    """Images in two splits (same sha256 or same file), unknown split names, paths outside the dataset root.

    ``splits`` are the split names a run uses (``mfx evaluate --split external`` adds its own).
    """
    return [*_overlaps(manifest, splits), *_unknown_splits(manifest, splits), *_outside_root(manifest)]


def scan_split_notes(manifest: Manifest) -> list[str]:
    """Scans with images in more than one split: a note, not a problem (nothing is refused).

    A benchmark cut by region inside a few scan files (MedForensics-mini) does this on purpose; a
    dataset with one patient per scan usually should not, since its test patients are then seen in training.
    """
    splits_of: dict[str, set[str]] = {}
    for row in manifest.rows:
        if row.scan and row.split:
            splits_of.setdefault(row.scan, set()).add(row.split)
    across = sorted(scan for scan, splits in splits_of.items() if len(splits) > 1)
    if not across:
        return []
    return [f"{len(across)} of {len(splits_of)} scans have images in more than one split (e.g. {across[0]} in "
            f"{', '.join(sorted(splits_of[across[0]]))}): expected of a benchmark cut by region inside its scans; "
            "with one patient per scan, the test patients are seen in training"]


def _overlaps(manifest: Manifest, splits: Sequence[str]) -> list[ManifestProblem]:
    splits_of: dict[str, set[str]] = {}
    example: dict[str, str] = {}
    for row in manifest.rows:
        if row.split not in splits:
            continue
        for key in (f"sha256:{row.sha256.lower()}" if row.sha256 else "", f"path:{row.resolved(manifest.root)}"):
            if key:
                splits_of.setdefault(key, set()).add(row.split)
                example.setdefault(key, row.path)
    shared = [key for key, splits in splits_of.items() if len(splits) > 1]
    if not shared:
        return []
    first = shared[0]
    return [ManifestProblem("split-overlap", f"{len(shared)} image(s) are in more than one split (same sha256 or "
                                             f"file), e.g. {example[first]} in {', '.join(sorted(splits_of[first]))}:"
                                             " test results would be inflated by training images")]


def _unknown_splits(manifest: Manifest, splits: Sequence[str]) -> list[ManifestProblem]:
    import difflib

    counts: dict[str, int] = {}
    for row in manifest.rows:
        if row.split and row.split not in splits:
            counts[row.split] = counts.get(row.split, 0) + 1
    problems = []
    for name, n in sorted(counts.items()):
        close = difflib.get_close_matches(name.lower(), list(splits), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(ManifestProblem("unknown-split", f"{n} row(s) have split {name!r}, which no protocol uses "
                                                         f"(known: {', '.join(splits)}){hint}: they would be dropped"))
    return problems


def _outside_root(manifest: Manifest) -> list[ManifestProblem]:
    import os

    root = os.path.realpath(manifest.root)
    outside = [row.path for row in manifest.rows
               if os.path.commonpath([root, os.path.realpath(row.resolved(manifest.root))]) != root]
    if not outside:
        return []
    return [ManifestProblem("outside-root", f"{len(outside)} path(s) point outside the dataset folder {root}, "
                                            f"e.g. {outside[0]}")]


def count_table(rows: Sequence[ManifestRow]) -> dict[tuple[str, str, str], int]:
    """Counts per (split, modality, generator) — the table DATASET.md and ``mfx data index`` print."""
    counts: dict[tuple[str, str, str], int] = {}
    for r in rows:
        key = (r.split, r.modality, r.generator)
        counts[key] = counts.get(key, 0) + 1
    return counts
