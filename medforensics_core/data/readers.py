"""Image readers: every supported file becomes a float tensor ``(3, H, W)`` in [0, 1] plus metadata.

Formats are recognised by their first bytes (magic numbers), not by their
suffix, so a JPEG saved as ``.png`` is still read and a web page saved as
``.png`` is named for what it is ("HTML, not an image"). The suffix only
breaks ties (``.dcm`` files without the DICOM preamble, ``.nii.gz``).

Intensity scaling, and why:

* **8-bit** PNG/JPEG/BMP/TIFF: divided by 255 — these are display-ready already.
  EXIF orientation is not applied: detectors see pixels as they are stored.
* **>8-bit integer** PNG/TIFF (16-bit): scaled by the image's *actual* range
  (min-max). 16-bit medical and microscopy images rarely fill the 16-bit
  range (12-bit detectors, 10-bit scanners), so dividing by 65535 would give
  near-black images in which a detector sees almost no contrast.
* **float** images: kept as they are when already inside [0, 1], else min-max.
* **DICOM** (grayscale): Modality LUT / rescale slope-intercept
  (``pydicom.pixels.apply_modality_lut``), then VOI LUT or windowing
  (``apply_voi_lut``) with the file's window, or the ``window=`` override, and
  the result divided by the VOI transform's own output range; a file with no
  window is min-max scaled per frame. MONOCHROME1 is inverted afterwards (so
  bone/air look the same as in MONOCHROME2). PALETTE COLOR goes through
  ``apply_color_lut`` (scaled by the LUT's bit depth); RGB/YBR data comes back as
  RGB from pydicom 3 already and is scaled by ``2**BitsStored - 1``.
* **NIfTI**: the volume is reoriented to the closest canonical (RAS+) axes,
  and intensities are clipped to the 0.5th-99.5th percentiles of the finite
  voxels of the *whole* volume and scaled to [0, 1]: a few hot voxels
  (vessels, metal, outliers) would otherwise squeeze the anatomy into a narrow
  grey band, and volume-wide (not per-slice) statistics keep neighbouring
  slices comparable and empty edge slices dark instead of amplified noise.

Values that are not finite (NaN/inf) are replaced by the low end of the range
and counted in ``meta["nonfinite_pixels"]``; an image with *no* finite value is
refused. Decompression bombs are refused from the header, before decoding.
Every failure is a :class:`~medforensics_core.errors.BadInputError` with a
short, specific reason.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import re
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..errors import BadInputError, MfxError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz")
"""Suffixes the folder indexers accept (plus extension-less files that carry the DICOM preamble)."""

_SNIFF_BYTES = 1024
_FRAME_SUFFIX = re.compile(r"^(?P<path>.+)#(?P<frame>\d+)$")


@dataclasses.dataclass
class LoadedImage:
    """A decoded image: ``tensor`` is ``(3, H, W)`` float32 in [0, 1]; ``meta`` says where it came from."""

    tensor: torch.Tensor
    meta: dict[str, Any]


DEFAULT_MAX_DECODE_BYTES = 1024**3
"""Default of ``MFX_MAX_DECODE_BYTES``: the memory one decode may take (1 GiB)."""

WORKING_BYTES_PER_PIXEL = 16
"""Float32 working copies per decoded pixel on top of the stored samples (a grey float plane + the RGB tensor)."""


@dataclasses.dataclass
class ReadLimits:
    """Guards against decompression bombs and oversized files, all checked from headers before decoding.

    ``max_decode_bytes`` is the memory budget of one decode: what is decoded at
    once (one frame or slice; a whole NIfTI volume) counted as width x height x
    samples per pixel x bytes per sample x frames, plus the float32 working
    copies (:data:`WORKING_BYTES_PER_PIXEL` per pixel; 4 bytes per voxel for the
    sorted copy a volume's percentile range needs). Samples per pixel and bit
    depth count, so a 3,000-sample TIFF or a 16-bit image is sized for what it
    is. ``max_pixels`` bounds one image's pixel count and ``max_file_bytes``
    the file on disk. The environment variables ``MFX_MAX_DECODE_BYTES``,
    ``MFX_MAX_PIXELS`` and ``MFX_MAX_FILE_BYTES`` override the defaults (see
    :func:`default_limits`).
    """

    max_pixels: int = 120_000_000
    max_file_bytes: int = 2 * 1024**3
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES


def default_limits() -> ReadLimits:
    """The limits in force: the defaults, overridden by ``MFX_MAX_PIXELS`` / ``MFX_MAX_FILE_BYTES`` /
    ``MFX_MAX_DECODE_BYTES``."""
    limits = ReadLimits()
    for field, env in (("max_pixels", "MFX_MAX_PIXELS"), ("max_file_bytes", "MFX_MAX_FILE_BYTES"),
                       ("max_decode_bytes", "MFX_MAX_DECODE_BYTES")):
        raw = os.environ.get(env)
        if raw:
            try:
                value = int(float(raw))
            except ValueError:
                raise MfxError(f"{env} must be a number of {field.split('_', 2)[-1]}, not {raw!r}") from None
            if value <= 0:
                raise MfxError(f"{env} must be positive, not {raw!r}")
            setattr(limits, field, value)
    return limits


# --------------------------------------------------------------------------- public API


def read_image(path: str | os.PathLike, *, frame: int | None = None, axis: int = 2,
               window: tuple[float, float] | None = None, limits: ReadLimits | None = None) -> LoadedImage:
    """Read one image (one frame of a multi-frame DICOM, one slice of a NIfTI volume).

    ``path`` may end in ``#N`` (as manifests write it) to pick frame/slice N.
    A volume read without a frame gives its middle slice; a multi-frame DICOM
    or TIFF stack gives its first frame. ``window=(center, width)`` overrides a
    DICOM file's window, and replaces the percentile scaling of a NIfTI volume
    (in the volume's units, e.g. HU). ``axis`` picks the NIfTI slicing axis
    (0 sagittal, 1 coronal, 2 axial, after reorientation to RAS+).
    """
    path, frame = _split_frame_suffix(path, frame)
    limits = limits or default_limits()
    kind = sniff_format(path, limits)
    return _FORMATS[kind].read(path, frame, axis, window, limits)


def iter_frames(path: str | os.PathLike, *, axis: int = 2, step: int = 1,
                limits: ReadLimits | None = None) -> Iterator[tuple[int, LoadedImage]]:
    """Every frame of a multi-frame DICOM or TIFF stack, every slice of a NIfTI volume along ``axis``.

    A 2-D image yields ``(0, image)`` once. ``step`` keeps every step-th frame.
    """
    if step < 1:
        raise MfxError(f"step must be at least 1, not {step}")
    path, _ = _split_frame_suffix(path, None)
    limits = limits or default_limits()
    kind = sniff_format(path, limits)
    handler = _FORMATS[kind]
    if handler.iterate is not None:
        yield from handler.iterate(path, axis, step, limits)
        return
    for index in range(0, handler.count(path, axis, limits), step):
        yield index, handler.read(path, index, axis, None, limits)


def count_frames(path: str | os.PathLike, axis: int = 2) -> int:
    """How many frames/slices :func:`iter_frames` would yield (from the header where possible)."""
    path, _ = _split_frame_suffix(path, None)
    limits = default_limits()
    kind = sniff_format(path, limits)
    return _FORMATS[kind].count(path, axis, limits)


def has_image_suffix(path: str | os.PathLike) -> bool:
    """Whether the name ends in one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def is_image_file(path: str | os.PathLike) -> bool:
    """What the folder indexers accept: a known suffix, or an extension-less file with the DICOM preamble."""
    path = Path(path)
    if has_image_suffix(path):
        return True
    if path.suffix or not path.is_file():
        return False
    try:
        with open(path, "rb") as handle:
            return _is_dicom_preamble(handle.read(132))
    except OSError:
        return False


# --------------------------------------------------------------------------- format detection


def sniff_format(path: Path, limits: ReadLimits) -> str:
    """The format of ``path`` from its first bytes: png, jpeg, bmp, tiff, dicom or nifti.

    Raises :class:`BadInputError` for a missing, empty, oversized, text/HTML or
    unknown file.
    """
    head = _read_head(path, limits)
    name = path.name.lower()
    if _is_dicom_preamble(head):  # first: a DICOM preamble may itself hold a TIFF header (dual-format files)
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"BM") and len(head) >= 26:
        return "bmp"
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] in (b"n+2\x00", b"ni2\x00"):
        return "nifti"
    if head.startswith(b"\x1f\x8b") and name.endswith(".nii.gz"):
        return "nifti"
    if name.endswith(".dcm"):  # DICOM written without the 128-byte preamble: pydicom decides
        return "dicom"
    raise BadInputError(path, _describe_unknown(head, name))


def _read_head(path: Path, limits: ReadLimits) -> bytes:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadInputError(path, "file not found") from None
    except OSError as exc:
        raise BadInputError(path, f"cannot open ({exc.strerror or exc})") from None
    if path.is_dir():
        raise BadInputError(path, "is a folder, not an image file")
    if not path.is_file():  # a FIFO (size 0) would read as "empty", a device as anything
        raise BadInputError(path, "not a regular file (a pipe, device or socket)")
    if size == 0:
        raise BadInputError(path, "empty file (0 bytes)")
    if size > limits.max_file_bytes:
        raise BadInputError(path, f"file too large ({size:,} bytes > limit {limits.max_file_bytes:,}; "
                                  "set MFX_MAX_FILE_BYTES to raise it)")
    try:
        with open(path, "rb") as handle:
            return handle.read(_SNIFF_BYTES)
    except OSError as exc:
        raise BadInputError(path, f"cannot open ({exc.strerror or exc})") from None


def _is_dicom_preamble(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _describe_unknown(head: bytes, name: str) -> str:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text[:512]:
        return "HTML, not an image (a web page saved under an image name?)"
    if text.startswith((b"<?xml", b"<svg")):
        return "XML/SVG text, not a raster image"
    if head.startswith(b"\x1f\x8b"):
        return "gzip data, not an image (only .nii.gz volumes are read compressed)"
    if head.startswith((b"GIF87a", b"GIF89a")) or head[8:12] == b"WEBP":
        return "GIF/WebP is not a supported format (convert to PNG)"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:256]):
        return "text, not an image"
    return f"unknown format (not PNG/JPEG/TIFF/BMP/DICOM/NIfTI; first bytes {head[:8].hex(' ')})"


def _split_frame_suffix(path: str | os.PathLike, frame: int | None) -> tuple[Path, int | None]:
    """Split a manifest path ``file#N`` into the file and frame N (a real file named ``x#3`` wins)."""
    text = os.fspath(path)
    match = _FRAME_SUFFIX.match(text)
    if match and not Path(text).exists():
        suffix_frame = int(match["frame"])
        if frame is not None and frame != suffix_frame:
            raise BadInputError(match["path"], f"frame {frame} asked for, but the path names frame {suffix_frame}")
        return Path(match["path"]), suffix_frame
    return Path(text), frame


# --------------------------------------------------------------------------- shared array helpers


def _check_pixels(path: Path, height: int, width: int, limits: ReadLimits) -> None:
    """Refuse an image whose header announces more pixels than the limit (before decoding it)."""
    if height <= 0 or width <= 0:
        raise BadInputError(path, f"header gives an empty image ({width}x{height})")
    pixels = int(height) * int(width)
    if pixels > limits.max_pixels:
        raise BadInputError(path, f"image too large: header says {width}x{height} = {pixels:,} pixels > limit "
                                  f"{limits.max_pixels:,} (decompression-bomb guard; set MFX_MAX_PIXELS to raise it)")


MAX_SAMPLES_PER_PIXEL = 4
"""Grey, grey + alpha, RGB or RGBA: anything wider is refused from the header (it cannot be shown as RGB)."""


def _check_decode(path: Path, width: int, height: int, limits: ReadLimits, *, samples: int = 1,
                  bytes_per_sample: float = 1, frames: int = 1) -> None:
    """Refuse, from header numbers alone, an image whose decode would exceed the memory budget.

    Counts what is decoded at once (``frames`` frames of ``width x height x
    samples`` samples of ``bytes_per_sample`` bytes) plus the float32 working
    copies, against ``limits.max_decode_bytes`` (``MFX_MAX_DECODE_BYTES``).
    """
    _check_pixels(path, height, width, limits)
    if not 1 <= samples <= MAX_SAMPLES_PER_PIXEL:
        raise BadInputError(path, f"unsupported pixel layout: {samples} samples per pixel "
                                  f"(expected 1 to {MAX_SAMPLES_PER_PIXEL}: grey, RGB or RGBA)")
    pixels = int(width) * int(height) * int(frames)
    need = int(pixels * (samples * bytes_per_sample + WORKING_BYTES_PER_PIXEL))
    if need > limits.max_decode_bytes:
        depth = f" x {samples} samples" if samples > 1 else ""
        depth += f" x {frames} frames" if frames > 1 else ""
        raise BadInputError(path, f"image too large to decode: header says {width}x{height}{depth} at "
                                  f"{bytes_per_sample:g} byte(s) per sample, about {need:,} bytes to decode > limit "
                                  f"{limits.max_decode_bytes:,} (set MFX_MAX_DECODE_BYTES to raise it)")


def _finite_or_fail(path: Path, arr: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Float arrays: refuse all-NaN/inf, replace scattered non-finite values by the finite minimum."""
    if not np.issubdtype(arr.dtype, np.floating):
        return arr
    finite = np.isfinite(arr)
    if finite.all():
        return arr
    if not finite.any():
        raise BadInputError(path, "pixel values are all NaN/inf")
    meta["nonfinite_pixels"] = int((~finite).sum())
    return np.where(finite, arr, arr[finite].min())


def _to_unit_range(arr: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Scale to [0, 1] by the rule of the module docstring (8-bit /255, wider ints min-max, floats as-is/min-max)."""
    if arr.dtype == np.bool_:
        meta["scaling"] = "binary"
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        meta["scaling"] = "/255"
        return arr.astype(np.float32) / 255.0
    values = arr.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if np.issubdtype(arr.dtype, np.floating) and low >= 0.0 and high <= 1.0:
        meta["scaling"] = "as-is"
        return values.astype(np.float32)
    meta["scaling"] = "min-max"
    meta["value_range"] = [low, high]
    return _min_max(values)


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def _to_rgb_tensor(path: Path, unit: np.ndarray) -> torch.Tensor:
    """(H, W), (H, W, 1..4) in [0, 1] -> (3, H, W) float32; grey is repeated, alpha dropped.

    Built channel-first in numpy and handed to torch without a copy: on a busy
    2-core machine torch's per-op overhead dominated reading a small slice.
    """
    if unit.ndim == 3 and unit.shape[2] in (1, 2):  # grey, or grey + alpha
        unit = unit[..., 0]
    elif unit.ndim == 3 and unit.shape[2] == 4:  # RGBA: the alpha is no part of the picture
        unit = unit[..., :3]
    if unit.ndim == 2:
        planes = np.empty((3, *unit.shape), dtype=np.float32)
        np.clip(unit, 0.0, 1.0, out=planes[0])
        planes[1] = planes[0]
        planes[2] = planes[0]
    elif unit.ndim == 3 and unit.shape[2] == 3:
        planes = np.clip(np.ascontiguousarray(np.moveaxis(unit, 2, 0), dtype=np.float32), 0.0, 1.0)
    else:
        raise BadInputError(path, f"unsupported pixel layout {tuple(unit.shape)} (expected grey, RGB or RGBA)")
    return torch.from_numpy(planes)


def _finish(path: Path, arr: np.ndarray, meta: dict[str, Any]) -> LoadedImage:
    """Non-DICOM pixel arrays: layout check (before any float copy), finite check, scaling, 3 channels."""
    meta.setdefault("dtype", str(arr.dtype))
    meta.setdefault("shape", list(arr.shape))
    if not (arr.ndim == 2 or (arr.ndim == 3 and 1 <= arr.shape[2] <= MAX_SAMPLES_PER_PIXEL)):
        raise BadInputError(path, f"unsupported pixel layout {tuple(arr.shape)} (expected grey, RGB or RGBA)")
    arr = _finite_or_fail(path, arr, meta)
    return LoadedImage(_to_rgb_tensor(path, _to_unit_range(arr, meta)), meta)


def _frame_or_fail(path: Path, frame: int | None, count: int, default: int) -> int:
    index = default if frame is None else frame
    if not 0 <= index < count:
        raise BadInputError(path, f"frame {index} out of range (the file has {count} frame(s))")
    return index


# --------------------------------------------------------------------------- Pillow: PNG, JPEG, BMP

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP"}


def _read_pillow(path: Path, frame: int | None, axis: int, window: Any, limits: ReadLimits, *,
                 kind: str) -> LoadedImage:
    from PIL import Image

    _frame_or_fail(path, frame, 1, 0)
    declared = _declared_size(path, kind)
    if declared is not None:
        _check_pixels(path, declared[1], declared[0], limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            with Image.open(path, formats=[_PIL_FORMATS[kind]]) as img:
                width, height = img.size
                _check_decode(path, width, height, limits, samples=len(img.getbands()),
                              bytes_per_sample=_pillow_bytes_per_sample(img.mode))
                mode = img.mode
                arr = _pillow_array(img)
    except Image.DecompressionBombError as exc:
        raise BadInputError(path, f"image too large: {exc} (decompression-bomb guard)") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, zlib.error) as exc:
        raise BadInputError(path, f"truncated or corrupt {kind.upper()} data ({exc})") from None
    return _finish(path, arr, {"format": kind, "mode": mode, "shape": [height, width]})


def _declared_size(path: Path, kind: str) -> tuple[int, int] | None:
    """(width, height) straight from a PNG IHDR or BMP header, so the bomb guard names the header's numbers.

    JPEG dimensions sit in a SOF segment anywhere in the file: for JPEG, Pillow's
    header parse (which decodes nothing) gives them instead.
    """
    with open(path, "rb") as handle:
        head = handle.read(32)
    if kind == "png" and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    if kind == "bmp" and len(head) >= 26:
        width, height = struct.unpack("<ii", head[18:26])
        return abs(width), abs(height)  # a negative height means a top-down BMP
    return None


def _pillow_bytes_per_sample(mode: str) -> float:
    """Bytes per decoded sample of a Pillow mode (1-bit images are unpacked to one byte per pixel)."""
    if mode.startswith("I;16"):
        return 2
    if mode in ("I", "F"):
        return 4
    return 1


def _pillow_array(img) -> np.ndarray:
    """Pixels at their stored depth: 16-bit grey stays 16-bit; palette/CMYK/... become RGB."""
    if img.mode in ("1", "L", "RGB", "RGBA", "LA", "F"):
        return np.asarray(img)
    if img.mode.startswith("I"):  # 16/32-bit grey
        arr = np.asarray(img)
        return arr.astype(np.uint16) if img.mode.startswith("I;16") else arr
    return np.asarray(img.convert("RGB"))


# --------------------------------------------------------------------------- TIFF (tifffile)


def _tiff_pages(path: Path):
    """The pages that form the image stack: those shaped like the first (pyramid levels/thumbnails are left out)."""
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError, struct.error, EOFError) as exc:
        raise BadInputError(path, f"corrupt TIFF header ({exc})") from None
    try:
        pages = [p for p in tif.pages if p.shape == tif.pages.first.shape]
    except (tifffile.TiffFileError, ValueError, OSError, struct.error, EOFError, IndexError) as exc:
        tif.close()
        raise BadInputError(path, f"corrupt TIFF page structure ({exc})") from None
    if not pages:
        tif.close()
        raise BadInputError(path, "TIFF without image pages")
    return tif, pages


def _count_tiff(path: Path, axis: int, limits: ReadLimits) -> int:
    tif, pages = _tiff_pages(path)
    with tif:
        return len(pages)


def _read_tiff(path: Path, frame: int | None, axis: int, window: Any, limits: ReadLimits) -> LoadedImage:
    tif, pages = _tiff_pages(path)
    with tif:
        index = _frame_or_fail(path, frame, len(pages), 0)
        page = pages[index]
        _check_decode(path, page.imagewidth, page.imagelength, limits, samples=int(page.samplesperpixel),
                      bytes_per_sample=page.dtype.itemsize if page.dtype is not None else 8,
                      frames=max(1, int(getattr(page, "imagedepth", 1) or 1)))
        try:
            arr = page.asarray()
        except KeyError as exc:
            if "imagecodecs" in str(exc):
                raise BadInputError(path, f"compressed TIFF ({page.compression.name}) needs a decoder that is not "
                                          "installed: pip install imagecodecs") from None
            raise BadInputError(path, f"cannot decode TIFF ({exc})") from None
        except (ValueError, OSError, struct.error, EOFError, zlib.error, IndexError) as exc:
            raise BadInputError(path, f"truncated or corrupt TIFF data ({exc})") from None
        if page.axes.startswith("S") and arr.ndim == 3:  # planar (separate) samples
            arr = np.moveaxis(arr, 0, -1)
        meta = {"format": "tiff", "frame": index, "n_frames": len(pages), "photometric": page.photometric.name,
                "dtype": str(arr.dtype), "shape": list(arr.shape)}
    return _finish(path, arr, meta)


# --------------------------------------------------------------------------- DICOM (pydicom)


def _dicom_dataset(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pydicom's "invalid VR value" chatter
            return pydicom.dcmread(path, force=not _has_preamble(path), defer_size="1 MB")
    except (InvalidDicomError, zlib.error, *_dicom_errors()) as exc:
        raise BadInputError(path, f"not a readable DICOM file ({_one_line(exc)})") from None


def _has_preamble(path: Path) -> bool:
    with open(path, "rb") as handle:
        return _is_dicom_preamble(handle.read(132))


def _dicom_checked(path: Path, limits: ReadLimits):
    """The dataset, once we know it has pixel data we can decode and a sane size."""
    ds = _dicom_dataset(path)
    try:  # elements are parsed lazily: a malformed one fails here, not at dcmread
        return _dicom_header_checked(path, ds, limits)
    except _dicom_errors() as exc:
        raise BadInputError(path, f"malformed DICOM header ({_one_line(exc)})") from None


@functools.cache
def _dicom_errors() -> tuple[type[BaseException], ...]:
    """What a malformed DICOM raises; looked up at the first failure, so listing plugins never imports pydicom."""
    from pydicom.errors import BytesLengthException

    return (ValueError, NotImplementedError, KeyError, TypeError, AttributeError, struct.error, EOFError, OSError,
            BytesLengthException)


SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
NOT_SCANS = {
    "SEG": "a DICOM segmentation (Modality SEG): a label mask drawn on a scan, not the scan",
    "RTDOSE": "a DICOM dose grid (Modality RTDOSE): radiotherapy dose values computed on a scan, not the scan",
}
"""DICOM objects whose pixel data are not an acquired image: a segmentation's pixels are label values (0/1 per
segment), a dose grid's are doses. Scoring one would score a mask or a dose map as a scan; they are refused like
files without pixel data."""


def _dicom_header_checked(path: Path, ds, limits: ReadLimits):
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if len(ds) == 0:  # pydicom gives up on a data set cut inside a sequence and keeps nothing of it
            raise BadInputError(path, "truncated DICOM: no element of the data set could be read (the file ends "
                                      "inside it)")
        kind = getattr(ds.get("SOPClassUID"), "name", None) or ds.get("Modality") or "unknown SOP class"
        raise BadInputError(path, f"DICOM without pixel data ({kind})")
    modality = "SEG" if str(ds.get("SOPClassUID", "")) == SEGMENTATION_STORAGE else str(ds.get("Modality", "")).upper()
    if modality in NOT_SCANS:
        raise BadInputError(path, NOT_SCANS[modality])
    for tag in ("Rows", "Columns", "PhotometricInterpretation", "BitsAllocated"):
        if tag not in ds:
            raise BadInputError(path, f"DICOM image lacks {tag}")
    _check_finite_header_numbers(path, ds)
    _check_decode(path, int(ds.Columns), int(ds.Rows), limits, samples=int(ds.get("SamplesPerPixel") or 1),
                  bytes_per_sample=max(1, int(ds.BitsAllocated) // 8))
    _guess_missing_transfer_syntax(ds)
    _check_decoder(path, ds)
    _check_frame_count(path, ds)
    return ds


PIXEL_VALUE_TAGS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")
"""Header numbers every pixel value goes through: one NaN or inf there turns the whole image NaN or black."""


def _check_finite_header_numbers(path: Path, ds) -> None:
    """Refuse, naming the tag, a rescale or window value that is not a finite number."""
    for tag in PIXEL_VALUE_TAGS:
        if tag not in ds or ds[tag].value in (None, ""):
            continue
        value = ds[tag].value
        values = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
        try:
            finite = all(math.isfinite(float(v)) for v in values)
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise BadInputError(path, f"DICOM {tag} is not a finite number ({value}): every pixel value goes "
                                      "through it")


def _check_frame_count(path: Path, ds) -> None:
    """A NumberOfFrames the pixel data cannot hold is refused (a lying header would make phantom frames).

    Native data must hold ``frames x frame size`` bytes; encapsulated
    (compressed) data needs at least one fragment per frame.
    """
    from pydicom.encaps import generate_fragments

    raw = ds.get("NumberOfFrames") or 1
    frames = int(raw)  # a malformed frame count fails here, as a header error
    if frames < 1:
        raise BadInputError(path, f"DICOM header gives NumberOfFrames = {raw}")
    if frames == 1 or "PixelData" not in ds:
        return
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    data = ds.PixelData
    if syntax is not None and syntax.is_encapsulated:
        fragments = sum(1 for _ in generate_fragments(data[8 + int.from_bytes(data[4:8], "little"):]))
        if frames > fragments:
            raise BadInputError(path, f"DICOM header claims {frames:,} frames but the compressed pixel data holds "
                                      f"only {fragments:,} fragment(s)")
        return
    bits = int(ds.BitsAllocated)
    frame_bytes = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * bits / 8
    held = int(len(data) // frame_bytes) if frame_bytes else 0
    if frames > held:
        raise BadInputError(path, f"DICOM header claims {frames:,} frames but the pixel data holds only {held:,} "
                                  f"({len(data):,} bytes)")


def _guess_missing_transfer_syntax(ds) -> None:
    """Files without (0002,0010) were parsed in some encoding anyway: tell the decoder which one."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _check_decoder(path: Path, ds) -> None:
    """A compressed transfer syntax whose decoder is missing is one line saying which package to install."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import UID

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None:
        return
    try:
        decoder = get_decoder(UID(syntax))
    except NotImplementedError:
        raise BadInputError(path, f"no pixel decoder exists for transfer syntax '{UID(syntax).name}'") from None
    if not decoder.is_available:
        wanted = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise BadInputError(path, f"compressed DICOM ({UID(syntax).name}) but no decoder is installed "
                                  f"(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg; options: {wanted})")


def _count_dicom(path: Path, axis: int, limits: ReadLimits) -> int:
    return _dicom_frame_count(_dicom_checked(path, limits))


def _read_dicom(path: Path, frame: int | None, axis: int, window: tuple[float, float] | None,
                limits: ReadLimits) -> LoadedImage:
    ds = _dicom_checked(path, limits)
    n_frames = _dicom_frame_count(ds)
    return _dicom_frame(path, ds, _frame_or_fail(path, frame, n_frames, 0), n_frames, window)


def _iter_dicom(path: Path, axis: int, step: int, limits: ReadLimits) -> Iterator[tuple[int, LoadedImage]]:
    """Frames of one dataset read once (re-reading the file per frame made a 120-frame cine 10x slower)."""
    ds = _dicom_checked(path, limits)
    n_frames = _dicom_frame_count(ds)
    for index in range(0, n_frames, step):
        yield index, _dicom_frame(path, ds, index, n_frames, None)


def _dicom_frame_count(ds) -> int:
    from pydicom.pixels.utils import get_nr_frames

    return int(get_nr_frames(ds, warn=False))


def _dicom_frame(path: Path, ds, index: int, n_frames: int, window: tuple[float, float] | None) -> LoadedImage:
    """Decode frame ``index`` of a checked dataset and take it through :func:`dicom_to_unit`."""
    from pydicom.pixels import pixel_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            raw = pixel_array(ds, index=index if n_frames > 1 else None)
    except (RuntimeError, zlib.error, *_dicom_errors()) as exc:
        raise BadInputError(path, f"cannot decode DICOM pixel data ({_one_line(exc)})") from None
    try:
        meta = _dicom_meta(ds, raw, index, n_frames)
    except _dicom_errors() as exc:
        raise BadInputError(path, f"malformed DICOM header ({_one_line(exc)})") from None
    raw = _finite_or_fail(path, raw, meta)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            unit = dicom_to_unit(ds, raw, window=window, meta=meta)
    except (ValueError, NotImplementedError, AttributeError, KeyError, IndexError, TypeError) as exc:
        raise BadInputError(path, f"cannot apply the DICOM's LUT/window ({_one_line(exc)})") from None
    unit = _finite_or_fail(path, unit, meta)  # header numbers are checked before; any other NaN path is here
    return LoadedImage(_to_rgb_tensor(path, unit), meta)


def _dicom_meta(ds, raw: np.ndarray, index: int, n_frames: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"format": "dicom", "modality": str(ds.get("Modality", "")) or "unknown",
                            "photometric": str(ds.PhotometricInterpretation).upper(), "dtype": str(raw.dtype),
                            "shape": list(raw.shape), "frame": index, "n_frames": n_frames,
                            "transfer_syntax": str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))}
    for key in ("SeriesInstanceUID", "StudyInstanceUID"):
        if key in ds:
            meta[key] = str(ds[key].value)
    return meta


def dicom_to_unit(ds, raw: np.ndarray, *, window: tuple[float, float] | None = None,
                  meta: dict[str, Any] | None = None) -> np.ndarray:
    """One decoded DICOM frame -> float array in [0, 1] (grey ``(H, W)`` or RGB ``(H, W, 3)``).

    The documented pipeline of the module docstring; exposed so tests and tools
    can reproduce a reader's output exactly.
    """
    from pydicom.pixels import apply_color_lut

    meta = {} if meta is None else meta
    photometric = str(ds.PhotometricInterpretation).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(raw, ds)
        meta["scaling"] = f"palette /{np.iinfo(rgb.dtype).max}"
        return rgb.astype(np.float32) / np.iinfo(rgb.dtype).max
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):  # RGB, or YBR already converted to RGB by pydicom 3
        top = 2 ** int(ds.get("BitsStored", ds.BitsAllocated)) - 1
        meta["scaling"] = f"/{top}"
        return (raw.astype(np.float64) / top).astype(np.float32)
    unit = _grey_dicom_to_unit(ds, raw, window, meta)
    if photometric == "MONOCHROME1":  # low values are bright: invert so all grey images read alike
        unit = 1.0 - unit
        meta["inverted"] = True
    return unit.astype(np.float32)


def _grey_dicom_to_unit(ds, raw: np.ndarray, window: tuple[float, float] | None, meta: dict[str, Any]) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(raw, ds)
    if window is not None:
        _set_window(ds, window)
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    has_lut = bool(ds.get("VOILUTSequence"))
    if not (has_window or has_lut):
        meta["window"] = "min-max"
        finite = values[np.isfinite(values)] if values.size else values
        meta["value_range"] = [float(finite.min()), float(finite.max())] if finite.size else [0.0, 0.0]
        return _min_max(values.astype(np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        shown = apply_voi_lut(values, ds, index=0)
    low, high = _voi_output_range(ds, values)
    meta["window"] = _describe_window(ds, window, used_lut=has_lut)
    span = high - low
    unit = (shown.astype(np.float64) - low) / span if span > 0 else np.zeros(shown.shape)
    return np.clip(unit, 0.0, 1.0)


def _set_window(ds, window: tuple[float, float]) -> None:
    """Replace the file's VOI with a linear window (``window=(center, width)`` override)."""
    center, width = (float(v) for v in window)
    if width <= 0:
        raise MfxError(f"window width must be positive, got {width}")
    if "VOILUTSequence" in ds:
        del ds.VOILUTSequence
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, "LINEAR"


def _voi_output_range(ds, values: np.ndarray) -> tuple[float, float]:
    """The output range of pydicom's VOI step, so [0, 1] follows pydicom's own rules, not a copy of them.

    A VOI LUT outputs ``0 .. 2**bits - 1`` (bits from its LUT Descriptor). For
    windowing the range depends on BitsStored, PixelRepresentation and rescale;
    passing the two extreme inputs through the same ``apply_voi_lut`` call gives
    exactly its lowest and highest outputs.
    """
    from pydicom.pixels import apply_voi_lut

    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    probe = np.array([-1e300, 1e300], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        low, high = apply_voi_lut(probe, ds, index=0)
    return float(low), float(high)


def _describe_window(ds, window: tuple[float, float] | None, used_lut: bool) -> Any:
    if used_lut:
        return "voi-lut"
    center, width = _first_value(ds.WindowCenter), _first_value(ds.WindowWidth)
    return {"center": center, "width": width, "from": "override" if window is not None else "file",
            "function": str(ds.get("VOILUTFunction", "LINEAR"))}


def _first_value(value) -> float:
    """The first of a multi-valued element (several alternative windows: pydicom applies the first)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        return float(value)
    return float(value[0])


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's text on one line (pydicom lists each decoder's failure on its own line)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- NIfTI (nibabel)


def _nifti_header(path: Path):
    """The NIfTI-1/2 image (header read, data not yet); CIFTI and other nibabel formats are refused."""
    import nibabel

    try:
        img = nibabel.load(path)
    except _nifti_errors() as exc:
        raise BadInputError(path, f"not a readable NIfTI file ({_one_line(exc)})") from None
    if not isinstance(img, (nibabel.Nifti1Image, nibabel.Nifti2Image)):
        raise BadInputError(path, f"{type(img).__name__}, not a NIfTI image volume")
    if img.get_data_dtype().names:  # RGB24/RGBA32 voxels are records of channels, not intensities
        raise BadInputError(path, f"colour NIfTI voxels ({img.get_data_dtype().names}) are not supported: mfx "
                                  "reads grey-level volumes (save one channel, or the luminance, as a volume)")
    rotation = np.asarray(img.affine, dtype=np.float64)[:3, :3]
    if not np.isfinite(rotation).all() or abs(float(np.linalg.det(rotation))) < 1e-12:
        raise BadInputError(path, "NIfTI affine is not usable (NaN/inf or singular): the volume cannot be oriented")
    return img


@functools.cache
def _nifti_errors() -> tuple[type[BaseException], ...]:
    """What a malformed NIfTI raises; looked up at the first failure, so listing plugins never imports nibabel."""
    from xml.parsers.expat import ExpatError

    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    return (ImageFileError, HeaderDataError, ExpatError, OSError, EOFError, ValueError, zlib.error, KeyError)


def _canonical_shape(img) -> tuple[int, ...]:
    """The 3-D shape after reorientation to RAS+ (a 2-D image counts as one slice deep)."""
    import nibabel

    shape = tuple(int(s) for s in img.shape[:3]) + (1,) * max(0, 3 - len(img.shape))
    ornt = nibabel.orientations.io_orientation(img.affine)
    out = [1, 1, 1]
    for source_axis, (target_axis, _flip) in enumerate(ornt[:3]):
        if not np.isnan(target_axis):
            out[int(target_axis)] = shape[source_axis]
    return tuple(out)


def _check_axis(path: Path, axis: int) -> None:
    if axis not in (0, 1, 2):
        raise MfxError(f"axis must be 0, 1 or 2, not {axis}")


def _count_nifti(path: Path, axis: int, limits: ReadLimits) -> int:
    _check_axis(path, axis)
    return _canonical_shape(_nifti_header(path))[axis]


def _check_nifti_budget(path: Path, img, limits: ReadLimits) -> None:
    """The whole volume is decoded at once: size it from the header before anything is decompressed.

    Counts the stored voxels, the float32 volume and the float32 copy its
    percentile range sorts (see :class:`ReadLimits`).
    """
    shape = tuple(int(s) for s in img.shape)
    if any(s <= 0 for s in shape):
        raise BadInputError(path, f"header gives an empty volume ({'x'.join(map(str, shape))})")
    voxels = int(np.prod(shape[:3], dtype=np.int64))
    itemsize = img.get_data_dtype().itemsize
    need = voxels * (itemsize + 8)
    if need > limits.max_decode_bytes:
        raise BadInputError(path, f"volume too large to decode: header says {'x'.join(map(str, shape[:3]))} voxels "
                                  f"of {itemsize} byte(s), about {need:,} bytes to decode > limit "
                                  f"{limits.max_decode_bytes:,} (set MFX_MAX_DECODE_BYTES to raise it)")


@functools.lru_cache(maxsize=2)
def _nifti_volume(path_text: str, size: int, mtime_ns: int,
                  max_decode_bytes: int) -> tuple[np.ndarray, float, float, int]:
    """The RAS+ volume (float32, first time point), its robust 0.5-99.5% range and non-finite count.

    Cached (two volumes) because a manifest lists many slices of one volume in a row.
    """
    import nibabel

    path = Path(path_text)
    img = _nifti_header(path)
    shape = tuple(int(s) for s in img.shape)
    _check_nifti_budget(path, img, ReadLimits(max_decode_bytes=max_decode_bytes))
    try:
        img = nibabel.as_closest_canonical(img)
        data = np.asanyarray(img.dataobj, dtype=np.float32) if len(shape) <= 3 else \
            np.asarray(img.dataobj[..., 0], dtype=np.float32)
    except _nifti_errors() as exc:
        raise BadInputError(path, f"truncated or corrupt NIfTI data ({_one_line(exc)})") from None
    data = data.reshape(data.shape[:3] + (1,) * max(0, 3 - data.ndim))
    while data.ndim > 3:  # 5-D and up: first of every extra dimension
        data = data[..., 0]
    data = np.ascontiguousarray(data)
    finite = np.isfinite(data)
    if finite.all():  # the common case: no boolean-indexed copy of the whole volume
        del finite
        low, high = np.percentile(data, [0.5, 99.5])
        return data, float(low), float(high), 0
    if not finite.any():
        raise BadInputError(path, "voxel values are all NaN/inf")
    low, high = np.percentile(data[finite], [0.5, 99.5])
    return data, float(low), float(high), int((~finite).sum())


@functools.lru_cache(maxsize=256)
def _say_first_time_point(path: str, volumes: int) -> None:
    """Once per file: a 4-D (or higher) NIfTI is read at its first volume only, which the user should know."""
    log.warning("a NIfTI of %d volumes (time points): mfx reads the first only, in %s", volumes, path)


def _read_nifti(path: Path, frame: int | None, axis: int, window: Any, limits: ReadLimits) -> LoadedImage:
    _check_axis(path, axis)
    img = _nifti_header(path)
    shape = _canonical_shape(img)
    height, width = [s for i, s in enumerate(shape) if i != axis]
    _check_pixels(path, height, width, limits)
    _check_nifti_budget(path, img, limits)
    stat = path.stat()
    volume, low, high, nonfinite = _nifti_volume(str(path.resolve()), stat.st_size, stat.st_mtime_ns,
                                                 limits.max_decode_bytes)
    index = _frame_or_fail(path, frame, shape[axis], shape[axis] // 2)
    plane = np.take(volume, index, axis=axis)
    scaling = "robust 0.5-99.5 percentile"
    if window is not None:  # in the volume's own units (e.g. HU for a CT volume)
        center, width = (float(v) for v in window)
        if width <= 0:
            raise MfxError(f"window width must be positive, got {width}")
        low, high, scaling = center - width / 2, center + width / 2, f"window {center:g}/{width:g}"
    plane = np.where(np.isfinite(plane), plane, low)
    unit = np.clip((plane - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(plane)
    unit = np.rot90(unit)  # RAS+ first in-plane axis runs left-right: rotate so anterior/superior is up
    meta = {"format": "nifti", "frame": index, "n_frames": shape[axis], "axis": axis,
            "shape": list(img.shape), "dtype": str(img.get_data_dtype()), "scaling": scaling,
            "value_range": [low, high]}
    if len(img.shape) > 3 and int(np.prod(img.shape[3:])) > 1:
        meta["time_point"] = 0
        _say_first_time_point(str(path), int(np.prod(img.shape[3:])))
    if nonfinite:
        meta["nonfinite_pixels"] = nonfinite
    return LoadedImage(_to_rgb_tensor(path, unit.astype(np.float32)), meta)


# --------------------------------------------------------------------------- dispatch


def _count_single(path: Path, axis: int, limits: ReadLimits) -> int:
    return 1


@dataclasses.dataclass(frozen=True)
class _Format:
    read: Callable[..., LoadedImage]
    count: Callable[[Path, int, ReadLimits], int]
    iterate: Callable[[Path, int, int, ReadLimits], Iterator[tuple[int, LoadedImage]]] | None = None


_FORMATS: dict[str, _Format] = {
    "png": _Format(functools.partial(_read_pillow, kind="png"), _count_single),
    "jpeg": _Format(functools.partial(_read_pillow, kind="jpeg"), _count_single),
    "bmp": _Format(functools.partial(_read_pillow, kind="bmp"), _count_single),
    "tiff": _Format(_read_tiff, _count_tiff),
    "dicom": _Format(_read_dicom, _count_dicom, _iter_dicom),
    "nifti": _Format(_read_nifti, _count_nifti),
}
