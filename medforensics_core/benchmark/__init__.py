"""MedForensics-mini: the offline benchmark every mfx command uses when ``--data`` is not given.

Public API::

    cache_root() -> Path
    build_benchmark(out=None, *, quick=False, size=None, per_modality=None, generators=None, seed=0,
                    force=False, allow_missing=False, progress=None) -> Path
    default_dataset(quick=False, **kwargs) -> Path

A build is identified by a key hashed from all its parameters plus the builder
version, so a changed parameter never reuses a stale build. It is written into
a hidden temporary folder next to its destination and renamed into place at the
end: an interrupted build leaves nothing that looks complete. A file lock
serialises concurrent builds of the same key (pytest-xdist workers), and the
loser of a race simply uses the winner's folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import MfxError
from ..locations import CACHE_ENV, cache_root  # noqa: F401 - re-exported
from .settings import (BUILDER_VERSION, DEFAULT_PER_MODALITY, DEFAULT_SETTINGS, DEFAULT_SIZE, QUICK_PER_MODALITY,
                       QUICK_SIZE, BuildPlan, Setting, parse_settings)
from .sources import SOURCES

log = logging.getLogger(__name__)

BUILD_INFO = "build.json"

__all__ = ["BUILDER_VERSION", "DEFAULT_SETTINGS", "BuildPlan", "Setting", "build_benchmark", "cache_root",
           "default_dataset", "make_plan", "modalities"]


def modalities() -> tuple[str, ...]:
    """Every modality the offline benchmark draws real images for."""
    return tuple(dict.fromkeys(s.modality for s in SOURCES))


def make_plan(*, quick: bool = False, size: int | None = None, per_modality: int | None = None,
              generators: Sequence[str] | None = None, seed: int = 0) -> BuildPlan:
    """The build plan for these parameters (``None`` picks the full or quick default)."""
    size = size if size is not None else (QUICK_SIZE if quick else DEFAULT_SIZE)
    if size < 32 or size % 16:
        raise MfxError(f"--size must be a multiple of 16 and at least 32, not {size}")
    per_modality = per_modality if per_modality is not None else (QUICK_PER_MODALITY if quick else DEFAULT_PER_MODALITY)
    if per_modality < 10:
        raise MfxError(f"--per-modality must be at least 10 (for three splits), not {per_modality}")
    return BuildPlan(size=size, per_modality=per_modality, settings=parse_settings(generators), seed=seed,
                     quick=quick, modalities=modalities())


def is_complete(folder: Path, key: str | None = None) -> bool:
    """A finished build: manifest, card and build info present (and, if given, of this key)."""
    info = folder / BUILD_INFO
    if not ((folder / "manifest.csv").is_file() and (folder / "DATASET.md").is_file() and info.is_file()):
        return False
    if key is None:
        return True
    try:
        return json.loads(info.read_text(encoding="utf-8")).get("key") == key
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def build_lock(destination: Path) -> Iterator[None]:
    """An exclusive lock beside ``destination`` (held by one builder at a time, released on exit or crash)."""
    lock_path = destination.parent / f".{destination.name}.lock"
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+")
    except OSError as exc:  # read-only or missing parent, a file in the way: before any work, one line
        raise MfxError(f"{destination}: cannot build there ({exc.strerror or exc})") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_mfx_build(folder: Path) -> bool:
    """Whether ``folder`` carries the marker of an mfx benchmark build (its ``build.json`` with a build key)."""
    try:
        return isinstance(json.loads((folder / BUILD_INFO).read_text(encoding="utf-8")).get("key"), str)
    except (OSError, ValueError, AttributeError):
        return False


def _check_replaceable(destination: Path, force: bool) -> None:
    """Refuse to build over anything but an empty folder or (with ``force``) an earlier mfx build.

    ``--force`` never deletes a folder without the build marker: pointing
    ``--out`` at a folder of one's own data must not lose it.
    """
    if not destination.exists():
        return
    if not destination.is_dir():
        raise MfxError(f"{destination}: exists and is not a folder; pick another --out")
    if not any(destination.iterdir()):
        return
    if not is_mfx_build(destination):
        raise MfxError(f"{destination}: folder is not empty and is not an mfx benchmark build (no {BUILD_INFO}); "
                       "mfx never deletes it, with or without --force: pick a new or empty folder with --out")
    if not force:
        raise MfxError(f"{destination}: holds an mfx benchmark build of other parameters; "
                       "use --force to replace it or --out to pick another folder")


def build_benchmark(out: Path | None = None, *, quick: bool = False, size: int | None = None,
                    per_modality: int | None = None, generators: Sequence[str] | None = None, seed: int = 0,
                    force: bool = False, allow_missing: bool = False, progress=None) -> Path:
    """Build MedForensics-mini into ``out`` (default: the cache) and return the dataset folder.

    ``size`` defaults to 128 px (64 with ``quick``), ``per_modality`` to 300
    real crops (56 with ``quick``). An existing complete build of the same
    parameters is reused unless ``force``; ``out`` holding anything else is
    refused unless ``force``. ``progress`` is a callable ``(iterable, total,
    description) -> iterator`` (the CLI passes rich progress bars).
    """
    plan = make_plan(quick=quick, size=size, per_modality=per_modality, generators=generators, seed=seed)
    key = plan.key()
    destination = Path(out) if out is not None else cache_root() / "benchmarks" / f"medforensics-mini-{key}"
    with build_lock(destination):
        if is_complete(destination, key) and not force:
            log.info("reusing the benchmark built at %s", destination)
            return destination
        _check_replaceable(destination, force)
        from .builder import build_into

        # a warning, not info: without --data, a user's first command waits for this build and must know why
        log.warning("building the offline benchmark MedForensics-mini (%s build, once; later runs reuse it) "
                    "into %s", "quick" if quick else "full", destination)
        tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.building-", dir=destination.parent))
        try:
            build_into(tmp, plan, allow_missing=allow_missing, progress=progress)
            if destination.exists():
                shutil.rmtree(destination)
            os.replace(tmp, destination)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return destination


def default_dataset(quick: bool = False, **kwargs) -> Path:
    """The cached default build (built on first use, which is logged), reused afterwards."""
    return build_benchmark(None, quick=quick, **kwargs)
