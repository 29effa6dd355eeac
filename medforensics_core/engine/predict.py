"""Scoring real-world files (``mfx predict``): folders expanded, multi-frame DICOM and NIfTI volumes streamed.

Each file is decoded by the shared readers (float pixels, so 12/16-bit scans
are never quantised to 8 bits), frame by frame (a 2,000-frame cine is never
held in memory at once), and every frame is scored by tiles over the whole
image (:mod:`engine.tiles`) or by the detector's centre crop. The modality
comes from the file (DICOM Modality tag, NIfTI header) unless ``--modality``
says otherwise. ``--explain`` writes one heat-map overlay per input file
(its most suspicious frame) and lists the top tiles.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..data.dataset import check_scorable_size
from ..data.modality import normalise as normalise_modality
from ..data.modality import resolve as resolve_modality
from ..data.readers import LoadedImage, count_frames, iter_frames, read_image
from ..data.walk import expand_inputs
from ..decision import DEFAULT_THRESHOLD, verdict
from ..errors import BadInputError, CheckpointError, MfxError
from ..interfaces import Detector
from ..report.overlay import overlay_png
from .context import FitContext
from .tiles import ImageScore, TileConfig, TileScorer

log = logging.getLogger(__name__)



@dataclasses.dataclass
class Prediction:
    """One scored frame: score under the chosen mode, verdict at the threshold, modality and evidence."""

    path: str
    frame: int | None
    score: float
    verdict: str
    modality: str = "unknown"
    modality_source: str = ""
    centre_score: float | None = None
    n_tiles: int = 1
    top_tiles: list[dict] = dataclasses.field(default_factory=list)
    overlay: str | None = None

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["tiles"] = {"n": out.pop("n_tiles"), "top": out.pop("top_tiles")}
        return out


@dataclasses.dataclass
class PredictOptions:
    """Everything ``mfx predict`` decides besides the detector: threshold, modality, tiles, overlays."""

    threshold: float = DEFAULT_THRESHOLD
    on_bad: str = "skip"
    modality: str | None = None
    tiles: TileConfig = dataclasses.field(default_factory=TileConfig)
    explain: Path | None = None


def checkpoint_threshold(detector: Detector, given: float | None = None) -> tuple[float, str]:
    """The decision threshold and where it comes from: ``--threshold``, the checkpoint, or the 0.5 fallback.

    A checkpoint written by ``mfx train``/``compare`` holds the threshold chosen on
    its validation split at a stated operating point (``train_info["threshold"]``
    and ``["threshold_rule"]``); older checkpoints and detectors trained without
    a two-class validation split fall back to 0.5, and the output says so.
    """
    if given is not None:
        return _finite_threshold(given, "--threshold"), "--threshold"
    info = detector.train_info or {}
    if info.get("threshold") is not None:
        value = _finite_threshold(info["threshold"], "the checkpoint's threshold")
        return value, f"checkpoint: {info.get('threshold_rule') or 'chosen on validation'}"
    return DEFAULT_THRESHOLD, "default 0.5 (the checkpoint holds no validated threshold)"


def _finite_threshold(value, what: str) -> float:
    """A threshold must be a number in [0, 1]: NaN would call every image real (``score >= nan`` is False), and
    scores are fake probabilities, so 7 or -1 would give every image one verdict whatever it is."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MfxError(f"{what} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise MfxError(f"{what} must be a finite number, not {value!r}")
    if not 0.0 <= number <= 1.0:
        raise MfxError(f"{what} must lie in [0, 1] (scores are fake probabilities), not {value!r}")
    return number


def check_explain_dir(folder: Path) -> Path:
    """Create ``--explain OUTDIR`` and prove it writable *before* any scoring, so no work is lost to it."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mfx-write-test-"):
            pass
    except OSError as exc:
        raise MfxError(f"{folder}: cannot write the --explain overlays there ({exc.strerror or exc})") from None
    return folder


def _frames(path: Path) -> Iterator[tuple[int | None, LoadedImage]]:
    """Frames of one file, decoded one at a time; a single-frame file yields frame ``None``."""
    frames = count_frames(path)
    if frames <= 1:
        yield None, read_image(path)
        return
    yield from iter_frames(path)


class _Explainer:
    """Keeps the most suspicious frame of the current file and writes its overlay when the file ends."""

    def __init__(self, folder: Path | None, threshold: float):
        self.folder = folder
        self.threshold = threshold
        self.used: set[str] = set()
        self.best: tuple[float, int | None, torch.Tensor, ImageScore] | None = None

    def offer(self, frame: int | None, image: torch.Tensor, result: ImageScore) -> None:
        if self.folder is not None and (self.best is None or result.score > self.best[0]):
            self.best = (result.score, frame, image, result)

    def finish(self, path: Path, predictions: list[Prediction]) -> None:
        if self.folder is None or self.best is None:
            return
        score, frame, image, result = self.best
        self.best = None
        target = self.folder / self._name(path, frame)
        title = f"{path.name}{'' if frame is None else f' #{frame}'}: {score:.3f} ({verdict(score, self.threshold)})"
        boxes = [(t.y, t.x, t.height, t.width) for t in result.top(3)]
        png = overlay_png(image.numpy(), result.heat_map(), title=title, boxes=boxes, threshold=self.threshold)
        try:
            target.write_bytes(png)
        except OSError as exc:
            raise MfxError(f"{target}: cannot write the overlay ({exc.strerror or exc})") from None
        for prediction in predictions:
            if prediction.path == str(path) and prediction.frame == frame:
                prediction.overlay = str(target)

    def _name(self, path: Path, frame: int | None) -> str:
        stem = path.name.replace(".", "_") + ("" if frame is None else f"-frame{frame}")
        name, n = f"{stem}.png", 1
        while name in self.used:
            n += 1
            name = f"{stem}-{n}.png"
        self.used.add(name)
        return name


class PredictionInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`predict_files`, carrying the files scored before it (whole files only) and the bad ones
    met so far, so an interrupted ``mfx predict`` still reports them."""

    def __init__(self, predictions: list[Prediction], bad: list[tuple[str, str]]):
        super().__init__()
        self.predictions, self.bad = predictions, bad


def predict_files(detector: Detector, inputs: Sequence[str | Path], ctx: FitContext,
                  options: PredictOptions | None = None) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Score every frame of every input; bad inputs are listed (``skip``) or raise (``fail``)."""
    options = options or PredictOptions()
    known = getattr(detector, "known_modalities", None) or None
    if options.modality:
        normalise_modality(options.modality, known)  # an unknown --modality fails before any decoding
    files, bad = expand_inputs(inputs)
    if bad and options.on_bad == "fail":
        raise BadInputError(*bad[0])
    scorer = TileScorer(detector, options.tiles, ctx)
    explainer = _Explainer(options.explain, options.threshold)
    predictions: list[Prediction] = []
    try:
        _score_files(files, scorer, options, known, explainer, predictions, bad, ctx, detector.name)
    except PredictionInterrupted:
        raise
    except KeyboardInterrupt:  # between files (the progress bar, a heat map): every listed file is whole
        raise PredictionInterrupted(predictions, bad) from None
    return predictions, bad


def _score_files(files: list[Path], scorer: TileScorer, options: PredictOptions, known, explainer: _Explainer,
                 predictions: list[Prediction], bad: list[tuple[str, str]], ctx: FitContext, name: str) -> None:
    """Score ``files`` one by one into ``predictions``; a bad file goes to ``bad`` (or raises, ``--on-bad fail``)."""
    for path in ctx.track(files, len(files), f"scoring with {name}"):
        done = len(predictions)
        blank_frames: list[tuple[str, str]] = []  # blank frames of a file whose other frames are scored
        try:
            try:
                _score_file(path, scorer, options, known, explainer, predictions, blank_frames)
            except KeyboardInterrupt:  # keep what was scored: the caller shows it before stopping
                del predictions[done:]
                raise PredictionInterrupted(predictions, bad) from None
            except (BadInputError, CheckpointError, MemoryError):
                raise
            except MfxError as exc:  # e.g. a detector that cannot score an image this small: that image's failure
                raise BadInputError(path, str(exc)) from exc
            except Exception as exc:  # noqa: BLE001 - one image's unforeseen failure stays that image's failure
                log.debug("scoring %s failed", path, exc_info=True)
                raise BadInputError(path, f"unexpected error ({type(exc).__name__}: {exc}); please report it") \
                    from exc
        except BadInputError as exc:
            if options.on_bad == "fail":
                raise
            del predictions[done:]  # a file that breaks half-way is reported bad as a whole
            explainer.best = None
            bad.append((exc.path, exc.reason))
            continue
        bad.extend(blank_frames)
        explainer.finish(path, predictions[done:])


BLANK_REASON = "blank image (every pixel the same value): no evidence either way, not scored"


def is_blank(image: torch.Tensor) -> bool:
    """Whether every pixel of ``image`` has one value (an empty scout frame, a flat DICOM): nothing to score."""
    return bool(image.numel()) and bool(image.amax() == image.amin())


def _score_file(path: Path, scorer: TileScorer, options: PredictOptions, known, explainer: _Explainer,
                predictions: list[Prediction], bad: list[tuple[str, str]]) -> None:
    modality = None
    blank: list[int | None] = []
    before = len(predictions)
    for frame, loaded in _frames(path):
        if modality is None:
            modality = resolve_modality(loaded.meta, path, options.modality, known)
        image = check_scorable_size(path, loaded.tensor)
        if is_blank(image):  # a verdict on it would be noise: freq called a flat DICOM 1.000 "fake"
            blank.append(frame)
            continue
        result = scorer.score(image, modality.name)
        if not math.isfinite(result.score):  # the model's fault, not the file's: stop, never a verdict on NaN
            raise CheckpointError(f"{scorer.detector.name} gave a non-finite score (NaN/inf) for {path}: "
                                  "its weights are corrupt or its training diverged")
        top = result.top(options.tiles.top_k)
        predictions.append(Prediction(
            str(path), frame, result.score, verdict(result.score, options.threshold),
            modality.name, modality.source, result.centre_score, len(result.tiles),
            [t.to_dict() for t in top]))
        explainer.offer(frame, loaded.tensor, result)
    if blank and len(predictions) == before:
        raise BadInputError(path, BLANK_REASON)
    bad.extend((f"{path} (frame {frame})", BLANK_REASON) for frame in blank)  # the file's other frames stand
