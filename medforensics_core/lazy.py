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


class LazyModule:
    """Stands for the module ``name``: the first attribute access imports it, later ones read it directly."""

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def _load(self) -> ModuleType:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return self._module

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._load(), attribute)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<lazy module {self._name!r}, {state}>"


def lazy_module(name: str) -> Any:
    """A stand-in for ``import name`` that imports on first use (typed ``Any``: attribute access as on the module)."""
    return LazyModule(name)
