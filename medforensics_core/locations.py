"""Where mfx keeps what it can rebuild: one cache root for benchmarks, feature caches and indexes.

``$MFX_CACHE_DIR`` when set (CI and shared machines point several checkouts at
one cache), else the platform's user cache folder for ``mfx``
(``~/.cache/mfx`` on Linux, via ``platformdirs``). Nothing else reads the
variable, so every cache of a run moves together.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_root"]

CACHE_ENV = "MFX_CACHE_DIR"


def cache_root(*parts: str) -> Path:
    """The cache root (``$MFX_CACHE_DIR`` or the user cache folder), joined with ``parts``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        root = Path(env).expanduser()
        if root.exists() and not root.is_dir():
            from .errors import MfxError

            raise MfxError(f"{CACHE_ENV}={env} is a file, not a folder: point it at a folder mfx may write")
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("mfx"))
    return root.joinpath(*parts)
