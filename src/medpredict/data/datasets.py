"""In-memory datasets: images read once, preprocessed, and kept as a uint8 tensor.

Reading and resizing thousands of images every epoch would cost more than training a
small network on them, so images are decoded once (with a progress bar) into
``(N, C, H, W)`` uint8 and turned into float batches in [0, 1] on the fly.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from medpredict.config import PreprocessConfig
from medpredict.data.transforms import preprocess
from medpredict.errors import DataError
from medpredict.progress import progress_bar

log = logging.getLogger(__name__)


class ArrayDataset(torch.utils.data.Dataset):
    """Samples held as tensors: ``inputs`` (one tensor per model input) and ``target``.

    uint8 input tensors are images stored compactly; they come out as float32 in [0, 1].
    ``batch(index)`` returns a whole batch in one indexing operation.
    """

    def __init__(self, inputs: tuple[torch.Tensor, ...], target: torch.Tensor) -> None:
        lengths = {len(t) for t in inputs} | {len(target)}
        if len(lengths) != 1:
            raise DataError(f"Inputs and target have different lengths: {sorted(lengths)}.")
        self.inputs = inputs
        self.target = target

    def __len__(self) -> int:
        return len(self.target)

    @staticmethod
    def _decode(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.float().div_(255.0) if tensor.dtype == torch.uint8 else tensor

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        return tuple(self._decode(t[i]) for t in self.inputs), self.target[i]

    def batch(self, index: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        return tuple(self._decode(t[index]) for t in self.inputs), self.target[index]


def target_tensor(targets: Sequence[object], task: str) -> torch.Tensor:
    """Targets as the loss expects them: int64 classes, float32 multi-hot or float32 values."""
    if task == "multilabel":
        return torch.tensor(np.array([list(t) for t in targets]), dtype=torch.float32)  # type: ignore[call-overload]
    if task == "regression":
        return torch.tensor(np.asarray(targets, dtype=np.float32))
    return torch.tensor(np.asarray(targets, dtype=np.int64))


@lru_cache(maxsize=4)
def _npz_array(path: str, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz[key]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"Cannot read the array '{key}' of {path}: the npz file is damaged ({exc}).") from None


def _to_unit(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    return np.clip(array.astype(np.float32), 0.0, 1.0)


def _load_npz_group(
    path: str, key: str, indices: np.ndarray, config: PreprocessConfig, channels: int
) -> torch.Tensor:
    images = _npz_array(path, key)[indices]
    if images.ndim == 3 or (images.ndim == 4 and config.spatial_dims == 3):  # grey (N, H, W) / (N, D, H, W)
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and config.spatial_dims == 2:
        images = images.transpose(0, 3, 1, 2)
    batch = torch.from_numpy(_to_unit(images))
    if batch.shape[1] != channels:
        if channels == 1:
            batch = (batch[:, :3] * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            batch = batch[:, :1].expand(-1, channels, *batch.shape[2:])
    size = (config.image_size,) * config.spatial_dims
    if tuple(batch.shape[2:]) != size:
        mode = (
            "area"
            if max(batch.shape[2:]) > config.image_size
            else ("bilinear" if config.spatial_dims == 2 else "trilinear")
        )
        batch = F.interpolate(batch, size=size, mode=mode)
    return batch


def load_images(
    paths: Sequence[str], config: PreprocessConfig, channels: int, *, progress: bool = True
) -> torch.Tensor:
    """Read and preprocess every image into a ``(N, C, *size)`` uint8 tensor.

    MedMNIST references (``FILE.npz::KEY/INDEX``) are read in bulk; other files go through
    :func:`medpredict.readers.read_image`.

    Raises:
        DataError: a file is missing or unreadable (names the file).
    """
    size = (config.image_size,) * config.spatial_dims
    out = torch.empty((len(paths), channels, *size), dtype=torch.uint8)
    groups: dict[tuple[str, str], list[tuple[int, int]]] = {}
    files: list[tuple[int, str]] = []
    for row, path in enumerate(paths):
        if "::" in path:
            file, ref = path.split("::", 1)
            key, _, index = ref.rpartition("/")
            groups.setdefault((file, key), []).append((row, int(index)))
        else:
            files.append((row, path))
    for (file, key), members in groups.items():
        rows, indices = (np.array(x) for x in zip(*members, strict=True))
        out[rows] = quantise(_load_npz_group(file, key, indices, config, channels))
    if files:
        from medpredict.readers import read_image

        for row, path in progress_bar(files, desc="reading images", unit="img", enabled=progress, leave=False):
            image = read_image(path, channels=channels, spatial_dims=config.spatial_dims)
            out[row] = quantise(preprocess(image, config, channels))
    return out


def quantise(batch: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> uint8 (how datasets hold them; the predictor rounds the same way)."""
    return batch.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)
