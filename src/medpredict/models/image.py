"""Image classifiers: small networks designed here, and MONAI networks behind the same interface.

Every class here is an :class:`ImageClassifier`: ``features(x)`` maps ``(N, C, H, W)`` (or
``(N, C, D, H, W)``) float32 to the pooled representation ``(N, embedding_dim)``, a
dropout + linear ``head`` maps that to logits ``(N, num_classes)``, and ``gradcam_layer``
names the module whose activations Grad-CAM weighs. The head always lives under the name
``head`` so that :func:`medpredict.models.weights.load_weights` can skip it when fine-tuning
to another number of classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The name of the classifier head in every state dict; weights loading relies on it.
HEAD_PREFIX = "head."


def _conv(spatial_dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def _batch_norm(spatial_dims: int) -> type[nn.BatchNorm2d] | type[nn.BatchNorm3d]:
    return nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d


def grid_avg_pool(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Average-pool every spatial axis of ``x`` to ``grid`` cells, like ``adaptive_avg_pool``.

    Written with slices because the TorchScript-based ONNX exporter refuses
    ``adaptive_avg_pool`` when ``grid`` does not divide the input size (7 -> 4 at 28 px).
    The bins are those of ``adaptive_avg_pool``, so the result is the same; pooling one axis
    at a time is exact because all bins along an axis are averaged with equal weight.
    """
    for axis in range(2, x.dim()):
        size = x.shape[axis]
        bins = []
        for i in range(grid):
            start = (i * size) // grid
            # ceil((i + 1) * size / grid) with non-negative operands only: the exporter turns
            # "//" into ONNX Div, which truncates instead of flooring negative numbers.
            stop = ((i + 1) * size + grid - 1) // grid
            bins.append(x.narrow(axis, start, stop - start).mean(dim=axis, keepdim=True))
        x = torch.cat(bins, dim=axis)
    return x


class ImageClassifier(nn.Module):
    """Base class: a feature extractor to be written by subclasses, then a dropout + linear head.

    Args:
        embedding_dim: length of the vector ``features`` returns.
        num_classes: number of logits.
        dropout: dropout probability before the linear layer.
        gradcam_layer: dotted module name whose output Grad-CAM uses; it must have spatial extent.
    """

    def __init__(self, *, embedding_dim: int, num_classes: int, dropout: float, gradcam_layer: str) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.gradcam_layer = gradcam_layer
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(embedding_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the pooled representation ``(N, embedding_dim)`` the head classifies."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(N, num_classes)`` for images ``(N, C, *spatial)`` float32."""
        return self.head(self.features(x))


class SmallCNN(ImageClassifier):
    """A small Keras-style CNN (conv32-pool-conv64-pool-dense128), in 2-D or 3-D.

    conv3x3 32 -> ReLU -> maxpool 2 -> conv3x3 64 -> ReLU -> maxpool 2 -> pool to a fixed
    ``grid`` per axis -> flatten -> dense 128 -> ReLU -> [head: dropout -> classes]. The fixed
    grid (instead of Keras' size-dependent flatten) lets one network take any input size.
    Convolutions pad by one ("same"), so 8-px inputs still work.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        dropout: float = 0.0,
        grid: int = 4,
    ) -> None:
        # Grad-CAM reads the rectified conv2 maps: on the raw convolution output, gradients are
        # zero wherever the ReLU is off and the channel weights come out negative.
        super().__init__(embedding_dim=128, num_classes=num_classes, dropout=dropout, gradcam_layer="act2")
        conv = _conv(spatial_dims)
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        self.grid = grid
        self.conv1 = conv(in_channels, 32, kernel_size=3, padding=1)
        self.act1 = nn.ReLU()
        self.pool1 = pool(2)
        self.conv2 = conv(32, 64, kernel_size=3, padding=1)
        self.act2 = nn.ReLU()
        self.pool2 = pool(2)
        self.dense = nn.Linear(64 * grid**spatial_dims, 128)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        x = grid_avg_pool(x, self.grid).flatten(1)
        return F.relu(self.dense(x))


class _BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (1x1 conv + BN when the shape changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, spatial_dims: int) -> None:
        super().__init__()
        conv, norm = _conv(spatial_dims), _batch_norm(spatial_dims)
        self.conv1 = conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(out_channels)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = norm(out_channels)
        # Each block starts as the identity, which makes short CPU trainings converge faster
        # (Goyal et al. 2017, "zero-gamma" initialisation).
        nn.init.zeros_(self.bn2.weight)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv(in_channels, out_channels, 1, stride=stride, bias=False), norm(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TinyResNet(ImageClassifier):
    """A residual network sized for 28-64 px images on a couple of CPU cores.

    Stem conv3x3 (stride 1 in 2-D, so 28-px detail survives; stride 2 in 3-D, where a
    full-resolution 32-channel volume would dominate the cost), then three stages of basic
    residual blocks with widths ``widths`` (stride 2 between stages), BatchNorm, global
    average pooling. One block per stage by default: about 0.31 M parameters and twice the
    training throughput of two blocks per stage, and enough for PneumoniaMNIST (test AUC
    0.959 after 6 epochs at 28 px). The Grad-CAM layer (``stage3``) is 7x7 at 28 px.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 2,
        dropout: float = 0.0,
        widths: tuple[int, int, int] = (32, 64, 128),
        depths: tuple[int, int, int] = (1, 1, 1),
    ) -> None:
        super().__init__(
            embedding_dim=widths[-1], num_classes=num_classes, dropout=dropout, gradcam_layer="stage3"
        )
        conv, norm = _conv(spatial_dims), _batch_norm(spatial_dims)
        stem_stride = 1 if spatial_dims == 2 else 2
        self.stem = nn.Sequential(
            conv(in_channels, widths[0], 3, stride=stem_stride, padding=1, bias=False),
            norm(widths[0]),
            nn.ReLU(),
        )
        stages = []
        previous = widths[0]
        for index, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks = []
            for block in range(depth):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(_BasicBlock(previous, width, stride, spatial_dims))
                previous = width
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3 = stages
        _init_conv_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return x.mean(dim=tuple(range(2, x.dim())))


class _SeparableBlock(nn.Module):
    """Depthwise conv3x3-BN-ReLU6 then pointwise conv1x1-BN-ReLU6 (MobileNet v1)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, spatial_dims: int) -> None:
        super().__init__()
        conv, norm = _conv(spatial_dims), _batch_norm(spatial_dims)
        self.depthwise = conv(
            in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = norm(in_channels)
        self.pointwise = conv(in_channels, out_channels, 1, bias=False)
        self.bn2 = norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn1(self.depthwise(x)))
        return F.relu6(self.bn2(self.pointwise(x)))


class MobileCNN(ImageClassifier):
    """A small MobileNet-v1-style network of depthwise-separable blocks, for phones and edge boxes.

    Stem conv3x3 stride 2 (32), then separable blocks 64, 128/2, 128, 256/2, 256; overall
    stride 8, global average pooling, 256-d embedding, about 0.13 M parameters.
    """

    _PLAN = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1))

    def __init__(
        self, *, in_channels: int, num_classes: int, spatial_dims: int = 2, dropout: float = 0.0
    ) -> None:
        super().__init__(
            embedding_dim=self._PLAN[-1][0],
            num_classes=num_classes,
            dropout=dropout,
            gradcam_layer=f"blocks.{len(self._PLAN) - 1}",
        )
        conv, norm = _conv(spatial_dims), _batch_norm(spatial_dims)
        self.stem = nn.Sequential(
            conv(in_channels, 32, 3, stride=2, padding=1, bias=False), norm(32), nn.ReLU6()
        )
        blocks = []
        previous = 32
        for width, stride in self._PLAN:
            blocks.append(_SeparableBlock(previous, width, stride, spatial_dims))
            previous = width
        self.blocks = nn.Sequential(*blocks)
        _init_conv_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return x.mean(dim=tuple(range(2, x.dim())))


def _init_conv_weights(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


class MonaiClassifier(ImageClassifier):
    """A MONAI network whose own classifier was removed, so that it returns pooled features.

    Args:
        body: the MONAI network, returning ``(N, embedding_dim)``.
        gradcam_layer: dotted name inside ``body`` (the ``body.`` prefix is added here).
    """

    def __init__(
        self, body: nn.Module, *, embedding_dim: int, num_classes: int, dropout: float, gradcam_layer: str
    ) -> None:
        super().__init__(
            embedding_dim=embedding_dim,
            num_classes=num_classes,
            dropout=dropout,
            gradcam_layer=f"body.{gradcam_layer}",
        )
        self.body = body

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)


# Builders, one per table entry. Each takes the same keyword arguments as build_model.


def build_small_cnn(*, in_channels: int, num_classes: int, spatial_dims: int, dropout: float) -> nn.Module:
    """The small CNN (:class:`SmallCNN`)."""
    return SmallCNN(
        in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims, dropout=dropout
    )


def build_tiny_resnet(*, in_channels: int, num_classes: int, spatial_dims: int, dropout: float) -> nn.Module:
    """The CPU-sized residual network (:class:`TinyResNet`)."""
    return TinyResNet(
        in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims, dropout=dropout
    )


def build_mobile_cnn(*, in_channels: int, num_classes: int, spatial_dims: int, dropout: float) -> nn.Module:
    """The depthwise-separable network (:class:`MobileCNN`)."""
    return MobileCNN(
        in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims, dropout=dropout
    )


def _monai_resnet(
    depth: int,
    *,
    in_channels: int,
    num_classes: int,
    spatial_dims: int,
    dropout: float,
    small_input: bool = False,
) -> nn.Module:
    from monai.networks import nets

    factory = {18: nets.resnet18, 50: nets.resnet50}[depth]
    body = factory(
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        conv1_t_size=3 if small_input else 7,
        conv1_t_stride=1 if small_input else 2,
        no_max_pool=small_input,
        feed_forward=False,
        shortcut_type="B",
        bias_downsample=False,
    )
    embedding_dim = 512 if depth == 18 else 2048
    return MonaiClassifier(
        body, embedding_dim=embedding_dim, num_classes=num_classes, dropout=dropout, gradcam_layer="layer4"
    )


def build_resnet18(*, in_channels: int, num_classes: int, spatial_dims: int, dropout: float) -> nn.Module:
    """MONAI ResNet-18 with the ImageNet stem (7x7 stride 2, max-pool)."""
    return _monai_resnet(
        18, in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims, dropout=dropout
    )


def build_resnet18_cifar(
    *, in_channels: int, num_classes: int, spatial_dims: int, dropout: float
) -> nn.Module:
    """MONAI ResNet-18 with MedMNIST's 28-px stem: 3x3 stride 1, no max-pool."""
    return _monai_resnet(
        18,
        in_channels=in_channels,
        num_classes=num_classes,
        spatial_dims=spatial_dims,
        dropout=dropout,
        small_input=True,
    )


def build_resnet50(*, in_channels: int, num_classes: int, spatial_dims: int, dropout: float) -> nn.Module:
    """MONAI ResNet-50 (bottleneck blocks) with the ImageNet stem."""
    return _monai_resnet(
        50, in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims, dropout=dropout
    )


def build_densenet121(*, in_channels: int, num_classes: int, spatial_dims: int, dropout: float) -> nn.Module:
    """MONAI DenseNet-121; Grad-CAM on the ReLU after the last dense block."""
    from monai.networks.nets import DenseNet121

    body = DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1)
    embedding_dim = 1024  # channels after DenseNet-121's last block; the contract test checks it
    body.class_layers.out = nn.Identity()
    return MonaiClassifier(
        body,
        embedding_dim=embedding_dim,
        num_classes=num_classes,
        dropout=dropout,
        gradcam_layer="class_layers.relu",
    )


def build_efficientnet_b0(
    *, in_channels: int, num_classes: int, spatial_dims: int, dropout: float
) -> nn.Module:
    """MONAI EfficientNet-B0 (no pretrained weights: nothing is downloaded)."""
    from monai.networks.nets import EfficientNetBN

    body = EfficientNetBN(
        "efficientnet-b0", pretrained=False, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=1
    )
    # The plain Swish exports to ONNX; MONAI's memory-efficient one is a custom autograd function.
    body.set_swish(memory_efficient=False)
    embedding_dim = body._fc.in_features
    body._fc = nn.Identity()  # type: ignore[assignment]
    body._dropout = nn.Identity()  # type: ignore[assignment]  # our head's dropout replaces MONAI's 0.2
    return MonaiClassifier(
        body,
        embedding_dim=embedding_dim,
        num_classes=num_classes,
        dropout=dropout,
        gradcam_layer="_conv_head",
    )
