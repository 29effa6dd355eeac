"""Rich progress bars behind :attr:`FitContext.progress`, so detectors never talk to the terminal.

A detector wraps its loops in ``ctx.track(iterable, total, description)``; the
engine decides what that shows. On a terminal it is one rich progress bar per
live loop (epochs, batches and scoring nest naturally as separate rows that
disappear when their loop ends); in tests, pipes and non-zero ranks nothing is
drawn, so logs stay clean.
"""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from .context import no_progress

T = TypeVar("T")


class RichProgress:
    """A :data:`~medforensics_core.engine.context.ProgressFn` drawing rich bars; use it as a context manager."""

    def __init__(self, console: Console, *, enabled: bool | None = None):
        self.console = console
        self.enabled = console.is_terminal if enabled is None else enabled
        self._progress = Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"),
                                  BarColumn(bar_width=20), MofNCompleteColumn(), TimeElapsedColumn(),
                                  TimeRemainingColumn(), TextColumn("{task.fields[status]}", style="cyan"),
                                  console=console, transient=True, disable=not self.enabled)
        self._live: list = []  # task ids of the loops now running, outermost first

    def __enter__(self) -> "RichProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._progress.stop()

    def __call__(self, iterable: Iterable[T], total: int | None = None, description: str = "") -> Iterator[T]:
        if not self.enabled:
            return no_progress(iterable, total, description)
        return self._tracked(iterable, total, description)

    def status(self, text: str) -> None:
        """Text beside the outermost live bar (a training loop's epochs bar: running loss, val metrics)."""
        if self.enabled and self._live:
            self._progress.update(self._live[0], status=text)

    def _tracked(self, iterable: Iterable[T], total: int | None, description: str) -> Iterator[T]:
        task = self._progress.add_task(description, total=total, status="")
        self._live.append(task)
        try:
            for item in iterable:
                yield item
                self._progress.advance(task)
        finally:
            self._live.remove(task)
            self._progress.remove_task(task)
