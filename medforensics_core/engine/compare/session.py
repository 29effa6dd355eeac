"""Where and how this process of a comparison runs (device, rank, progress, terminal), and the run's log."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from rich.console import Console

from ..context import ProgressFn, no_progress

run_log = logging.getLogger("mfx.run")  # the run's log file only (tracebacks never reach the terminal)
run_log.propagate = False


@dataclasses.dataclass
class Session:
    """Where and how this process runs: device, ranks, progress, terminal (``None`` on non-zero ranks)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    progress: ProgressFn = no_progress
    console: Console | None = None
    log_path: Path | None = None
    resumed: bool = False
    added: frozenset[str] = frozenset()  # detectors --extend just added: no earlier attempt of theirs exists

    def say(self, message: str, *, soft_wrap: bool = False) -> None:
        """Print on rank 0; ``soft_wrap`` keeps a line whole (a path the user copies must not be broken up)."""
        if self.console is not None and self.rank == 0:
            self.console.print(message, soft_wrap=soft_wrap)
