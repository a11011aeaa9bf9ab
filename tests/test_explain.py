"""Tests for medpredict.explain.maps: Grad-CAM, occlusion, overlays and their PNGs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from medpredict.errors import ConfigError, DataError
from medpredict.explain.maps import gradcam, occlusion, overlay, save_overlay_png
from medpredict.models import MODELS, build_model

SIZE = 24
CORNER = slice(0, 8)  # the bright square of positive images sits at [0:8, 0:8]


def _corner_task(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images; label 1 has a bright 6x6 square somewhere in the top-left 8x8 corner."""
    images = 0.3 * torch.rand(count, 1, SIZE, SIZE, generator=generator)
    labels = torch.arange(count) % 2
    for index in torch.nonzero(labels).flatten().tolist():
        row, col = torch.randint(0, 3, (2,), generator=generator).tolist()
        images[index, 0, row : row + 6, col : col + 6] = 1.0
    return images, labels


@pytest.fixture(scope="module")
def corner_model() -> torch.nn.Module:
    """tiny-resnet (the default model) trained for 25 seeded steps on the corner task."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    images, labels = _corner_task(256, generator)
    model = build_model("tiny-resnet", in_channels=1, num_classes=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(25):
        batch = torch.randint(0, len(images), (32,), generator=generator)
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    # 25 steps are too few for BatchNorm's running averages to catch up with the weights;
    # recompute them exactly so that eval mode sees what training saw.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        model(images)
    model.eval()
    test_images, test_labels = _corner_task(32, generator)
    with torch.no_grad():
        accuracy = (model(test_images).argmax(1) == test_labels).float().mean().item()
    assert accuracy >= 0.9, f"the corner task did not train (accuracy {accuracy:.2f})"
    return model


# -- Grad-CAM -------------------------------------------------------------------------------------


def test_gradcam_puts_the_mass_on_the_deciding_corner(corner_model) -> None:
    generator = torch.Generator().manual_seed(5)
    images, labels = _corner_task(8, generator)
    shares = []
    for image in images[labels == 1]:
        heat = gradcam(corner_model, image, class_index=1)
        assert heat.shape == (SIZE, SIZE) and heat.dtype == np.float32
        assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
        shares.append(heat[CORNER, CORNER].sum() / heat.sum())
    # The corner is 11% of the image; a map that ignored it would put about that much there.
    assert np.mean(shares) > 0.5, shares


def test_gradcam_leaves_the_model_as_it_found_it() -> None:
    torch.manual_seed(0)
    model = build_model("tiny-resnet", in_channels=1, num_classes=3)
    model.train()
    model.stage1.eval()  # a frozen-BatchNorm setup that model.train() would undo
    model.stem[0].weight.requires_grad_(False)
    model.head[1].weight.grad = torch.full_like(model.head[1].weight, 7.0)
    layer = dict(model.named_modules())[model.gradcam_layer]
    modes = {name: module.training for name, module in model.named_modules()}
    hooks = (len(layer._forward_hooks), len(layer._backward_hooks))

    heat = gradcam(model, torch.rand(1, 1, 16, 16), class_index=2)

    assert heat.shape == (16, 16)
    assert {name: module.training for name, module in model.named_modules()} == modes
    assert not model.stem[0].weight.requires_grad
    assert model.head[1].weight.requires_grad
    assert torch.all(model.head[1].weight.grad == 7.0), "existing gradients must survive"
    assert model.stage2[0].conv1.weight.grad is None, "no parameter gradient may be computed"
    assert (len(layer._forward_hooks), len(layer._backward_hooks)) == hooks, "hooks must be removed"


def test_gradcam_works_under_inference_mode_and_with_or_without_batch_axis() -> None:
    torch.manual_seed(0)
    model = build_model("small-cnn", in_channels=3, num_classes=2).eval()
    image = torch.rand(3, 20, 20)
    with torch.inference_mode():
        unbatched = gradcam(model, image, class_index=0)
    batched = gradcam(model, image[None].numpy(), class_index=0)
    assert unbatched.shape == (20, 20)
    np.testing.assert_allclose(unbatched, batched, atol=1e-6)


def test_gradcam_on_a_volume_returns_a_volume() -> None:
    torch.manual_seed(0)
    model = build_model("tiny-resnet", in_channels=1, num_classes=2, spatial_dims=3)
    heat = gradcam(model, torch.rand(1, 16, 16, 16), class_index=1)
    assert heat.shape == (16, 16, 16)
    assert heat.min() >= 0.0 and heat.max() <= 1.0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradcam_runs_on_every_model_in_the_table(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=2).eval()
    layer = dict(model.named_modules())[model.gradcam_layer]
    inplace = getattr(layer, "inplace", None)  # DenseNet's target is an in-place ReLU
    size = max(MODELS[name].min_size, 16)
    heat = gradcam(model, torch.rand(1, size, size), class_index=1)
    assert heat.shape == (size, size) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert getattr(layer, "inplace", None) == inplace


@pytest.mark.parametrize(
    ("image_shape", "class_index", "error", "message"),
    [
        ((1, 16, 16), 2, ConfigError, "class_index 2"),  # two classes: 0 and 1 only
        ((1, 16, 16), -1, ConfigError, "out of range"),  # negative index
        ((2, 1, 16, 16), 0, DataError, "one image"),  # a batch of two
        ((16, 16), 0, DataError, r"\(16, 16\)"),  # channel axis missing
    ],
)
def test_gradcam_refuses_bad_arguments(image_shape, class_index, error, message) -> None:
    model = build_model("small-cnn", in_channels=1, num_classes=2)
    with pytest.raises(error, match=message):
        gradcam(model, torch.rand(image_shape), class_index=class_index)


def test_gradcam_needs_a_gradcam_layer() -> None:
    model = build_model("small-cnn", in_channels=1, num_classes=2)
    model.gradcam_layer = "conv9"
    with pytest.raises(ConfigError, match="conv9"):
        gradcam(model, torch.rand(1, 16, 16), class_index=0)


# -- occlusion ------------------------------------------------------------------------------------

REGION = (slice(4, 10), slice(16, 22))


def _region_classifier(batch: np.ndarray) -> np.ndarray:
    """Probability of class 1 = mean brightness of REGION in channel 0; counts calls."""
    _region_classifier.calls += 1
    p1 = batch[:, 0, REGION[0], REGION[1]].mean(axis=(1, 2))
    return np.stack([1.0 - p1, p1], axis=1)


def test_occlusion_finds_the_region_that_drives_the_output() -> None:
    image = np.zeros((1, 28, 28), dtype=np.float32)
    image[0, REGION[0], REGION[1]] = 1.0
    _region_classifier.calls = 0
    heat = occlusion(_region_classifier, image, class_index=1, batch_size=64, progress=False)
    assert heat.shape == (28, 28) and heat.dtype == np.float32
    assert heat.max() == pytest.approx(1.0)
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert REGION[0].start <= peak[0] < REGION[0].stop and REGION[1].start <= peak[1] < REGION[1].stop
    assert heat[20:, :10].max() == 0.0, "hiding a far-away patch changes nothing"
    assert _region_classifier.calls == 1 + int(np.ceil(13 * 13 / 64))  # reference + batches


def test_occlusion_shows_a_progress_bar_for_many_batches(capsys, monkeypatch) -> None:
    from medpredict import progress

    image = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    _region_classifier.calls = 0
    monkeypatch.setattr(progress, "_is_terminal", lambda: True)  # bars are drawn on a terminal only
    occlusion(_region_classifier, image, class_index=0, patch=7, stride=7, batch_size=4, progress=True)
    assert "occlusion" in capsys.readouterr().err
    assert _region_classifier.calls == 1 + 4  # 16 patches in batches of 4
    monkeypatch.setattr(progress, "_is_terminal", lambda: False)  # a pipe or a log file: no bar
    occlusion(_region_classifier, image, class_index=0, patch=7, stride=7, batch_size=4, progress=True)
    assert "\r" not in capsys.readouterr().err


def test_occlusion_on_a_volume() -> None:
    volume = np.zeros((1, 8, 8, 8), dtype=np.float32)
    volume[0, :2, :2, :2] = 1.0

    def predict(batch: np.ndarray) -> np.ndarray:
        p1 = batch[:, 0, :2, :2, :2].mean(axis=(1, 2, 3))
        return np.stack([1.0 - p1, p1], axis=1)

    heat = occlusion(predict, volume, class_index=1, spatial_dims=3, patch=2, progress=False)
    assert heat.shape == (8, 8, 8)
    assert heat[0, 0, 0] == pytest.approx(1.0) and heat[7, 7, 7] == 0.0


@pytest.mark.parametrize(
    ("predict", "kwargs", "error", "message"),
    [
        (_region_classifier, {"class_index": 2}, ConfigError, "class_index 2"),  # only 2 classes
        (_region_classifier, {"class_index": 0, "patch": 40}, ConfigError, "larger than the image"),
        (lambda b: np.ones(len(b)), {"class_index": 0}, DataError, r"\(N, K\)"),  # 1-D output
    ],
)
def test_occlusion_refuses_bad_arguments(predict, kwargs, error, message) -> None:
    _region_classifier.calls = 0
    with pytest.raises(error, match=message):
        occlusion(predict, np.zeros((1, 28, 28), dtype=np.float32), progress=False, **kwargs)


# -- overlays -------------------------------------------------------------------------------------


def test_overlay_of_a_grey_image_is_rgb_uint8() -> None:
    result = overlay(np.full((20, 30), 0.5, dtype=np.float32), np.zeros((20, 30), dtype=np.float32))
    assert result.shape == (20, 30, 3) and result.dtype == np.uint8


def test_overlay_resizes_the_heatmap_and_colours_hot_red_and_cold_blue() -> None:
    image = np.zeros((3, 16, 16), dtype=np.float32)
    heat = np.zeros((4, 4), dtype=np.float32)
    heat[:2, :2] = 1.0  # hot top-left quarter
    result = overlay(image, heat, alpha=1.0)
    assert result.shape == (16, 16, 3)
    hot, cold = result[0, 0].astype(int), result[15, 15].astype(int)
    assert hot[0] > 100 and hot[2] < 20, hot  # jet's top is dark red
    assert cold[2] > 100 and cold[0] < 20, cold  # jet's bottom is dark blue


def test_overlay_with_no_alpha_is_the_image() -> None:
    image = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 8, 8)
    result = overlay(image, np.ones((8, 8), dtype=np.float32), alpha=0.0)
    expected = np.round(image[0] * 255).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(result[..., channel], expected)


@pytest.mark.parametrize(
    ("image_shape", "heat_shape", "alpha", "error"),
    [
        ((8, 8), (8, 8), 1.5, ConfigError),  # alpha above 1
        ((2, 8, 8), (8, 8), 0.4, DataError),  # two channels is neither grey nor RGB
        ((8, 8), (2, 8, 8), 0.4, DataError),  # heat map must be 2-D
    ],
)
def test_overlay_refuses_bad_arguments(image_shape, heat_shape, alpha, error) -> None:
    with pytest.raises(error):
        overlay(np.zeros(image_shape, dtype=np.float32), np.zeros(heat_shape, dtype=np.float32), alpha=alpha)


@pytest.mark.parametrize("title", [None, "pneumonia 0.93 (Grad-CAM)"])
def test_save_overlay_png_writes_one_readable_png(tmp_path, title) -> None:
    image = np.random.default_rng(0).random((28, 28)).astype(np.float32)
    heat = np.zeros((7, 7), dtype=np.float32)
    heat[3, 3] = 1.0
    path = save_overlay_png(tmp_path / "out" / "case.png", image, heat, title=title)
    assert path == tmp_path / "out" / "case.png"
    with Image.open(path) as png:
        assert png.format == "PNG" and png.width > png.height > 100
    assert [p.name for p in path.parent.iterdir()] == ["case.png"], "no temporary file may be left"
