"""Where a model looked: Grad-CAM, occlusion maps, and heat-map overlays for people to read.

Heat maps are ``float32`` arrays in [0, 1] with the image's spatial shape, 1 where the
evidence for the chosen class is strongest. They are relative within one image: they
say where the model's evidence lies, not how strong it is, and are not a segmentation.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medpredict.atomic import write_bytes
from medpredict.errors import ConfigError, DataError

# Grad-CAM briefly changes the model (hooks, requires_grad); one call at a time per process,
# so that the threads of the REST service cannot see each other's hooks.
_GRADCAM_LOCK = threading.Lock()

# Hook registries a Module keeps; MONAI's GradCAM adds hooks it never removes, so we restore them.
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_hooks",
)


def gradcam(model: nn.Module, image: torch.Tensor | np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM heat map of ``model``'s evidence for ``class_index`` (MONAI ``GradCAM``).

    The map is taken at ``model.gradcam_layer`` in eval mode and upsampled (bi/trilinear) to
    the image size. The model's train/eval modes, ``requires_grad`` flags, ``.grad`` tensors
    and hooks are all as before when this returns; no parameter gradient is computed. Calls
    are serialised within the process (safe from the REST service's threads).

    Args:
        model: a network built by :func:`medpredict.models.build_model` (anything with a
            ``gradcam_layer`` attribute naming a module with spatial output), or an
            :class:`~medpredict.models.ensemble.EnsembleNet`, whose map is the mean of its
            members' maps.
        image: ``(C, H, W)`` / ``(1, C, H, W)``, or ``(C, D, H, W)`` / ``(1, C, D, H, W)`` for
            a 3-D model, float32, preprocessed exactly as for prediction.
        class_index: the class whose evidence to show.

    Returns:
        ``(H, W)`` (or ``(D, H, W)``) float32 in [0, 1]; all zeros when the layer holds no
        positive evidence for the class.

    Raises:
        ConfigError: the model has no usable ``gradcam_layer``, or ``class_index`` is out of range.
        DataError: the image's shape does not fit the model.
    """
    from monai.visualize import GradCAM

    from medpredict.models.ensemble import EnsembleNet

    if isinstance(model, EnsembleNet):  # the mean of the members' maps, rescaled to [0, 1]
        maps = [gradcam(member, image, class_index) for member in model.members]
        return _min_max(torch.from_numpy(np.mean(maps, axis=0))[None]).numpy()[0].astype(np.float32)
    layer_name = getattr(model, "gradcam_layer", None)
    layer = dict(model.named_modules()).get(layer_name) if isinstance(layer_name, str) else None
    if layer is None or not isinstance(layer_name, str):
        raise ConfigError(
            f"Model {type(model).__name__} has no module named by gradcam_layer={layer_name!r}. "
            "Set model.gradcam_layer to the dotted name of its last convolutional stage."
        )
    x = _batch_of_one(image, _spatial_dims(model))
    _check_class_index(class_index, getattr(model, "num_classes", None))
    device = next(model.parameters()).device
    with _GRADCAM_LOCK, _untouched(model, layer), torch.inference_mode(False), torch.enable_grad():
        for parameter in model.parameters():
            parameter.requires_grad_(False)  # gradients flow to the activations only
        x = x.detach().clone().to(device=device, dtype=torch.float32).requires_grad_(True)
        cam = GradCAM(nn_module=model, target_layers=layer_name, postprocessing=_min_max)
        heat = cam(x, class_idx=int(class_index))
    return heat[0, 0].detach().cpu().numpy().astype(np.float32)


def occlusion(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    class_index: int,
    *,
    spatial_dims: int = 2,
    patch: int | None = None,
    stride: int | None = None,
    baseline: float | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> np.ndarray:
    """Occlusion map: how much the class probability drops when each region is hidden.

    Needs no gradients, so it explains any model, ONNX included. Each patch is filled with
    ``baseline``; a pixel's value is the mean probability drop over the patches covering it,
    negative drops clipped to 0, then divided by the largest.

    Args:
        predict_fn: maps a batch ``(N, C, *spatial)`` float32 to probabilities ``(N, K)``.
        image: ``(C, *spatial)`` or ``(1, C, *spatial)`` float32, preprocessed for ``predict_fn``.
        class_index: the class whose probability to watch.
        spatial_dims: 2 for images, 3 for volumes.
        patch: patch side in pixels; default about a seventh of the shortest side.
        stride: step between patches; default half the patch.
        baseline: fill value; default the image's per-channel mean.
        batch_size: occluded copies per ``predict_fn`` call.
        progress: show a progress bar when more than one batch is needed.

    Returns:
        ``(*spatial)`` float32 in [0, 1].

    Raises:
        ConfigError: ``class_index``, ``patch``, ``stride`` or ``batch_size`` out of range.
        DataError: the image's shape, or ``predict_fn``'s output shape, is wrong.
    """
    from medpredict.progress import progress_bar

    x = _batch_of_one(torch.as_tensor(np.asarray(image, dtype=np.float32)), spatial_dims)[0].numpy()
    spatial = x.shape[1:]
    patch = max(1, round(min(spatial) / 7)) if patch is None else patch
    stride = max(1, patch // 2) if stride is None else stride
    for label, value in (("patch", patch), ("stride", stride), ("batch_size", batch_size)):
        if int(value) != value or value < 1:
            raise ConfigError(f"occlusion {label} must be a positive integer, got {value!r}.")
    if patch > min(spatial):
        raise ConfigError(f"occlusion patch {patch} is larger than the image {spatial}; use a smaller patch.")
    fill = x.mean(axis=tuple(range(1, x.ndim)), keepdims=True) if baseline is None else np.float32(baseline)

    reference = _probabilities(predict_fn, x[None], 1)
    _check_class_index(class_index, reference.shape[1])
    reference_score = float(reference[0, class_index])

    starts = [_starts(size, patch, stride) for size in spatial]
    corners = list(itertools.product(*starts))
    drop_sum = np.zeros(spatial, dtype=np.float64)
    covered = np.zeros(spatial, dtype=np.float64)
    with progress_bar(
        total=len(corners), desc="occlusion", unit="patch", enabled=progress and len(corners) > batch_size
    ) as bar:
        for first in range(0, len(corners), batch_size):
            chunk = corners[first : first + batch_size]
            batch = np.repeat(x[None], len(chunk), axis=0)
            regions: list[tuple[slice, ...]] = [
                tuple(slice(s, s + patch) for s in corner) for corner in chunk
            ]
            for row, region in enumerate(regions):
                index: tuple[int | slice, ...] = (row, slice(None), *region)
                batch[index] = fill
            scores = _probabilities(predict_fn, batch, len(chunk))[:, class_index]
            for region, score in zip(regions, scores, strict=True):
                drop_sum[region] += reference_score - float(score)
                covered[region] += 1.0
            bar.update(len(chunk))
    heat = np.clip(drop_sum / np.maximum(covered, 1.0), 0.0, None)
    peak = heat.max()
    return (heat / peak if peak > 0 else heat).astype(np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a jet-coloured heat map over an image, for display.

    Args:
        image: ``(H, W)`` or ``(C, H, W)`` with C 1 or 3, values in [0, 1] (clipped).
        heatmap: ``(h, w)`` in [0, 1]; resized bilinearly to ``(H, W)`` if it differs.
        alpha: weight of the heat colours, in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ConfigError: ``alpha`` out of range.
        DataError: the image or heat map is not 2-D (after the channel axis).
    """
    from matplotlib import colormaps

    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"overlay alpha must be in [0, 1], got {alpha!r}.")
    rgb = _rgb(image)
    heat = _fit_heatmap(heatmap, rgb.shape[:2])
    colours = colormaps["jet"](heat)[..., :3]
    blended = (1.0 - alpha) * rgb + alpha * colours
    return np.round(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8)


def heat_colours(heatmap: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """A heat map in the overlays' colours (jet: blue = none, red = strongest), for display.

    Args:
        heatmap: ``(h, w)`` in [0, 1].
        size: ``(H, W)`` to resize to (bilinear); default the heat map's own size.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        DataError: the heat map is not 2-D.
    """
    from matplotlib import colormaps

    heat = _fit_heatmap(heatmap, size if size is not None else np.shape(heatmap))
    return np.round(colormaps["jet"](heat)[..., :3] * 255.0).astype(np.uint8)


def save_overlay_png(
    path: str | os.PathLike[str],
    image: np.ndarray,
    heatmap: np.ndarray,
    *,
    title: str | None = None,
    caption: str | None = None,
    alpha: float = 0.4,
) -> Path:
    """Write a PNG with the image and its heat-map overlay side by side, atomically.

    Both panels have the same size; the colour bar (0 = no evidence, 1 = strongest in this
    image) has its own narrow column. Pass a title without patient identifiers; it is drawn
    into the picture.

    Args:
        path: where to write; parent folders are created.
        image: as for :func:`overlay`.
        heatmap: as for :func:`overlay`.
        title: optional heading, e.g. ``"pneumonia  p(pneumonia)=0.93"``.
        caption: what the map shows, e.g. ``"Grad-CAM: evidence for 'pneumonia'"`` (the
            right panel's title).
        alpha: as for :func:`overlay`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib import cm, colors
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rgb = _rgb(image)
    blended = overlay(image, heatmap, alpha=alpha)
    figure = Figure(figsize=(7.4, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(1, 3, width_ratios=(1.0, 1.0, 0.05), wspace=0.08)
    left, right, bar = (figure.add_subplot(grid[0, i]) for i in range(3))
    left.imshow(rgb, interpolation="nearest")
    left.set_title("image", fontsize=9)
    right.imshow(blended, interpolation="nearest")
    right.set_title(caption or "evidence", fontsize=9)
    for axes in (left, right):
        axes.set_axis_off()
    scale = cm.ScalarMappable(norm=colors.Normalize(0.0, 1.0), cmap="jet")
    figure.colorbar(scale, cax=bar)
    if title:
        figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return write_bytes(path, buffer.getvalue())


# -- helpers -------------------------------------------------------------------------------------


def _spatial_dims(model: nn.Module) -> int:
    """2 or 3, from the first convolution in the model (2 when there is none)."""
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            return 3
        if isinstance(module, nn.Conv2d | nn.Conv1d):
            return 2
    return 2


def _batch_of_one(image: torch.Tensor | np.ndarray, spatial_dims: int) -> torch.Tensor:
    x = torch.as_tensor(image)
    if x.dim() == spatial_dims + 1:
        x = x.unsqueeze(0)
    if x.dim() != spatial_dims + 2 or x.shape[0] != 1:
        layout = "(C, H, W) or (1, C, H, W)" if spatial_dims == 2 else "(C, D, H, W) or (1, C, D, H, W)"
        raise DataError(
            f"Expected one image shaped {layout} for a {spatial_dims}-D model, got {tuple(x.shape)}."
        )
    return x.float()


def _check_class_index(class_index: int, num_classes: int | None) -> None:
    if (
        int(class_index) != class_index
        or class_index < 0
        or (num_classes is not None and class_index >= num_classes)
    ):
        valid = f"0..{num_classes - 1}" if num_classes is not None else "a non-negative integer"
        raise ConfigError(f"class_index {class_index!r} is out of range; the model has classes {valid}.")


def _min_max(x: torch.Tensor) -> torch.Tensor:
    """Scale each map of a batch to [0, 1]; a constant map becomes zeros."""
    flat = x.detach().flatten(1)
    low = flat.min(dim=1).values.view(-1, *[1] * (x.dim() - 1))
    span = (flat.max(dim=1).values - flat.min(dim=1).values).view(-1, *[1] * (x.dim() - 1))
    return torch.where(span > 1e-12, (x.detach() - low) / span.clamp_min(1e-12), torch.zeros_like(x))


@contextlib.contextmanager
def _untouched(model: nn.Module, layer: nn.Module) -> Iterator[None]:
    """Restore modes, requires_grad flags, grads, hooks and ``inplace`` after MONAI's GradCAM.

    MONAI switches the whole model to eval and back to train (losing per-module modes such
    as frozen BatchNorm), calls ``zero_grad``, sets ``inplace=False`` on the target layer and
    registers hooks without keeping their handles.
    """
    modes = [(module, module.training) for module in model.modules()]
    parameters = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    hooks = {name: dict(getattr(layer, name)) for name in _HOOK_DICTS if hasattr(layer, name)}
    full_backward = getattr(layer, "_is_full_backward_hook", None)
    inplace = layer.__dict__.get("inplace")
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for parameter, requires_grad, grad in parameters:
            parameter.requires_grad_(requires_grad)
            parameter.grad = grad
        for name, saved in hooks.items():
            registry = getattr(layer, name)
            registry.clear()
            registry.update(saved)
        if hasattr(layer, "_is_full_backward_hook"):
            layer._is_full_backward_hook = full_backward
        if inplace is not None:
            layer.__dict__["inplace"] = inplace


def _starts(size: int, patch: int, stride: int) -> list[int]:
    """Patch start positions along one axis, the last one flush with the edge."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def _probabilities(
    predict_fn: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, rows: int
) -> np.ndarray:
    output = np.asarray(predict_fn(batch.astype(np.float32, copy=False)), dtype=np.float64)
    if output.ndim != 2 or output.shape[0] != rows:
        raise DataError(
            f"predict_fn returned shape {output.shape} for a batch of {rows}; "
            "it must return probabilities shaped (N, K)."
        )
    return output


def _rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(C, H, W)`` in [0, 1] -> ``(H, W, 3)`` float in [0, 1]."""
    array = np.nan_to_num(np.asarray(image, dtype=np.float32))
    if array.ndim == 3 and array.shape[0] in (1, 3):
        array = np.moveaxis(array, 0, -1)
        array = np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array
    elif array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    else:
        raise DataError(
            f"Expected an image shaped (H, W) or (C, H, W) with C 1 or 3, got {array.shape}. "
            "For a volume, pass one slice."
        )
    return np.clip(array, 0.0, 1.0)


def _fit_heatmap(heatmap: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32))
    if heat.ndim != 2:
        raise DataError(f"Expected a heat map shaped (H, W), got {heat.shape}. For a volume, pass one slice.")
    if heat.shape != tuple(size):
        resized = F.interpolate(
            torch.from_numpy(heat)[None, None], size=tuple(size), mode="bilinear", align_corners=False
        )
        heat = resized[0, 0].numpy()
    return np.clip(heat, 0.0, 1.0)
