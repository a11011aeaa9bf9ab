"""Wrap a network so that it takes images in [0, 1] and normalises them itself.

Putting the normalisation inside the model means the statistics travel with the weights
(and into ONNX), so inference cannot drift from training.
"""

from __future__ import annotations

import torch
from torch import nn


class InputNormalised(nn.Module):
    """``net((x - mean) / std)``, keeping ``net``'s model interface (features, Grad-CAM layer)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor([float(mean)]))
        self.register_buffer("std", torch.tensor([float(std)]))
        self.gradcam_layer = f"net.{net.gradcam_layer}"
        self.embedding_dim = net.embedding_dim
        self.num_classes = getattr(net, "num_classes", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.net.features((x - self.mean) / self.std)  # type: ignore[operator]
        return features
