"""Whole-image scoring by tiles, and the heat map that shows where the evidence is.

A detector looks at a fixed-size input (its ``preprocess`` centre-crops or
resizes to it), so scoring only a centre crop leaves most of a large scan unseen:
a region manipulated near an edge is never looked at. Here an image is cut into
tiles of the detector's own input size (overlapping by default: stride = half a
tile), every tile is scored with the detector's unchanged preprocessing, and
the image score aggregates the tile scores:

* ``max`` (default): an image is as suspicious as its most suspicious tile —
  the right rule for local manipulations (inpainting, a pasted region);
* ``mean``: the average tile score — steadier for fully generated images,
  where every tile carries the generator's traces.

Tiles are produced and scored batch by batch, so memory stays bounded however
large the image; frames of a multi-frame file are streamed by the caller.
Detectors that take any input size (their ``preprocess`` does not produce a
fixed-size image, e.g. a spectrum profile) already see the whole image: they
get one tile, the whole image.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Iterator, Sequence

import numpy as np
import torch

from ..contract import Batch
from ..errors import ConfigError
from ..interfaces import Detector
from .context import FitContext

log = logging.getLogger(__name__)

MODES = ("tiles", "center")
AGGREGATES = ("max", "mean")
_PROBE_SIDES = (97, 203)  # two odd sizes larger than any tiny preset: a fixed output size is the input size


@dataclasses.dataclass
class TileConfig:
    """How ``mfx predict`` scores one image (``--crop``, ``--aggregate``, ``--stride``).

    ``mode``: ``tiles`` scores the whole image by tiles, ``center`` only the centre crop that the
    detector's preprocessing takes (what a comparison scores). ``stride``: tile step as a fraction
    of the tile size (0.5 = tiles overlap by half). ``max_tiles``: per image; a larger image gets a
    longer stride, up to non-overlapping tiles (never gaps), to stay near it. ``top_k``: tiles listed in the output.
    """

    mode: str = "tiles"
    aggregate: str = "max"
    stride: float = 0.5
    max_tiles: int = 4096
    top_k: int = 5
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--crop must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"--aggregate must be one of {', '.join(AGGREGATES)}, not {self.aggregate!r}")
        if not 0 < self.stride <= 1:
            raise ConfigError(f"--stride is a fraction of the tile in (0, 1], not {self.stride}")


@dataclasses.dataclass
class Tile:
    """One scored tile: top-left corner and size in the image's pixels, and its fake probability."""

    y: int
    x: int
    height: int
    width: int
    score: float

    def to_dict(self) -> dict:
        return {"y": self.y, "x": self.x, "height": self.height, "width": self.width, "score": round(self.score, 6)}


@dataclasses.dataclass
class ImageScore:
    """An image's score under the chosen mode, its centre-crop score, and every tile."""

    score: float
    centre_score: float
    tiles: list[Tile]
    tile_size: int | None
    stride: int | None
    image_shape: tuple[int, int]

    def top(self, k: int) -> list[Tile]:
        return sorted(self.tiles, key=lambda t: -t.score)[:k]

    def heat_map(self) -> np.ndarray:
        """Per-pixel fake probability: the highest score of the tiles that cover the pixel (NaN: no tile)."""
        heat = np.full(self.image_shape, np.nan, dtype=np.float32)
        for tile in self.tiles:
            region = heat[tile.y:tile.y + tile.height, tile.x:tile.x + tile.width]
            np.fmax(region, tile.score, out=region)
        return heat


CENTRE_SCORING = {"mode": "center"}
"""How ``mfx compare`` scores its validation images: the detector's own preprocessing. A checkpoint's threshold
that records no scoring was fixed that way."""
SCORING_KEYS = ("mode", "aggregate", "tile_size", "stride")


def scoring_of(detector: Detector, tiles: TileConfig) -> dict:
    """The scoring a threshold depends on: centre crop, or tiles of the detector's input size and their aggregate.

    A detector that takes any input size scores the whole image in one tile, which is its centre scoring.
    """
    size = input_size(detector) if tiles.mode == "tiles" else None
    if size is None:
        return dict(CENTRE_SCORING)
    return {"mode": "tiles", "aggregate": tiles.aggregate, "tile_size": size, "stride": tiles.stride}


def stored_scoring(train_info: dict | None) -> dict:
    """The scoring a checkpoint's threshold was fixed under (``threshold_scoring``), reduced to what identifies it.

    None recorded means ``mfx compare``'s centre crop; anything unreadable (a hostile or damaged checkpoint) is
    taken as that too, with a log line, rather than failing the scoring.
    """
    stored = (train_info or {}).get("threshold_scoring")
    if stored is None:
        return dict(CENTRE_SCORING)
    if not isinstance(stored, dict):
        log.warning("the checkpoint's threshold_scoring is not readable (%r): taken as the centre crop", stored)
        return dict(CENTRE_SCORING)
    return {key: stored[key] for key in SCORING_KEYS if key in stored}


def describe_scoring(scoring: dict) -> str:
    """One phrase for a scoring, as the threshold rule and predict's warning print it."""
    if scoring.get("mode") != "tiles":
        return "the detector's centre crop (--crop center)"
    return (f"{scoring.get('tile_size', '?')} px tiles, stride {scoring.get('stride', '?')}, "
            f"{scoring.get('aggregate', '?')} of tile scores")


def input_size(detector: Detector) -> int | None:
    """The side of the square input the detector's ``preprocess`` produces, ``None`` if it takes any size.

    Found by preprocessing two grey images of different sizes: a detector that
    crops or resizes to a fixed size returns the same spatial size for both.
    """
    sizes = []
    for side in _PROBE_SIDES:
        out = detector.preprocess(torch.full((3, side, side), 0.5))
        if not isinstance(out, torch.Tensor) or out.ndim != 3 or out.shape[-1] != out.shape[-2]:
            return None
        sizes.append(int(out.shape[-1]))
    return sizes[0] if sizes[0] == sizes[1] else None


def origins(length: int, size: int, stride: int) -> list[int]:
    """Tile starts along one axis: every ``stride`` pixels, and a last tile flush with the far edge."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def tile_grid(height: int, width: int, size: int, config: TileConfig) -> tuple[list[tuple[int, int]], int]:
    """Top-left corners of the tiles covering an image, and the stride used (grown to respect ``max_tiles``)."""
    stride = max(1, round(size * config.stride))
    while True:
        ys, xs = origins(height, size, stride), origins(width, size, stride)
        if len(ys) * len(xs) <= config.max_tiles or stride >= size:
            return [(y, x) for y in ys for x in xs], stride
        stride = min(size, math.ceil(stride * math.sqrt(len(ys) * len(xs) / config.max_tiles)))


class TileScorer:
    """Scores images by tiles with one detector (its input size probed once)."""

    def __init__(self, detector: Detector, config: TileConfig, ctx: FitContext | None = None):
        self.detector = detector
        self.config = config
        self.ctx = ctx or FitContext(device=detector.device)
        self.size = input_size(detector)

    def describe(self) -> dict:
        """The scoring settings, as the JSON output and the report state them."""
        return {"mode": self.config.mode, "aggregate": self.config.aggregate, "tile_size": self.size,
                "stride_fraction": self.config.stride,
                "whole_image_tile": self.size is None}

    def score(self, image: torch.Tensor, modality: str = "unknown") -> ImageScore:
        """Score one image ``(3, H, W)`` in [0, 1]."""
        height, width = int(image.shape[-2]), int(image.shape[-1])
        centre = float(self._predict([self.detector.preprocess(image)], modality)[0])
        if self.config.mode == "center" or self.size is None:
            tile = self._centre_tile(height, width, centre)
            return ImageScore(centre, centre, [tile], self.size, None, (height, width))
        corners, stride = tile_grid(height, width, self.size, self.config)
        tiles: list[Tile] = []
        for batch in _chunks(corners, self.config.batch_size):
            crops = [self.detector.preprocess(image[:, y:y + self.size, x:x + self.size]) for y, x in batch]
            for (y, x), value in zip(batch, self._predict(crops, modality)):
                tiles.append(Tile(y, x, min(self.size, height - y), min(self.size, width - x), float(value)))
        values = np.array([t.score for t in tiles])
        aggregate = float(values.max() if self.config.aggregate == "max" else values.mean())
        return ImageScore(aggregate, centre, tiles, self.size, stride, (height, width))

    def _centre_tile(self, height: int, width: int, value: float) -> Tile:
        """The region the centre crop looks at (the whole image for a detector of any input size)."""
        if self.size is None:
            return Tile(0, 0, height, width, value)
        side_h, side_w = min(self.size, height), min(self.size, width)
        return Tile((height - side_h) // 2, (width - side_w) // 2, side_h, side_w, value)

    def _predict(self, inputs: Sequence[torch.Tensor], modality: str) -> np.ndarray:
        batch = torch.stack(list(inputs)).to(self.ctx.device)
        with torch.inference_mode(), self.ctx.autocast():
            scores = self.detector.predict_proba(Batch.of(batch, modalities=[modality] * len(batch)))
        return np.asarray(scores, dtype=np.float64).reshape(-1)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
