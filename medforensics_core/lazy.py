"""Libraries imported on first use, not when a plugin module is loaded.

Why: ``mfx --help`` and ``mfx plugins`` load every plugin to list what it
registers, and two libraries the detectors need only once they run cost seconds
to import: torchvision imports its whole model zoo (and ops) with any submodule,
scikit-learn imports scipy and pandas. A module-level ``v2 = lazy_module(
"torchvision.transforms.v2")`` keeps the code reading as a normal import while the
import happens at the first attribute access (building a transform, computing an
AUC). A test asserts that ``mfx --help`` stays clear of them.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .errors import MfxError


class LazyModule:
    """Stands for the module ``name``: the first attribute access imports it, later ones read it directly.

    A failed import (a torchvision built for another torch, a missing library) becomes one
    :class:`~medforensics_core.errors.MfxError` naming the module, where an import at load time would have
    been reported by ``mfx plugins`` as that plugin's problem. Pickled, it is the call that makes it again.
    """

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def _load(self) -> ModuleType:
        if self._module is None:
            try:
                self._module = importlib.import_module(self._name)
            except (ImportError, OSError, RuntimeError) as exc:
                raise MfxError(f"{self._name} failed to import ({type(exc).__name__}: {exc}); check that it is "
                               f"installed and built for this torch ({torch_version()})") from exc
        return self._module

    def __getattr__(self, attribute: str) -> Any:
        if attribute in ("_name", "_module"):
            raise AttributeError(attribute)  # an instance not built by __init__: no recursion through _load
        return getattr(self._load(), attribute)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return lazy_module, (self._name,)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<lazy module {self._name!r}, {state}>"


def torch_version() -> str:
    """The installed torch's version, read from its metadata (importing torch is not needed to name it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"torch {version('torch')}"
    except PackageNotFoundError:
        return "torch not installed"


def lazy_module(name: str) -> Any:
    """A stand-in for ``import name`` that imports on first use (typed ``Any``: attribute access as on the module)."""
    return LazyModule(name)
