"""Read any supported image file into the array layout every other layer expects.

``read_image`` is the one entry point: it recognises the format from the file's first bytes
(falling back to its suffix), hands DICOM and NIfTI to their own modules, reads raster
formats with Pillow, and conforms the result to the contract in ``docs/CONTRACTS.md``:
float32, channel-first, values in [0, 1]. The array helpers at the bottom are shared with
``dicom.py`` and ``nifti.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medpredict.errors import ConfigError, DataError
from medpredict.readers.medmnist_refs import is_npz_ref, read_npz_ref

if TYPE_CHECKING:
    from PIL.Image import Image as PillowImage

#: Largest image plane (height x width) any reader decodes; guards against decompression bombs.
MAX_PIXELS = 100_000_000
#: Largest volume (depth x height x width) decoded for ``spatial_dims=3``: a 1,024-slice 512² CT.
MAX_VOXELS = 512 * 512 * 1024

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: File suffixes ``is_image_path`` accepts (lower case). DICOM files without a suffix are
#: still read by ``read_image``; ``is_image_path(..., sniff=True)`` finds them.
SUPPORTED_SUFFIXES = RASTER_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES

_FORMATS_HELP = (
    "Supported: PNG, JPEG, BMP, TIFF, DICOM (.dcm, .dicom, or no suffix with the DICM preamble, "
    "or a folder holding one DICOM series), NIfTI (.nii, .nii.gz) and MedMNIST references "
    "'FILE.npz::KEY/INDEX'."
)
_RASTER_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")
# Luminance weights of ITU-R BT.601, the ones Pillow uses for RGB -> L.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# numpy dtype kinds an image array may have: bool, signed and unsigned integer, float.
_NUMERIC_KINDS = "biuf"


def read_image(path: str | os.PathLike[str], *, channels: int = 1, spatial_dims: int = 2) -> np.ndarray:
    """Read an image file (or an npz reference) as a display-ready float array.

    Args:
        path: A PNG/JPEG/BMP/TIFF, DICOM or NIfTI file, a folder holding one DICOM series,
            or a MedMNIST reference ``FILE.npz::KEY/INDEX``.
        channels: 1 for grey (colour is mixed by BT.601 luminance) or 3 for RGB (grey is
            repeated).
        spatial_dims: 2 returns ``(C, H, W)``; a 3-D source (NIfTI volume, multi-frame
            DICOM, DICOM series, 3-D npz) then gives its middle slice / frame. 3 returns
            ``(C, D, H, W)`` and needs a source with more than one slice.

    Returns:
        float32 array, channel-first, values in [0, 1]. DICOM is windowed and MONOCHROME1
        inverted so air is dark (see ``medpredict.readers.dicom``); 8- and 16-bit raster
        images are divided by 255 and 65535 (the full range of their storage type).

    Raises:
        DataError: The file is missing, unreadable, truncated, too large (``MAX_PIXELS``,
            ``MAX_VOXELS``) or in no supported format.
        ConfigError: ``channels`` or ``spatial_dims`` is not a supported value.
    """
    check_request(channels, spatial_dims)
    text = os.fspath(path)
    if is_npz_ref(text):
        volume = _npz_volume(text)
    else:
        kind = _sniff_format(Path(text))
        # Imported here because dicom.py and nifti.py build on the helpers of this module.
        if kind == "dicom":
            from medpredict.readers.dicom import read_dicom

            return read_dicom(text, channels=channels, spatial_dims=spatial_dims).pixels
        if kind == "dicom_series":
            from medpredict.readers.dicom import read_dicom_series

            return read_dicom_series(text, channels=channels, spatial_dims=spatial_dims).pixels
        if kind == "nifti":
            from medpredict.readers.nifti import read_nifti

            return read_nifti(text, channels=channels, spatial_dims=spatial_dims)
        return conform(_read_raster(Path(text)), channels=channels, spatial_dims=spatial_dims, source=text, owned=True)
    return conform(volume, channels=channels, spatial_dims=spatial_dims, source=text)


#: DICOM attributes :func:`read_image_and_tags` returns: what an input check compares with a
#: model's intended use. None of them identifies a patient.
DESCRIPTIVE_TAGS = ("Modality", "BodyPartExamined", "ViewPosition", "SeriesDescription", "StudyDescription")


def read_image_and_tags(
    path: str | os.PathLike[str], *, channels: int = 1, spatial_dims: int = 2
) -> tuple[np.ndarray, dict[str, str]]:
    """:func:`read_image`, plus the descriptive DICOM tags of a DICOM file or series.

    Returns:
        The array as :func:`read_image` returns it, and ``{keyword: value}`` for the
        :data:`DESCRIPTIVE_TAGS` present (empty for raster, NIfTI and npz inputs).

    Raises:
        DataError, ConfigError: as :func:`read_image`.
    """
    text = os.fspath(path)
    kind = "npz" if is_npz_ref(text) else _sniff_format(Path(text))
    if kind not in ("dicom", "dicom_series"):
        return read_image(text, channels=channels, spatial_dims=spatial_dims), {}
    from medpredict.readers.dicom import read_dicom, read_dicom_series

    reader = read_dicom if kind == "dicom" else read_dicom_series
    image = reader(text, channels=channels, spatial_dims=spatial_dims)
    tags = {}
    for keyword in DESCRIPTIVE_TAGS:
        value = getattr(image.header, keyword, None)
        if value is not None and str(value).strip():
            tags[keyword] = str(value).strip()
    return image.pixels, tags


def is_image_path(path: str | os.PathLike[str], *, sniff: bool = False) -> bool:
    """Tell whether a path looks like an image ``read_image`` can read, for folder scanning.

    Decides by suffix (case-insensitive, see ``SUPPORTED_SUFFIXES``) or by the npz
    reference syntax. With ``sniff=True`` an existing file without a known suffix is also
    accepted when it starts with the DICOM preamble, as PACS exports often have no suffix.
    Never raises for unreadable files; it only looks.
    """
    text = os.fspath(path)
    if is_npz_ref(text):
        return True
    if text.lower().endswith(SUPPORTED_SUFFIXES):
        return True
    if not sniff:
        return False
    candidate = Path(text)
    try:
        return candidate.is_file() and _read_head(candidate)[128:132] == b"DICM"
    except OSError:
        return False


def check_request(channels: int, spatial_dims: int) -> None:
    """Raise :class:`ConfigError` unless ``channels`` is 1 or 3 and ``spatial_dims`` is 2 or 3."""
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}.")
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")


def check_size(height: int, width: int, depth: int, source: str | os.PathLike[str]) -> None:
    """Refuse to decode an image whose plane or volume exceeds ``MAX_PIXELS`` / ``MAX_VOXELS``."""
    if height < 1 or width < 1 or depth < 1:
        raise DataError(f"'{os.fspath(source)}' declares an empty image ({depth} x {height} x {width}).")
    if height * width > MAX_PIXELS:
        raise DataError(
            f"'{os.fspath(source)}' is {width} x {height} pixels, more than the {MAX_PIXELS:,} "
            "pixels medpredict decodes (a guard against decompression bombs). Downsample it first."
        )
    if depth * height * width > MAX_VOXELS:
        raise DataError(
            f"'{os.fspath(source)}' holds {depth} slices of {width} x {height}, more than the "
            f"{MAX_VOXELS:,} voxels medpredict decodes. Crop or resample the volume first."
        )


def conform(
    volume: np.ndarray, *, channels: int, spatial_dims: int, source: str, owned: bool = False
) -> np.ndarray:
    """Turn a reader's ``(C, D, H, W)`` array in [0, 1] into the contract layout.

    ``spatial_dims=2`` keeps the middle slice ``D // 2``; ``spatial_dims=3`` keeps all and
    needs ``D > 1``. Channels are then matched (see ``read_image``). Any value still
    non-finite becomes 0 (NaN, -inf) or 1 (+inf), so the output is always finite in [0, 1].
    ``owned=True`` says nobody else holds ``volume`` (a reader's fresh array): it is then
    cleaned in place instead of copied, which saves a full-size copy of a large image.
    """
    if spatial_dims == 2:
        volume = volume[:, volume.shape[1] // 2]
    elif volume.shape[1] < 2:
        raise DataError(
            f"'{source}' is a single 2-D image, but spatial_dims=3 needs a volume (NIfTI, "
            "multi-frame DICOM, a DICOM series folder or a 3-D npz). Use spatial_dims=2 for it."
        )
    have = volume.shape[0]
    if have == 3 and channels == 1:
        volume = np.tensordot(_LUMA, volume, axes=(0, 0))[None]
    elif have == 1 and channels == 3:
        volume = np.repeat(volume, 3, axis=0)
    elif have != channels:
        raise DataError(f"'{source}' has {have} channels; medpredict reads grey (1) or RGB (3) images.")
    # At most one fresh copy (the caller's array may be cached), then cleaned in place:
    # a large image costs one extra float array here, or none when the array is ours.
    if owned:
        out = np.ascontiguousarray(volume, dtype=np.float32)
    else:
        out = np.array(volume, dtype=np.float32, order="C", copy=True)
    np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0, out=out)


def robust_unit_range(values: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Map ``values`` to [0, 1] between their ``low`` and ``high`` percentiles (float32).

    Non-finite values become 0. Percentiles of arrays above 4 M values are taken on an even
    subsample, which moves them by far less than one grey level. If the percentiles
    coincide the full min-max is used; a constant image becomes all zeros.
    """
    flat = values.reshape(-1)
    finite = flat[np.isfinite(flat)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    sample = finite[:: max(1, finite.size // 4_000_000)]
    lo, hi = (float(v) for v in np.percentile(sample, [low, high]))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    out = (values.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def scale_by_dtype(values: np.ndarray) -> np.ndarray:
    """Scale an array to [0, 1] by the full range of its storage type (float32).

    Unsigned integers are divided by their type's maximum (uint8 by 255, uint16 by 65535),
    so one stored value always maps to the same float. Booleans become 0/1, floats already
    in [0, 1] are kept; signed integers and other floats fall back to ``robust_unit_range``.
    """
    if values.dtype == np.bool_:
        return values.astype(np.float32)
    if np.issubdtype(values.dtype, np.unsignedinteger):
        scaled = values.astype(np.float32)
        scaled /= np.float32(np.iinfo(values.dtype).max)  # in place: one float copy of a large image, not two
        return scaled
    floating = np.issubdtype(values.dtype, np.floating)
    if floating and values.size and np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1:
        return values.astype(np.float32)
    return robust_unit_range(values)


def _npz_volume(ref: str) -> np.ndarray:
    """Read an npz reference as ``(C, D, H, W)`` in [0, 1]: (H, W), (H, W, 3) RGB or (D, H, W)."""
    array = read_npz_ref(ref)
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise DataError(
            f"'{ref}' holds an array of dtype {array.dtype}; an image needs bool, integer or float values."
        )
    if array.ndim == 2:
        volume = array[None, None]
    elif array.ndim == 3 and array.shape[-1] == 3:
        volume = np.moveaxis(array, -1, 0)[:, None]
    elif array.ndim == 3:
        volume = array[None]
    else:
        raise DataError(
            f"'{ref}' holds an array of shape {array.shape}; expected (H, W), (H, W, 3) or (D, H, W)."
        )
    check_size(volume.shape[2], volume.shape[3], volume.shape[1], ref)
    return scale_by_dtype(volume)


def _read_head(path: Path, size: int = 352) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def _sniff_format(path: Path) -> str:
    """Name the reader for ``path``: ``raster``, ``dicom``, ``dicom_series`` or ``nifti``.

    Content decides first (DICOM preamble, raster and NIfTI magic numbers), so a file with
    a misleading suffix still reads; the suffix decides only for DICOM without a preamble.
    """
    if path.is_dir():
        return "dicom_series"
    if not path.is_file():
        raise DataError(f"Image file '{path}' does not exist. Check the path (and the manifest).")
    try:
        head = _read_head(path)
    except OSError as exc:
        raise DataError(f"Cannot open image file '{path}': {exc}. Check its permissions.") from exc
    name = path.name.lower()
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_RASTER_MAGIC):
        return "raster"
    if head[344:348] == b"n+1\x00" or head[4:8] == b"n+2\x00":
        return "nifti"
    if name.endswith(".nii.gz") and head.startswith(b"\x1f\x8b"):
        return "nifti"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    raise DataError(
        f"'{path}' is not a readable image: its contents match no supported format. {_FORMATS_HELP}"
    )


def _read_raster(path: Path) -> np.ndarray:
    """Read PNG/JPEG/BMP/TIFF with Pillow as ``(C, 1, H, W)`` in [0, 1].

    Pillow's decompression-bomb check stays on. EXIF orientation is applied; alpha is
    dropped; only the first frame of a multi-page TIFF is read.
    """
    from PIL import Image, ImageOps

    try:
        image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise DataError(f"'{path}' is too large to decode safely (Pillow: {exc}).") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"'{path}' is not a readable image ({exc}). {_FORMATS_HELP}") from exc
    with image:
        check_size(image.height, image.width, 1, path)
        try:
            ImageOps.exif_transpose(image, in_place=True)  # in place: no second copy of a large image
            array = _pillow_array(image)
        except Image.DecompressionBombError as exc:
            raise DataError(f"'{path}' is too large to decode safely (Pillow: {exc}).") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise DataError(
                f"'{path}' could not be decoded; it is truncated or corrupt ({exc}). Re-export the image."
            ) from exc
    if array.ndim == 2:
        return array[None, None]
    return np.moveaxis(array, -1, 0)[:, None]


def _pillow_array(image: PillowImage) -> np.ndarray:
    """Convert a loaded Pillow image to ``(H, W)`` or ``(H, W, 3)`` float32 in [0, 1]."""
    mode = image.mode
    if mode in ("L", "RGB") or mode.startswith("I;16"):
        return scale_by_dtype(np.asarray(image))
    if mode == "1":
        return np.asarray(image).astype(np.float32)
    if mode == "LA":
        return scale_by_dtype(np.asarray(image)[..., 0])
    if mode == "I" and image.format == "PNG":
        # Older Pillow opens 16-bit grey PNG as 32-bit "I"; the file still holds 16 bits.
        return np.asarray(image).astype(np.float32) / np.float32(65535)
    if mode in ("I", "F"):
        return robust_unit_range(np.asarray(image))
    return scale_by_dtype(np.asarray(image.convert("RGB")))
