"""Tests of medpredict.readers.dicom: the display pipeline, real shipped files, hostile files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures_images import SHARED_DATA, write_dicom
from medpredict.errors import DataError
from medpredict.readers import images as images_module
from medpredict.readers import read_dicom, read_dicom_series, read_image

DICOM_DATA = SHARED_DATA / "dicom"
needs_data = pytest.mark.skipif(not DICOM_DATA.is_dir(), reason="shared DICOM data not present")
RAMP = np.arange(64, dtype=np.uint16).reshape(8, 8) * 10  # 0..630


# ---------------------------------------------------------------- real, shipped files


@needs_data
def test_chest_cr_monochrome1_comes_out_with_dark_lungs() -> None:
    # RG1_J2KI: CR chest PA, JPEG 2000, MONOCHROME1 (high stored value = white). Regions were
    # chosen by viewing the output: both lung fields (upper-mid zones) and the mediastinum/spine.
    image = read_dicom(DICOM_DATA / "pydicom_data" / "RG1_J2KI.dcm")
    pixels = image.pixels[0]
    h, w = pixels.shape

    def region(r0: float, r1: float, c0: float, c1: float) -> float:
        return float(pixels[int(r0 * h) : int(r1 * h), int(c0 * w) : int(c1 * w)].mean())

    right_lung = region(0.18, 0.42, 0.12, 0.30)
    left_lung = region(0.18, 0.42, 0.68, 0.85)
    mediastinum = region(0.25, 0.55, 0.45, 0.55)
    assert image.photometric == "MONOCHROME1"
    assert right_lung < mediastinum - 0.15
    assert left_lung < mediastinum - 0.15


REAL_FILES = [
    # (path under dicom/, spatial_dims, channels, expected shape)
    # CR chest, JPEG 2000 lossy, MONOCHROME1, 15 bits stored, window 15000/30000
    ("pydicom_data/RG1_J2KI.dcm", 2, 1, (1, 1955, 1841)),
    # CR leg, JPEG 2000 lossless, MONOCHROME1, 10 bits stored
    ("pydicom_data/RG3_J2KR.dcm", 2, 1, (1, 1760, 1760)),
    # MR, rescale slope 3.77 and a window given in rescaled units
    ("pydicom_data/MR2_UNCR.dcm", 2, 1, (1, 1024, 1024)),
    # MR with two windows (the first is used) and overlay planes (ignored)
    ("pydicom_data/MR-SIEMENS-DICOM-WithOverlays.dcm", 2, 1, (1, 484, 484)),
    # US, RGB, 8 bits, read as RGB
    ("pydicom_data/US1_UNCR.dcm", 2, 3, (3, 480, 640)),
    # Enhanced CT, 2 frames, rescale and window only in the shared functional groups
    ("pydicom_data/eCT_Supplemental.dcm", 3, 1, (1, 2, 512, 512)),
    # Enhanced MR, 10 frames, no window: 0.5-99.5 percentiles; 2-D gives the middle frame
    ("pydicom_data/emri_small.dcm", 3, 1, (1, 10, 64, 64)),
    ("pydicom_data/emri_small.dcm", 2, 1, (1, 64, 64)),
    # CT, signed 16-bit, rescale intercept -1024, no window
    ("pydicom_wheel/CT_small.dcm", 2, 1, (1, 128, 128)),
    # CR without a file suffix (as PACS exports are), MONOCHROME1 with rescale and window
    ("pydicom_wheel/dicomdirtests/77654033/CR1/6154", 2, 1, (1, 16, 16)),
    # A folder holding one CT series of 5 slices whose file names run against slice order
    ("pydicom_wheel/dicomdirtests/98892001/CT5N", 3, 1, (1, 5, 16, 16)),
]


@needs_data
@pytest.mark.parametrize(("name", "spatial_dims", "channels", "shape"), REAL_FILES)
def test_real_dicom_reads_display_ready(name: str, spatial_dims: int, channels: int, shape: tuple) -> None:
    pixels = read_image(DICOM_DATA / name, channels=channels, spatial_dims=spatial_dims)
    assert pixels.shape == shape
    assert pixels.dtype == np.float32
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert pixels.std() > 0.02  # an image, not a constant


@needs_data
def test_enhanced_ct_uses_the_functional_group_window() -> None:
    import pydicom

    path = DICOM_DATA / "pydicom_data" / "eCT_Supplemental.dcm"
    raw = pydicom.dcmread(path).pixel_array[1].astype(np.float64)
    # Shared groups: rescale intercept -1024, slope 1; window 49/102 (LINEAR).
    expected = np.clip((raw - 1024 - 48.5) / 101 + 0.5, 0, 1)
    pixels = read_image(path, spatial_dims=3)[0, 1]
    np.testing.assert_allclose(pixels, expected, atol=1e-5)


@needs_data
def test_series_slices_follow_patient_position_not_file_names() -> None:
    series = read_dicom_series(DICOM_DATA / "pydicom_wheel/dicomdirtests/98892001/CT5N", spatial_dims=3)
    last_by_name = read_dicom(DICOM_DATA / "pydicom_wheel/dicomdirtests/98892001/CT5N/3353")
    # 3353 is the lowest slice (z = -1.24 mm) though its name sorts last.
    assert series.frames == 5
    np.testing.assert_array_equal(series.pixels[0, 0], last_by_name.pixels[0])


@needs_data
def test_dicomdir_raises_data_error_and_12_bit_jpeg_is_read() -> None:
    with pytest.raises(DataError, match="holds no image"):
        read_image(DICOM_DATA / "pydicom_wheel/dicomdirtests/DICOMDIR")
    # 12-bit JPEG Extended whose scan header libjpeg refuses: GDCM's 12-bit decoder reads it
    # (test_readers_dicom_codecs.py covers every encoding in pydicom's corpus).
    assert read_image(DICOM_DATA / "pydicom_wheel/JPEG-lossy.dcm").shape == (1, 1024, 256)


@needs_data
def test_folder_with_several_series_is_refused() -> None:
    with pytest.raises(DataError, match="3 DICOM series"):
        read_image(DICOM_DATA / "pydicom_wheel/dicomdirtests/98892003/MR2")


# ---------------------------------------------------------------- synthetic files


def test_monochrome1_is_the_inverse_of_monochrome2(tmp_path: Path) -> None:
    mono2 = read_image(write_dicom(tmp_path / "m2.dcm", RAMP, photometric="MONOCHROME2"))
    mono1 = read_image(write_dicom(tmp_path / "m1.dcm", RAMP, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert mono2[0, 0, 0] < mono2[0, -1, -1]  # MONOCHROME2: low stored value is dark


def test_rescale_slope_and_intercept_are_applied_before_the_window(tmp_path: Path) -> None:
    window = {"WindowCenter": 300, "WindowWidth": 801}
    rescaled = write_dicom(tmp_path / "r.dcm", RAMP, RescaleSlope=2, RescaleIntercept=-100, **window)
    stored = write_dicom(tmp_path / "s.dcm", RAMP.astype(np.int16) * 2 - 100, **window)
    out = read_image(rescaled)
    np.testing.assert_allclose(out, read_image(stored), atol=1e-6)
    # Rescaled value 2 * 0 - 100 = -100 maps to ((-100 - 299.5) / 800 + 0.5) = 0.000625.
    assert out[0, 0, 0] == pytest.approx(0.000625, abs=1e-6)


def test_window_clips_outside_and_maps_the_centre_to_about_half(tmp_path: Path) -> None:
    out = read_image(write_dicom(tmp_path / "w.dcm", RAMP, WindowCenter=300, WindowWidth=101))[0]
    flat = RAMP.reshape(-1)
    assert (out.reshape(-1)[flat < 240] == 0).all()
    assert (out.reshape(-1)[flat > 360] == 1).all()
    assert out.reshape(-1)[flat == 300][0] == pytest.approx(0.505, abs=1e-6)


def test_without_window_the_percentile_range_is_used(tmp_path: Path) -> None:
    out = read_image(write_dicom(tmp_path / "p.dcm", RAMP))
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.all(np.diff(out.reshape(-1)) >= 0)  # order kept


def test_voi_lut_sequence_is_applied_and_scaled_by_its_range(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [1024, 0, 16]
    # A decreasing LUT (it inverts), stored as OW bytes as scanners write it.
    item.LUTData = np.array([4000 - 2 * i for i in range(1024)], dtype="<u2").tobytes()
    out = read_image(write_dicom(tmp_path / "lut.dcm", RAMP, VOILUTSequence=[item]))[0]
    assert out[0, 0] == pytest.approx(1.0)
    assert out[-1, -1] == pytest.approx((4000 - 2 * 630 - (4000 - 2 * 1023)) / (2 * 1023), abs=1e-6)


def test_multiframe_gives_middle_frame_in_2d_and_all_frames_in_3d(tmp_path: Path) -> None:
    frames = np.stack([np.full((4, 5), v, dtype=np.uint16) for v in (0, 100, 200)])
    path = write_dicom(tmp_path / "mf.dcm", frames, WindowCenter=100, WindowWidth=201)
    flat = read_image(path)
    volume = read_image(path, spatial_dims=3)
    assert flat.shape == (1, 4, 5) and volume.shape == (1, 3, 4, 5)
    np.testing.assert_array_equal(flat[0], volume[0, 1])
    assert volume[0, 0].max() < volume[0, 1].min() < volume[0, 2].min()


def test_per_frame_functional_groups_rescale_and_window_each_frame(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    def group(intercept: int, center: int) -> Dataset:
        rescale, window, item = Dataset(), Dataset(), Dataset()
        rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 1, intercept, "US"
        window.WindowCenter, window.WindowWidth = center, 11
        item.PixelValueTransformationSequence, item.FrameVOILUTSequence = [rescale], [window]
        return item

    frames = np.full((2, 3, 3), 100, dtype=np.uint16)
    groups = [group(0, 100), group(-50, 40)]  # frame 1: value 50, window centred at 40
    path = write_dicom(tmp_path / "enh.dcm", frames, PerFrameFunctionalGroupsSequence=groups)
    volume = read_image(path, spatial_dims=3)[0]
    assert volume[0, 0, 0] == pytest.approx((100 - 99.5) / 10 + 0.5)
    assert volume[1, 0, 0] == 1.0  # 50 lies above 40 + 11 / 2


def test_rgb_and_ybr_full_come_out_as_the_same_rgb(tmp_path: Path) -> None:
    from pydicom.pixels import convert_color_space

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    from_rgb = read_image(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"), channels=3)
    from_ybr = read_image(write_dicom(tmp_path / "ybr.dcm", ybr, photometric="YBR_FULL"), channels=3)
    np.testing.assert_allclose(from_rgb, np.moveaxis(rgb, -1, 0) / 255, atol=1e-6)
    np.testing.assert_allclose(from_ybr, from_rgb, atol=3 / 255)


def test_palette_colour_goes_through_its_lookup_tables(tmp_path: Path) -> None:
    indices = np.arange(16, dtype=np.uint8).reshape(4, 4)

    def table(step: int) -> bytes:  # 16-bit entries: index i -> min(255, i * step) * 257
        return np.array([min(255, i * step) * 257 for i in range(256)], dtype="<u2").tobytes()

    luts = {}
    for colour, step in (("Red", 16), ("Green", 0), ("Blue", 8)):
        luts[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, 16]
        luts[f"{colour}PaletteColorLookupTableData"] = table(step)
    path = write_dicom(tmp_path / "pal.dcm", indices, photometric="PALETTE COLOR", **luts)
    out = read_image(path, channels=3)
    np.testing.assert_allclose(out[0], np.minimum(255, indices * 16) / 255, atol=1e-6)
    assert out[1].max() == 0.0
    np.testing.assert_allclose(out[2], indices * 8 / 255, atol=1e-6)


def test_file_without_pixel_data_names_the_file(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "empty.dcm", RAMP, pixel_data=False)
    with pytest.raises(DataError, match=r"empty\.dcm' holds no image"):
        read_dicom(path)


def test_truncated_pixel_data_raises_data_error(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "cut.dcm", RAMP)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"cut\.dcm"):
        read_image(path)


def test_garbage_with_dicom_suffix_raises_data_error(tmp_path: Path) -> None:
    path = tmp_path / "noise.dcm"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match=r"noise\.dcm"):
        read_image(path)


def test_corrupt_jpeg_lossless_names_the_syntax_and_each_decoders_reason(tmp_path: Path) -> None:
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    path = write_dicom(tmp_path / "jll.dcm", RAMP)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3 not really jpeg \xff\xd9"])
    ds.save_as(path, enforce_file_format=True)
    pattern = r"jll\.dcm' \(JPEG Lossless.*1\.2\.840\.10008\.1\.2\.4\.70\).*\(pylibjpeg: .+; gdcm: .+\)\. Every decoder"
    with pytest.raises(DataError, match=pattern):
        read_image(path)


def test_bare_dataset_without_preamble_or_meta_is_read(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "bare.dcm", RAMP, preamble=False, WindowCenter=300, WindowWidth=101)
    with_meta = write_dicom(tmp_path / "full.dcm", RAMP, WindowCenter=300, WindowWidth=101)
    np.testing.assert_array_equal(read_image(path), read_image(with_meta))


def test_size_limit_is_checked_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images_module, "MAX_PIXELS", 63)
    with pytest.raises(DataError, match="more than the 63 pixels"):
        read_image(write_dicom(tmp_path / "big.dcm", RAMP))


def test_dicom_image_carries_uids_spacing_and_hides_identifiers(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "id.dcm", RAMP, PixelSpacing=[0.5, 0.25], Modality="CR")
    image = read_dicom(path)
    assert image.study_instance_uid == str(image.header.StudyInstanceUID)
    assert image.sop_instance_uid and image.series_instance_uid
    assert image.pixel_spacing == (0.5, 0.25)
    assert (image.modality, image.photometric, image.frames) == ("CR", "MONOCHROME2", 1)
    assert "Synthetic" not in repr(image) and "SYN-0001" not in repr(image)


def _series(folder: Path, z_values: list[float], **elements: object) -> None:
    folder.mkdir()
    for number, z in enumerate(z_values):
        write_dicom(
            folder / f"slice{number}",
            np.full((4, 4), int(z) + 10, dtype=np.uint16),
            ImagePositionPatient=[0, 0, z],
            ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
            InstanceNumber=number,
            **elements,
        )


def test_series_folder_is_sorted_along_the_normal_and_skips_non_dicom(tmp_path: Path) -> None:
    _series(tmp_path / "ct", [3.0, 0.0, 2.0, 1.0], SeriesInstanceUID="1.2.3", WindowCenter=12, WindowWidth=5)
    (tmp_path / "ct" / "notes.txt").write_text("not an image")
    volume = read_image(tmp_path / "ct", spatial_dims=3)
    assert volume.shape == (1, 4, 4, 4)
    assert np.all(np.diff(volume[0, :, 0, 0]) > 0)  # z ascending, so values ascending
    assert read_image(tmp_path / "ct").shape == (1, 4, 4)


def test_series_folder_with_two_series_or_no_images_is_refused(tmp_path: Path) -> None:
    _series(tmp_path / "mixed", [0.0, 1.0])  # each file gets its own Series Instance UID
    with pytest.raises(DataError, match="2 DICOM series"):
        read_image(tmp_path / "mixed")
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="holds no DICOM images"):
        read_image(tmp_path / "none")
