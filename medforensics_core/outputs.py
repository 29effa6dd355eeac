"""Output paths are proven writable *before* any work starts, so a long run is never lost to its last write.

``mfx train -o`` into a read-only or file-blocked folder used to fail after
training, losing the model. Each function here creates what is missing, writes
and removes a probe file, and turns any failure into one
:class:`~medforensics_core.errors.MfxError` line that names the path and the
option it came from.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import MfxError

__all__ = ["writable_dir", "writable_file"]


def writable_dir(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and prove a file can be written in it; returns it."""
    folder = Path(folder).expanduser()
    problem = _probe(folder)
    if problem:
        raise MfxError(f"{folder}: cannot write the {what} there ({problem}); checked before any work")
    return folder


def writable_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Prove ``path`` can be written (its folder is created if missing) without touching an existing file."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise MfxError(f"{path}: is a folder; the {what} needs a file name")
    problem = "exists and is not writable" if path.exists() and not os.access(path, os.W_OK) else _probe(path.parent)
    if problem:
        raise MfxError(f"{path}: cannot write the {what} ({problem}); checked before any work")
    return path


def _probe(folder: Path) -> str | None:
    """Why nothing can be written in ``folder`` (created if missing), or ``None`` when a probe file could be."""
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mfx-write-test-"):
            pass
    except OSError as exc:
        return str(exc.strerror or exc)
    return None
