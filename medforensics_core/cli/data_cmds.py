"""``mfx data``: the command group for datasets (index, check; the offline benchmark adds demo and show)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from . import cli, console, err_console
from .options import FILES_ON_BAD, on_bad_option


@cli.group("data")
def data_group() -> None:
    """Build, index and check datasets (DICOM, NIfTI, PNG/JPEG/TIFF)."""


@data_group.command("index")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Manifest to write [default: ROOT/manifest.csv].")
@click.option("--layout", type=click.Choice(["auto", "medforensics", "cnndetection"]), default="auto",
              show_default=True, help="Folder layout (auto-detected from where the 0_real/1_fake folders sit).")
@click.option("--modality", default=None, help="Modality for layouts without a modality level (CNNDetection).")
@click.option("--val", type=float, default=0.1, show_default=True, help="Validation fraction (layouts without splits).")
@click.option("--test", type=float, default=0.2, show_default=True, help="Test fraction (layouts without splits).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the group-aware split.")
@click.option("--frames", is_flag=True,
              help="One row per frame/slice of multi-frame DICOM, TIFF stacks and NIfTI volumes.")
@click.option("--frame-step", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --frames: keep every N-th frame/slice.")
@click.option("--scan-by", type=click.Choice(["none", "patient"]), default="none", show_default=True,
              help="Fill the scan column (what intervals resample whole, and splits keep together): patient = "
                   "the DICOM PatientID, hashed; placeholders such as ANONYMOUS left blank.")
def index_command(root: Path, output: Path | None, layout: str, modality: str | None, val: float, test: float,
                  seed: int, frames: bool, frame_step: int, scan_by: str) -> None:
    """Index a folder layout into a manifest CSV (path, label, modality, generator, family, network, split, ...).

    \b
    Layouts:
      ROOT/<split>/<modality>/<generator>/{0_real,1_fake}/...   (MedForensics)
      ROOT/<modality>/<generator>/{0_real,1_fake}/...           (MedForensics, splits made here)
      ROOT/<generator>/[<class>/]{0_real,1_fake}/...            (CNNDetection)
    Splits are made by source (study UID for DICOM, file stem otherwise), so no
    source image or volume straddles two splits; with --scan-by patient, no
    patient's DICOM studies either (intervals then resample patients). A fake
    saved as 1_fake/x.png for a real 0_real/x.dcm takes that real's study and
    patient, so it stays in its real's split. A generator.json next to a
    generator's 1_fake folder ({"family": ..., "network": ...}) fills the
    family and network columns of its fakes (blank without one).

    \b
    Examples:
      mfx data index my-data                         writes my-data/manifest.csv
      mfx data index cnndet-root --layout cnndetection --modality xray -o cnndet.csv
      mfx data index dicom-study --scan-by patient   a patient's studies stay together
    """
    from ..data.indexers import index_folder
    from ..data.manifest import write_manifest
    from ..data.splits import assign_splits
    from ..engine.progress import RichProgress

    output = output or root / "manifest.csv"
    with RichProgress(err_console) as progress:
        result = index_folder(root, layout=layout, modality=modality, expand_frames=frames, frame_step=frame_step,
                              relative_to=output.parent, progress=progress, scan_by=scan_by)
    rows = assign_splits(result.rows, val=val, test=test, seed=seed)
    write_manifest(rows, output)
    console.print(_counts_table(rows, "images per split, modality, generator and label"))
    console.print(f"{result.layout} layout{', detected' if layout == 'auto' else ''} "
                  f"({'use --layout to force another' if layout == 'auto' else 'as asked'})", highlight=False)
    for path in result.ignored:
        console.print(f"[yellow]not indexed[/] {escape(str(path))}: {_why_not_indexed(path)}", markup=True,
                      highlight=False, soft_wrap=True)  # a path is never broken across lines
    for note in result.notes:
        console.print(f"[yellow]note[/] {escape(note)}", markup=True, highlight=False)
    console.print(f"wrote {len(rows)} rows to {escape(str(output))}")


def _why_not_indexed(path: Path) -> str:
    """The reason a file of the dataset folder got no row, as precisely as the file itself tells."""
    from ..data.readers import IMAGE_SUFFIXES
    from ..data.walk import is_image_file

    if not path.is_file():
        return "not a regular file (a pipe, device or socket)"
    if not is_image_file(path):
        return f"not an image file name ({' '.join(IMAGE_SUFFIXES)})"
    return "outside a 0_real/1_fake folder"


def _counts_table(rows, title: str) -> Table:
    counts: dict[tuple[str, str, str, int], int] = {}
    for row in rows:
        key = (row.split, row.modality, row.generator, row.label)
        counts[key] = counts.get(key, 0) + 1
    table = Table(title=title)
    for column in ("split", "modality", "generator", "label"):
        table.add_column(column)
    table.add_column("images", justify="right")
    order = {"train": 0, "val": 1, "test": 2}
    for (split, modality, generator, label), n in sorted(counts.items(),
                                                         key=lambda kv: (order.get(kv[0][0], 3),) + kv[0]):
        table.add_row(*(escape(text) for text in (split, modality, generator)), "fake" if label else "real", str(n))
    return table


@data_group.command("check")
@click.argument("path", type=click.Path(path_type=Path))
@on_bad_option(FILES_ON_BAD, aliases={"report": "skip"})
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--no-hash", is_flag=True, help="Do not compare files with the manifest's sha256.")
def check_command(path: Path, on_bad: str, as_json: bool, no_hash: bool) -> None:
    """Read every image of a manifest, dataset folder or file; list each bad one with its reason.

    Exits with status 1 when any file is bad or no image was found, 0 when all read cleanly.
    ``--on-bad skip`` (the default) reads everything and lists every bad file; ``fail`` stops at the first.

    \b
    Examples:
      mfx data check my-data/manifest.csv
      mfx data check exports/ --json > check.json
    """
    from ..data.check import check_target
    from ..engine.progress import RichProgress

    with RichProgress(err_console) as progress:
        report = check_target(path, verify_hash=not no_hash, stop_at_first=on_bad == "fail", progress=progress)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print_check(report)
    sys.exit(0 if report.ok and report.checked else 1)  # nothing read is not "all clean"


def _print_check(report) -> None:
    """One line per bad file, ``path: reason``, never folded, so it can be read and grepped."""
    if report.bad:
        console.print(f"[bold red]{len(report.bad)} bad file(s)[/] of {report.checked} in {escape(str(report.target))}:",
                      highlight=False, soft_wrap=True)
        for issue in report.bad:
            console.print(f"  {escape(str(issue.path))}: {escape(issue.reason)}", soft_wrap=True, highlight=False)
    elif not report.checked:
        err_console.print(f"[bold red]error:[/] no image files found in {escape(str(report.target))}: nothing was "
                          "checked", highlight=False, soft_wrap=True)
    else:
        console.print(f"[green]all {report.checked} image(s) read cleanly[/] in {escape(str(report.target))}",
                      highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if report.ignored:
        console.print(f"{len(report.ignored)} non-image file(s) not checked: "
                      + escape(", ".join(report.ignored[:5])) + (" ..." if len(report.ignored) > 5 else ""), highlight=False, soft_wrap=True)
