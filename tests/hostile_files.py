"""Hostile input files, generated at test time (no binary fixtures in the repository).

Each maker writes one file into a folder and returns its path. The memory bombs
are built from a compressed block repeated many times (identical TIFF strips,
concatenated gzip members, one long zlib stream of zeros), so a file that
decodes to gigabytes is written in well under a second without ever holding
the decoded pixels.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------- memory bombs


def tiff_many_samples(folder: Path, width: int = 1000, height: int = 1000, samples: int = 3000) -> Path:
    """A zlib TIFF with ``samples`` samples per pixel (3 GB decoded for the defaults, about 3 MB on disk).

    Written by hand: one strip per row, every strip the same compressed bytes.
    """
    row = zlib.compress(bytes(width * samples), 9)
    entries: list[tuple[int, int, int, bytes | int]] = []  # tag, type, count, value (int or out-of-line bytes)
    n_entries = 10
    ifd_offset = 8
    ifd_size = 2 + n_entries * 12 + 4
    data_at = ifd_offset + ifd_size
    bits = struct.pack(f"<{samples}H", *([8] * samples))
    offsets_at = data_at + len(bits)
    counts_at = offsets_at + 4 * height
    strips_at = counts_at + 4 * height
    offsets = struct.pack(f"<{height}I", *(strips_at + i * len(row) for i in range(height)))
    counts = struct.pack(f"<{height}I", *([len(row)] * height))
    entries = [
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, samples, data_at), (259, 3, 1, 8),
        (262, 3, 1, 1), (273, 4, height, offsets_at), (277, 3, 1, samples), (278, 4, 1, 1),
        (279, 4, height, counts_at), (284, 3, 1, 1),
    ]
    ifd = struct.pack("<H", n_entries)
    for tag, kind, count, value in entries:
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 and count == 1 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    path = folder / "bomb_3000_samples.tif"
    with open(path, "wb") as handle:
        handle.write(b"II*\0" + struct.pack("<I", ifd_offset) + ifd + bits + offsets + counts)
        for _ in range(height):
            handle.write(row)
    return path


def nifti_gz_bomb(folder: Path, side: int = 800, dtype: str = "int16") -> Path:
    """A ``.nii.gz`` whose header announces ``side**3`` voxels (about 950 MB decoded, about 1 MB on disk).

    The gzip stream is one compressed 8 MiB block of zeros repeated as
    concatenated gzip members (valid gzip; every reader decodes them as one).
    """
    import nibabel

    header = nibabel.Nifti1Header()
    header.set_data_dtype(np.dtype(dtype))
    header.set_data_shape((side, side, side))
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    raw = header.binaryblock + b"\0" * 4  # 348-byte header, 4-byte extension flag; data starts at 352
    total = side ** 3 * np.dtype(dtype).itemsize
    block = 8 * 1024 * 1024
    member = gzip.compress(bytes(block), 9)
    path = folder / "bomb_volume.nii.gz"
    with open(path, "wb") as handle:
        handle.write(gzip.compress(raw, 9))
        for _ in range(total // block):
            handle.write(member)
        if total % block:
            handle.write(gzip.compress(bytes(total % block), 9))
    return path


def png_bomb(folder: Path, side: int = 10_000) -> Path:
    """An 8-bit grey PNG of ``side x side`` zeros (100 M pixels, about 97 KB on disk)."""
    compressor = zlib.compressobj(9)
    line = bytes(side + 1)  # filter byte + pixels
    chunks = [compressor.compress(line) for _ in range(side)]
    data = b"".join(chunks) + compressor.flush()
    path = folder / "bomb_10k.png"
    path.write_bytes(_png(side, side, 8, 0, data))
    return path


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(width: int, height: int, depth: int, colour: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


# --------------------------------------------------------------------------- DICOM that lies


def dicom_lying_frames(folder: Path, frames: int = 2**31 - 1, name: str = "lying_frames.dcm") -> Path:
    """A small native DICOM (one 64x64 frame of pixel data) whose NumberOfFrames claims ``frames``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = frames
    ds.PixelData = (np.arange(64 * 64, dtype=np.uint16) % 4000).tobytes()
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------- small bad files


def small_bad_files(folder: Path) -> dict[str, Path]:
    """Cheap hostile files, one per failure mode a reader must name in one line."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def write(name: str, data: bytes) -> None:
        files[name] = folder / name
        files[name].write_bytes(data)

    write("empty.png", b"")
    write("html.png", b"<!doctype html><html><body>404 not found</body></html>")
    write("truncated.png", _png(64, 64, 8, 0, zlib.compress(bytes(65 * 64)))[:60])
    write("header_bomb.png", _png(200_000, 200_000, 8, 0, zlib.compress(bytes(10))))
    write("tiny_1x1.png", _png(1, 1, 8, 0, zlib.compress(b"\0\x80")))
    write("thin_64x3.png", _png(64, 3, 8, 0, zlib.compress(bytes(65 * 3))))
    write("gzip_not_nifti.nii.gz", gzip.compress(b"not a volume"))
    write("random.dcm", bytes(range(256)) * 4)
    write("hash#1.png", _png(64, 64, 8, 0, zlib.compress(bytes(65 * 64))[:10]))  # '#' is no frame suffix here
    files["nan_affine.nii"] = nifti_with_affine(folder, np.full((4, 4), np.nan), "nan_affine.nii")
    files["zero_affine.nii"] = nifti_with_affine(folder, np.zeros((4, 4)), "zero_affine.nii")
    files["lying_100k.dcm"] = dicom_lying_frames(folder, 100_000, "lying_100k.dcm")
    return files


def nifti_with_affine(folder: Path, affine: np.ndarray, name: str) -> Path:
    """A small valid volume whose stored affine (sform and qform) is ``affine`` (NaN, all zero...)."""
    import nibabel

    data = (np.arange(16 * 16 * 4, dtype=np.int16) % 300).reshape(16, 16, 4)
    header = nibabel.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(data.shape)
    header["sform_code"] = 1
    header["qform_code"] = 0
    for row, key in enumerate(("srow_x", "srow_y", "srow_z")):
        header[key] = affine[row]
    path = folder / name
    with open(path, "wb") as handle:
        handle.write(header.binaryblock + b"\0" * 4 + data.tobytes(order="F"))
    return path


def links(folder: Path) -> dict[str, Path]:
    """A symlink loop (a folder linking to its parent) and a dangling link, for the folder walkers."""
    folder.mkdir(parents=True, exist_ok=True)
    loop = folder / "loop"
    loop.symlink_to(folder.resolve(), target_is_directory=True)
    dangling = folder / "dangling.png"
    dangling.symlink_to(folder / "does-not-exist.png")
    return {"loop": loop, "dangling": dangling}
