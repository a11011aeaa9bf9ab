"""The image model table and the one function that builds from it.

``MODELS`` is a plain dict (no decorator registry), so "go to definition" finds every
network. Each built model takes ``(N, C, H, W)`` or ``(N, C, D, H, W)`` float32 and returns
logits ``(N, num_classes)``; it also has ``features(x) -> (N, embedding_dim)``,
``embedding_dim``, ``num_classes`` and ``gradcam_layer`` (see ``docs/CONTRACTS.md``).
Tabular and fusion networks live in their own tables beside this one.

Parameter counts below are for ``in_channels=1, num_classes=2`` in 2-D.
"""

from __future__ import annotations

from torch import nn

from medpredict.errors import ConfigError, unknown_choice
from medpredict.models import image
from medpredict.models.spec import ModelSpec
from medpredict.models.weights import WeightsReport, load_weights

__all__ = [
    "ALIASES",
    "MODELS",
    "ModelSpec",
    "WeightsReport",
    "build_model",
    "check_input_size",
    "load_weights",
    "resolve_name",
]

MODELS: dict[str, ModelSpec] = {
    # ~0.31 M parameters; the default: a few minutes per PneumoniaMNIST run on 2 CPU cores
    # (training at 28 px: ~240 images per CPU-second, resnet18-cifar ~33).
    "tiny-resnet": ModelSpec(
        build=image.build_tiny_resnet,
        description="Small residual net (3 stages of basic blocks, 32/64/128) for 28-64 px on CPU",
        spatial_dims=(2, 3),
        min_size=8,
        default_size=28,
    ),
    # ~0.15 M parameters; a small Keras-style CNN (called "brief-cnn" before, see ALIASES).
    "small-cnn": ModelSpec(
        build=image.build_small_cnn,
        description="Small Keras-style CNN: conv32-pool-conv64-pool-dense128",
        spatial_dims=(2, 3),
        min_size=4,
        default_size=64,
    ),
    # ~0.13 M parameters; depthwise-separable, cheap at inference.
    "mobile-cnn": ModelSpec(
        build=image.build_mobile_cnn,
        description="MobileNet-v1-style depthwise-separable net, 32-256 channels",
        spatial_dims=(2, 3),
        min_size=8,
        default_size=64,
    ),
    # ~11.2 M parameters; MedMNIST's ResNet-18 (28) baseline.
    "resnet18-cifar": ModelSpec(
        build=image.build_resnet18_cifar,
        description="MONAI ResNet-18 with a 3x3 stride-1 stem and no max-pool (MedMNIST 28-px recipe)",
        spatial_dims=(2, 3),
        min_size=8,
        default_size=28,
    ),
    # ~11.2 M parameters.
    "resnet18": ModelSpec(
        build=image.build_resnet18,
        description="MONAI ResNet-18 with the ImageNet stem (7x7 stride 2, max-pool)",
        spatial_dims=(2, 3),
        min_size=32,
        default_size=224,
    ),
    # ~23.5 M parameters.
    "resnet50": ModelSpec(
        build=image.build_resnet50,
        description="MONAI ResNet-50 (bottleneck blocks) with the ImageNet stem",
        spatial_dims=(2, 3),
        min_size=32,
        default_size=224,
    ),
    # ~7.0 M parameters.
    "densenet121": ModelSpec(
        build=image.build_densenet121,
        description="MONAI DenseNet-121",
        spatial_dims=(2, 3),
        min_size=32,
        default_size=224,
    ),
    # ~4.0 M parameters.
    "efficientnet-b0": ModelSpec(
        build=image.build_efficientnet_b0,
        description="MONAI EfficientNet-B0 (randomly initialised)",
        spatial_dims=(2, 3),
        min_size=32,
        default_size=224,
    ),
}


#: Former names, still accepted (bundles written under them name them), never offered as choices.
ALIASES: dict[str, str] = {"brief-cnn": "small-cnn"}


def resolve_name(name: str) -> str:
    """The table key for ``name``, following :data:`ALIASES`.

    Raises:
        ConfigError: unknown name (with the closest match).
    """
    name = ALIASES.get(name, name)
    if name not in MODELS:
        raise unknown_choice("model", name, MODELS)
    return name


def check_input_size(name: str, size: int) -> None:
    """Refuse an input side below the network's smallest (:attr:`ModelSpec.min_size`).

    Called before any data is read, so a training run fails in a second instead of after
    loading every image.

    Raises:
        ConfigError: unknown name, or ``size`` below the minimum (names the model, the size,
            the minimum and the size the network is meant for).
    """
    spec = MODELS[resolve_name(name)]
    if size < spec.min_size:
        raise ConfigError(
            f"Model '{name}' needs images of at least {spec.min_size} px per side; the image size is {size}. "
            f"Pass --image-size {spec.min_size} or more ({name} is meant for {spec.default_size} px), "
            "or choose a model for small images such as tiny-resnet."
        )


def build_model(
    name: str, *, in_channels: int, num_classes: int, spatial_dims: int = 2, dropout: float = 0.0
) -> nn.Module:
    """Build the image network ``name`` from :data:`MODELS`, randomly initialised.

    Args:
        name: a key of :data:`MODELS` (or a former name in :data:`ALIASES`).
        in_channels: 1 for grey images, 3 for colour.
        num_classes: number of logits (2 for binary tasks, which use softmax).
        spatial_dims: 2 for images, 3 for volumes.
        dropout: dropout probability before the final linear layer, in [0, 1).

    Raises:
        ConfigError: unknown name (with the closest match), unsupported ``spatial_dims``, or a
            count or probability out of range.
    """
    spec = MODELS[resolve_name(name)]
    if spatial_dims not in spec.spatial_dims:
        supported = " or ".join(str(d) for d in spec.spatial_dims)
        raise ConfigError(
            f"Model '{name}' does not support spatial_dims={spatial_dims}; it supports {supported}. "
            f"Pick a model that does, or convert the input."
        )
    if int(in_channels) != in_channels or in_channels < 1:
        raise ConfigError(f"in_channels must be a positive integer, got {in_channels!r}.")
    if int(num_classes) != num_classes or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}.")
    return spec.build(
        in_channels=int(in_channels), num_classes=int(num_classes), spatial_dims=spatial_dims, dropout=dropout
    )
