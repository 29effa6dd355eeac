"""Readers on real DICOM (pydicom's test files) and NIfTI (nibabel's) plus generated PNG/TIFF/JPEG.

Expected values are computed here with pydicom / nibabel themselves and the
scaling the readers document, independently of the reader's code path.
"""

from __future__ import annotations

import warnings

import importlib.util
import os

import nibabel
import numpy as np
import pydicom
import pytest
import tifffile
import torch
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from medforensics_core.data.readers import (IMAGE_SUFFIXES, LoadedImage, ReadLimits, count_frames, is_image_file,
                                            iter_frames, read_image)
from medforensics_core.errors import BadInputError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


PYDICOM_FILES = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
HAVE_PYDICOM_DATA = importlib.util.find_spec("data_store") is not None  # the pydicom-data package (demo extra)


def dicom(name: str) -> str:
    """A test file shipped with pydicom, else one from pydicom-data when installed (never downloaded)."""
    bundled = os.path.join(PYDICOM_FILES, name)
    if os.path.isfile(bundled):
        return bundled
    if not HAVE_PYDICOM_DATA:
        pytest.skip(f"{name} comes with pydicom-data, which is not installed (pydicom would try to download it)")
    path = get_testdata_file(name)
    assert path is not None, name
    return path


def grey(image: LoadedImage) -> np.ndarray:
    """The single grey plane of a grey image (and proof that the 3 channels are equal)."""
    t = image.tensor
    assert t.dtype == torch.float32 and t.shape[0] == 3
    assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])
    return t[0].numpy()


def window_range(ds) -> tuple[float, float]:
    """DICOM PS3.3 C.11.2.1.2: windowing output spans the stored value range, through the rescale."""
    bits = int(ds.BitsStored)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else (0, 2**bits - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    return low * slope + intercept, high * slope + intercept


# ----------------------------------------------------------------------------- DICOM


def test_ct_without_window_is_modality_lut_then_min_max():
    path = dicom("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    assert float(ds.RescaleIntercept) == -1024  # the rescale really is exercised
    expected = (hu - hu.min()) / (hu.max() - hu.min())
    image = read_image(path)
    np.testing.assert_allclose(grey(image), expected, atol=1e-6)
    assert image.meta["modality"] == "CT" and image.meta["window"] == "min-max"


def test_mr_window_from_file_matches_pydicom_voi():
    path = dicom("MR_small.dcm")
    ds = pydicom.dcmread(path)
    shown = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    low, high = window_range(ds)
    expected = (shown - low) / (high - low)
    image = read_image(path)
    np.testing.assert_allclose(grey(image), expected, atol=1e-6)
    assert image.meta["window"]["center"] == 600 and image.meta["window"]["from"] == "file"
    assert grey(image).min() > 0.1  # the file's window keeps the background above black: not a min-max


def test_window_override_replaces_the_file_window():
    path = dicom("MR_small.dcm")
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = 1000.0, 400.0
    shown = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    low, high = window_range(ds)
    image = read_image(path, window=(1000, 400))
    np.testing.assert_allclose(grey(image), (shown - low) / (high - low), atol=1e-6)
    assert image.meta["window"]["from"] == "override"
    assert not np.allclose(grey(image), grey(read_image(path)))


def test_jpeg2000_ct_with_rescale_and_window():
    path = dicom("693_J2KI.dcm")  # JPEG 2000 compressed head CT, slope 1 intercept -1024, window 40/100
    ds = pydicom.dcmread(path)
    shown = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    low, high = window_range(ds)
    image = read_image(path)
    assert image.tensor.shape == (3, 512, 512)
    np.testing.assert_allclose(grey(image), (shown - low) / (high - low), atol=1e-6)
    assert 0.05 < grey(image).mean() < 0.95


def test_monochrome1_is_inverted(tmp_path):
    source = dicom("MR_small.dcm")
    ds = pydicom.dcmread(source)
    ds.PhotometricInterpretation = "MONOCHROME1"
    flipped = tmp_path / "mono1.dcm"
    ds.save_as(flipped)
    normal, inverted = read_image(source), read_image(flipped)
    np.testing.assert_allclose(grey(inverted), 1.0 - grey(normal), atol=1e-6)
    assert inverted.meta["inverted"] is True and "inverted" not in normal.meta


def test_real_monochrome1_radiograph():
    path = dicom("RG1_UNCI.dcm")  # pydicom-data: PA chest radiograph stored as MONOCHROME1
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    shown = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    low, high = window_range(ds)
    image = read_image(path)
    np.testing.assert_allclose(grey(image), 1.0 - (shown - low) / (high - low), atol=1e-6)


def test_palette_colour_goes_through_the_colour_lut():
    path = dicom("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    expected = apply_color_lut(ds.pixel_array, ds).astype(np.float64) / 65535
    image = read_image(path)
    np.testing.assert_allclose(image.tensor.permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert not torch.equal(image.tensor[0], image.tensor[2])  # really colour


def test_multiframe_ybr_frames_are_rgb_and_selectable():
    path = dicom("examples_ybr_color.dcm")  # 30-frame JPEG baseline ultrasound, YBR_FULL_422
    ds = pydicom.dcmread(path)
    assert count_frames(path) == 30
    frame5 = read_image(f"{path}#5")
    expected = pixel_array(ds, index=5).astype(np.float64) / 255  # pydicom 3 already returns RGB
    np.testing.assert_allclose(frame5.tensor.permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert frame5.meta["frame"] == 5 and frame5.meta["n_frames"] == 30
    assert torch.equal(read_image(path, frame=5).tensor, frame5.tensor)
    assert not torch.equal(read_image(path, frame=0).tensor, frame5.tensor)
    indices = [i for i, _ in iter_frames(path, step=10)]
    assert indices == [0, 10, 20]


def test_multiframe_grey_frame_selection_and_range():
    if not HAVE_PYDICOM_DATA:  # pydicom's own multi-frame grey files are dose grids, refused as not scans
        pytest.skip("needs pydicom-data (the demo extra) for a multi-frame grey scan")
    path = dicom("emri_small.dcm")  # a 10-frame MR
    ds = pydicom.dcmread(path)
    n = int(ds.NumberOfFrames)
    frames = dict(iter_frames(path))
    assert sorted(frames) == list(range(n))
    values = apply_modality_lut(pixel_array(ds, index=n - 1), ds).astype(np.float64)
    np.testing.assert_allclose(grey(frames[n - 1]), (values - values.min()) / (values.max() - values.min()), atol=1e-6)
    with pytest.raises(BadInputError, match=f"frame {n} out of range"):
        read_image(path, frame=n)


def test_dicom_without_pixel_data_is_one_line():
    with pytest.raises(BadInputError, match="DICOM without pixel data") as info:
        read_image(dicom("rtplan.dcm"))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name,what", [("liver_1frame.dcm", "DICOM segmentation"),
                                       ("liver_expb_1frame.dcm", "DICOM segmentation"),
                                       ("rtdose.dcm", "DICOM dose grid")])
def test_dicom_objects_that_are_not_scans_are_refused_in_one_line(name, what):
    """A SEG object's pixels are a 0/1 mask (pydicom's liver files: a liver segmentation), an RTDOSE's are doses:
    neither is a scan to score."""
    with pytest.raises(BadInputError, match=what) as info:
        read_image(dicom(name))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("tag,keyword,value", [(0x00281053, "RescaleSlope", "nan"),
                                               (0x00281052, "RescaleIntercept", "inf"),
                                               (0x00281050, "WindowCenter", "nan"),
                                               (0x00281051, "WindowWidth", "nan")])
def test_a_non_finite_rescale_or_window_is_one_line_naming_the_tag(tmp_path, tag, keyword, value):
    """Every pixel goes through these header numbers: a NaN slope made the whole image NaN (whose NaN score was
    blamed on the model's weights and stopped the batch), a NaN window made it black and scored."""
    import pydicom
    from pydicom.dataelem import DataElement

    ds = pydicom.dcmread(dicom("CT_small.dcm"))
    ds[tag] = DataElement(tag, "DS", value)
    path = tmp_path / f"{keyword}.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom: "Invalid value for VR DS"
        ds.save_as(path)
        with pytest.raises(BadInputError, match=f"DICOM {keyword} is not a finite number") as info:
            read_image(path)
    assert "\n" not in str(info.value)


def test_truncated_dicom_is_refused():
    with pytest.raises(BadInputError, match="cannot decode DICOM pixel data"):
        read_image(dicom("MR_truncated.dcm"))


def test_transfer_syntax_without_any_decoder(tmp_path):
    ds = pydicom.dcmread(dicom("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: pydicom decodes no video
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].is_undefined_length = True
    path = tmp_path / "video.dcm"
    ds.save_as(path)
    with pytest.raises(BadInputError, match="no pixel decoder exists for transfer syntax 'MPEG2"):
        read_image(path)


def test_missing_decoder_names_the_packages(monkeypatch):
    from pydicom.pixels.decoders.base import get_decoder

    decoder = get_decoder("1.2.840.10008.1.2.4.90")
    monkeypatch.setattr(decoder, "_available", {})  # as on a machine without pylibjpeg/pillow-jpeg2000
    with pytest.raises(BadInputError, match=r"compressed DICOM \(JPEG 2000.*no decoder is installed.*pip install"):
        read_image(dicom("MR_small_jp2klossless.dcm"))


# ----------------------------------------------------------------------------- NIfTI


def canonical_volume(path: str) -> np.ndarray:
    img = nibabel.as_closest_canonical(nibabel.load(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    return data if data.ndim == 3 else data[..., 0]


def test_nifti_middle_slice_with_robust_percentiles():
    path = os.path.join(NIBABEL_DATA, "anatomical.nii")
    volume = canonical_volume(path)
    low, high = np.percentile(volume, [0.5, 99.5])
    middle = volume.shape[2] // 2
    expected = np.rot90(np.clip((volume[:, :, middle] - low) / (high - low), 0, 1))
    image = read_image(path)
    np.testing.assert_allclose(grey(image), expected, atol=1e-5)
    assert image.meta["frame"] == middle and image.meta["format"] == "nifti"


def test_nifti_4d_slices_along_each_axis():
    path = os.path.join(NIBABEL_DATA, "example4d.nii.gz")
    volume = canonical_volume(path)
    for axis in (0, 1, 2):
        assert count_frames(path, axis=axis) == volume.shape[axis]
    low, high = np.percentile(volume, [0.5, 99.5])
    slices = dict(iter_frames(path, axis=1, step=16))
    assert sorted(slices) == list(range(0, volume.shape[1], 16))
    expected = np.rot90(np.clip((volume[:, 16, :] - low) / (high - low), 0, 1))
    np.testing.assert_allclose(grey(slices[16]), expected, atol=1e-5)
    assert torch.equal(read_image(f"{path}#3").tensor, read_image(path, frame=3).tensor)


def test_a_4d_nifti_says_once_that_its_first_volume_is_read(tmp_path, caplog):
    path = tmp_path / "fmri.nii.gz"
    volumes = np.stack([np.full((16, 16, 4), v, np.float32) for v in (1.0, 2.0, 3.0)], axis=-1)
    volumes[..., 0] += np.random.default_rng(0).random((16, 16, 4)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(volumes, np.eye(4)), path)
    with caplog.at_level("WARNING", logger="medforensics_core.data.readers"):
        frames = [loaded for _, loaded in iter_frames(path)]
    assert len(frames) == 4 and all(f.meta["time_point"] == 0 for f in frames)
    said = [r.getMessage() for r in caplog.records if "volumes (time points)" in r.getMessage()]
    assert said == [f"a NIfTI of 3 volumes (time points): mfx reads the first only, in {path}"]


def test_nifti_all_nan_is_refused(tmp_path):
    path = tmp_path / "nan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.full((6, 6, 3), np.nan, np.float32), np.eye(4)), path)
    with pytest.raises(BadInputError, match="all NaN/inf"):
        read_image(path)


def test_a_pipe_or_a_device_is_not_read_as_an_image(tmp_path):
    """A FIFO would read as "empty" (or block), /dev/zero as endless zeros: both are "not a regular file", named
    or met in a folder."""
    import os

    from medforensics_core.data.walk import expand_inputs

    fifo = tmp_path / "scan.png"
    os.mkfifo(fifo)
    with pytest.raises(BadInputError, match="not a regular file"):
        read_image(fifo)
    files, bad = expand_inputs([fifo, "/dev/zero"])
    assert files == [] and [reason for _, reason in bad] == ["not a regular file (a pipe, device or socket)"] * 2


def test_colour_nifti_is_one_line_not_an_unexpected_error(tmp_path):
    """RGB24 voxels are records of three channels: refused by name (before: a DTypePromotionError from NumPy)."""
    path = tmp_path / "rgb.nii.gz"
    voxels = np.zeros((8, 8, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    image = nibabel.Nifti1Image(voxels, np.eye(4))
    image.header.set_data_dtype(voxels.dtype)
    nibabel.save(image, path)
    with pytest.raises(BadInputError, match="colour NIfTI voxels"):
        read_image(path)


# ----------------------------------------------------------------------------- PNG / JPEG / TIFF / BMP


def test_8bit_png_is_divided_by_255(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    np.testing.assert_allclose(image.tensor.permute(1, 2, 0).numpy(), rgb / 255.0, atol=1e-7)


def test_16bit_png_and_tiff_use_the_actual_range(tmp_path):
    values = (np.arange(400, dtype=np.uint16).reshape(20, 20) * 7 + 300)  # a 12-bit-ish range, far below 65535
    Image.fromarray(values).save(tmp_path / "a16.png")
    tifffile.imwrite(tmp_path / "a16.tif", values)
    expected = (values - 300.0) / (values.max() - 300.0)
    for name in ("a16.png", "a16.tif"):
        image = read_image(tmp_path / name)
        np.testing.assert_allclose(grey(image), expected, atol=1e-6)
        assert image.meta["scaling"] == "min-max" and image.meta["dtype"] == "uint16"


def test_tiff_planar_rgb_stack_and_partial_nan(tmp_path):
    planar = np.stack([np.full((8, 9), v, np.uint8) for v in (0, 128, 255)])
    tifffile.imwrite(tmp_path / "planar.tif", planar, planarconfig="separate", photometric="rgb")
    image = read_image(tmp_path / "planar.tif")
    assert image.tensor.shape == (3, 8, 9)
    np.testing.assert_allclose(image.tensor[:, 0, 0].numpy(), [0, 128 / 255, 1], atol=1e-6)
    tifffile.imwrite(tmp_path / "stack.tif", np.arange(4 * 6 * 6, dtype=np.uint8).reshape(4, 6, 6),
                    photometric="minisblack")
    assert count_frames(tmp_path / "stack.tif") == 4
    assert float(read_image(tmp_path / "stack.tif", frame=3).tensor[0, 0, 0]) == pytest.approx(108 / 255)
    speckled = np.linspace(2, 5, 36, dtype=np.float32).reshape(6, 6)
    speckled[0, 0] = np.nan
    image = read_image(_save_tiff(tmp_path / "speckled.tif", speckled))
    assert image.meta["nonfinite_pixels"] == 1 and float(image.tensor[0, 0, 0]) == 0.0


def _save_tiff(path, array):
    tifffile.imwrite(path, array)
    return path


def test_grey_jpeg_bmp_and_a_jpeg_named_png(tmp_path):
    grey_pixels = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (10, 1))
    Image.fromarray(grey_pixels).save(tmp_path / "g.bmp")
    np.testing.assert_allclose(grey(read_image(tmp_path / "g.bmp")), grey_pixels / 255.0, atol=1e-7)
    Image.fromarray(grey_pixels).save(tmp_path / "really_jpeg.png", format="JPEG", quality=95)
    image = read_image(tmp_path / "really_jpeg.png")
    assert image.meta["format"] == "jpeg" and image.tensor.shape == (3, 10, 25)


def test_limits_come_from_the_environment(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setenv("MFX_MAX_PIXELS", "1000")
    with pytest.raises(BadInputError, match="header says 50x40 = 2,000 pixels > limit 1,000"):
        read_image(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png", limits=ReadLimits(max_pixels=2000)).tensor.shape == (3, 40, 50)


def test_image_file_recognition(tmp_path):
    assert set(IMAGE_SUFFIXES) >= {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz"}
    bare = tmp_path / "IM0001"
    bare.write_bytes(open(dicom("CT_small.dcm"), "rb").read())
    (tmp_path / "notes").write_text("not an image")
    assert is_image_file(bare) and not is_image_file(tmp_path / "notes")
    assert is_image_file(tmp_path / "scan.NII.GZ")
    assert read_image(bare).meta["format"] == "dicom"


def test_several_windows_in_the_file_use_the_first():
    path = dicom("examples_overlay.dcm")  # MR with two alternative windows (VM 2)
    ds = pydicom.dcmread(path)
    assert ds["WindowCenter"].VM > 1
    shown = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=0)
    low, high = window_range(ds)
    image = read_image(path)
    np.testing.assert_allclose(grey(image), (shown - low) / (high - low), atol=1e-6)
    assert image.meta["window"]["center"] == float(ds.WindowCenter[0])


def test_corrupt_headers_stay_bad_input_errors(tmp_path):
    """Damaged copies of real files: every failure is a BadInputError, never a library exception."""
    sources = [dicom("CT_small.dcm"), dicom("examples_ybr_color.dcm"), os.path.join(NIBABEL_DATA, "anatomical.nii")]
    rng = np.random.default_rng(0)
    for number in range(60):
        source = sources[number % len(sources)]
        data = bytearray(open(source, "rb").read())
        if number % 2:
            data = data[: int(rng.integers(1, len(data)))]
        else:
            for where in rng.integers(0, min(len(data), 4096), 12):
                data[int(where)] = int(rng.integers(0, 256))
        damaged = tmp_path / f"damaged{number}{'.nii' if source.endswith('.nii') else '.dcm'}"
        damaged.write_bytes(bytes(data))
        try:
            read_image(damaged)
        except BadInputError:
            pass


def test_nifti_window_is_in_volume_units():
    path = os.path.join(NIBABEL_DATA, "anatomical.nii")
    volume = canonical_volume(path)
    middle = volume.shape[2] // 2
    expected = np.rot90(np.clip((volume[:, :, middle] - 2000.0) / 4000.0, 0, 1))
    image = read_image(path, window=(4000, 4000))
    np.testing.assert_allclose(grey(image), expected, atol=1e-6)
    assert image.meta["scaling"] == "window 4000/4000"
