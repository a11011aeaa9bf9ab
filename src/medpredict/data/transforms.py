"""Image preprocessing and augmentation, built from MONAI transforms.

Preprocessing is deterministic and is the same at training and inference: resize to the
configured size (area interpolation when shrinking, so thin structures survive), then
normalise with statistics stored in the bundle. Augmentation is applied to training
batches only, on the whole batch at once (MONAI's batched ``AffineTransform``), and its
strength is one number the tuner can search over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai import transforms as mt

from medpredict.config import AugmentConfig, PreprocessConfig


@dataclass(frozen=True)
class Normalisation:
    """Intensity normalisation stored with the model: ``(x - mean) / std`` on [0, 1] input."""

    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(cls, images: torch.Tensor, mode: str) -> Normalisation:
        """Learn mean/std from training images ``(N, C, ...)`` in [0, 1] (``unit`` keeps 0/1)."""
        if mode == "unit":
            return cls()
        sample = images[: min(len(images), 20_000)].float()
        return cls(mean=float(sample.mean()), std=max(float(sample.std()), 1e-6))

    def apply(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch - self.mean) / self.std

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}


def resize(image: np.ndarray | torch.Tensor, size: int, spatial_dims: int = 2) -> torch.Tensor:
    """Resize a channel-first image ``(C, H, W)`` (or ``(C, D, H, W)``) to ``size`` per side.

    Uses area interpolation when shrinking and bilinear/trilinear when enlarging.
    """
    tensor = torch.as_tensor(image, dtype=torch.float32)
    if tuple(tensor.shape[1:]) == (size,) * spatial_dims:
        return tensor
    shrinking = max(tensor.shape[1:]) > size
    mode = "area" if shrinking else ("bilinear" if spatial_dims == 2 else "trilinear")
    resized = mt.Resize(spatial_size=(size,) * spatial_dims, mode=mode)(tensor)
    return torch.as_tensor(resized).clamp_(0.0, 1.0)


def to_channels(image: np.ndarray | torch.Tensor, channels: int) -> torch.Tensor:
    """Make a channel-first image have 1 (luminance) or 3 (repeated) channels."""
    tensor = torch.as_tensor(image, dtype=torch.float32)
    have = tensor.shape[0]
    if have == channels:
        return tensor
    if channels == 3 and have > 3:  # RGBA and the like: drop the extra channels
        return tensor[:3]
    if channels == 1:
        if have >= 3:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(3, *([1] * (tensor.ndim - 1)))
            return (tensor[:3] * weights).sum(0, keepdim=True)
        return tensor[:1]
    return tensor[:1].expand(channels, *tensor.shape[1:]).clone()


def preprocess(image: np.ndarray | torch.Tensor, config: PreprocessConfig, channels: int) -> torch.Tensor:
    """Reader output (float [0, 1], channel-first) → model-sized tensor, before normalisation."""
    return resize(to_channels(image, channels), config.image_size, config.spatial_dims)


class BatchAugment:
    """Random affine, contrast and noise for a training batch ``(N, C, H, W)`` in [0, 1].

    Works on whole batches: per-sample MONAI array transforms cost about 1.5 ms an image
    on this CPU, more than the forward pass of a small network at 28 px. The geometry is
    MONAI's ``AffineTransform`` with one random matrix per sample; randomness comes from a
    generator seeded by the caller, so a run is repeatable.
    """

    def __init__(self, config: AugmentConfig, spatial_dims: int = 2) -> None:
        self.config = config
        self.spatial_dims = spatial_dims

    @property
    def active(self) -> bool:
        return self.config.strength > 0

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.active:
            return batch
        from monai.networks.layers import AffineTransform

        c, s = self.config, self.config.strength
        n, dims = batch.shape[0], self.spatial_dims

        def uniform(half_width: float, *shape: int) -> torch.Tensor:
            return (torch.rand(n, *shape, generator=generator) * 2 - 1) * half_width

        applied = (torch.rand(n, generator=generator) < c.probability).float()
        angle = uniform(np.deg2rad(c.rotate_deg * s)) * applied
        zoom = 1 + uniform(c.scale * s) * applied
        shift = uniform(2 * c.translate * s, dims) * applied[:, None]  # normalised coords span 2
        theta = torch.zeros(n, dims, dims + 1)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta[:, -2, -3], theta[:, -2, -2] = cos, -sin  # rotation in the (H, W) plane
        theta[:, -1, -3], theta[:, -1, -2] = sin, cos
        if dims == 3:
            theta[:, 0, 0] = 1 / zoom
        theta[:, :, -1] = shift
        out = AffineTransform(normalized=True, mode="bilinear", padding_mode="border", align_corners=False)(
            batch, theta
        )
        if c.hflip:
            flip = torch.rand(n, generator=generator) < 0.5
            out[flip] = out[flip].flip(-1)
        if c.contrast > 0:
            gamma = torch.exp(uniform(np.log1p(c.contrast * s))).view(n, *([1] * (out.ndim - 1)))
            out = out.clamp(0, 1) ** gamma
        if c.noise_std > 0:
            noisy = (torch.rand(n, generator=generator) < 0.3).float().view(n, *([1] * (out.ndim - 1)))
            out = out + noisy * c.noise_std * s * torch.randn(out.shape, generator=generator)
        return out.clamp_(0.0, 1.0)
