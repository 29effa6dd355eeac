"""``mfx index add`` / ``mfx index show``: the reference bank of any detector that declares ``ReferenceBank``.

Adding references is the few-shot path of retrieval detectors (DSKI's MFRM,
UnivFD-NN): a handful of a new generator's fakes (or a new scanner's reals)
enter the bank, and test images that resemble them are voted fake (or real)
from then on — without retraining. The checkpoint is rewritten atomically under
a lock, so an interrupted or concurrent run never leaves half a model behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

import click
import torch
from rich.markup import escape
from rich.table import Table

from ..contract import ReferenceBank
from ..errors import BadInputError, CheckpointError, MfxError
from . import cli, console, err_console
from .options import DATASET_ON_BAD, on_bad_option

CHUNK = 64


def load_bank_detector(path: str | Path) -> ReferenceBank:
    """Load a checkpoint whose detector declares a reference bank; any other is refused in one line."""
    from ..api import checkpoint_detector_name, load_detector

    name = checkpoint_detector_name(path)
    detector = load_detector(path)
    if not isinstance(detector, ReferenceBank):
        raise CheckpointError(f"{path}: a {name!r} model has no reference bank "
                              f"('mfx index' works on detectors that declare ReferenceBank; "
                              f"see `mfx plugins --json`, capability 'reference-bank')")
    return detector


def iter_images(files: list[Path], on_bad: str = "fail",
                skipped: Callable[[str, str], None] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``(source, image)`` for every frame/slice of every file (a 2-D image is one frame), one frame at a time.

    With ``on_bad="skip"`` a bad file is handed to ``skipped(path, reason)`` as a
    whole (its frames read before the failure are dropped too) and the rest go on.
    """
    for path in files:
        try:
            frames = list(_checked_frames(path)) if on_bad == "skip" else None
        except BadInputError as exc:
            if skipped is not None:
                skipped(exc.path, exc.reason)
            continue
        yield from frames if frames is not None else _checked_frames(path)


def _checked_frames(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from ..data.readers import count_frames, iter_frames

    try:
        multi = count_frames(path) > 1
        for index, loaded in iter_frames(path):
            yield (f"{path}#{index}" if multi else str(path)), loaded.tensor
    except (MfxError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - an unforeseen reader failure is still that file's failure
        raise BadInputError(path, f"unexpected reader error ({type(exc).__name__}: {exc}); please report it") from exc


@cli.group("index")
def index_group() -> None:
    """The reference bank of a trained retrieval detector (dski, univfd-nn, ...): add to it, show it.

    \b
    Examples:
      mfx index show runs/.../checkpoints/univfd-nn.safetensors
      mfx index add model.safetensors new-gan/ --label fake --generator new-gan --modality ct
    """


@index_group.command("add")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True)
@click.option("--label", type=click.Choice(["fake", "real"]), required=True, help="Label of every image added.")
@click.option("--generator", default=None,
              help="Generator that made the fakes (default 'real' for --label real).")
@click.option("--modality", required=True, help="Modality of the images (DSKI: one the model was trained on).")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the updated model to this file instead of overwriting CHECKPOINT.")
@on_bad_option(DATASET_ON_BAD)
def index_add(checkpoint: str, images: tuple[str, ...], label: str, generator: str | None, modality: str,
              out: str | None, on_bad: str) -> None:
    """Add IMAGES (files or folders; DICOM/NIfTI frames count one each) to CHECKPOINT's reference bank.

    Give references of both classes, one call per label: K fakes of the new generator
    (--label fake --generator NAME) and K reals of the same modality (--label real), e.g. from
    a new scanner, so the bank's evidence grows balanced.

    With --on-bad fail (the default) a bad file stops the command and nothing is written.

    \b
    Example:
      mfx index add nn.safetensors support/ct --label fake --generator ldm --modality ct -o adapted.safetensors
    """
    from ..data.walk import expand_inputs
    from ..engine.progress import RichProgress
    from ..locking import locked

    if generator is None:
        if label == "fake":
            raise MfxError("--generator is required with --label fake (the generator that made the images)")
        generator = "real"
    destination = Path(out or checkpoint)
    files, bad = expand_inputs(images)
    if bad:
        raise MfxError(f"{bad[0][0]}: {bad[0][1]}")
    # load -> add -> save under the destination's lock: a concurrent `index add` waits, then adds to our result
    with locked(destination, waiting=lambda message: err_console.print(f"[yellow]{escape(message)}[/]")):
        detector = load_bank_detector(checkpoint)
        detector.check_reference_modalities([modality])
        target = 1 if label == "fake" else 0
        before = len(detector.bank) if detector.bank is not None else 0
        skipped: list[str] = []

        def skip(path: str, reason: str) -> None:
            skipped.append(path)
            err_console.print(f"[yellow]skipped[/] {escape(str(path))}: {escape(reason)}", soft_wrap=True)

        with RichProgress(console) as progress:
            chunk: list[tuple[str, torch.Tensor]] = []
            for item in progress(iter_images(files, on_bad, skip), None, f"adding {len(files)} file(s)"):
                chunk.append(item)
                if len(chunk) == CHUNK:
                    _add_chunk(detector, chunk, target, modality, generator)
                    chunk = []
            if chunk:
                _add_chunk(detector, chunk, target, modality, generator)
        if (len(detector.bank) if detector.bank is not None else 0) == before:
            raise MfxError(f"nothing added: all {len(skipped)} file(s) were bad; {destination} left unchanged")
        detector.save(destination)
        after = len(detector.bank)
    console.print(f"added {after - before} {label} reference(s) (generator {escape(generator)}, modality "
                  f"{escape(modality)}); bank now holds {after}; wrote {escape(str(destination))}")


def _add_chunk(detector: ReferenceBank, chunk: list[tuple[str, torch.Tensor]], label: int, modality: str,
               generator: str) -> None:
    n = len(chunk)
    detector.add_references([image for _, image in chunk], [label] * n, [modality] * n, [generator] * n,
                            [source for source, _ in chunk])


@index_group.command("show")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def index_show(checkpoint: str, as_json: bool) -> None:
    """What CHECKPOINT's reference bank holds: size, retriever, and counts per label, generator and modality.

    \b
    Example:
      mfx index show runs/.../checkpoints/dski.safetensors --json
    """
    detector = load_bank_detector(checkpoint)
    summary = {"detector": detector.name, **detector.bank_summary()}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    table = Table(title=f"{detector.name} reference bank: {summary['size']} vectors ({summary['retriever']})")
    for column in ("label", "generator", "modality", "count"):
        table.add_column(column, justify="right" if column == "count" else "left")
    for group in summary["groups"]:
        table.add_row(group["label"], group["generator"], group["modality"], str(group["count"]))
    console.print(table)
