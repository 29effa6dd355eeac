"""The one folder walker: which files under a folder are images, decided by content, not by name alone.

``mfx predict DIR``, ``mfx index add DIR``, ``mfx data index`` and ``mfx data
check`` all walk folders through here, so they agree on what an image is: a
known suffix (``.png .jpg .tif .dcm .nii(.gz)`` ...) or an extension-less file
that starts with the DICOM preamble (scanners export DICOM without a suffix).
Hidden files and folders (``.name``) are skipped; the order is sorted, so a
walk is reproducible.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

from .readers import is_image_file

__all__ = ["expand_inputs", "image_files", "walk_files"]


def walk_files(folder: str | os.PathLike) -> Iterator[Path]:
    """Every non-hidden file under ``folder``, recursively, in sorted order."""
    for dirpath, dirnames, files in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(dirpath) / name


def image_files(folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """``(image files, other files)`` under ``folder`` (see the module docstring for what an image is)."""
    images: list[Path] = []
    others: list[Path] = []
    for path in walk_files(folder):
        (images if is_image_file(path) else others).append(path)
    return images, others


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given, plus the image files found in the folders given; ``(path, reason)`` for each bad input.

    A file named explicitly is kept whatever its name (the reader decides);
    a missing path, or a folder without any image, is a bad input.
    """
    files: list[Path] = []
    bad: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found, _ = image_files(path)
            if not found:
                bad.append((str(path), "folder holds no image files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():  # a FIFO, a device, a socket: reading it could block or never end
            bad.append((str(path), "not a regular file (a pipe, device or socket)"))
        else:
            bad.append((str(path), "no such file or folder"))
    return files, bad
