"""pluggy hook specifications of the ``mfx`` project.

Hooks use the *register-callback* style (as in simonw/llm): a plugin receives a
``register`` function and calls it once per class it contributes. This keeps a
plugin's module free of import-time side effects and lets the plugin manager
attribute every registration to the distribution that made it.
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT_NAME = "mfx"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[[type], None]


@hookspec
def register_detectors(register: Register) -> None:
    """Register :class:`~medforensics_core.interfaces.Detector` subclasses."""


@hookspec
def register_noise_extractors(register: Register) -> None:
    """Register :class:`~medforensics_core.interfaces.NoiseExtractor` subclasses."""


@hookspec
def register_retrievers(register: Register) -> None:
    """Register :class:`~medforensics_core.interfaces.Retriever` subclasses."""


@hookspec
def register_generators(register: Register) -> None:
    """Register :class:`~medforensics_core.interfaces.Generator` subclasses."""


@hookspec
def register_perturbations(register: Register) -> None:
    """Register :class:`~medforensics_core.interfaces.Perturbation` subclasses (robustness protocols)."""


@hookspec
def register_commands(cli) -> None:  # noqa: ANN001 - a click.Group
    """Add sub-commands to the ``mfx`` click group."""
