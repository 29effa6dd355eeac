"""``mfx data check``: read every image of a dataset and list each one that cannot be used, with why.

The target may be a manifest CSV, a folder holding ``manifest.csv``, a folder
layout, any folder (every image-like file under it is read), or one file.
Nothing bad is dropped silently: every unreadable file, sha256 mismatch and
passed-over file is in the report.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import BadInputError
from .manifest import ManifestRow, manifest_problems, read_manifest, scan_split_notes, sha256_file
from .readers import ReadLimits, default_limits, read_image
from .walk import image_files

log = logging.getLogger(__name__)

ProgressFn = Callable[[Iterable, int, str], Iterator]


@dataclasses.dataclass
class CheckIssue:
    """One bad file and the reason it cannot be used."""

    path: str
    reason: str


@dataclasses.dataclass
class CheckReport:
    """What a check read, what was bad, and which files it passed over (not images)."""

    target: str
    checked: int = 0
    bad: list[CheckIssue] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)  # worth knowing, not bad (e.g. scans across splits)

    @property
    def ok(self) -> bool:
        return not self.bad

    def as_dict(self) -> dict:
        return {"target": self.target, "checked": self.checked, "bad_count": len(self.bad),
                "bad": [dataclasses.asdict(issue) for issue in self.bad], "ignored": self.ignored,
                "notes": self.notes}


@dataclasses.dataclass
class _Item:
    path: str           # as read (may end in #N)
    sha256: str = ""    # expected digest, from a manifest


def check_target(target: str | os.PathLike, *, verify_hash: bool = True, stop_at_first: bool = False,
                 limits: ReadLimits | None = None, progress: ProgressFn | None = None) -> CheckReport:
    """Read every image of ``target`` (see the module docstring) and report the bad ones."""
    target = Path(target)
    items, ignored = _items(target)
    report = CheckReport(str(target), ignored=[str(p) for p in ignored])
    manifest_path = _manifest_path(target)
    if manifest_path is not None:  # leakage, dropped rows, stray paths: reported before the per-file reads
        manifest = read_manifest(manifest_path)
        report.bad.extend(CheckIssue(str(manifest_path), f"manifest: {problem.message}")
                          for problem in manifest_problems(manifest))
        report.notes.extend(scan_split_notes(manifest))
    limits = limits or default_limits()
    iterator: Iterable[_Item] = items
    if progress is not None:
        iterator = progress(items, len(items), "checking images")
    hashed: dict[str, str] = {}
    for item in iterator:
        report.checked += 1
        reason = _problem(item, limits, hashed if verify_hash else None)
        if reason:
            report.bad.append(CheckIssue(item.path, reason))
            if stop_at_first:
                break
    return report


def _items(target: Path) -> tuple[list[_Item], list[Path]]:
    if target.is_file() and target.suffix.lower() == ".csv":
        return _manifest_items(target), []
    if target.is_dir() and (target / "manifest.csv").is_file():
        return _manifest_items(target / "manifest.csv"), []
    if target.is_dir():
        return _folder_items(target)
    if target.exists() or _is_frame_path(target):
        return [_Item(str(target))], []
    raise BadInputError(target, "not found (give a manifest CSV, a dataset folder or an image file)")


def _manifest_path(target: Path) -> Path | None:
    if target.is_file() and target.suffix.lower() == ".csv":
        return target
    if target.is_dir() and (target / "manifest.csv").is_file():
        return target / "manifest.csv"
    return None


def _is_frame_path(target: Path) -> bool:
    head, sep, tail = str(target).rpartition("#")
    return bool(sep) and tail.isdigit() and Path(head).is_file()


def _manifest_items(path: Path) -> list[_Item]:
    manifest = read_manifest(path)
    return [_Item(_display_path(manifest.root, row), row.sha256) for row in manifest.rows]


def _display_path(root: Path, row: ManifestRow) -> str:
    return str(row.resolved(root))


def _folder_items(folder: Path) -> tuple[list[_Item], list[Path]]:
    """Every image-like file under a folder (hidden files skipped; other files listed as ignored)."""
    images, others = image_files(folder)
    return [_Item(str(path)) for path in images], [path for path in others if path.name != "manifest.csv"]


def _problem(item: _Item, limits: ReadLimits, hashed: dict[str, str] | None) -> str:
    """The reason ``item`` is bad, or "" when it reads cleanly (and matches its manifest sha256)."""
    try:
        read_image(item.path, limits=limits)
    except BadInputError as exc:
        return exc.reason
    except Exception as exc:  # noqa: BLE001 - a reader bug on one file must not hide the others; it is reported
        log.debug("unexpected error reading %s", item.path, exc_info=True)
        return f"unexpected reader error ({type(exc).__name__}: {exc}); please report it"
    if hashed is not None and item.sha256:
        file_path = item.path.rpartition("#")[0] if _is_frame_path(Path(item.path)) else item.path
        if file_path not in hashed:
            hashed[file_path] = sha256_file(file_path)
        if hashed[file_path] != item.sha256.lower():
            return "sha256 differs from the manifest (the file changed after indexing)"
    return ""
