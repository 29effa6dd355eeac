"""Safe checkpoints: tensors in safetensors, everything else as JSON metadata.

A checkpoint never contains a pickle, so loading one cannot execute code. The
metadata names the detector, its config and format version; loading checks all
of them and fails with one line instead of a silent partial ``load_state_dict``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import CheckpointError, OutputError

FORMAT = "mfx-checkpoint"
FORMAT_VERSION = "1"


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so no reader sees half a file.

    The file gets the permissions of a plainly created one (0666 minus the
    umask), not the 0600 of the temporary file it was written as.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:  # disk full, quota, a folder in the way: one line naming the file, nothing half-written
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> None:
    """Save tensors plus JSON-able metadata (stored under the ``mfx`` key) atomically."""
    from safetensors.torch import save

    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "mfx": json.dumps(dict(metadata))}
    atomic_write_bytes(path, save(contiguous, metadata=header))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a file written by :func:`save_tensors`; any corruption becomes a one-line :class:`CheckpointError`."""
    return _read(path, with_tensors=True)


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a file written by :func:`save_tensors`, without loading any tensor."""
    return _read(path, with_tensors=False)[1]


def _read(path: str | os.PathLike, *, with_tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()} if with_tensors else {}
    except Exception as exc:  # safetensors raises several exception types for a damaged file
        raise CheckpointError(f"{path}: not a readable mfx checkpoint ({type(exc).__name__}: {exc})") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mfx checkpoint (no mfx header)")
    version = header.get("format_version")
    if version is None:
        raise CheckpointError(f"{path}: damaged checkpoint header (no format_version)")
    if version != FORMAT_VERSION:  # a layout this mfx does not know: reading it anyway could score wrongly
        raise CheckpointError(f"{path}: checkpoint format version {version!r}; this mfx reads version "
                              f"{FORMAT_VERSION!r} (written by a newer mfx? pip install -U medforensics)")
    try:
        metadata = json.loads(header["mfx"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint metadata ({exc})") from None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: damaged checkpoint metadata (a JSON {type(metadata).__name__}, not an object)")
    for key in ("config", "extra", "train_info", "info"):  # hostile metadata: one line here, not a traceback later
        if metadata.get(key) is not None and not isinstance(metadata[key], dict):
            raise CheckpointError(f"{path}: damaged checkpoint metadata ({key!r} is a JSON "
                                  f"{type(metadata[key]).__name__}, not an object)")
    return tensors, metadata


def load_state_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` that refuses missing, unexpected or wrongly shaped tensors with one line."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
    if problems:
        raise CheckpointError(f"{source}: architecture does not match the config: " + "; ".join(problems))
    module.load_state_dict(dict(state), strict=True)
