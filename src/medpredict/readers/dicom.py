"""Read DICOM files and single-series folders as display-ready arrays, keeping the header.

Pixels go through the display pipeline of PS3.3 C.11 in its fixed order: decode, Modality
LUT or rescale slope/intercept, VOI LUT or window (else the 0.5-99.5 percentile range),
then MONOCHROME1 inversion, so air and lungs come out dark whatever the vendor stored.
Enhanced multi-frame files keep rescale and window in functional groups; those are read too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medpredict.errors import DataError
from medpredict.readers.images import check_request, check_size, conform, robust_unit_range, scale_by_dtype

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_GREY = ("MONOCHROME1", "MONOCHROME2")
# pydicom converts every YBR variant to RGB while decoding.
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "YBR_PARTIAL_422")
_WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
# Errors pydicom's LUT and colour functions raise on malformed display attributes.
_TRANSFORM_ERRORS = (ValueError, KeyError, IndexError, TypeError, AttributeError, NotImplementedError)
# pydicom converts elements lazily, on first access; a corrupt one (e.g. an unknown VR) raises these then.
_ELEMENT_ERRORS = (NotImplementedError, ValueError, TypeError, KeyError, IndexError, AttributeError)
#: Largest DICOM file read (bytes). Files are read whole and parsed from memory, so an element
#: declaring a length beyond the data fails instead of making pydicom allocate that length.
MAX_DICOM_BYTES = 2 * 2**30


@dataclass(frozen=True)
class DicomImage:
    """A DICOM image as read: display-ready pixels plus what integration code needs.

    Attributes:
        pixels: float32 in [0, 1], ``(C, H, W)`` or ``(C, D, H, W)`` as ``read_image`` returns.
        modality: e.g. ``"CR"``, ``"CT"``; empty if absent.
        photometric: Photometric Interpretation as stored, e.g. ``"MONOCHROME1"``.
        frames: Frames in the file, or slices in the series.
        pixel_spacing: (row, column) spacing in mm from Pixel Spacing, Imager Pixel Spacing
            or the Pixel Measures functional group; ``None`` if absent.
        study_instance_uid, series_instance_uid, sop_instance_uid: to link results back.
        header: The pydicom ``Dataset`` (the middle slice's for a series). It holds patient
            identifiers: never log it. Left out of ``repr``.
    """

    pixels: np.ndarray = field(repr=False)
    modality: str
    photometric: str
    frames: int
    pixel_spacing: tuple[float, float] | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    header: Dataset = field(repr=False)


def read_dicom(path: str | os.PathLike[str], *, channels: int = 1, spatial_dims: int = 2) -> DicomImage:
    """Read one DICOM file (single- or multi-frame, any photometric pydicom decodes).

    With ``spatial_dims=2`` only the middle frame ``frames // 2`` is decoded; with 3 all
    frames become ``D``. Grey images without a VOI LUT or window are scaled between the
    0.5 and 99.5 percentiles of the decoded frames. RGB and YBR are divided by
    ``2**BitsStored - 1``; PALETTE COLOR goes through its lookup table. A non-finite
    window (NaN, inf) is ignored like any unusable one, falling back to the percentiles.

    Raises:
        DataError: The file is not DICOM, holds no Pixel Data, is too large (pixels, or
            ``MAX_DICOM_BYTES``), uses a compression no installed decoder reads, its pixel
            data is truncated, a header element is corrupt, Samples per Pixel contradicts
            the Photometric Interpretation, or Rescale Slope/Intercept is not finite.
        ConfigError: ``channels`` or ``spatial_dims`` is not supported.
    """
    check_request(channels, spatial_dims)
    source = os.fspath(path)
    ds = _read_dataset(source)
    try:
        return _read_pixels(ds, source, channels, spatial_dims)
    except DataError:
        raise
    except _ELEMENT_ERRORS as exc:
        raise DataError(f"'{source}' has a corrupt header element ({type(exc).__name__}: {exc}).") from exc


def _read_pixels(ds: Dataset, source: str, channels: int, spatial_dims: int) -> DicomImage:
    """The body of ``read_dicom`` once the dataset is parsed."""
    photometric = _check_image(ds, source)
    frames = _frame_count(ds, source)
    check_size(int(ds.Rows), int(ds.Columns), frames if spatial_dims == 3 else 1, source)
    indices = list(range(frames)) if spatial_dims == 3 else [frames // 2]
    raw = _decode(ds, indices, frames, source)
    try:
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            volume = np.moveaxis(scale_by_dtype(apply_color_lut(raw, ds)), -1, 0)
        elif photometric in _COLOUR:
            volume = np.moveaxis(raw.astype(np.float32) / np.float32(2 ** int(ds.BitsStored) - 1), -1, 0)
        else:
            values = np.stack([_modality(raw[k], ds, index) for k, index in enumerate(indices)])
            volume = _present(_voi(values, ds, indices), photometric)[None]
    except _TRANSFORM_ERRORS as exc:
        raise DataError(f"'{source}' has malformed display attributes (LUT, window or bits): {exc}.") from exc
    pixels = conform(volume, channels=channels, spatial_dims=spatial_dims, source=source, owned=True)
    return _describe(ds, pixels, frames)


def read_dicom_series(
    folder: str | os.PathLike[str], *, channels: int = 1, spatial_dims: int = 2
) -> DicomImage:
    """Read a folder of single-frame slices of one grey DICOM series as one volume.

    Slices are ordered along the slice normal (Image Position / Orientation Patient), else
    by Instance Number. Each slice gets its own rescale; the middle slice's VOI LUT or
    window is applied to all, so the volume stays consistent. Files that are not DICOM
    images (a DICOMDIR, notes) are skipped. ``spatial_dims=2`` decodes only the middle slice.

    Raises:
        DataError: No DICOM images, more than one series, mixed slice sizes, multi-frame
            or colour slices, or any slice unreadable.
    """
    check_request(channels, spatial_dims)
    source = os.fspath(folder)
    try:
        return _read_series_pixels(_series_slices(Path(source)), source, channels, spatial_dims)
    except DataError:
        raise
    except _ELEMENT_ERRORS as exc:
        raise DataError(
            f"A slice header in '{source}' has a corrupt element ({type(exc).__name__}: {exc})."
        ) from exc


def _read_series_pixels(
    slices: list[tuple[Path, Dataset]], source: str, channels: int, spatial_dims: int
) -> DicomImage:
    """The body of ``read_dicom_series`` once the slices are listed."""
    first = slices[0][1]
    check_size(int(first.Rows), int(first.Columns), len(slices) if spatial_dims == 3 else 1, source)
    if spatial_dims == 2:
        middle = read_dicom(slices[len(slices) // 2][0], channels=channels, spatial_dims=2)
        return replace(middle, frames=len(slices))
    values = np.empty((len(slices), int(first.Rows), int(first.Columns)), dtype=np.float32)
    for position, (path, _) in enumerate(slices):
        ds = _read_dataset(str(path))
        photometric = _check_image(ds, str(path))
        if _frame_count(ds, str(path)) != 1 or photometric not in _GREY:
            raise DataError(
                f"Slice '{path}' is multi-frame or colour; a series needs single-frame grey slices."
            )
        try:
            values[position] = _modality(_decode(ds, [0], 1, str(path))[0], ds, 0)
        except _TRANSFORM_ERRORS as exc:
            raise DataError(f"Slice '{path}' has a malformed rescale or Modality LUT: {exc}.") from exc
    # The middle slice's header (read without pixels) holds the window and the UIDs.
    reference = slices[len(slices) // 2][1]
    try:
        photometric = str(reference.get("PhotometricInterpretation", ""))
        unit = _present(_voi(values, reference, [0] * len(slices)), photometric)
    except _TRANSFORM_ERRORS as exc:
        raise DataError(f"The middle slice of '{source}' has a malformed VOI LUT or window: {exc}.") from exc
    pixels = conform(unit[None], channels=channels, spatial_dims=3, source=source)
    return _describe(reference, pixels, len(slices))


def _read_bytes(source: str | Path) -> bytes:
    """The whole file, refused beyond ``MAX_DICOM_BYTES``."""
    try:
        size = os.stat(source).st_size
        if size > MAX_DICOM_BYTES:
            raise DataError(
                f"'{source}' is {size:,} bytes, more than the {MAX_DICOM_BYTES:,} a DICOM file may have here."
            )
        with open(source, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise DataError(f"Cannot read DICOM file '{source}': {exc}.") from exc


def _read_dataset(source: str) -> Dataset:
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    data = _read_bytes(source)
    try:
        # force=True also reads files without the 128-byte preamble (old or raw exports). Parsing
        # from memory bounds every read by the data actually there, whatever lengths the file declares.
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # corrupt input makes pydicom raise many unrelated types
        raise DataError(f"'{source}' is not a readable DICOM file ({type(exc).__name__}: {exc}).") from exc
    if "TransferSyntaxUID" not in ds.file_meta:
        # Files without File Meta: take the encoding pydicom detected while parsing.
        implicit = ds.original_encoding[0]
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds


def _check_image(ds: Dataset, source: str) -> str:
    """Check the dataset holds a decodable image; return its Photometric Interpretation."""
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise DataError(
            f"'{source}' holds no image: it has no Pixel Data (it may be a DICOMDIR, a report, a "
            "presentation state, or a file cut short). Point to a DICOM image file instead."
        )
    if "Rows" not in ds or "Columns" not in ds:
        raise DataError(f"'{source}' has Pixel Data but no Rows/Columns; the file is corrupt.")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in (*_GREY, *_COLOUR, "PALETTE COLOR"):
        raise DataError(
            f"'{source}' has Photometric Interpretation '{photometric}', which medpredict cannot display. "
            "Supported: MONOCHROME1, MONOCHROME2, RGB, YBR_*, PALETTE COLOR."
        )
    samples, expected = ds.get("SamplesPerPixel", 1), 3 if photometric in _COLOUR else 1
    if samples != expected:
        raise DataError(
            f"'{source}' declares Photometric Interpretation {photometric} with Samples per Pixel {samples!r}; "
            f"{photometric} needs {expected}. The header is inconsistent."
        )
    return photometric


def _frame_count(ds: Dataset, source: str) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError) as exc:
        raise DataError(f"'{source}' has an invalid Number of Frames {ds.get('NumberOfFrames')!r}.") from exc


#: Decoding plugins tried in turn, per compressed transfer syntax: pydicom's plugin labels, plus
#: ``gdcm-12bit`` (``medpredict.readers.dicom_gdcm``). The first that decodes wins, so the dedicated
#: decoder leads and GDCM, which reads nearly everything, comes last as the fallback. Pillow keeps
#: the lead it had for JPEG Baseline, so 8-bit JPEG pixels do not change with the new decoders.
#: ``docs/DICOM.md`` shows this table; ``tests/test_readers_dicom_codecs.py`` checks it.
DECODING_PLUGINS: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2.4.50": ("pillow", "pylibjpeg", "gdcm"),  # JPEG Baseline (8-bit)
    "1.2.840.10008.1.2.4.51": ("pylibjpeg", "pillow", "gdcm", "gdcm-12bit"),  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.57": ("pylibjpeg", "gdcm"),  # JPEG Lossless, process 14
    "1.2.840.10008.1.2.4.70": ("pylibjpeg", "gdcm"),  # JPEG Lossless, process 14, selection value 1
    "1.2.840.10008.1.2.4.80": ("pyjpegls", "pylibjpeg", "gdcm"),  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": ("pyjpegls", "pylibjpeg", "gdcm"),  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": ("pylibjpeg", "pillow", "gdcm"),  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": ("pylibjpeg", "pillow", "gdcm"),  # JPEG 2000
    "1.2.840.10008.1.2.4.201": ("pylibjpeg",),  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": ("pylibjpeg",),  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": ("pylibjpeg",),  # HTJ2K
    "1.2.840.10008.1.2.5": ("pylibjpeg", "pydicom"),  # RLE Lossless
}
# The PyPI packages behind a plugin label; pylibjpeg's codec depends on the transfer syntax.
_PACKAGES = {"pillow": "pillow", "pyjpegls": "pyjpegls", "gdcm": "python-gdcm", "gdcm-12bit": "python-gdcm"}
_PYLIBJPEG_CODEC = {"1.2.840.10008.1.2.5": "pylibjpeg-rle", "1.2.840.10008.1.2.4.5": "pylibjpeg-libjpeg",
                    "1.2.840.10008.1.2.4.7": "pylibjpeg-libjpeg", "1.2.840.10008.1.2.4.8": "pylibjpeg-libjpeg",
                    "1.2.840.10008.1.2.4.9": "pylibjpeg-openjpeg", "1.2.840.10008.1.2.4.20": "pylibjpeg-openjpeg"}
# How pydicom wraps a plugin's own error; only the plugin's part is kept.
_ALL_FAILED = "RuntimeError: Unable to decode as exceptions were raised by all available plugins: "
_PLUGIN_LOCK = threading.Lock()
_GDCM_12BIT_ADDED = False


class _MutedInThread(logging.Filter):
    """Drops a logger's records emitted by threads inside :meth:`muted`.

    pydicom logs a traceback at ERROR for every plugin that fails, even when the next one
    decodes the file. While medpredict tries plugins in turn, those records would show a reader
    of a perfectly readable file three tracebacks; each reason is logged at DEBUG here instead,
    and all of them go into the ``DataError`` when no plugin decodes. Other threads, and pydicom
    used outside ``read_dicom``, log as before.
    """

    def __init__(self, logger_name: str) -> None:
        super().__init__()
        self._logger_name = logger_name
        self._threads: set[int] = set()
        self._installed = False

    def filter(self, record: logging.LogRecord) -> bool:
        return threading.get_ident() not in self._threads

    @contextlib.contextmanager
    def muted(self) -> Iterator[None]:
        with _PLUGIN_LOCK:
            if not self._installed:
                logging.getLogger(self._logger_name).addFilter(self)
                self._installed = True
        self._threads.add(threading.get_ident())
        try:
            yield
        finally:
            self._threads.discard(threading.get_ident())


_PLUGIN_TRACEBACKS = _MutedInThread("pydicom.pixels.decoders.base")


def _decode(ds: Dataset, indices: list[int], frames: int, source: str) -> np.ndarray:
    """Decode the frames in ``indices`` as ``(F, H, W)`` or ``(F, H, W, 3)``.

    Compressed pixel data goes through the installed plugins of :data:`DECODING_PLUGINS` in
    turn. When none decodes, the error names the transfer syntax (name and UID), each plugin
    tried with its reason, and the packages that would add the plugins not installed.
    """
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        compressed = syntax.is_compressed
    except ValueError as exc:  # pydicom: "UID is not a transfer syntax"
        raise DataError(
            f"'{source}' declares Transfer Syntax UID '{syntax}', which the installed pydicom does not know as a "
            "transfer syntax: either the file meta information is corrupt, or the syntax is newer than pydicom "
            "(e.g. JPEG XL, 1.2.840.10008.1.2.4.110-112); convert the file to a known syntax first."
        ) from exc
    if not compressed:
        try:
            return _frames(ds, indices, frames, "")
        except Exception as exc:  # pydicom raises many types (ValueError, struct.error...) on bad data
            raise DataError(
                f"The pixel data of '{source}' ({syntax.name}, {syntax}) could not be read; the file is "
                f"truncated or its image attributes are wrong ({_one_line(exc)})."
            ) from exc
    installed, missing = _plugins_for(syntax, source)
    if not installed:
        raise DataError(
            f"'{source}' is compressed as {syntax.name} ({syntax}); no installed decoder reads it. "
            f"Install one (medpredict depends on them; reinstalling it installs them): {', '.join(missing)}."
        )
    failures = []
    with _PLUGIN_TRACEBACKS.muted():
        for plugin in installed:
            try:
                array = _frames(ds, indices, frames, plugin)
            except Exception as exc:  # decoders raise many types (RuntimeError, ValueError...) on bad data
                reason = _one_line(exc).removeprefix(f"{_ALL_FAILED}{plugin}: ")
                failures.append(f"{plugin}: {reason}")
                logger.debug("The '%s' plugin could not decode %s pixel data: %s", plugin, syntax.name, reason)
                continue
            logger.debug("Decoded %s pixel data with the '%s' plugin.", syntax.name, plugin)
            return array
    verdict = (
        f"Decoders not installed may read it: {', '.join(missing)}; else the file is corrupt."
        if missing
        else "Every decoder failed, so the file is likely corrupt or truncated."
    )
    raise DataError(
        f"The pixel data of '{source}' ({syntax.name}, {syntax}) could not be decoded by the installed "
        f"decoders ({'; '.join(failures)}). {verdict}"
    )


def _plugins_for(syntax: Any, source: str) -> tuple[list[str], list[str]]:
    """The installed plugins for a compressed ``syntax`` in :data:`DECODING_PLUGINS` order, and
    the wanted ones not installed as ``"label (pip install PACKAGES)"``."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise DataError(
            f"'{source}' is compressed as {syntax.name} ({syntax}), which no DICOM decoder in pydicom "
            "reads; convert it to an uncompressed or JPEG transfer syntax first (e.g. dcmtk's dcmdjpeg)."
        ) from exc
    wanted = DECODING_PLUGINS.get(str(syntax), ())
    if "gdcm-12bit" in wanted:
        _add_gdcm_12bit(decoder)
    available = decoder.available_plugins
    installed = [plugin for plugin in wanted if plugin in available]
    installed += sorted(set(available) - set(installed))  # a plugin someone added to pydicom: tried last
    missing = [f"{label} (pip install {_packages(label, str(syntax))})" for label in wanted if label not in available]
    return installed, missing


def _packages(plugin: str, syntax: str) -> str:
    """The PyPI packages that provide ``plugin`` for ``syntax``."""
    if plugin != "pylibjpeg":
        return _PACKAGES.get(plugin, plugin)
    codec = next((package for prefix, package in _PYLIBJPEG_CODEC.items() if syntax.startswith(prefix)), "")
    return f"pylibjpeg {codec}".strip()


def _add_gdcm_12bit(decoder: Any) -> None:
    """Add ``dicom_gdcm``'s plugin to pydicom's JPEG Extended decoder, once per process."""
    from medpredict.readers.dicom_gdcm import LABEL

    global _GDCM_12BIT_ADDED
    with _PLUGIN_LOCK:  # pydicom's add_plugin is not thread-safe
        if _GDCM_12BIT_ADDED:
            return
        _GDCM_12BIT_ADDED = True
        try:
            decoder.add_plugin(LABEL, ("medpredict.readers.dicom_gdcm", "decode_frame"))
        except ValueError:  # someone added it before under this label: leave theirs
            logger.debug("pydicom's JPEG Extended decoder already has a '%s' plugin.", LABEL)


def _frames(ds: Dataset, indices: list[int], frames: int, plugin: str) -> np.ndarray:
    """The frames in ``indices`` decoded by ``plugin`` (``""``: native pixel data)."""
    from pydicom.pixels import pixel_array

    if frames > 1 and len(indices) == 1:
        return pixel_array(ds, index=indices[0], decoding_plugin=plugin)[None]
    array = pixel_array(ds, decoding_plugin=plugin)
    return array[None] if frames == 1 else array


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _functional_group(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """First item of ``keyword`` in frame ``index``'s per-frame group, else the shared group."""
    for groups, position in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        sequence = ds.get(groups)
        if sequence and position < len(sequence) and sequence[position].get(keyword):
            item: Dataset = sequence[position].get(keyword)[0]
            return item
    return None


def _modality(frame: np.ndarray, ds: Dataset, index: int) -> np.ndarray:
    """Apply the Modality LUT or rescale slope/intercept to one frame (float32)."""
    from pydicom.pixels import apply_modality_lut

    if ds.get("ModalityLUTSequence"):
        return np.asarray(apply_modality_lut(frame, ds), dtype=np.float32)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        _check_rescale(ds)
        return np.asarray(apply_modality_lut(frame, ds), dtype=np.float32)
    item = _functional_group(ds, index, "PixelValueTransformationSequence")
    if item is not None and "RescaleSlope" in item and "RescaleIntercept" in item:
        slope, intercept = _check_rescale(item)
        return frame.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return frame.astype(np.float32)


def _check_rescale(item: Dataset) -> tuple[float, float]:
    """Rescale Slope and Intercept as floats; ``ValueError`` unless both are finite numbers.

    The callers turn the ``ValueError`` into a ``DataError`` naming the file: a non-finite
    rescale leaves no meaningful pixel value, so the image is refused rather than guessed.
    """
    slope, intercept = _first_number(item.get("RescaleSlope")), _first_number(item.get("RescaleIntercept"))
    if slope is None or intercept is None or not (math.isfinite(slope) and math.isfinite(intercept)):
        raise ValueError(
            f"Rescale Slope {item.get('RescaleSlope')!r} and Intercept {item.get('RescaleIntercept')!r} "
            "must be finite numbers"
        )
    return slope, intercept


def _voi(values: np.ndarray, ds: Dataset, indices: list[int]) -> np.ndarray:
    """Map modality values ``(F, H, W)`` to [0, 1] by VOI LUT, window, or percentiles."""
    sequence = ds.get("VOILUTSequence")
    if sequence and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]:
        return _voi_lut(values, ds)
    unit = np.empty(values.shape, dtype=np.float32)
    for k, index in enumerate(indices):
        window = _window_for(ds, index)
        if window is None:
            break
        unit[k] = _window(values[k], *window)
    else:
        return unit
    logger.debug("No usable VOI LUT or window; scaling between the 0.5 and 99.5 percentiles.")
    return robust_unit_range(values)


def _voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray:
    from pydicom.pixels import apply_voi

    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    entries, first_map = int(descriptor[0]) or 65536, int(descriptor[1])
    # The LUT's real output range: its nominal bit depth often overstates the data.
    table = apply_voi(np.arange(first_map, first_map + entries, dtype=np.int32), ds)
    low, high = float(table.min()), float(table.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    mapped = apply_voi(np.rint(values).astype(np.int32), ds).astype(np.float32)
    return (mapped - np.float32(low)) / np.float32(high - low)


def _window_for(ds: Dataset, index: int) -> tuple[float, float, str] | None:
    """Window (center, width, function) of one frame, or ``None`` if absent or unusable."""
    if "WindowCenter" in ds and "WindowWidth" in ds:
        source: Dataset | None = ds
    else:
        source = _functional_group(ds, index, "FrameVOILUTSequence")
    if source is None:
        return None
    center, width = _first_number(source.get("WindowCenter")), _first_number(source.get("WindowWidth"))
    function = str(source.get("VOILUTFunction") or "LINEAR").strip().upper()
    if center is None or width is None:
        return None
    if not (math.isfinite(center) and math.isfinite(width)):
        # The window only sets display contrast: a non-finite one is dropped (percentile scaling).
        logger.warning("Ignoring a non-finite DICOM window (center %s, width %s).", center, width)
        return None
    usable_width = width >= 1.0 if function == "LINEAR" else width > 0.0
    if function not in _WINDOW_FUNCTIONS or not usable_width:
        logger.warning("Ignoring an unusable DICOM window (width %s, function %s).", width, function)
        return None
    return center, width, function


def _first_number(value: Any) -> float | None:
    """First value of a (possibly multi-valued) DS/IS element as float; ``None`` if absent or bad."""
    try:
        return float(value if isinstance(value, (int, float, str)) else value[0])
    except (TypeError, ValueError, IndexError):
        return None


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Apply a VOI window straight to [0, 1] (PS3.3 C.11.2.1.2-3)."""
    x = values.astype(np.float32)
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width == 1.0:
        return (x > center - 0.5).astype(np.float32)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _present(unit: np.ndarray, photometric: str) -> np.ndarray:
    """Invert MONOCHROME1 (minimum = white) so that, as in MONOCHROME2, air is dark.

    Presentation LUT Shape is not applied on top: in image objects it only restates this
    inversion (INVERSE goes with MONOCHROME1), and applying both would undo it.
    """
    return 1.0 - unit if photometric.strip().upper() == "MONOCHROME1" else unit


def _series_slices(folder: Path) -> list[tuple[Path, Dataset]]:
    """List the image files of the one series in ``folder`` with their headers, in slice order."""
    import pydicom

    found: list[tuple[Path, Dataset]] = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            # Read whole (bounded) and parsed from memory, as in _read_dataset; the preamble check
            # first keeps a large file that is not DICOM from being read at all.
            with path.open("rb") as handle:
                if handle.read(132)[128:132] != b"DICM":
                    raise ValueError("no DICOM preamble")
            header = pydicom.dcmread(io.BytesIO(_read_bytes(path)), stop_before_pixels=True)
        except Exception:  # not DICOM (or not readable as such): not part of the series
            logger.debug("Skipping a file that is not DICOM in a series folder.")
            continue
        if "Rows" in header and "Columns" in header:
            found.append((path, header))
    if not found:
        raise DataError(f"Folder '{folder}' holds no DICOM images. Point to a folder with one DICOM series.")
    series = {str(header.get("SeriesInstanceUID", "")) for _, header in found}
    if len(series) > 1:
        raise DataError(
            f"Folder '{folder}' holds images of {len(series)} DICOM series; medpredict does not guess which "
            "one you mean. Give each series its own folder."
        )
    if len({(int(h.Rows), int(h.Columns)) for _, h in found}) > 1:
        raise DataError(f"The slices in '{folder}' differ in size; they cannot form one volume.")
    if all(_geometry(header) is not None for _, header in found):
        found.sort(key=lambda item: (_geometry(item[1]), item[0].name))
    else:
        found.sort(key=lambda item: (_first_number(item[1].get("InstanceNumber")) or 0.0, item[0].name))
    return found


def _geometry(header: Dataset) -> float | None:
    """Position of a slice along its normal (mm), from Image Position / Orientation Patient."""
    orientation, position = header.get("ImageOrientationPatient"), header.get("ImagePositionPatient")
    try:
        row, column = np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:6], dtype=float)
        return float(np.dot(np.cross(row, column), np.asarray(position, dtype=float).reshape(3)))
    except (TypeError, ValueError, IndexError):  # absent or malformed geometry
        return None


def _describe(ds: Dataset, pixels: np.ndarray, frames: int) -> DicomImage:
    return DicomImage(
        pixels=pixels,
        modality=str(ds.get("Modality") or ""),
        photometric=str(ds.get("PhotometricInterpretation") or ""),
        frames=frames,
        pixel_spacing=_pixel_spacing(ds),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        header=ds,
    )


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    measures = _functional_group(ds, 0, "PixelMeasuresSequence")
    candidates: list[Any] = [ds.get("PixelSpacing"), ds.get("ImagerPixelSpacing")]
    candidates.append(measures.get("PixelSpacing") if measures is not None else None)
    for value in candidates:
        try:
            if value is not None and len(value) == 2:
                return float(value[0]), float(value[1])
        except (TypeError, ValueError):
            continue
    return None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value) if value else None
