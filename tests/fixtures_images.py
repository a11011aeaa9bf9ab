"""Writers of small synthetic image files (PNG, DICOM, NIfTI, npz) for the reader tests.

Plain functions, not fixtures, so any test module can import them and call them with its
own ``tmp_path``. Also where the tests find the shared real data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: The shared real data (``../shared/data`` from the repository root); tests skip without it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_png(path: Path, array: np.ndarray) -> Path:
    """Save a uint8/uint16 array (H, W) or (H, W, 3|4) through Pillow; the suffix picks the format."""
    from PIL import Image

    Image.fromarray(array).save(path)
    return path


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    preamble: bool = True,
    pixel_data: bool = True,
    **elements: Any,
) -> Path:
    """Write an uncompressed DICOM image (explicit VR little endian).

    ``pixels`` is (H, W), (F, H, W) for multi-frame, or (H, W, 3) uint8 for colour;
    uint16/int16/uint8 set Bits Allocated and Pixel Representation. ``preamble=False``
    writes a bare data set without preamble and File Meta. Extra keyword
    arguments become data elements (e.g. ``RescaleSlope=2``, ``WindowCenter=40``).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    colour = photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Synthetic^Patient"
    ds.PatientID = "SYN-0001"
    ds.Modality = "OT"
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    frames = pixels.shape[0] if pixels.ndim == 3 and not colour else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if np.issubdtype(pixels.dtype, np.signedinteger) else 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if pixel_data:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if preamble:
        ds.preamble = b"\x00" * 128
        ds.save_as(path, enforce_file_format=True)
    else:
        # A bare data set: no preamble and no File Meta, as some old exports are.
        del ds.file_meta
        ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return path


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save ``data`` as NIfTI-1 (``.nii`` or ``.nii.gz`` by suffix) with ``affine`` (default RAS)."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    """Save arrays in a compressed npz, as MedMNIST ships them."""
    np.savez_compressed(path, **arrays)
    return path
