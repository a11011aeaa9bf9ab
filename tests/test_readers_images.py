"""Tests of medpredict.readers.images: dispatch, raster formats, layout, hostile files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from fixtures_images import SHARED_DATA, write_dicom, write_nifti, write_npz, write_png
from medpredict.errors import ConfigError, DataError
from medpredict.readers import SUPPORTED_SUFFIXES, is_image_path, read_image
from medpredict.readers import images as images_module

GREY = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5  # 0..235


@pytest.mark.parametrize(
    "name",
    [
        "grey.png",  # lossless, 8-bit
        "grey.bmp",  # lossless, 8-bit
        "grey.tiff",  # lossless, 8-bit
        "grey.tif",  # lossless, short suffix
    ],
)
def test_lossless_8bit_grey_is_divided_by_255(tmp_path: Path, name: str) -> None:
    out = read_image(write_png(tmp_path / name, GREY))
    assert out.shape == (1, 6, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], GREY / 255, atol=1e-6)


def test_jpeg_reads_close_to_its_source(tmp_path: Path) -> None:
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))
    out = read_image(write_png(tmp_path / "x.jpg", smooth))
    assert out.shape == (1, 32, 32)
    assert np.abs(out[0] - smooth / 255).mean() < 0.02


def test_16bit_png_is_scaled_by_its_full_type_range_not_its_maximum(tmp_path: Path) -> None:
    values = np.array([[0, 4095], [32768, 65535]], dtype=np.uint16)
    out = read_image(write_png(tmp_path / "deep.png", values))
    np.testing.assert_allclose(out[0], values / 65535, atol=1e-6)
    dim = read_image(write_png(tmp_path / "dim.png", np.array([[0, 4095]], dtype=np.uint16)))
    assert dim.max() == pytest.approx(4095 / 65535)  # not stretched to 1.0


def test_channels_convert_by_luminance_and_repeat(tmp_path: Path) -> None:
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red
    path = write_png(tmp_path / "red.png", rgb)
    assert read_image(path, channels=1)[0] == pytest.approx(np.full((2, 2), 0.299), abs=1e-6)
    np.testing.assert_allclose(read_image(path, channels=3)[0], 1.0)
    grey3 = read_image(write_png(tmp_path / "g.png", GREY), channels=3)
    assert grey3.shape == (3, 6, 8)
    np.testing.assert_array_equal(grey3[0], grey3[2])


def test_alpha_is_dropped_and_palette_is_expanded(tmp_path: Path) -> None:
    from PIL import Image

    rgba = np.zeros((3, 3, 4), dtype=np.uint8)
    rgba[..., 1] = 255
    assert read_image(write_png(tmp_path / "a.png", rgba), channels=3).shape == (3, 3, 3)
    palette = Image.new("P", (8, 6))
    palette.putdata(GREY.reshape(-1).tolist())
    palette.putpalette([255 - i for i in range(256) for _ in range(3)])  # index i shows grey 255 - i
    palette.save(tmp_path / "p.png")
    np.testing.assert_allclose(read_image(tmp_path / "p.png")[0], (255 - GREY) / 255, atol=1e-6)


def test_content_decides_over_a_misleading_suffix(tmp_path: Path) -> None:
    png_named_jpg = write_png(tmp_path / "really.png", GREY).rename(tmp_path / "really_png.jpg")
    np.testing.assert_allclose(read_image(png_named_jpg)[0], GREY / 255, atol=1e-6)
    dicom_without_suffix = write_dicom(tmp_path / "IM0001", GREY.astype(np.uint16))
    assert read_image(dicom_without_suffix).shape == (1, 6, 8)


def test_nifti_and_npz_references_are_dispatched(tmp_path: Path) -> None:
    volume = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    assert read_image(write_nifti(tmp_path / "v.nii.gz", volume), spatial_dims=3).shape == (1, 7, 6, 5)
    write_npz(
        tmp_path / "m.npz", train_images=np.stack([GREY, 255 - GREY]), vol=np.zeros((2, 3, 4, 5), np.uint8)
    )
    np.testing.assert_allclose(
        read_image(f"{tmp_path}/m.npz::train_images/1")[0], (255 - GREY) / 255, atol=1e-6
    )
    assert read_image(f"{tmp_path}/m.npz::vol/0", spatial_dims=3).shape == (1, 3, 4, 5)


def test_rgb_npz_reference_is_channel_first(tmp_path: Path) -> None:
    rgb = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    rgb[0, ..., 2] = 255
    write_npz(tmp_path / "c.npz", images=rgb)
    out = read_image(f"{tmp_path}/c.npz::images/0", channels=3)
    assert out.shape == (3, 4, 4)
    assert out[2].min() == 1.0 and out[0].max() == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 2}, "channels must be 1"),  # only grey or RGB
        ({"channels": True}, "channels must be 1"),  # a bool is not a channel count
        ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
    ],
)
def test_bad_requests_raise_config_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    path = write_png(tmp_path / "g.png", GREY)
    with pytest.raises(ConfigError, match=message):
        read_image(path, **kwargs)


def test_3d_request_for_a_2d_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="single 2-D image"):
        read_image(write_png(tmp_path / "g.png", GREY), spatial_dims=3)


def test_missing_and_non_image_files_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.png' does not exist"):
        read_image(tmp_path / "nope.png")
    text = tmp_path / "notes.png"
    text.write_text("just some text, not pixels")
    with pytest.raises(DataError, match=r"notes\.png' is not a readable image.*Supported: PNG"):
        read_image(text)


@pytest.mark.parametrize("name", ["cut.png", "cut.jpg"])
def test_truncated_raster_raises_data_error(tmp_path: Path, name: str) -> None:
    noisy = np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8)
    path = write_png(tmp_path / name, noisy)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        read_image(path)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares a huge size but holds no pixels: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="too large"):
        read_image(_png_header_only(tmp_path / "bomb.png", 40_000, 40_000))


def test_pixel_limit_applies_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images_module, "MAX_PIXELS", 47)
    with pytest.raises(DataError, match="more than the 47 pixels"):
        read_image(write_png(tmp_path / "g.png", GREY))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.png", True),
        ("A.JPEG", True),  # case does not matter
        ("scan.nii.gz", True),
        ("scan.gz", False),  # gzip alone is not NIfTI
        ("notes.txt", False),
        ("IM0001", False),  # no suffix: only found by sniffing (below)
        ("p.npz::train_images/3", True),
        ("p.npz", False),  # an archive, not one image
    ],
)
def test_is_image_path_by_suffix(name: str, expected: bool) -> None:
    assert is_image_path(name) is expected


def test_is_image_path_sniffs_dicom_without_suffix(tmp_path: Path) -> None:
    dicom = write_dicom(tmp_path / "IM0001", GREY.astype(np.uint16))
    other = tmp_path / "README"
    other.write_text("hello")
    assert is_image_path(dicom, sniff=True) and not is_image_path(dicom)
    assert not is_image_path(other, sniff=True)
    assert ".nii.gz" in SUPPORTED_SUFFIXES and ".dcm" in SUPPORTED_SUFFIXES


@pytest.mark.skipif(not (SHARED_DATA / "chest_xray_kermany_224").is_dir(), reason="shared data not present")
def test_real_kermany_jpeg_reads_as_grey() -> None:
    path = next((SHARED_DATA / "chest_xray_kermany_224" / "test" / "NORMAL").glob("*.jpeg"))
    out = read_image(path)
    assert out.shape == (1, 224, 224) and out.min() >= 0.0 and out.max() <= 1.0 and out.std() > 0.05
