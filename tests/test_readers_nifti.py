"""Tests of medpredict.readers.nifti: orientation, 4-D, scaling, real files, bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fixtures_images import SHARED_DATA, write_nifti
from medpredict.errors import DataError
from medpredict.readers import read_image, read_nifti

NIFTI_DATA = SHARED_DATA / "nifti"


def _marked_volume() -> np.ndarray:
    """A (x=5, y=6, z=7) volume with one bright voxel at the right, anterior, superior corner."""
    volume = np.zeros((5, 6, 7), dtype=np.float32)
    volume[-1, -1, -1] = 100.0
    volume[0, 0, 0] = 50.0  # left, posterior, inferior
    return volume


def test_layout_is_axial_radiological_view(tmp_path: Path) -> None:
    out = read_nifti(write_nifti(tmp_path / "ras.nii.gz", _marked_volume()), spatial_dims=3)
    assert out.shape == (1, 7, 6, 5)  # (D = z, H = y, W = x)
    # Superior slice last; anterior at the top row; patient right at the left column.
    assert np.count_nonzero(out) == 2
    assert out[0, -1, 0, 0] > 0.0  # right, anterior, superior
    assert out[0, 0, -1, -1] > 0.0  # left, posterior, inferior


def test_other_stored_orientation_gives_the_same_array(tmp_path: Path) -> None:
    ras = read_nifti(write_nifti(tmp_path / "ras.nii", _marked_volume()), spatial_dims=3)
    # The same anatomy stored left-to-right reversed (LAS): x axis flipped in data and affine.
    las_affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    las_affine[0, 3] = 4.0
    las = read_nifti(
        write_nifti(tmp_path / "las.nii", _marked_volume()[::-1].copy(), las_affine), spatial_dims=3
    )
    np.testing.assert_array_equal(las, ras)


def test_4d_reads_the_first_volume_and_2d_the_middle_slice(tmp_path: Path) -> None:
    first = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    series = np.stack([first, first * 0 + 7.0], axis=-1)  # second volume is constant
    path = write_nifti(tmp_path / "f.nii.gz", series)
    volume = read_nifti(path, spatial_dims=3)
    np.testing.assert_array_equal(
        volume, read_nifti(write_nifti(tmp_path / "one.nii.gz", first), spatial_dims=3)
    )
    assert volume.std() > 0.1  # not the constant second volume
    np.testing.assert_array_equal(read_nifti(path)[0], volume[0, 6 // 2])


def test_percentile_scaling_and_nan_handling(tmp_path: Path) -> None:
    data = np.linspace(-1000, 3000, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    data[0, 0, 0] = np.nan
    out = read_nifti(write_nifti(tmp_path / "n.nii", data), spatial_dims=3, channels=3)
    assert out.shape == (3, 6, 5, 4)
    assert np.isfinite(out).all() and out.min() == 0.0 and out.max() == 1.0


def test_2d_nifti_is_one_slice(tmp_path: Path) -> None:
    out = read_nifti(write_nifti(tmp_path / "flat.nii", np.arange(12, dtype=np.float32).reshape(3, 4)))
    assert out.shape == (1, 4, 3)
    with pytest.raises(DataError, match="single 2-D image"):
        read_nifti(tmp_path / "flat.nii", spatial_dims=3)


def test_truncated_and_fake_nifti_raise_data_error(tmp_path: Path) -> None:
    path = write_nifti(
        tmp_path / "cut.nii.gz", np.random.default_rng(1).random((20, 20, 20)).astype(np.float32)
    )
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError, match=r"cut\.nii\.gz"):
        read_image(path)
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    with pytest.raises(DataError, match=r"fake\.nii\.gz"):
        read_image(fake)


def test_more_than_four_dimensions_is_refused(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "five.nii", np.zeros((2, 2, 2, 1, 3), dtype=np.float32))
    with pytest.raises(DataError, match="5 dimensions"):
        read_nifti(path)


REAL_FILES = [
    # (file, shape with spatial_dims=3)
    ("anatomical.nii", (1, 25, 41, 33)),  # nibabel test data, 3-D anatomical MR
    ("functional.nii", (1, 3, 21, 17)),  # 4-D fMRI: first volume only
    ("example4d.nii.gz", (1, 24, 96, 128)),  # 4-D, gzipped, oblique-ish affine
    ("nnunet_example_ct_sm.nii.gz", (1, 30, 101, 122)),  # small abdominal CT
    ("nnunet_example_ct_sm_T300_output.nii.gz", (1, 30, 101, 122)),  # its segmentation mask
]


@pytest.mark.skipif(not NIFTI_DATA.is_dir(), reason="shared NIfTI data not present")
@pytest.mark.parametrize(("name", "shape"), REAL_FILES)
def test_real_nifti_reads(name: str, shape: tuple) -> None:
    volume = read_image(NIFTI_DATA / name, spatial_dims=3)
    assert volume.shape == shape and volume.dtype == np.float32
    assert volume.min() >= 0.0 and volume.max() <= 1.0 and volume.std() > 0.05
    assert read_image(NIFTI_DATA / name).shape == (1, *shape[2:])
