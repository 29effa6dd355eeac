"""Indexers: turn a folder layout into manifest rows.

Two layouts are understood (``0_real``/``1_fake`` is the label folder both use):

* **MedForensics** — ``ROOT/<split>/<modality>/<generator>/{0_real,1_fake}/...``,
  or ``ROOT/<modality>/<generator>/{0_real,1_fake}/...`` with no split level
  (the splitter of :mod:`.splits` then assigns splits by source).
* **CNNDetection** — ``ROOT/<generator>/[<class>/]{0_real,1_fake}/...``, the
  layout of the natural-image benchmarks; modality is ``"unknown"`` unless given.

Detection looks at how deep the label folders sit: three levels under a split
name is MedForensics-with-splits, one level is CNNDetection, two levels is
MedForensics when the top folders are modality names (CT, MR, X-ray, fundus...)
or unknown, CNNDetection when they are known natural-image generators (progan,
stylegan, ...). ``layout=`` forces the choice.

``source`` (the group that must never straddle two splits) is, by default:

* for DICOM, the StudyInstanceUID (else SeriesInstanceUID) read from the
  header — every slice and series of one study stays together;
* for every other file, the modality plus the file's path below its label
  folder without the suffix (``CT:patient7/slice012``), so a real image and
  the fakes made from it under the same name (``0_real/x.png``,
  ``1_fake/x.png``, in any generator folder) share one source. Grouping too
  much is safe (it only coarsens the split); grouping too little would leak.

``scan`` (what bootstrap intervals resample whole; see :mod:`.manifest`) is blank
by default: a DICOM study is already one source. ``scan_by="patient"`` fills it
with the DICOM PatientID (hashed: ``patient:`` + 12 hex digits), so a patient's
several DICOM studies stay in one split and are resampled together. Anonymised
sets often give every file one placeholder ID ("ANONYMOUS", "0", blank...),
which would link the whole dataset into one scan (one split, no interval): such
IDs, and an ID on every study of three or more, leave ``scan`` blank, and the
result says so. A fake saved under a DICOM real's name (``1_fake/x.png``, or an
``x.dcm`` with a study UID of its own, for ``0_real/x.dcm``, in any generator folder)
takes that real's study and scan, so it stays in its real's split; other non-DICOM
files get no scan.

``family`` and ``network`` (how a fake was made; see :mod:`.manifest`) come
from an optional ``generator.json`` in the generator folder (the folder that
holds ``1_fake``), e.g. ``{"family": "latent-diffusion", "network":
"CT-ae4+CT-ldm"}``; they are blank for reals and for folders without one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import BadInputError, MfxError
from .manifest import ManifestRow, sha256_file
from .readers import count_frames, is_image_file
from .walk import walk_files

log = logging.getLogger(__name__)

LABEL_FOLDERS = {"0_real": 0, "1_fake": 1}
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
LAYOUTS = ("auto", "medforensics", "cnndetection")
SCAN_BY = ("none", "patient")
PATIENT_PREFIX = "patient:"
HEADER_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "PatientID")
#: PatientIDs anonymisers write instead of a patient (compared lower-case; all-zero IDs are placeholders too).
PLACEHOLDER_PATIENTS = frozenset({"anonymous", "anon", "anonymized", "anonymised", "unknown", "none", "null", "na",
                                  "n/a", "removed", "patient", "noid", "no id", "xxx"})
#: Optional file in a generator folder giving the ``family`` and ``network`` of its fakes.
GENERATOR_FILE = "generator.json"

# Names that decide a two-level layout: the first level is a modality (MedForensics) or a generator (CNNDetection).
MODALITY_NAMES = frozenset({
    "ct", "mr", "mri", "cr", "dx", "xray", "x-ray", "x_ray", "radiograph", "chest_xray", "cxr", "us", "ultrasound",
    "nm", "pt", "pet", "spect", "mg", "mammography", "xa", "angiography", "oct", "fundus", "retina", "derm",
    "dermoscopy", "dermatology", "skin", "histology", "histopathology", "pathology", "wsi", "microscopy",
    "endoscopy", "colonoscopy", "dental", "brain", "chest", "knee", "abdomen", "other",
})
NATURAL_GENERATORS = frozenset({
    "progan", "stylegan", "stylegan2", "stylegan3", "biggan", "cyclegan", "stargan", "gaugan", "deepfake", "crn",
    "imle", "san", "seeingdark", "whichfaceisreal", "dalle", "dalle2", "glide", "glide_100_10", "glide_100_27",
    "glide_50_27", "guided", "ldm", "ldm_100", "ldm_200", "ldm_200_cfg", "midjourney", "sdv1_4", "sdv1_5", "adm",
    "vqdm", "wukong", "dall-e", "stable_diffusion", "sd", "sdxl",
})


@dataclasses.dataclass
class IndexResult:
    """What an indexer found: the rows, the layout it used, and the files it passed over (never silently)."""

    rows: list[ManifestRow]
    layout: str
    root: Path
    ignored: list[Path] = dataclasses.field(default_factory=list)  # non-image files, or images outside label folders
    notes: list[str] = dataclasses.field(default_factory=list)  # what was left blank, and why (said, never silent)


def detect_layout(root: str | os.PathLike) -> str:
    """``"medforensics"`` or ``"cnndetection"`` for ``root``; an unknown layout is one :class:`BadInputError`."""
    root = Path(root)
    label_dirs = list(_label_dirs(root))
    if not label_dirs:
        raise BadInputError(root, "unknown folder layout: no 0_real/1_fake folders found (expected "
                                  "ROOT/[<split>/]<modality>/<generator>/{0_real,1_fake}/... or "
                                  "ROOT/<generator>/[<class>/]{0_real,1_fake}/...)")
    parents = [d.relative_to(root).parts[:-1] for d in label_dirs]
    depths = {len(p) for p in parents}
    if depths == {3} and all(p[0].lower() in SPLIT_NAMES for p in parents):
        return "medforensics"
    if depths <= {1, 2} and 1 in depths:
        return "cnndetection"
    if depths == {2}:
        tops = {p[0].lower() for p in parents}
        if tops <= set(SPLIT_NAMES):
            raise BadInputError(root, "split folders need <modality>/<generator> below them: expected "
                                      "ROOT/<split>/<modality>/<generator>/{0_real,1_fake} (found "
                                      f"{sorted(tops)[0]}/<one level>/{{0_real,1_fake}})")
        if tops & NATURAL_GENERATORS and not tops & MODALITY_NAMES:
            return "cnndetection"
        return "medforensics"
    found = ", ".join(sorted({"/".join(p) or "." for p in parents})[:4])
    raise BadInputError(root, f"unknown folder layout: 0_real/1_fake found under {found} (expected "
                              "ROOT/[<split>/]<modality>/<generator>/{0_real,1_fake} or "
                              "ROOT/<generator>/[<class>/]{0_real,1_fake})")


def index_folder(root: str | os.PathLike, *, layout: str = "auto", modality: str | None = None,
                 expand_frames: bool = False, frame_step: int = 1, relative_to: str | os.PathLike | None = None,
                 hash_files: bool = True, progress: Callable[[Iterable, int, str], Iterable] | None = None,
                 scan_by: str = "none") -> IndexResult:
    """Rows for every image of ``root`` (splits only where the layout has them; see :mod:`.splits`).

    ``modality`` fills the modality of CNNDetection layouts (default ``"unknown"``).
    ``expand_frames`` writes one row per frame/slice (``path#N``, every
    ``frame_step``-th) for multi-frame DICOM, TIFF stacks and NIfTI volumes,
    all sharing the file's source. Paths are written relative to
    ``relative_to`` (the manifest's folder; default ``root``). ``scan_by``: ``"none"`` (blank ``scan``)
    or ``"patient"`` (DICOM PatientID; see the module docstring).
    """
    root = Path(root)
    if scan_by not in SCAN_BY:
        raise MfxError(f"scan_by (--scan-by) must be one of {', '.join(SCAN_BY)}, not {scan_by!r}")
    if not root.is_dir():
        raise BadInputError(root, "not a folder" if root.exists() else "folder not found")
    if layout not in LAYOUTS:
        raise MfxError(f"--layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    chosen = detect_layout(root) if layout == "auto" else layout
    base = Path(relative_to) if relative_to is not None else root
    placed, ignored = _collect(root, chosen, modality)
    items = list(placed)
    if progress is not None:
        items = progress(items, len(items), "indexing")
    rows: list[ManifestRow] = []
    names: list[str] = []
    for path, fields in items:
        found = _rows_for(path, fields, base, expand_frames, frame_step, hash_files, scan_by)
        rows.extend(found)
        names.extend([name_source(fields["modality"], fields["below"])] * len(found))
    if not rows:
        raise BadInputError(root, "no images found in the 0_real/1_fake folders "
                                  f"(images end in .png .jpg .tif .dcm .nii(.gz) ...; {len(ignored)} other file(s))")
    rows, notes = link_to_dicom_studies(rows, names)
    if scan_by == "patient":
        rows, patient_notes = patient_scans(rows)
        notes += patient_notes
    return IndexResult(rows, chosen, root, ignored, notes)


def link_to_dicom_studies(rows: list[ManifestRow], names: list[str]) -> tuple[list[ManifestRow], list[str]]:
    """Give a fake the study of the DICOM real of the same name (``1_fake/x.png`` or ``x.dcm`` and ``0_real/x.dcm``).

    ``names[i]`` is row ``i``'s name source (:func:`name_source`). A fake saved from a DICOM real keeps that
    name by the layout's convention, but its own source would be its stem (PNG, NIfTI...) or the new study UID
    a generator wrote: two groups, so the splitter could put a real in training and the fake made from it in
    the test set. Linked, the fake takes the real's study (and, with ``--scan-by patient``, its patient) and
    stays in its real's split. A name whose DICOM reals belong to several studies is ambiguous: its fakes are
    left as they are (merging would join unrelated studies that happen to share a file name), and a note says
    they may land in another split than their real.
    """
    studies: dict[str, dict[str, str]] = {}
    for row, name in zip(rows, names):
        if row.label == 0 and row.source.startswith("dicom:"):
            studies.setdefault(name, {}).setdefault(row.source, row.scan)
    linked, ambiguous, out = 0, set(), []
    for row, name in zip(rows, names):
        found = studies.get(name, {})
        if row.label == 1 and found and row.source not in found:
            if len(found) == 1:
                (source, scan), = found.items()
                row = dataclasses.replace(row, source=source, scan=scan)
                linked += 1
            else:
                ambiguous.add(name)
        out.append(row)
    notes = []
    if linked:
        notes.append(f"{linked} fake image(s) or frame(s) named like a DICOM real (e.g. 1_fake/x.png for "
                     f"0_real/x.dcm) take that real's study, so each stays in its real's split")
    if ambiguous:
        notes.append(f"{len(ambiguous)} name(s) match DICOM reals of several studies (e.g. {min(ambiguous)}): "
                     f"their fakes keep their own source and may land in another split than their real; "
                     f"write source (or scan) into the manifest to link them")
    return out, notes


def _label_dirs(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, _files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in dirnames:
            if name.lower() in LABEL_FOLDERS:
                yield Path(dirpath) / name
        dirnames[:] = [d for d in dirnames if d.lower() not in LABEL_FOLDERS]


def _collect(root: Path, layout: str, modality: str | None) -> tuple[list[tuple[Path, dict]], list[Path]]:
    """Image files with the fields their folders give, plus the files passed over."""
    placed: list[tuple[Path, dict]] = []
    in_label_dirs: set[Path] = set()
    for label_dir in _label_dirs(root):
        fields = _fields_from_parents(root, label_dir, layout, modality)
        for path in _walk_files(label_dir):
            in_label_dirs.add(path)
            if _indexable(path):
                placed.append((path, dict(fields, below=path.relative_to(label_dir))))
    ignored = [p for p in _walk_files(root) if p not in in_label_dirs and is_image_file(p)]
    ignored += [p for p in in_label_dirs if not _indexable(p)]
    for path in ignored:
        log.info("not indexed: %s", path)
    return placed, sorted(ignored)


def _indexable(path: Path) -> bool:
    """An image file by its name, and a regular file: hashing a FIFO named ``scan.png`` would wait for ever."""
    return is_image_file(path) and path.is_file()


def _walk_files(folder: Path) -> Iterator[Path]:
    return walk_files(folder)


def _fields_from_parents(root: Path, label_dir: Path, layout: str, modality: str | None) -> dict:
    """label, split, modality and generator from the folders between ``root`` and a label folder."""
    parts = label_dir.relative_to(root).parts
    label = LABEL_FOLDERS[parts[-1].lower()]
    above = parts[:-1]
    fields = {"label": label, "split": "", "modality": modality or "unknown"}
    if layout == "medforensics":
        if len(above) == 3 and above[0].lower() in SPLIT_NAMES:
            fields["split"] = SPLIT_NAMES[above[0].lower()]
            above = above[1:]
        if len(above) != 2:
            raise BadInputError(label_dir, "does not fit the MedForensics layout "
                                           "ROOT/[<split>/]<modality>/<generator>/{0_real,1_fake}")
        fields["modality"] = modality or above[0]
        fields["generator"] = above[1]
    elif layout == "cnndetection":
        if len(above) not in (1, 2):
            raise BadInputError(label_dir, "does not fit the CNNDetection layout "
                                           "ROOT/<generator>/[<class>/]{0_real,1_fake}")
        fields["generator"] = above[0]
        if len(above) == 2:
            fields["object_class"] = above[1]
    if label == 0:
        fields["generator"] = "real"  # the manifest's convention; the folder's generator is kept in source_folder
    else:
        fields.update(generator_info(label_dir.parent))
    fields["source_folder"] = "/".join(above)
    return fields


def generator_info(folder: Path) -> dict[str, str]:
    """``family`` and ``network`` from ``folder/generator.json`` (blank when the file is absent)."""
    path = folder / GENERATOR_FILE
    if not path.is_file():
        return {"family": "", "network": ""}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(path, f"unreadable generator file ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k, ""), str) for k in ("family", "network")):
        raise BadInputError(path, 'expected {"family": "<name>", "network": "<id>[+<id>...]"} (strings)')
    return {"family": data.get("family", "").strip(), "network": data.get("network", "").strip()}


def _rows_for(path: Path, fields: dict, base: Path, expand_frames: bool, frame_step: int,
              hash_files: bool, scan_by: str = "none") -> list[ManifestRow]:
    relative = Path(os.path.relpath(path, base)).as_posix()
    header = _dicom_header(path)
    source = default_source(path, fields["modality"], fields["below"], header)
    digest = sha256_file(path) if hash_files else ""
    patient = header.get("PatientID", "") if scan_by == "patient" else ""
    scan = PATIENT_PREFIX + patient if patient else ""  # the raw ID, until patient_scans checks and hashes it
    row = ManifestRow(path=relative, label=fields["label"], modality=fields["modality"],
                      generator=fields["generator"], split=fields["split"], source=source, scan=scan, sha256=digest,
                      params=_params(fields), family=fields.get("family", ""), network=fields.get("network", ""))
    if not expand_frames:
        return [row]
    frames = _safe_count_frames(path)
    if frames <= 1:
        return [row]
    return [dataclasses.replace(row, path=f"{relative}#{i}") for i in range(0, frames, max(1, frame_step))]


def _params(fields: dict) -> str:
    import json

    extra = {k: fields[k] for k in ("object_class", "source_folder") if fields.get(k)}
    return json.dumps(extra, sort_keys=True) if extra else ""


def _safe_count_frames(path: Path) -> int:
    """Frames of a file, or 1 when its header is unreadable (``mfx data check`` names such files)."""
    try:
        return count_frames(path)
    except BadInputError as exc:
        log.warning("indexed as one image: %s", exc)
        return 1


def default_source(path: Path, modality: str, below: Path, header: dict[str, str] | None = None) -> str:
    """The split group of a file (see the module docstring); ``header``: its already read DICOM tags."""
    header = _dicom_header(path) if header is None else header
    uid = header.get("StudyInstanceUID") or header.get("SeriesInstanceUID") or ""
    if uid:
        return f"dicom:{uid}"
    return name_source(modality, below)


def name_source(modality: str, below: Path) -> str:
    """``<modality>:<path below the label folder without its suffix>``: the source a file's name gives."""
    stem = below.as_posix()
    for suffix in (".nii.gz", *(s for s in (below.suffix,) if s)):
        if stem.lower().endswith(suffix.lower()):
            stem = stem[: -len(suffix)]
            break
    return f"{modality}:{stem}"


def _dicom_header(path: Path) -> dict[str, str]:
    """The grouping tags of a DICOM header (study, series, patient), as stripped strings; {} for other files."""
    name = path.name.lower()
    if not (name.endswith(".dcm") or not path.suffix):
        return {}
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS),
                             force=name.endswith(".dcm"))
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        log.debug("no DICOM header for %s: %s", path, exc)
        return {}
    return {tag: str(ds.get(tag) or "").strip() for tag in HEADER_TAGS}


def is_placeholder_patient(patient: str) -> bool:
    """An anonymisation placeholder rather than a patient: blank, all zeros or dashes, or a stock word."""
    text = patient.strip().lower()
    return not text or set(text) <= set("0-_. ") or text in PLACEHOLDER_PATIENTS


def patient_scans(rows: list[ManifestRow]) -> tuple[list[ManifestRow], list[str]]:
    """Turn the raw PatientIDs that ``_rows_for`` put in ``scan`` into scan names, and say what was left blank.

    Blank: placeholders, and an ID shared by every study that has a usable ID when there are three or
    more (an anonymiser's or a site's constant: linking them all leaves one group, one split, no interval).
    Kept IDs are written as ``patient:`` + 12 hex digits of their sha256, so a manifest and the notes of
    ``mfx data check`` group by patient without carrying the identifier itself.
    """
    ids = {r.scan[len(PATIENT_PREFIX):] for r in rows if r.scan.startswith(PATIENT_PREFIX)}
    placeholders = sorted(i for i in ids if is_placeholder_patient(i))
    studies_of: dict[str, set[str]] = {}
    for row in rows:
        patient = row.scan[len(PATIENT_PREFIX):] if row.scan.startswith(PATIENT_PREFIX) else ""
        if row.source.startswith("dicom:") and patient and patient not in placeholders:
            studies_of.setdefault(patient, set()).add(row.source)
    studies = set().union(*studies_of.values()) if studies_of else set()
    constant = [p for p, seen in studies_of.items() if len(studies) >= 3 and seen == studies]
    notes: list[str] = []
    if placeholders:
        notes.append(f"PatientID {', '.join(placeholders)} looks like an anonymisation placeholder: "
                     f"those images have no scan (each study is its own cluster)")
    if constant:
        notes.append(f"PatientID {constant[0]} is on all {len(studies)} studies that have one: probably an "
                     f"anonymiser's or a site's constant, so it is not used (each study is its own cluster)")
    unusable = set(placeholders) | set(constant)
    rows = [dataclasses.replace(r, scan=_patient_scan(r.scan, unusable)) for r in rows]
    missing = sum(1 for r in rows if not r.scan)
    if missing:
        notes.append(f"{missing} of {len(rows)} images have no scan (not DICOM, no PatientID, or an ID named above)")
    return rows, notes


def _patient_scan(raw: str, unusable: set[str]) -> str:
    """``patient:<12 hex of sha256(ID)>`` for a usable raw ``patient:<ID>``; blank otherwise."""
    if not raw.startswith(PATIENT_PREFIX) or raw[len(PATIENT_PREFIX):] in unusable:
        return ""
    return PATIENT_PREFIX + hashlib.sha256(raw[len(PATIENT_PREFIX):].encode("utf-8")).hexdigest()[:12]
