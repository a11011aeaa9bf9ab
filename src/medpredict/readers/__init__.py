"""Image readers: one entry point, ``read_image``, for raster, DICOM, NIfTI and npz images.

Every reader returns float32, channel-first arrays in [0, 1] (``docs/CONTRACTS.md``,
"Images out of readers"). Importing this package does not import pydicom, nibabel or Pillow;
each is imported when a file of its kind is first read.
"""

from __future__ import annotations

from medpredict.readers.dicom import DicomImage, read_dicom, read_dicom_series
from medpredict.readers.images import (
    MAX_PIXELS,
    MAX_VOXELS,
    SUPPORTED_SUFFIXES,
    is_image_path,
    read_image,
    read_image_and_tags,
)
from medpredict.readers.medmnist_refs import NpzRef, format_npz_ref, is_npz_ref, parse_npz_ref, read_npz_ref
from medpredict.readers.nifti import read_nifti

__all__ = [
    "MAX_PIXELS",
    "MAX_VOXELS",
    "SUPPORTED_SUFFIXES",
    "DicomImage",
    "NpzRef",
    "format_npz_ref",
    "is_image_path",
    "is_npz_ref",
    "parse_npz_ref",
    "read_dicom",
    "read_dicom_series",
    "read_image",
    "read_image_and_tags",
    "read_nifti",
    "read_npz_ref",
]
