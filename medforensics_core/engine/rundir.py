"""Run directories: where a run leaves its config, environment, scores and reports.

Every file is written atomically (temporary file + rename, through
:func:`medforensics_core.checkpoint.atomic_write_bytes`), so an interrupted run never
leaves a half-written ``report.json`` that a later ``mfx report`` would misread. The
environment record (package versions, git commit, device, threads) is what makes a
number in a report reproducible months later.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..checkpoint import atomic_write_bytes
from ..errors import MfxError
from .device import peak_memory_mb

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

#: Distributions whose versions every run records (missing ones are recorded as ``None``).
RECORDED_PACKAGES = (
    "medforensics", "torch", "torchvision", "open_clip_torch", "numpy", "scikit-learn", "faiss-cpu",
    "pydicom", "nibabel", "pywavelets", "pillow", "safetensors",
)

__all__ = ["RunDir", "Timer", "environment", "new_run_dir", "peak_memory_mb", "reset_peak_memory", "to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, paths, sets and tuples to JSON types; NaN and infinities become ``None``.

    Strict JSON has no NaN, and a report must stay readable by any JSON parser.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    return obj


class RunDir:
    """One run's folder; all writes are atomic and confined to the folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def file(self, name: str) -> Path:
        """Path of ``name`` inside the run directory (a name that escapes it is refused)."""
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise MfxError(f"{name}: not a file name inside the run directory {self.path}")
        return self.path / relative

    def write_bytes(self, name: str, data: bytes) -> Path:
        target = self.file(name)
        atomic_write_bytes(target, data)
        return target

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, obj: Any) -> Path:
        """Strict JSON (NaN -> null), indented for people and diffs."""
        text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False)
        return self.write_text(name, text + "\n")

    def read_json(self, name: str) -> Any:
        """Parsed JSON; a missing or damaged file is one :class:`MfxError` line."""
        target = self.file(name)
        if not target.is_file():
            raise MfxError(f"{target}: not found in the run directory")
        try:
            return json.loads(target.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MfxError(f"{target}: not valid JSON ({exc})") from None

    def exists(self, name: str) -> bool:
        return self.file(name).exists()


def _slug(label: str) -> str:
    """A file-system-safe version of a run label (``compare dski/cnnspot`` -> ``compare-dski-cnnspot``)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.")
    return slug[:60] or "run"


def new_run_dir(root: str | os.PathLike, label: str) -> RunDir:
    """Create ``root/<UTC timestamp>-<label>``; a clash (same second) gets ``-2``, ``-3``... never reuses a folder."""
    from ..outputs import writable_dir

    root = writable_dir(root, "--out folder")  # a file or a read-only folder is one line, before any work
    stem = f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{_slug(label)}"
    for attempt in range(1, 1000):
        candidate = root / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return RunDir(candidate)
    raise MfxError(f"{root}: could not create a new run directory for {label!r} (1000 already exist)")


def _package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git_state() -> dict[str, Any]:
    """Commit and dirty flag of the mfx source checkout, if mfx runs from one (else ``None`` values)."""
    source = Path(__file__).resolve().parents[2]
    state: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "--no-optional-locks", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("no git state for %s: %s", source, exc)
        return state
    state["commit"] = commit or None
    state["dirty"] = bool(status.strip())
    return state


def environment(device: Any = None) -> dict:
    """What a reader needs to reproduce a number: Python, platform, package versions, git, CPU/GPU, threads."""
    import torch

    packages = _package_versions()
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "mfx_version": packages.get("medforensics"),
        "packages": packages,
        "git": _git_state(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device) if device is not None else None,
        "cuda_device": _cuda_device_name(device),
        "cuda_version": torch.version.cuda if torch.cuda.is_available() else None,
    }
    return env


def _cuda_device_name(device: Any) -> str | None:
    """Name of the GPU a run uses (the given CUDA device, else GPU 0); ``None`` without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        chosen = torch.device(device) if device is not None else None
    except (RuntimeError, TypeError):  # e.g. "auto": not a torch device name
        chosen = None
    index = chosen.index if chosen is not None and chosen.type == "cuda" else None
    return torch.cuda.get_device_name(index or 0)


def release_memory(device: Any) -> None:
    """Give memory that finished detectors freed back to the system before the next one starts.

    Why: ``mfx compare`` runs detectors one after another in one process. A DSKI model caches
    up to ``noise_cache_mb`` of noise maps as megabyte-sized tensors; once it is gone, glibc keeps
    the freed heap pages for reuse, fragmented among long-lived allocations, so the process's
    resident memory ratcheted up detector after detector (measured on the default build: 3.0 GB
    after the first DSKI variant, 7.1 GB after the fifth), and three seed jobs filled a 24 GB
    machine. ``malloc_trim(0)`` returns every free page (glibc only; a no-op elsewhere).
    """
    import torch

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or ``None`` (another C library, or not Linux)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def reset_peak_memory(device: Any) -> None:
    """Start a new peak-memory window (per detector): the CUDA allocator peak, or on Linux the peak RSS.

    Writing ``5`` to ``/proc/self/clear_refs`` resets the kernel's peak RSS (``VmHWM``) of this
    process, so each detector's peak is its own, not the largest so far.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: peak_memory_mb falls back to the lifetime max RSS
        pass


class Timer:
    """Wall-clock timer for ``with`` blocks: ``with Timer() as t: ...; t.seconds``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start: float | None = None

    def __enter__(self) -> Self:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - (self._start or time.perf_counter())


# The report contract names ``RunDir.environment()``; the module function is the one implementation.
RunDir.environment = staticmethod(environment)  # type: ignore[attr-defined]
