"""``mfx index add``: add labelled references to a trained DSKI model's MFRM bank, without retraining.

This is MFRM's few-shot path: a handful of a new generator's fakes (or a new
scanner's reals) enter the bank, and test images that resemble them are voted
fake (or real) from then on. The checkpoint is rewritten atomically, so an
interrupted run never leaves half a model behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import click
import torch

from medforensics_core.checkpoint import load_tensors
from medforensics_core.data.readers import count_frames, is_image_file, iter_frames
from medforensics_core.errors import BadInputError, CheckpointError, MfxError
from medforensics_core.plugins import get_registry

from .detector import DSKIBase, DSKIDetector

CHUNK = 64


def load_dski(path: str | Path, device: str = "cpu") -> DSKIDetector:
    """Load a checkpoint of ``dski`` or one of its ablations; any other detector's checkpoint is refused."""
    _, meta = load_tensors(path)
    name = meta.get("detector")
    if meta.get("kind") != "detector" or not name:
        raise CheckpointError(f"{path}: not a detector checkpoint")
    cls = get_registry().detector(name)
    if not issubclass(cls, DSKIBase):
        raise CheckpointError(f"{path}: a {name!r} checkpoint; 'mfx index' works on DSKI models only")
    if not issubclass(cls, DSKIDetector):
        raise CheckpointError(f"{path}: a {name!r} model has no MFRM reference bank to add to")
    return cls.load(path, device=device)


def image_files(paths: tuple[str, ...]) -> list[Path]:
    """The image files named, and those found (recursively, sorted) in the folders named."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(p for p in sorted(path.rglob("*")) if p.is_file() and is_image_file(p))
        elif path.is_file():
            files.append(path)
        else:
            raise BadInputError(path, "no such file or folder")
    if not files:
        raise MfxError(f"no image files in {', '.join(paths)}")
    return files


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
    try:
        multi = count_frames(path) > 1
        for index, loaded in iter_frames(path):
            yield (f"{path}#{index}" if multi else str(path)), loaded.tensor
    except (MfxError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - an unforeseen reader failure is still that file's failure
        raise BadInputError(path, f"unexpected reader error ({type(exc).__name__}: {exc}); please report it") from exc


@click.group("index")
def index_group() -> None:
    """Manage the MFRM reference bank of a trained DSKI model."""


@index_group.command("add")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True)
@click.option("--label", type=click.Choice(["fake", "real"]), required=True, help="Label of every image added.")
@click.option("--generator", default=None,
              help="Generator that made the fakes (default 'real' for --label real).")
@click.option("--modality", required=True, help="Modality of the images; must be one the model was trained on.")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the updated model here instead of overwriting CHECKPOINT.")
@click.option("--on-bad", type=click.Choice(["skip", "fail"]), default="fail", show_default=True,
              help="A bad image file: list it and add the others, or stop without writing anything.")
def index_add(checkpoint: str, images: tuple[str, ...], label: str, generator: str | None, modality: str,
              out: str | None, on_bad: str) -> None:
    """Add IMAGES (files or folders; DICOM/NIfTI frames count one each) to CHECKPOINT's MFRM bank."""
    from rich.markup import escape

    from medforensics_core.cli import console, err_console
    from medforensics_core.engine.progress import RichProgress
    from medforensics_core.locking import locked

    if generator is None:
        if label == "fake":
            raise MfxError("--generator is required with --label fake (the generator that made the images)")
        generator = "real"
    destination = Path(out or checkpoint)
    files = image_files(images)
    # load -> add -> save under the destination's lock: a concurrent `index add` waits, then adds to our result
    with locked(destination, waiting=lambda message: err_console.print(f"[yellow]{escape(message)}[/]")):
        detector = load_dski(checkpoint)
        detector.check_modalities([modality])
        target = 1 if label == "fake" else 0
        before = len(detector.bank) if detector.bank is not None else 0
        with RichProgress(console) as progress:
            chunk: list[tuple[str, torch.Tensor]] = []
            skipped: list[str] = []

            def skip(path: str, reason: str) -> None:
                skipped.append(path)
                err_console.print(f"[yellow]skipped[/] {escape(str(path))}: {escape(reason)}", soft_wrap=True)

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


def _add_chunk(detector: DSKIDetector, chunk: list[tuple[str, torch.Tensor]], label: int, modality: str,
               generator: str) -> None:
    sources = [source for source, _ in chunk]
    tensors = [image for _, image in chunk]
    n = len(chunk)
    detector.add_references(tensors, [label] * n, [modality] * n, [generator] * n, sources)
