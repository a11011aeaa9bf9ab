"""Tests for medpredict.data.fingerprints: exact (SHA-256) and near-duplicate (average hash) fingerprints."""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from fixtures_images import write_npz, write_png
from medpredict.data.fingerprints import average_hashes, content_hashes
from medpredict.data.transforms import resize


def blocks(seed: int, side: int = 64) -> torch.Tensor:
    """(1, side, side) image of 4x4 random blocks in [0.2, 0.8]: its hash bits sit far from the threshold."""
    values = torch.rand(4, 4, generator=torch.Generator().manual_seed(seed)) * 0.6 + 0.2
    return values.repeat_interleave(side // 4, 0).repeat_interleave(side // 4, 1)[None]


def test_identical_bytes_share_a_sha256(tmp_path: Path) -> None:
    first = write_png(tmp_path / "a.png", np.arange(64, dtype=np.uint8).reshape(8, 8))
    copy = tmp_path / "copy_under_another_name.png"
    shutil.copy(first, copy)
    other = write_png(tmp_path / "b.png", np.zeros((8, 8), np.uint8))
    hashes = content_hashes([str(first), str(copy), str(other)], progress=False)
    assert hashes[0] == hashes[1] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert hashes[2] != hashes[0]


def test_npz_references_hash_their_array(tmp_path: Path) -> None:
    images = np.stack([np.eye(4, dtype=np.uint8), np.eye(4, dtype=np.uint8), np.zeros((4, 4), np.uint8)])
    npz = write_npz(tmp_path / "x.npz", train_images=images)
    hashes = content_hashes([f"{npz}::train_images/{i}" for i in range(3)], progress=False)
    assert hashes[0] == hashes[1] == hashlib.sha256(images[0].tobytes()).hexdigest()
    assert hashes[2] != hashes[0]


def test_unreadable_files_hash_to_nan(tmp_path: Path) -> None:
    hashes = content_hashes([str(tmp_path / "absent.png"), f"{tmp_path / 'absent.npz'}::train_images/0"],
                            progress=False)
    assert hashes.isna().all()


def test_average_hash_survives_brightening_and_resizing() -> None:
    image = blocks(0)
    brighter = (image + 0.08).clamp(0, 1)
    smaller = resize(image, 40)  # a non-integer factor: block edges blur
    larger = resize(image, 100)
    hashes = average_hashes(torch.stack([image, brighter])).tolist()
    assert hashes[0] == hashes[1]
    # one size per call: a batch holds images of one size
    assert average_hashes(smaller[None])[0] == hashes[0]
    assert average_hashes(larger[None])[0] == hashes[0]


def test_average_hash_tells_different_images_apart() -> None:
    hashes = average_hashes(torch.stack([blocks(0), blocks(1), blocks(0).flip(-1)]))
    assert hashes.nunique() == 3
    assert len(hashes[0]) == 16 * 16 // 4  # 256 bits as hex


def test_average_hash_of_colour_and_volume_inputs() -> None:
    grey = blocks(2)
    colour = grey.expand(3, -1, -1)  # the same picture in RGB
    assert average_hashes(colour[None])[0] == average_hashes(grey[None])[0]
    volume = grey[:, None].expand(1, 5, 64, 64)  # the same picture on every slice
    assert average_hashes(volume[None])[0] == average_hashes(grey[None])[0]


def test_blank_image_hashes_to_nan() -> None:
    black, grey = torch.zeros(1, 32, 32), torch.full((1, 32, 32), 0.7)
    hashes = average_hashes(torch.stack([black, grey, blocks(3, 32)]))
    # blank images carry no picture, so they must not all count as duplicates of each other
    assert math.isnan(hashes[0]) and math.isnan(hashes[1])
    assert isinstance(hashes[2], str)
