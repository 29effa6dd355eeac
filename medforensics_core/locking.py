"""Advisory file locks for read-modify-write updates (``mfx index add`` rewriting a checkpoint).

Atomic writes alone are not enough there: two processes that both load a
checkpoint, add references and save it would each write a complete file, and
the second would silently drop the first one's references. Holding a lock from
the load to the save makes the second writer wait (with a message) and then
load the first one's result.

The lock is a sibling file ``NAME.lock`` (``filelock``: ``fcntl``/``msvcrt``
underneath), left in place after use; it holds no data.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Callable, Iterator

from .errors import MfxError

log = logging.getLogger(__name__)

DEFAULT_WAIT_SECONDS = 600.0
"""How long a second writer waits for the first one (``MFX_LOCK_TIMEOUT`` overrides it)."""


def lock_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def locked(path: str | os.PathLike, *, waiting: Callable[[str], None] | None = None,
           timeout: float | None = None) -> Iterator[None]:
    """Hold the lock of ``path`` for the block; a second holder waits (``waiting`` is told why), then fails.

    Raises :class:`MfxError` when the lock cannot be created (read-only folder)
    or is still held after ``timeout`` seconds.
    """
    from filelock import FileLock, Timeout

    if timeout is None:
        timeout = float(os.environ.get("MFX_LOCK_TIMEOUT") or DEFAULT_WAIT_SECONDS)
    target = lock_path(path)
    lock = FileLock(str(target))
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            message = f"{path} is being updated by another mfx process; waiting up to {timeout:g} s for it"
            (waiting or log.warning)(message)
            lock.acquire(timeout=timeout)
    except Timeout:
        raise MfxError(f"{path}: still locked by another process after {timeout:g} s ({target}); "
                       "try again when it has finished") from None
    except OSError as exc:
        raise MfxError(f"{path}: cannot create the lock file {target} ({exc.strerror or exc})") from None
    try:
        yield
    finally:
        lock.release()
