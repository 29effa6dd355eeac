"""``mfx data``: the command group for datasets (index, check; the offline benchmark adds demo and show)."""

from __future__ import annotations

import click

from . import cli


@cli.group("data")
def data_group() -> None:
    """Build, index and check datasets (DICOM, NIfTI, PNG/JPEG/TIFF)."""
