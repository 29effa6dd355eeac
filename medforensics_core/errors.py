"""Errors that the CLI turns into one clear line (file and reason), never a traceback.

Every error a *user* can cause (bad file, unknown plugin name, wrong checkpoint,
missing weights) derives from :class:`MfxError`. Anything else is a bug and keeps
its traceback so it can be reported.
"""

from __future__ import annotations


class MfxError(Exception):
    """A user-facing error: its message is the one line the CLI prints."""

    exit_code = 2


class BadInputError(MfxError):
    """A file that cannot be used, with the file named in the message."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnknownPluginError(MfxError):
    """A plugin name that is not registered (the message lists the known ones)."""


class CheckpointError(MfxError):
    """A checkpoint that is corrupt, of another detector, or of another architecture."""


class WeightsNotFoundError(MfxError):
    """Pretrained weights that cannot be had offline (the message says how to supply them)."""


class ConfigError(MfxError):
    """A configuration value or override that does not fit the config dataclass."""


class OutputError(MfxError, OSError):
    """A file mfx could not write (disk full, read-only, a file in the way); still an ``OSError`` for callers."""
