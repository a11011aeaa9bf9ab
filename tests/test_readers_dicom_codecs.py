"""Every pixel encoding medpredict reads, over the DICOM test files that ship inside pydicom.

The corpus is pydicom's own ``pydicom/data/test_files`` folder, read in place from the installed
package (never copied here): 78 ``*.dcm`` files plus the ``dicomdirtests`` tree. Each file has a
row saying what it is and what ``read_dicom`` gives: the decoding plugin that reads it
(``docs/DICOM.md`` has the plugin order per transfer syntax), ``NATIVE`` for uncompressed pixel
data, or the error it raises. A file that starts or stops decoding, or changes decoder, fails
its row. Where the corpus holds the same image uncompressed or losslessly compressed, the
decoded pixels are compared with it: identical for lossless encodings, within the encoder's
stated bound for lossy ones.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
from pydicom.pixels import get_decoder, pixel_array

from fixtures_images import SHARED_DATA, write_dicom
from medpredict.errors import DataError
from medpredict.readers import read_dicom
from medpredict.readers.dicom import DECODING_PLUGINS

CORPUS = Path(pydicom.data.__file__).parent / "test_files"
NATIVE = "native"  # uncompressed pixel data, read by pydicom itself


@dataclass(frozen=True)
class Refused:
    """The file is refused with a DataError whose message matches ``pattern``."""

    pattern: str


NO_IMAGE = Refused("holds no image: it has no Pixel Data")
NO_ROWS = Refused("has Pixel Data but no Rows/Columns")

# fmt: off
FILES: dict[str, str | Refused] = {
    "693_J2KI.dcm": "pylibjpeg",                       # CT, lossy JPEG 2000, 14 bits stored, stream 16 (pydicom #693)
    "CT_small.dcm": NATIVE,                            # CT 128x128, explicit VR little endian
    "ExplVR_BigEnd.dcm": NATIVE,                       # US RGB, explicit VR big endian
    "ExplVR_BigEndNoMeta.dcm": NO_IMAGE,               # RT treatment record without file meta: no image
    "ExplVR_LitEndNoMeta.dcm": NO_IMAGE,               # the same record, little endian: no image
    "GDCMJ2K_TextGBR.dcm": "pylibjpeg",                # lossless JPEG 2000 YBR_RCT inside a JP2 header (GDCM)
    "J2K_pixelrep_mismatch.dcm": "pylibjpeg",          # CT, JPEG 2000 unsigned, header says signed, 13 bits
    "JPEG-lossy.dcm": "gdcm-12bit",                    # NM, 12-bit JPEG Extended, a scan header libjpeg refuses
    "JPEG2000-embedded-sequence-delimiter.dcm": Refused(  # JPEG2000.dcm, 4 codestream bytes overwritten: corrupt
        r"\(JPEG 2000 Image Compression, 1\.2\.840\.10008\.1\.2\.4\.91\) could not be decoded by the installed "
        r"decoders \(pylibjpeg: .*; pillow: .*; gdcm: .*\)\. Every decoder failed"),
    "JPEG2000.dcm": "pylibjpeg",                       # NM, lossy JPEG 2000 (NEMA NM1_J2KI)
    "JPEGLSNearLossless_08.dcm": "pyjpegls",           # 8-bit JPEG-LS near-lossless (NEAR 2)
    "JPEGLSNearLossless_16.dcm": "pyjpegls",           # 16-bit JPEG-LS near-lossless
    "JPGExtended.dcm": "pylibjpeg",                    # NM, 12-bit JPEG Extended: the repaired JPEG-lossy.dcm
    "MR_small.dcm": NATIVE,                            # MR 64x64, explicit VR little endian: the MR twins' reference
    "MR_small_RLE.dcm": "pylibjpeg",                   # MR_small, RLE Lossless
    "MR_small_bigendian.dcm": NATIVE,                  # MR_small, explicit VR big endian
    "MR_small_expb.dcm": NATIVE,                       # MR_small, explicit VR big endian (dcmconv)
    "MR_small_implicit.dcm": NATIVE,                   # MR_small, implicit VR little endian
    "MR_small_jp2klossless.dcm": "pylibjpeg",          # MR_small, JPEG 2000 lossless
    "MR_small_jpeg_ls_lossless.dcm": "pyjpegls",       # MR_small, JPEG-LS lossless
    "MR_small_padded.dcm": NATIVE,                     # MR_small with 128 bytes of padding after the pixels
    "MR_truncated.dcm": Refused(                       # MR_small cut short: 8130 of 8192 pixel bytes
        r"\(Explicit VR Little Endian, 1\.2\.840\.10008\.1\.2\.1\) could not be read; the file is truncated"),
    "SC_jpeg_no_color_transform.dcm": "pillow",        # JPEG Baseline kept in RGB, no YCbCr transform
    "SC_jpeg_no_color_transform_2.dcm": "pillow",      # the same with an APP14 marker
    "SC_rgb_dcmtk_+eb+cr.dcm": "pillow",               # SC_rgb, JPEG Baseline in RGB (dcmtk)
    "SC_rgb_dcmtk_+eb+cy+n1.dcm": "pillow",            # SC_rgb, JPEG Baseline YBR_FULL, 4:2:2 subsampled (dcmtk)
    "SC_rgb_dcmtk_+eb+cy+n2.dcm": "pillow",            # SC_rgb, JPEG Baseline YBR_FULL, no subsampling (dcmtk)
    "SC_rgb_dcmtk_+eb+cy+np.dcm": "pillow",            # SC_rgb, JPEG Baseline YBR_FULL_422 (dcmtk)
    "SC_rgb_dcmtk_+eb+cy+s2.dcm": "pillow",            # SC_rgb, JPEG Baseline YBR_FULL_422, no subsampling (dcmtk)
    "SC_rgb_dcmtk_+eb+cy+s4.dcm": "pillow",            # SC_rgb, JPEG Baseline YBR_FULL (dcmtk)
    "SC_rgb_gdcm_KY.dcm": "pylibjpeg",                 # SC_rgb, JPEG 2000 (reversible) from GDCM
    "SC_rgb_jls_lossy_line.dcm": "pyjpegls",           # SC_rgb, JPEG-LS near-lossless (NEAR 2), line interleaved
    "SC_rgb_jls_lossy_sample.dcm": "pyjpegls",         # SC_rgb, JPEG-LS near-lossless (NEAR 2), sample interleaved
    "SC_rgb_jpeg.dcm": "pillow",                       # 256x256 RGB JPEG Baseline
    "SC_rgb_jpeg_app14_dcmd.dcm": "pillow",            # JPEG Baseline RGB with an APP14 marker
    "SC_rgb_jpeg_dcmd.dcm": NATIVE,                    # SC_rgb_jpeg.dcm decompressed by dcmtk's dcmdjpeg
    "SC_rgb_jpeg_dcmtk.dcm": "pillow",                 # SC_rgb, JPEG Baseline YBR_FULL (dcmtk)
    "SC_rgb_jpeg_gdcm.dcm": "pylibjpeg",               # SC_rgb, JPEG Lossless process 14 SV1 (GDCM)
    "SC_rgb_jpeg_lossy_gdcm.dcm": "pillow",            # SC_rgb, JPEG Baseline YBR_FULL (GDCM)
    "SC_rgb_rle.dcm": "pylibjpeg",                     # SC_rgb 100x100 8-bit RGB, RLE: the SC_rgb reference
    "SC_rgb_rle_16bit.dcm": "pylibjpeg",               # SC_rgb at 16 bits, RLE
    "SC_rgb_rle_16bit_2frame.dcm": "pylibjpeg",        # two frames at 16 bits, RLE
    "SC_rgb_rle_2frame.dcm": "pylibjpeg",              # two frames at 8 bits, RLE
    "SC_rgb_rle_32bit.dcm": "pylibjpeg",               # SC_rgb at 32 bits, RLE
    "SC_rgb_rle_32bit_2frame.dcm": "pylibjpeg",        # two frames at 32 bits, RLE
    "SC_rgb_small_odd.dcm": NATIVE,                    # 3x3 RGB, odd length
    "SC_rgb_small_odd_big_endian.dcm": NATIVE,         # the same, big endian
    "SC_rgb_small_odd_jpeg.dcm": "pillow",             # the same, JPEG Baseline YBR_FULL
    "SC_ybr_full_422_uncompressed.dcm": NATIVE,        # SC_rgb_dcmtk_+eb+cy+n2 decompressed by gdcmconv, YBR_FULL_422
    "UN_sequence.dcm": NO_IMAGE,                       # one private UN sequence, nothing else
    "badVR.dcm": Refused(r"invalid Number of Frames '1A'"),  # RT dose with a broken IS value: corrupt
    "empty_charset_LEI.dcm": NO_IMAGE,                 # two header elements, no image
    "examples_jpeg2k.dcm": "pylibjpeg",                # US RGB, JPEG 2000 lossless YBR_RCT (NEMA US1_J2KR)
    "examples_overlay.dcm": NATIVE,                    # MR with overlay planes (cropped)
    "examples_palette.dcm": NATIVE,                    # US PALETTE COLOR (cropped)
    "examples_rgb_color.dcm": NATIVE,                  # US RGB (NEMA US1_UNCR, cropped)
    "examples_ybr_color.dcm": "pillow",                # US 30-frame JPEG Baseline YBR_FULL_422
    "image_dfl.dcm": NATIVE,                           # deflated explicit VR little endian
    "liver_1frame.dcm": NATIVE,                        # 1-bit SEG frame
    "liver_expb_1frame.dcm": NATIVE,                   # the same, big endian
    "meta_missing_tsyntax.dcm": NO_ROWS,               # file meta without a transfer syntax; 2 bytes of "pixel data"
    "nested_priv_SQ.dcm": NO_ROWS,                     # nested private sequences; 2 bytes of "pixel data"
    "no_meta.dcm": NO_IMAGE,                           # CT_small without meta, a stray first byte: parsing stops
    "no_meta_group_length.dcm": NO_IMAGE,              # three header elements, no image
    "priv_SQ.dcm": NO_IMAGE,                           # a private sequence, no image
    "reportsi.dcm": NO_IMAGE,                          # structured report
    "reportsi_with_empty_number_tags.dcm": NO_IMAGE,   # structured report with empty numbers
    "rtdose.dcm": NATIVE,                              # RT dose, 15 frames of 32 bits
    "rtdose_1frame.dcm": NATIVE,                       # RT dose, one frame
    "rtdose_expb.dcm": NATIVE,                         # RT dose, big endian
    "rtdose_expb_1frame.dcm": NATIVE,                  # RT dose, one frame, big endian
    "rtdose_rle.dcm": "pylibjpeg",                     # RT dose, RLE
    "rtdose_rle_1frame.dcm": "pylibjpeg",              # RT dose, one frame, RLE
    "rtplan.dcm": NO_IMAGE,                            # RT plan
    "rtplan_truncated.dcm": NO_IMAGE,                  # RT plan cut short
    "rtstruct.dcm": NO_IMAGE,                          # RT structure set
    "test-SR.dcm": NO_IMAGE,                           # structured report, deeply nested
    "waveform_ecg.dcm": NO_IMAGE,                      # ECG waveform
}
# The dicomdirtests tree, by pattern (each of its files matches exactly one).
TREE: dict[str, str | Refused] = {
    "dicomdirtests/DICOMDIR*": NO_IMAGE,               # DICOMDIR indexes: big/little endian, implicit, empty...
    "dicomdirtests/TINY_ALPHA/DICOMDIR": NO_IMAGE,     # a DICOMDIR of 50 instances
    "dicomdirtests/TINY_ALPHA/PT*/ST*/SE*/IM*": NO_IMAGE,  # its 50 instances, headers only
    "dicomdirtests/[0-9]*/*/*": NATIVE,                # 16x16 CR, CT and MR slices the DICOMDIRs index
}
# fmt: on


def corpus_files() -> list[str]:
    """The corpus's DICOM files relative to ``CORPUS``: ``*.dcm``, and suffix-less files with the DICM preamble."""
    found = []
    for path in CORPUS.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == "" and path.open("rb").read(132)[128:] != b"DICM":
            continue
        if path.suffix in ("", ".dcm"):
            found.append(path.relative_to(CORPUS).as_posix())
    return sorted(found)


def expected(name: str) -> str | Refused:
    if name in FILES:
        return FILES[name]
    matches = [pattern for pattern in TREE if fnmatch.fnmatchcase(name, pattern)]
    assert len(matches) == 1, f"{name} matches {matches}: give it one row"
    return TREE[matches[0]]


def decoded_by(caplog: pytest.LogCaptureFixture) -> str:
    """The plugin ``read_dicom`` logged as the one that decoded, or ``NATIVE``."""
    plugins = [
        re.search(r"with the '(.+)' plugin", record.getMessage()).group(1)  # type: ignore[union-attr]
        for record in caplog.records
        if record.name == "medpredict.readers.dicom" and record.getMessage().startswith("Decoded ")
    ]
    return plugins[0] if plugins else NATIVE


@pytest.fixture(autouse=True)
def _quiet_pydicom(caplog: pytest.LogCaptureFixture) -> None:
    # pydicom logs each failed plugin with a traceback; the DataError already carries the reason.
    caplog.set_level(logging.CRITICAL, logger="pydicom")
    caplog.set_level(logging.DEBUG, logger="medpredict.readers.dicom")


def test_the_table_covers_the_corpus_exactly() -> None:
    files = corpus_files()
    top = {name for name in files if "/" not in name}
    assert top == set(FILES), f"new: {sorted(top - set(FILES))}, gone: {sorted(set(FILES) - top)}"
    assert len(files) == 167  # 78 *.dcm + 89 in dicomdirtests (pydicom 3.0)
    for name in files:
        expected(name)  # exactly one row each


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about padding and VR guesses
@pytest.mark.parametrize("name", corpus_files())
def test_corpus_file(name: str, caplog: pytest.LogCaptureFixture) -> None:
    outcome = expected(name)
    if isinstance(outcome, Refused):
        with pytest.raises(DataError, match=outcome.pattern) as info:
            read_dicom(CORPUS / name)
        assert name.rsplit("/", 1)[-1] in str(info.value)  # the message names the file
        return
    pixels = read_dicom(CORPUS / name).pixels
    assert pixels.ndim == 3 and pixels.dtype == np.float32
    assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert decoded_by(caplog) == outcome


# fmt: off
LOSSLESS = [
    ("MR_small_RLE.dcm", "MR_small.dcm"),                   # RLE vs uncompressed
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),          # JPEG 2000 lossless vs uncompressed
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),      # JPEG-LS lossless vs uncompressed
    ("rtdose_rle.dcm", "rtdose.dcm"),                       # 15-frame 32-bit RLE vs uncompressed
    ("rtdose_rle_1frame.dcm", "rtdose_1frame.dcm"),         # 1-frame 32-bit RLE vs uncompressed
    ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm"),             # JPEG Lossless SV1 vs RLE of the same RGB image
    ("SC_rgb_gdcm_KY.dcm", "SC_rgb_rle.dcm"),               # reversible JPEG 2000 vs RLE of the same RGB image
]
# (compressed, twin, bound in stored levels): lossy encodings against the original or a decompressed copy.
LOSSY = [
    ("SC_rgb_jls_lossy_line.dcm", "SC_rgb_rle.dcm", 2),     # JPEG-LS NEAR=2 guarantees |error| <= 2
    ("SC_rgb_jls_lossy_sample.dcm", "SC_rgb_rle.dcm", 2),   # the same, sample interleaved
    ("SC_rgb_dcmtk_+eb+cy+n2.dcm", "SC_ybr_full_422_uncompressed.dcm", 1),  # vs GDCM's decompression: IDCT rounding
    ("SC_rgb_jpeg.dcm", "SC_rgb_jpeg_dcmd.dcm", 1),         # vs dcmtk's decompression: IDCT rounding
    ("SC_rgb_dcmtk_+eb+cr.dcm", "SC_rgb_rle.dcm", 3),       # JPEG Baseline RGB vs the original (measured 1.4)
    ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm", 3),         # JPEG Baseline YBR_FULL vs the original (measured 1.9)
    ("SC_rgb_small_odd_jpeg.dcm", "SC_rgb_small_odd.dcm", 1),  # 3x3 JPEG Baseline vs uncompressed (measured 0.2)
]
# fmt: on


@pytest.mark.parametrize(("compressed", "twin"), LOSSLESS)
def test_lossless_encodings_decode_to_their_twins_pixels(compressed: str, twin: str) -> None:
    np.testing.assert_array_equal(read_dicom(CORPUS / compressed).pixels, read_dicom(CORPUS / twin).pixels)
    # and to pydicom's own reference decoding of the twin, before any display transform
    reference = pixel_array(CORPUS / twin, decoding_plugin="pydicom" if twin.endswith("_rle.dcm") else "")
    np.testing.assert_array_equal(_raw(compressed), reference)


@pytest.mark.filterwarnings("ignore::UserWarning")  # SC_rgb_jpeg_dcmd.dcm: implicit VR where explicit is declared
@pytest.mark.parametrize(("compressed", "twin", "levels"), LOSSY)
def test_lossy_encodings_stay_within_their_bound(compressed: str, twin: str, levels: int) -> None:
    # These are 8-bit colour images: read_dicom divides the stored value by 255, nothing else.
    difference = np.abs(read_dicom(CORPUS / compressed).pixels - read_dicom(CORPUS / twin).pixels)
    assert difference.max() * 255 <= levels + 1e-3
    assert difference.mean() * 255 < 1.0


@pytest.mark.skipif(not (SHARED_DATA / "dicom").is_dir(), reason="shared DICOM data not present")
def test_lossless_jpeg_2000_ultrasound_matches_the_uncompressed_nema_original() -> None:
    # examples_jpeg2k.dcm is NEMA's US1_J2KR; the shared data holds US1_UNCR, the same image uncompressed.
    original = SHARED_DATA / "dicom" / "pydicom_data" / "US1_UNCR.dcm"
    np.testing.assert_array_equal(read_dicom(CORPUS / "examples_jpeg2k.dcm").pixels, read_dicom(original).pixels)


@pytest.mark.parametrize("name", [name for name, plugin in FILES.items() if "_rle" in name or name.endswith("RLE.dcm")])
def test_rle_decoder_agrees_with_pydicoms_own(name: str) -> None:
    # pylibjpeg-rle (used) against pydicom's pure-Python RLE decoder (the reference) on every RLE file.
    np.testing.assert_array_equal(
        pixel_array(CORPUS / name, decoding_plugin="pylibjpeg"), pixel_array(CORPUS / name, decoding_plugin="pydicom")
    )


def test_gdcm_12bit_plugin_agrees_with_libjpeg_within_one_level() -> None:
    read_dicom(CORPUS / "JPEG-lossy.dcm")  # adds the plugin to pydicom's JPEG Extended decoder
    libjpeg = pixel_array(CORPUS / "JPGExtended.dcm", decoding_plugin="pylibjpeg").astype(np.int32)
    for name in ("JPEG-lossy.dcm", "JPGExtended.dcm"):  # the broken stream, and its repaired copy
        gdcm = pixel_array(CORPUS / name, decoding_plugin="gdcm-12bit").astype(np.int32)
        assert gdcm.shape == libjpeg.shape == (1024, 256)
        assert np.abs(gdcm - libjpeg).max() <= 1  # two conforming IDCTs; a wrong decode differs by far more
        assert gdcm.max() == libjpeg.max() == 264


def test_plugin_table_covers_every_compressed_syntax_pydicom_decodes() -> None:
    from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS

    compressed = {str(uid) for uid in _PIXEL_DATA_DECODERS if uid.is_compressed}
    assert set(DECODING_PLUGINS) == compressed
    for uid, plugins in DECODING_PLUGINS.items():
        assert plugins[0] in get_decoder(uid).available_plugins, f"{uid}'s first decoder is not installed"


# ---------------------------------------------------------------- decoders missing


def _without(monkeypatch: pytest.MonkeyPatch, uid: str, *labels: str) -> None:
    """Make pydicom's decoder for ``uid`` behave as if the ``labels`` plugins were not installed."""
    decoder = get_decoder(uid)
    if uid == "1.2.840.10008.1.2.4.51":
        read_dicom(CORPUS / "JPGExtended.dcm")  # so that medpredict's own plugin is there to take out
    kept = {label: func for label, func in decoder._available.items() if label not in labels}
    monkeypatch.setattr(decoder, "_available", kept)


def test_no_installed_decoder_names_the_syntax_and_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "1.2.840.10008.1.2.4.70", "pylibjpeg", "gdcm")
    pattern = (
        r"SC_rgb_jpeg_gdcm\.dcm' is compressed as JPEG Lossless, Non-Hierarchical, First-Order Prediction .*"
        r"\(1\.2\.840\.10008\.1\.2\.4\.70\); no installed decoder reads it\. .*"
        r"pylibjpeg \(pip install pylibjpeg pylibjpeg-libjpeg\), gdcm \(pip install python-gdcm\)\.$"
    )
    with pytest.raises(DataError, match=pattern):
        read_dicom(CORPUS / "SC_rgb_jpeg_gdcm.dcm")


def test_gdcm_reads_jpeg_lossless_when_libjpeg_is_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _without(monkeypatch, "1.2.840.10008.1.2.4.70", "pylibjpeg")
    pixels = read_dicom(CORPUS / "SC_rgb_jpeg_gdcm.dcm").pixels
    assert decoded_by(caplog) == "gdcm"
    np.testing.assert_array_equal(pixels, read_dicom(CORPUS / "SC_rgb_rle.dcm").pixels)


def test_failed_and_missing_decoders_are_both_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "1.2.840.10008.1.2.4.51", "gdcm-12bit")
    pattern = (
        r"JPEG-lossy\.dcm' \(JPEG Extended \(Process 2 and 4\), 1\.2\.840\.10008\.1\.2\.4\.51\) could not be "
        r"decoded by the installed decoders \(pylibjpeg: .*scan start must be zero.*; pillow: .*12-bit.*; "
        r"gdcm: .*12-bit.*\)\. Decoders not installed may read it: gdcm-12bit \(pip install python-gdcm\)"
    )
    with pytest.raises(DataError, match=pattern):
        read_dicom(CORPUS / "JPEG-lossy.dcm")


def _raw(name: str) -> np.ndarray:
    """The decoded stored values of ``name`` by the plugin its row names."""
    plugin = FILES[name]
    assert isinstance(plugin, str)
    return pixel_array(CORPUS / name, decoding_plugin="" if plugin == NATIVE else plugin)


def test_a_syntax_pydicom_cannot_decode_is_named(tmp_path: Path) -> None:
    # MPEG-4 video (1.2.840.10008.1.2.4.102): pydicom has no decoder at all for it.
    from pydicom import dcmread
    from pydicom.encaps import encapsulate

    path = write_dicom(tmp_path / "video.dcm", np.zeros((8, 8), np.uint8))
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3 not really mpeg"])
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DataError, match=r"video\.dcm' is compressed as MPEG-4 .*\(1\.2\.840\.10008\.1\.2\.4\.102\), "
                                        r"which no DICOM decoder in pydicom reads"):
        read_dicom(path)


def test_a_file_read_after_failed_plugins_logs_no_pydicom_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    # JPEG-lossy.dcm: pylibjpeg, pillow and gdcm fail before gdcm-12bit reads it. pydicom logs each
    # failure with a traceback at ERROR; inside read_dicom those are dropped (the reasons go to DEBUG).
    caplog.set_level(logging.DEBUG, logger="pydicom")
    read_dicom(CORPUS / "JPEG-lossy.dcm")
    assert not [r for r in caplog.records if r.name.startswith("pydicom") and r.levelno >= logging.ERROR]
    reasons = [r.getMessage() for r in caplog.records if r.getMessage().startswith("The '")]
    assert [reason.split("'")[1] for reason in reasons] == ["pylibjpeg", "pillow", "gdcm"]
    assert decoded_by(caplog) == "gdcm-12bit"
    # pydicom used directly still logs as before
    with pytest.raises(RuntimeError):
        pixel_array(CORPUS / "JPEG-lossy.dcm", decoding_plugin="pylibjpeg")
    assert [r for r in caplog.records if r.name == "pydicom.pixels.decoders.base" and r.levelno == logging.ERROR]
