"""What an entry of a model name table says about the network it builds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """One row of a model table: how to build the network and what input it needs.

    Attributes:
        build: ``build(*, in_channels, num_classes, spatial_dims, dropout) -> nn.Module``.
        description: one line for ``--help``, reports and the model card.
        spatial_dims: the spatial dimensionalities the network supports, e.g. ``(2, 3)``.
        min_size: smallest input side (pixels/voxels) for which the network runs and its
            Grad-CAM layer still has at least one pixel per axis.
        default_size: the input side the network is meant for; what ``train`` resizes to when
            the config does not say.
    """

    build: Callable[..., nn.Module]
    description: str
    spatial_dims: tuple[int, ...]
    min_size: int
    default_size: int
