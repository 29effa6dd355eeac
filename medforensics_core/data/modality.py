"""Which modality an input is: the DICOM Modality tag, the NIfTI header, or the user's ``--modality``.

Detectors with per-modality behaviour (DSKI's prompts) name modalities in the
vocabulary of the offline benchmark (``ct``, ``mri``, ``xray``, ``ultrasound``...),
while a DICOM file says ``CT``, ``MR``, ``CR``, ``DX``... This module is the one
place that maps between the two, so a CT scored by ``mfx predict`` gets the same
modality name it had in training, and an unknown name fails with the accepted
list instead of silently falling back to generic prompts.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Iterable

from ..errors import MfxError

log = logging.getLogger(__name__)

UNKNOWN = "unknown"

#: DICOM Modality (0008,0060) defined terms -> mfx modality names. X-ray projection families
#: (computed/digital radiography, angiography, fluoroscopy, mammography) share ``xray``.
DICOM_MODALITIES: dict[str, str] = {
    "CT": "ct", "MR": "mri",
    "CR": "xray", "DX": "xray", "DR": "xray", "RG": "xray", "XA": "xray", "RF": "xray", "MG": "xray",
    "IO": "xray", "PX": "xray",
    "US": "ultrasound", "IVUS": "ultrasound",
    "NM": "nuclear", "PT": "pet",
    "SM": "histopathology", "GM": "microscopy",
    "OP": "fundus", "OPT": "oct", "OCT": "oct",
    "XC": "photograph", "ES": "endoscopy",
}

#: Every mfx modality name (the benchmark's plus the ones DICOM codes above map to).
MODALITY_NAMES: tuple[str, ...] = tuple(sorted(set(DICOM_MODALITIES.values()))) + (UNKNOWN,)

#: NIfTI header/file-name words -> modality (BIDS suffixes such as ``T1w`` and ``bold`` are MRI).
_NIFTI_WORDS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"(?<![a-z])(ct|cta|hu)(?![a-z])", re.I), "ct"),
    (re.compile(r"(?<![a-z])(pet|fdg)(?![a-z])", re.I), "pet"),
    (re.compile(r"(?<![a-z])(mri?|t1w?|t2w?|flair|dwi|bold|mprage|fmri|pdw|swi|epi|angio)(?![a-z])", re.I), "mri"),
)


@dataclasses.dataclass(frozen=True)
class Modality:
    """A resolved modality and where it came from (shown in ``mfx predict --json``)."""

    name: str
    source: str


def accepted_names(known: Iterable[str] | None = None) -> list[str]:
    """What ``--modality`` accepts: mfx names, a detector's own names, and DICOM codes (mapped)."""
    return sorted(set(MODALITY_NAMES) | set(known or ())) + sorted(DICOM_MODALITIES)


def normalise(value: str, known: Iterable[str] | None = None) -> str:
    """``--modality`` value -> mfx name (``MR`` -> ``mri``); an unknown value fails with the accepted list."""
    text = value.strip()
    own = {str(k).lower(): str(k) for k in (known or ())}
    if text.lower() in own:
        return own[text.lower()]
    if text.lower() in MODALITY_NAMES:
        return text.lower()
    if text.upper() in DICOM_MODALITIES:
        return DICOM_MODALITIES[text.upper()]
    names = sorted(set(MODALITY_NAMES) | set(own.values()))
    raise MfxError(f"--modality {value!r} is not a modality mfx knows; accepted: {', '.join(names)} "
                   f"(or a DICOM code: {', '.join(sorted(DICOM_MODALITIES))})")


def from_dicom_tag(tag: str | None) -> Modality | None:
    """The mfx modality of a DICOM Modality tag value, ``None`` when the tag is empty or unmapped."""
    code = (tag or "").strip().upper()
    if not code or code == UNKNOWN.upper():
        return None
    name = DICOM_MODALITIES.get(code)
    if name is None:
        log.info("DICOM Modality %r has no mfx modality name", code)
        return None
    return Modality(name, f"DICOM Modality tag {code!r}")


def from_nifti(path: str | Path) -> Modality | None:
    """A NIfTI volume's modality from its header description, intent name or file name (BIDS suffixes)."""
    path = Path(path)
    texts: list[tuple[str, str]] = []
    try:
        import nibabel

        header = nibabel.load(str(path)).header
        for field in ("descrip", "intent_name", "aux_file"):
            if field in header:
                raw = header[field].item()
                texts.append((f"NIfTI {field}", raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)))
    except (ImportError, OSError, ValueError) as exc:  # the reader reports a broken file; here it only lacks a hint
        log.info("%s: no NIfTI header for the modality (%s)", path, exc)
    name = path.name
    for suffix in (".gz", ".nii"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    texts.append(("NIfTI file name", name.replace("_", " ").replace("-", " ")))
    for where, text in texts:
        for pattern, modality in _NIFTI_WORDS:
            match = pattern.search(text)
            if match:
                return Modality(modality, f"{where} {match.group(0)!r}")
    return None


def resolve(meta: dict, path: str | Path, override: str | None, known: Iterable[str] | None = None) -> Modality:
    """The modality to score an image with: ``--modality`` if given, else the file's own, else ``unknown``.

    A detected name the detector was not trained on is kept (a detector such as
    DSKI then uses its generic prompts); the JSON output shows both the name and its source.
    """
    if override:
        return Modality(normalise(override, known), "--modality")
    found = None
    if meta.get("format") == "dicom":
        found = from_dicom_tag(meta.get("modality"))
    elif meta.get("format") == "nifti":
        found = from_nifti(path)
    if found is None:
        return Modality(UNKNOWN, "not stated by the file (give --modality)")
    own = {str(k).lower(): str(k) for k in (known or ())}
    return Modality(own.get(found.name, found.name), found.source)
