"""Options shared by every ``mfx`` command, so one flag means one thing everywhere.

* ``--on-bad skip|fail`` — what a bad image file does: ``skip`` lists it (in the
  report, the run directory, or the command's output) and goes on; ``fail``
  stops with one line naming the file and the reason. **Default policy**:
  ``fail`` wherever a bad file would silently change what is measured or
  written (``compare``, ``train``, ``evaluate`` read a dataset — a broken file
  in a benchmark is a broken benchmark; ``index add`` writes a model — a half
  added support set is not what was asked for); ``skip`` where each file's
  result stands alone (``predict``, ``data check``) — one unreadable scan must
  not hide the verdicts on the others. ``data check`` also accepts its earlier
  spelling ``report`` for ``skip``.
* ``-o/--out DIR`` — a *directory* a run command writes into (``compare``,
  ``evaluate``, ``data demo``); ``-o/--output FILE`` — the *file* a command
  writes when it writes exactly one (``train``, ``index add``, ``data index``,
  ``data show``).
* ``--set NAME.key=value`` — a detector config override, repeatable; commands
  about one detector (``train``) also take the short ``key=value``.
"""

from __future__ import annotations

import click

from ..errors import MfxError

ON_BAD_CHOICES = ("skip", "fail")
#: Default ``--on-bad`` of commands reading a dataset, and of commands reading loose files.
DATASET_ON_BAD = "fail"
FILES_ON_BAD = "skip"


def on_bad_option(default: str, *, aliases: dict[str, str] | None = None):
    """The ``--on-bad skip|fail`` option with this command's default (see the module docstring)."""
    aliases = aliases or {}

    def normalise(ctx, param, value: str) -> str:
        return aliases.get(value, value)

    what = "list it and go on" if default == "skip" else "stop at the first one"
    return click.option("--on-bad", type=click.Choice([*ON_BAD_CHOICES, *aliases]), default=default,
                        show_default=True, callback=normalise,
                        help=f"A bad image file: skip (listed, the others go on) or fail (stop, one line). "
                             f"Default here: {what}.")


def detector_overrides(values: tuple[str, ...], *, detector: str | None = None) -> dict[str, dict[str, str]]:
    """``--set dski.epochs=2`` -> ``{"dski": {"epochs": "2"}}``; with ``detector``, ``epochs=2`` means that detector.

    An empty value is a value: ``--set dski.trace_extractor=`` turns off a part that a key names (the empty
    name means none); a key whose type cannot be empty says so in one line when the config is built.
    """
    out: dict[str, dict[str, str]] = {}
    for value in values:
        target, sep, setting = value.partition("=")
        if not sep or not target.strip():
            raise MfxError(f"--set expects NAME.key=value, got {value!r}")
        name, dot, key = target.strip().partition(".")
        if not dot:
            if detector is None:
                raise MfxError(f"--set expects DETECTOR.key=value, got {value!r}")
            name, key = detector, target.strip()
        if not name or not key:
            raise MfxError(f"--set expects NAME.key=value, got {value!r}")
        if detector is not None and name != detector:
            raise MfxError(f"--set {value!r} names detector {name!r}, but this command runs {detector!r}")
        out.setdefault(name, {})[key] = setting.strip()
    return out
