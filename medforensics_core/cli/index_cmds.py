"""``mfx index add`` / ``mfx index show``: the reference bank of any detector that declares ``ReferenceBank``.

Adding references is the few-shot path of retrieval detectors (DSKI's MFRM,
UnivFD-NN): a handful of a new generator's fakes (or a new scanner's reals)
enter the bank, and test images that resemble them are voted fake (or real)
from then on — without retraining. The checkpoint is rewritten atomically under
a lock, so an interrupted or concurrent run never leaves half a model behind.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
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
    from ..data.dataset import check_scorable_size
    from ..data.readers import count_frames, iter_frames

    try:
        multi = count_frames(path) > 1
        for index, loaded in iter_frames(path):
            yield (f"{path}#{index}" if multi else str(path)), check_scorable_size(path, loaded.tensor)
    except (MfxError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - an unforeseen reader failure is still that file's failure
        raise unexpected_reader_error(path, exc) from exc


def unexpected_reader_error(path: str | Path, exc: Exception) -> BadInputError:
    """A reader's unforeseen exception, as the bad-input line of the file it happened on."""
    return BadInputError(path, f"unexpected reader error ({type(exc).__name__}: {exc}); please report it")


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
@click.argument("images", nargs=-1)
@click.option("--label", type=click.Choice(["fake", "real"]), default=None,
              help="Label of every image in IMAGES (required with IMAGES).")
@click.option("--generator", default=None,
              help="Generator that made the fakes (default 'real' for --label real).")
@click.option("--modality", default=None,
              help="Modality of the images in IMAGES (required with IMAGES; DSKI: one the model was trained on).")
@click.option("--manifest", "manifest_path", type=click.Path(exists=False), default=None,
              help="Instead of IMAGES: a manifest CSV or dataset folder; every row is added (all splits) with its "
                   "own label, modality and generator.")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the updated model to this file instead of overwriting CHECKPOINT.")
@on_bad_option(DATASET_ON_BAD)
def index_add(checkpoint: str, images: tuple[str, ...], label: str | None, generator: str | None,
              modality: str | None, manifest_path: str | None, out: str | None, on_bad: str) -> None:
    """Add IMAGES (files or folders; DICOM/NIfTI frames count one each) to CHECKPOINT's reference bank.

    Give references of both classes, one call per label: K fakes of the new generator
    (--label fake --generator NAME) and K reals of the same modality (--label real), e.g. from
    a new scanner, so the bank's evidence grows balanced. Or list them all, of every label and
    modality, in a manifest (path,label,modality,generator columns) and add them in one call
    with --manifest.

    With --on-bad fail (the default) a bad file stops the command and nothing is written.

    \b
    Examples:
      mfx index add nn.safetensors support/ct --label fake --generator ldm --modality ct -o adapted.safetensors
      mfx index add dski.safetensors --manifest references.csv -o adapted.safetensors
    """
    from ..data.modality import normalise as normalise_modality
    from ..engine.progress import RichProgress
    from ..locking import locked

    if manifest_path is not None:
        if images or label or modality or generator:
            raise MfxError("--manifest gives every image its label, modality and generator: pass no IMAGES, "
                           "--label, --modality or --generator with it")
        references = _manifest_references(manifest_path)
    else:
        if not images:
            raise MfxError("nothing to add: give IMAGES (with --label and --modality) or --manifest")
        references = _file_references(images, label, modality, generator)
    destination = Path(out or checkpoint)
    # load -> add -> save under the destination's lock: a concurrent `index add` waits, then adds to our result
    with locked(destination, waiting=lambda message: err_console.print(f"[yellow]{escape(message)}[/]")):
        detector = load_bank_detector(checkpoint)
        if manifest_path is None and modality is not None:  # MR, MRI, mri: one name, as mfx predict reads it
            references = _file_references(images, label, normalise_modality(
                modality, getattr(detector, "known_modalities", None) or None), generator, references.files)
        detector.check_reference_modalities(references.modalities)
        before = len(detector.bank) if detector.bank is not None else 0
        skipped: list[str] = []

        def skip(path: str, reason: str) -> None:
            skipped.append(path)
            err_console.print(f"[yellow]skipped[/] {escape(str(path))}: {escape(reason)}", soft_wrap=True)

        added: Counter[tuple[str, str, str]] = Counter()
        with RichProgress(console) as progress:
            chunk: list[Reference] = []
            for item in progress(references.read(on_bad, skip), None, f"adding {references.count} file(s)"):
                chunk.append(item)
                if len(chunk) == CHUNK:
                    _add_chunk(detector, chunk, added)
                    chunk = []
            if chunk:
                _add_chunk(detector, chunk, added)
        if (len(detector.bank) if detector.bank is not None else 0) == before:
            raise MfxError(f"nothing added: all {len(skipped)} file(s) were bad; {destination} left unchanged")
        detector.save(destination)
        after = len(detector.bank)
    console.print(f"added {_added_text(added)}; bank now holds {after}; wrote {escape(str(destination))}")


@dataclasses.dataclass
class Reference:
    """One image (a frame of a file) to add, with the label, modality and generator it goes into the bank with."""

    source: str
    image: torch.Tensor
    label: int
    modality: str
    generator: str


@dataclasses.dataclass
class References:
    """What one ``index add`` call adds: ``read`` yields each image as it is decoded (one at a time)."""

    count: int
    modalities: list[str]
    read: Callable[[str, Callable[[str, str], None]], Iterator[Reference]]
    files: list[Path] = dataclasses.field(default_factory=list)  # IMAGES expanded (empty for a manifest)


def _file_references(images: tuple[str, ...], label: str | None, modality: str | None,
                     generator: str | None, files: list[Path] | None = None) -> References:
    """IMAGES (files or folders), every one with the same ``--label``/``--modality``/``--generator``.

    ``files``: IMAGES as an earlier call expanded them (``References.files``), so the folders are walked once
    (a bad file met in a folder is then the reader's to report, as in the first walk)."""
    from ..data.walk import expand_inputs

    if label is None or modality is None:
        raise MfxError("--label and --modality are required with IMAGES (or list the images in a --manifest)")
    if label == "real" and generator not in (None, "real"):
        raise MfxError(f"--generator {generator!r} with --label real: reals have no generator (leave it out)")
    if label == "fake" and generator == "real":
        raise MfxError("--generator real with --label fake: name the generator that made the fakes")
    if generator is None:
        if label == "fake":
            raise MfxError("--generator is required with --label fake (the generator that made the images)")
        generator = "real"
    if files is None:
        files, bad = expand_inputs(images)
        if bad:
            raise MfxError(f"{bad[0][0]}: {bad[0][1]}")
    target = 1 if label == "fake" else 0

    def read(on_bad: str, skip: Callable[[str, str], None]) -> Iterator[Reference]:
        for source, image in iter_images(files, on_bad, skip):
            yield Reference(source, image, target, modality, generator)

    return References(len(files), [modality], read, files)


def _manifest_references(path: str) -> References:
    """Every row of a manifest CSV or dataset folder (all splits), with its own label, modality and generator."""
    from ..data import open_dataset

    manifest = open_dataset(path)
    rows = manifest.rows
    if not rows:
        raise BadInputError(path, "the manifest lists no images")

    def read(on_bad: str, skip: Callable[[str, str], None]) -> Iterator[Reference]:
        for row in rows:
            file = manifest.path_of(row)
            try:
                image = _read_one(file)
            except BadInputError as exc:
                if on_bad != "skip":
                    raise
                skip(exc.path, exc.reason)
                continue
            yield Reference(str(file), image, int(row.label), row.modality, row.generator)

    return References(len(rows), sorted({row.modality for row in rows}), read)


def _read_one(file: Path) -> torch.Tensor:
    """One manifest row's image (``path#N``: that frame); any reader failure as that file's bad-input line."""
    from ..data import read_image
    from ..data.dataset import check_scorable_size

    try:
        return check_scorable_size(file, read_image(file).tensor)
    except (MfxError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - an unforeseen reader failure is still that file's failure
        raise unexpected_reader_error(file, exc) from exc


def _added_text(added: Counter[tuple[str, str, str]]) -> str:
    """``4 fake reference(s) (generator ldm, modality ct)``; several groups: their total, then each group."""
    if len(added) == 1:
        ((label, generator, modality), n), = added.items()
        return f"{n} {label} reference(s) (generator {escape(generator)}, modality {escape(modality)})"
    groups = ", ".join(f"{n} {label}{'' if label == 'real' else ' ' + escape(generator)} {escape(modality)}"
                       for (label, generator, modality), n in sorted(added.items()))  # a real's generator is "real"
    return f"{sum(added.values())} reference(s) ({groups})"


def _add_chunk(detector: ReferenceBank, chunk: list[Reference], added: Counter[tuple[str, str, str]]) -> None:
    detector.add_references([r.image for r in chunk], [r.label for r in chunk], [r.modality for r in chunk],
                            [r.generator for r in chunk], [r.source for r in chunk])
    added.update(("fake" if r.label else "real", r.generator, r.modality) for r in chunk)


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
