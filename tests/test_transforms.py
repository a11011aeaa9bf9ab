"""Tests for medpredict.data.transforms: resizing, channels, normalisation and batch augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medpredict.config import AugmentConfig, PreprocessConfig
from medpredict.data.transforms import BatchAugment, Normalisation, preprocess, resize, to_channels


def smooth_batch(n: int, spatial: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Images in [0, 1] with structure (a blurred random field), so geometry changes show."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, *(max(2, s // 4) for s in spatial), generator=g)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    return torch.nn.functional.interpolate(coarse, size=spatial, mode=mode, align_corners=False)


@pytest.mark.parametrize("spatial", [(32, 32), (12, 16, 16)], ids=["2d", "3d"])
def test_augment_is_repeatable_for_a_seed(spatial: tuple[int, ...]) -> None:
    batch = smooth_batch(6, spatial)
    augment = BatchAugment(AugmentConfig(hflip=True), spatial_dims=len(spatial))
    first = augment(batch, torch.Generator().manual_seed(42))
    again = augment(batch, torch.Generator().manual_seed(42))
    other = augment(batch, torch.Generator().manual_seed(43))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("spatial", [(32, 32), (12, 16, 16)], ids=["2d", "3d"])
def test_augment_changes_images_and_keeps_shape_and_range(spatial: tuple[int, ...]) -> None:
    batch = smooth_batch(8, spatial)
    before = batch.clone()
    out = BatchAugment(AugmentConfig(strength=2.0, probability=1.0), len(spatial))(
        batch, torch.Generator().manual_seed(0)
    )
    assert out.shape == batch.shape and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    changed = (out - batch).flatten(1).abs().amax(1)
    assert (changed > 0.05).all()  # every sample moved, not just a few
    assert torch.equal(batch, before)  # the input batch is not modified in place


def test_augment_of_bright_images_stays_in_range() -> None:
    batch = torch.ones(4, 1, 16, 16)  # noise on a white image would exceed 1 without the clamp
    out = BatchAugment(AugmentConfig(strength=4.0, noise_std=0.5, probability=1.0))(
        batch, torch.Generator().manual_seed(1)
    )
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_zero_strength_is_identity() -> None:
    batch = smooth_batch(4, (16, 16))
    augment = BatchAugment(AugmentConfig(strength=0.0))
    assert not augment.active
    assert torch.equal(augment(batch, torch.Generator().manual_seed(0)), batch)


def test_augment_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    BatchAugment(AugmentConfig())(smooth_batch(4, (16, 16)), torch.Generator().manual_seed(0))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_hflip_alone_mirrors() -> None:
    # Every other magnitude off: the only change can be a left-right flip of some samples.
    config = AugmentConfig(rotate_deg=0, scale=0, translate=0, contrast=0, noise_std=0, hflip=True)
    batch = smooth_batch(16, (8, 8))
    out = BatchAugment(config)(batch, torch.Generator().manual_seed(5))
    for original, got in zip(batch, out, strict=True):
        assert torch.allclose(got, original, atol=1e-5) or torch.allclose(got, original.flip(-1), atol=1e-5)
    assert not torch.allclose(out, batch, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "size", "dims", "expected"),
    [
        ((1, 64, 64), 28, 2, (1, 28, 28)),  # shrink
        ((3, 20, 30), 32, 2, (3, 32, 32)),  # enlarge, non-square, colour
        ((1, 28, 28), 28, 2, (1, 28, 28)),  # already the size
        ((1, 10, 20, 20), 16, 3, (1, 16, 16, 16)),  # volume
    ],
)
def test_resize_shapes(shape: tuple[int, ...], size: int, dims: int, expected: tuple[int, ...]) -> None:
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    out = resize(image, size, dims)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == expected
    assert out.min() >= 0 and out.max() <= 1


def test_resize_shrinking_averages_areas() -> None:
    # A 2x2 checkerboard of 2x2 blocks shrunk to 2x2 keeps each block's value exactly (area mode).
    image = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.float32)[None]
    assert torch.equal(resize(image, 2), torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))
    # A one-pixel line survives a 4x shrink as a quarter-intensity pixel, not dropped as nearest would.
    line = torch.zeros(1, 8, 8)
    line[0, :, 1] = 1.0
    assert resize(line, 2)[0, :, 0].tolist() == [0.25, 0.25]


@pytest.mark.parametrize(
    ("have", "want"),
    [
        (1, 1),  # unchanged
        (1, 3),  # grey repeated to RGB
        (3, 1),  # RGB to luminance
        (3, 3),  # unchanged
    ],
)
def test_to_channels(have: int, want: int) -> None:
    image = torch.rand(have, 5, 6)
    out = to_channels(image, want)
    assert tuple(out.shape) == (want, 5, 6)
    if have == 3 and want == 1:
        expected = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
        assert torch.allclose(out[0], expected)
    elif have == 1 and want == 3:
        assert all(torch.equal(out[c], image[0]) for c in range(3))
    else:
        assert torch.equal(out, image)


def test_to_channels_keeps_rgb_of_rgba() -> None:
    image = torch.rand(4, 5, 6)
    assert torch.equal(to_channels(image, 3), image[:3])


@pytest.mark.parametrize(
    ("shape", "channels", "config", "expected"),
    [
        ((3, 50, 40), 1, PreprocessConfig(image_size=28), (1, 28, 28)),  # colour photo to grey model input
        ((1, 20, 20), 3, PreprocessConfig(image_size=64), (3, 64, 64)),  # grey to a 3-channel network
        ((1, 8, 12, 12), 1, PreprocessConfig(image_size=16, spatial_dims=3), (1, 16, 16, 16)),  # volume
    ],
)
def test_preprocess_shapes(
    shape: tuple[int, ...], channels: int, config: PreprocessConfig, expected: tuple
) -> None:
    out = preprocess(np.random.default_rng(1).random(shape, dtype=np.float32), config, channels)
    assert tuple(out.shape) == expected and out.dtype == torch.float32


def test_normalisation_fit_and_apply() -> None:
    images = torch.tensor([0.0, 0.5, 1.0, 0.5]).view(4, 1, 1, 1)
    norm = Normalisation.fit(images, "zscore")
    assert norm.mean == pytest.approx(0.5)
    assert norm.std == pytest.approx(float(images.std()))
    assert torch.allclose(norm.apply(images).mean(), torch.tensor(0.0), atol=1e-6)
    assert norm.to_dict() == {"mean": norm.mean, "std": norm.std}
    assert Normalisation.fit(images, "unit") == Normalisation(0.0, 1.0)
    flat = Normalisation.fit(torch.full((3, 1, 2, 2), 0.3), "zscore")
    assert flat.std == pytest.approx(1e-6)  # constant images cannot give a zero divisor
