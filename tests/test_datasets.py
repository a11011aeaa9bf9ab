"""Tests for medpredict.data.datasets: bulk image loading, uint8 storage and target tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures_images import write_npz, write_png
from medpredict.config import PreprocessConfig
from medpredict.data.datasets import ArrayDataset, load_images, target_tensor
from medpredict.errors import DataError


def npz_and_pngs(tmp_path: Path, images: np.ndarray) -> tuple[list[str], list[str]]:
    """The same uint8 pixels as npz references and as PNG files."""
    labels = np.zeros((len(images), 1), np.uint8)
    npz = write_npz(tmp_path / "set.npz", train_images=images, train_labels=labels)
    refs = [f"{npz.resolve()}::train_images/{i}" for i in range(len(images))]
    pngs = [str(write_png(tmp_path / f"img{i}.png", image)) for i, image in enumerate(images)]
    return refs, pngs


@pytest.mark.parametrize(
    ("pixels", "size", "channels"),
    [
        ((5, 28, 28), 28, 1),  # MedMNIST at its own size: no resizing
        ((5, 40, 40), 28, 1),  # shrinking: area interpolation on both paths
        ((5, 20, 20), 32, 1),  # enlarging: bilinear on both paths
        ((5, 28, 28), 28, 3),  # grey stored, 3-channel network
        ((4, 24, 24, 3), 16, 1),  # RGB npz (N, H, W, 3) to grey
        ((4, 24, 24, 3), 16, 3),  # RGB kept
    ],
)
def test_npz_bulk_path_equals_per_file_reading(
    tmp_path: Path, pixels: tuple[int, ...], size: int, channels: int
) -> None:
    images = np.random.default_rng(0).integers(0, 256, pixels, dtype=np.uint8)
    refs, pngs = npz_and_pngs(tmp_path, images)
    config = PreprocessConfig(image_size=size)
    bulk = load_images(refs, config, channels, progress=False)
    files = load_images(pngs, config, channels, progress=False)
    assert bulk.dtype == torch.uint8 and tuple(bulk.shape) == (len(images), channels, size, size)
    assert files.shape == bulk.shape
    # one step of uint8 quantisation apart at most (luminance weights are rounded differently)
    assert (bulk.int() - files.int()).abs().max() <= 1


def test_non_square_npz_equals_per_file_reading(tmp_path: Path) -> None:
    # tall: the height shrinks while the width grows
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 20), dtype=np.uint8)
    refs, pngs = npz_and_pngs(tmp_path, images)
    config = PreprocessConfig(image_size=28)
    bulk = load_images(refs, config, 1, progress=False)
    files = load_images(pngs, config, 1, progress=False)
    assert (bulk.int() - files.int()).abs().max() <= 1


def test_unresized_npz_images_are_stored_exactly(tmp_path: Path) -> None:
    images = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    refs, _ = npz_and_pngs(tmp_path, images)
    out = load_images([refs[2], refs[0]], PreprocessConfig(image_size=28), 1, progress=False)  # order kept
    assert torch.equal(out[:, 0], torch.from_numpy(images[[2, 0]]))


def test_mixed_files_and_references_keep_their_rows(tmp_path: Path) -> None:
    images = np.stack([np.full((28, 28), v, np.uint8) for v in (10, 100, 200)])
    refs, pngs = npz_and_pngs(tmp_path, images)
    paths = [pngs[0], refs[1], pngs[2], refs[0]]
    out = load_images(paths, PreprocessConfig(image_size=28), 1, progress=False)
    assert out[:, 0, 0, 0].tolist() == [10, 100, 200, 10]


def test_3d_npz_references_load(tmp_path: Path) -> None:
    volumes = np.random.default_rng(2).integers(0, 256, (2, 16, 16, 16), dtype=np.uint8)
    labels = np.zeros((2, 1), np.uint8)
    npz = write_npz(tmp_path / "organmnist3d.npz", train_images=volumes, train_labels=labels)
    refs = [f"{npz.resolve()}::train_images/{i}" for i in range(2)]
    out = load_images(refs, PreprocessConfig(image_size=16, spatial_dims=3), 1, progress=False)
    assert torch.equal(out[:, 0], torch.from_numpy(volumes))


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="absent.png"):
        load_images([str(tmp_path / "absent.png")], PreprocessConfig(), 1, progress=False)


def test_array_dataset_decodes_uint8_to_unit_float() -> None:
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    clinical = torch.tensor([[1.5], [2.5], [3.5]])  # float inputs pass through unchanged
    data = ArrayDataset((images, clinical), torch.tensor([0, 1, 1]))
    (batch_images, batch_clinical), target = data.batch(torch.tensor([2, 0]))
    assert batch_images.dtype == torch.float32
    assert batch_images[:, 0, 0, 0].tolist() == [1.0, 0.0]
    assert torch.equal(batch_clinical, torch.tensor([[3.5], [1.5]]))
    assert target.tolist() == [1, 0]
    (one_image, _), one_target = data[1]
    assert one_image[0, 0, 0].item() == pytest.approx(0.2) and one_target.item() == 1
    assert images[1, 0, 0, 0].item() == 51  # decoding does not touch the stored tensor
    assert len(data) == 3


def test_array_dataset_refuses_mismatched_lengths() -> None:
    with pytest.raises(DataError, match=r"\[2, 3\]"):
        ArrayDataset((torch.zeros(3, 1),), torch.zeros(2))


@pytest.mark.parametrize(
    ("targets", "task", "dtype", "shape"),
    [
        ([0, 1, 1], "binary", torch.int64, (3,)),  # class indices for cross-entropy
        ([2, 0, 1], "multiclass", torch.int64, (3,)),
        ([[1, 0, 1], [0, 0, 0]], "multilabel", torch.float32, (2, 3)),  # multi-hot for BCE
        ([1.5, 3.25], "regression", torch.float32, (2,)),  # values
    ],
)
def test_target_tensor(targets: list, task: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    out = target_tensor(targets, task)
    assert out.dtype == dtype and tuple(out.shape) == shape
    assert out.tolist() == targets
