"""The ``mfx`` command line: a click group whose sub-commands live in sibling modules and in plugins.

Every user error (:class:`~medforensics_core.errors.MfxError`) ends the command
with one red line and a non-zero exit status, never a traceback; ``--debug``
shows the traceback for bug reports.
"""

from __future__ import annotations

import logging
import os
import sys

import click
from rich.console import Console

from ..errors import MfxError

# Piped or logged output has no terminal width: rich would assume 80 columns and squeeze the report tables
# (7 modalities + mean do not fit), so such output gets a wide page instead. COLUMNS still wins when set.
PIPED_WIDTH = 160


def _width(stream) -> int | None:
    if os.environ.get("COLUMNS") or stream.isatty():
        return None
    return PIPED_WIDTH


console = Console(stderr=False, highlight=False, width=_width(sys.stdout))
err_console = Console(stderr=True, highlight=False, width=_width(sys.stderr))

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


class MfxGroup(click.Group):
    """A click group that turns :class:`MfxError` into one line and lets plugins add commands lazily."""

    def plugin_commands_loaded(self, ctx: click.Context | None = None) -> None:
        """Add the plugins' commands once (``mfx plugins`` calls it so a failing hook is listed)."""
        self._plugin_commands_loaded(ctx)

    def _plugin_commands_loaded(self, ctx: click.Context | None) -> None:
        if getattr(self, "_plugins_added", False):
            return
        self._plugins_added = True
        from ..plugins import get_registry

        get_registry().add_commands(self)  # one plugin at a time: a broken one costs only its own commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._plugin_commands_loaded(ctx)
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str):
        command = super().get_command(ctx, name)
        if command is None:
            self._plugin_commands_loaded(ctx)
            command = super().get_command(ctx, name)
        return command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MfxError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            err_console.print(f"[bold red]error:[/] {_escape(exc)}", soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err_console.print(f"[yellow]interrupted[/]: {self._interrupt_hint(ctx)}")
            sys.exit(130)

    def _interrupt_hint(self, ctx: click.Context) -> str:
        """What an interrupted command kept: a command says so in its ``interrupt_hint`` attribute."""
        command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
        return getattr(command, "interrupt_hint", None) or "stopped; files already written are complete " \
                                                           "(every write is atomic), nothing else was kept"


def _escape(exc: BaseException) -> str:
    from rich.markup import escape

    return escape(str(exc))


@click.group(cls=MfxGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="medforensics", prog_name="mfx")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs (for bug reports).")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int) -> None:
    """mfx: detect AI-generated medical images, and compare detectors fairly.

    \b
    Typical session:
      mfx plugins                        what is installed (detectors, noise extractors, ...)
      mfx data demo                      build the offline benchmark (MedForensics-mini)
      mfx compare dski cnnspot univfd    train, evaluate and report on the same data
      mfx predict --checkpoint runs/.../dski.safetensors scan.dcm

    Every command that takes --data uses the offline benchmark when --data is not given.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.DEBUG if (debug or verbose > 1) else logging.INFO if verbose else logging.WARNING
    from rich.logging import RichHandler

    handler = RichHandler(console=err_console, show_path=False)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    quiet_libraries(handler, debug or verbose > 0)


READER_LOGGERS = ("pydicom", "nibabel", "PIL")
"""Loggers of the libraries that read user files."""
READER_SOURCES = ("/pydicom/", "/nibabel/", "/PIL/", "/medforensics_core/data/")
"""Where a Python warning about a user's file comes from (the readers, or mfx's own reading code)."""


def quiet_libraries(handler: logging.Handler, verbose: bool) -> None:
    """Keep the file readers' own complaints off the terminal unless ``-v``/``--debug`` asks for them.

    Why: pydicom logs a failed decoder with its whole traceback (``ERROR libjpeg error ...``), NumPy warns
    ``All-NaN slice`` from the reading code, before mfx prints its own one line for the same file (``skipped
    FILE: reason``). The user gets that one line; ``-v`` shows the libraries' words too. Other warnings (a
    solver that did not converge, a torch deprecation) still show.
    """
    logging.captureWarnings(True)
    if not verbose:  # a filter on the terminal's handler: a library may set its own logger's level on import
        handler.addFilter(lambda record: not about_a_read_file(record))


def about_a_read_file(record: logging.LogRecord) -> bool:
    """Whether a log record is a reader library's message, or a Python warning raised while reading a file."""
    if any(record.name == name or record.name.startswith(name + ".") for name in READER_LOGGERS):
        return True
    return record.name == "py.warnings" and any(source in str(record.getMessage()) for source in READER_SOURCES)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="mfx")


# Built-in commands register themselves on ``cli`` (kept last: they import ``cli`` from here).
from . import commands  # noqa: E402,F401
