"""MedForensics-mini: the offline benchmark every mfx command uses when ``--data`` is not given.

Public API::

    cache_root() -> Path
    build_benchmark(out=None, *, quick=False, size=None, per_modality=None, generators=None, seed=0,
                    force=False, allow_missing=False, progress=None) -> Path
    default_dataset(quick=False, **kwargs) -> Path

A build is identified by a key hashed from all its parameters plus the builder
version, so a changed parameter never reuses a stale build. It is written into
a hidden temporary folder (``.<name>.building-*``) next to its destination and
renamed into place at the end: an interrupted build leaves nothing that looks
complete, and the temporary folders a killed build left behind are removed by
the next build of that destination. A folder is only reused when its build.json
has the key, its card.json exists and every image the manifest lists is there;
anything else in the cache is rebuilt. A file lock serialises concurrent builds
of the same key (pytest-xdist workers), and the loser of a race simply uses the
winner's folder.
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
                       QUICK_SIZE, LARGE_FACTOR, SIZES, BuildPlan, Setting, parse_settings)
from .sources import SOURCES

log = logging.getLogger(__name__)

BUILD_INFO = "build.json"

__all__ = ["BUILDER_VERSION", "DEFAULT_SETTINGS", "BuildPlan", "Setting", "build_benchmark", "cache_root",
           "default_dataset", "make_plan", "modalities"]


def optional_sources_found() -> tuple[str, ...]:
    """Labels of the optional real sources installed here (part of the build key: they change the content)."""
    from .sources import package_dir

    return tuple(s.label for s in SOURCES if s.optional and package_dir(s.package) is not None
                 and (package_dir(s.package) / s.relpath).is_file())


def modalities() -> tuple[str, ...]:
    """Every modality the offline benchmark draws real images for."""
    return tuple(dict.fromkeys(s.modality for s in SOURCES))


def parse_size(size: int | str | None, quick: bool) -> tuple[int | None, str]:
    """``--size``: a crop side in pixels, or a build size name (quick, default, large) -> (side or None, name)."""
    if size is None or isinstance(size, int):
        return size, "quick" if quick else "default"
    text = str(size).strip().lower()
    if text.isdigit():
        return int(text), "quick" if quick else "default"
    if text not in SIZES:
        raise MfxError(f"--size must be a crop side in pixels or one of {', '.join(SIZES)}, not {size!r}")
    if quick and text != "quick":
        raise MfxError(f"--quick and --size {text} contradict each other; give one of them")
    return None, text


def make_plan(*, quick: bool = False, size: int | str | None = None, per_modality: int | None = None,
              generators: Sequence[str] | None = None, seed: int = 0) -> BuildPlan:
    """The build plan for these parameters (``None`` picks the full or quick default).

    ``size`` is a crop side in pixels or a build size name: ``quick`` (as
    ``quick=True``), ``default``, or ``large`` (the default build trained
    several times longer: better fakes, about an hour on two CPU cores).
    """
    size, size_name = parse_size(size, quick)
    quick = quick or size_name == "quick"
    size = size if size is not None else (QUICK_SIZE if quick else DEFAULT_SIZE)
    if size < 32 or size % 16:
        raise MfxError(f"--size must be a multiple of 16 and at least 32, not {size}")
    per_modality = per_modality if per_modality is not None else (QUICK_PER_MODALITY if quick else DEFAULT_PER_MODALITY)
    if per_modality < 10:
        raise MfxError(f"--per-modality must be at least 10 (for three splits), not {per_modality}")
    return BuildPlan(size=size, per_modality=per_modality, settings=parse_settings(generators), seed=seed,
                     quick=quick, modalities=modalities(), size_name=size_name,
                     sources=() if quick else optional_sources_found())


def is_complete(folder: Path, key: str | None = None) -> bool:
    """A finished build: manifest, cards and build info present (of this key, if given), every image on disk."""
    info = folder / BUILD_INFO
    if not all((folder / name).is_file() for name in ("manifest.csv", "DATASET.md", "card.json", BUILD_INFO)):
        return False
    try:
        if key is not None and json.loads(info.read_text(encoding="utf-8")).get("key") != key:
            return False
        from ..data.manifest import read_manifest

        manifest = read_manifest(folder / "manifest.csv")
    except (OSError, ValueError, MfxError):
        return False
    return all(manifest.path_of(row).is_file() for row in manifest.rows)


def remove_stale(destination: Path) -> list[Path]:
    """Delete the temporary folders that killed builds of ``destination`` left (call under the build lock)."""
    stale = [p for p in destination.parent.glob(f".{destination.name}.building-*") if p.is_dir()]
    stale += [p for p in destination.parent.glob(f".{destination.name}.old-*") if p.is_dir()]
    for path in stale:
        log.warning("removing %s, left by an interrupted build", path)
        shutil.rmtree(path, ignore_errors=True)
    return stale


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


def _has_key(folder: Path, key: str | None) -> bool:
    try:
        return key is not None and json.loads((folder / BUILD_INFO).read_text(encoding="utf-8")).get("key") == key
    except (OSError, ValueError, AttributeError):
        return False


def is_mfx_build(folder: Path) -> bool:
    """Whether ``folder`` carries the marker of an mfx benchmark build (its ``build.json`` with a build key)."""
    try:
        return isinstance(json.loads((folder / BUILD_INFO).read_text(encoding="utf-8")).get("key"), str)
    except (OSError, ValueError, AttributeError):
        return False


def _check_replaceable(destination: Path, force: bool, key: str | None = None) -> None:
    """Refuse to build over anything but an empty folder, an interrupted build of the same ``key``, or (with
    ``force``) an earlier mfx build.

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
    if not force and not _has_key(destination, key):
        raise MfxError(f"{destination}: holds an mfx benchmark build of other parameters; "
                       "use --force to replace it or --out to pick another folder")


def build_benchmark(out: Path | None = None, *, quick: bool = False, size: int | str | None = None,
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
        remove_stale(destination)
        if is_complete(destination, key) and not force:
            log.info("reusing the benchmark built at %s", destination)
            return destination
        _check_replaceable(destination, force, key)
        if destination.exists() and any(destination.iterdir()) and not force:
            log.warning("%s: an incomplete build of these parameters (interrupted?); rebuilding it", destination)
        from .builder import build_into

        # a warning, not info: without --data, a user's first command waits for this build and must know why
        log.warning("building the offline benchmark MedForensics-mini (%s build, once; later runs reuse it) "
                    "into %s", plan.size_name if not plan.quick else "quick", destination)
        if plan.size_name == "large":
            log.warning("a large build trains every network %dx longer than the default for better fakes: expect "
                        "about an hour on two CPU cores (the default build takes minutes)", LARGE_FACTOR)
        tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.building-", dir=destination.parent))
        try:
            build_into(tmp, plan, allow_missing=allow_missing, progress=progress)
            replace_folder(tmp, destination)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return destination


def replace_folder(new: Path, destination: Path) -> None:
    """Put ``new`` at ``destination``; an old folder is first renamed aside (atomic), so a crash never leaves
    a half-deleted build at ``destination``."""
    old = None
    if destination.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
        os.replace(destination, old / "build")
    os.replace(new, destination)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def default_dataset(quick: bool = False, **kwargs) -> Path:
    """The cached default build (built on first use, which is logged), reused afterwards."""
    return build_benchmark(None, quick=quick, **kwargs)
