"""Read NIfTI-1/2 volumes (``.nii``, ``.nii.gz``) as display-ready arrays in a fixed orientation."""

from __future__ import annotations

import os
import zlib

import numpy as np

from medpredict.errors import DataError
from medpredict.readers.images import check_request, check_size, conform, robust_unit_range


def read_nifti(path: str | os.PathLike[str], *, channels: int = 1, spatial_dims: int = 2) -> np.ndarray:
    """Read a NIfTI image as ``(C, H, W)`` (middle axial slice) or ``(C, D, H, W)``.

    The volume is first turned to the closest canonical (RAS+) orientation with
    ``nibabel.as_closest_canonical``, then laid out as ``(D, H, W)`` = (inferior to
    superior, anterior to posterior, patient right to left), the radiological view that
    axial DICOM slices have, so the two formats agree. A 4-D series gives its first volume;
    a 2-D image is one slice. Values (after the header's scl_slope/scl_inter) are scaled
    between the 0.5 and 99.5 percentiles of the whole volume; NaN becomes 0.

    Raises:
        DataError: The file is missing, truncated or not NIfTI, has more than 4 dimensions,
            or exceeds ``MAX_VOXELS``.
        ConfigError: ``channels`` or ``spatial_dims`` is not supported.
    """
    check_request(channels, spatial_dims)
    source = os.fspath(path)
    volume = _load_volume(source)
    return conform(
        robust_unit_range(volume)[None], channels=channels, spatial_dims=spatial_dims, source=source
    )


def _load_volume(source: str) -> np.ndarray:
    """Load the (first) 3-D volume as float32 ``(D, H, W)`` in the orientation described above."""
    import nibabel as nib
    from nibabel.orientations import OrientationError

    try:
        image = nib.load(source)
    except Exception as exc:  # nibabel raises many types (ImageFileError, HeaderDataError...) on bad input
        raise DataError(f"'{source}' is not a readable NIfTI file ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(f"'{source}' is a {type(image).__name__}, not NIfTI; convert it to .nii or .nii.gz.")
    shape = tuple(int(n) for n in image.shape)
    if not 2 <= len(shape) <= 4:
        raise DataError(f"'{source}' has {len(shape)} dimensions {shape}; expected a 2-D, 3-D or 4-D image.")
    check_size(shape[1], shape[0], shape[2] if len(shape) > 2 else 1, source)
    try:
        if len(shape) == 4:
            image = image.slicer[..., 0]  # lazy: reads only the first volume
        if len(shape) > 2:
            image = nib.as_closest_canonical(image)
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except (OSError, EOFError, ValueError, TypeError, zlib.error) as exc:
        raise DataError(
            f"The image data of '{source}' could not be read; the file is truncated or corrupt ({exc})."
        ) from exc
    except OrientationError as exc:  # a degenerate affine (e.g. an sform row of zeros) has no orientation
        raise DataError(
            f"'{source}' has a degenerate orientation (sform/qform) that maps no axis to patient space ({exc}); "
            "fix its affine."
        ) from exc
    if data.ndim == 2:
        data = data[..., None]
    # (x: left->right, y: posterior->anterior, z: inferior->superior) -> (z, -y, -x).
    return np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, ::-1])
