"""Tests for medpredict.explain.checks, with a tiny CNN trained here in well under a second."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from medpredict.errors import ConfigError, DataError
from medpredict.explain.checks import (
    border_fraction,
    burned_in_text_mask,
    deletion_insertion,
    explanation_sanity,
    local_attribution,
    permutation_importance_table,
    randomisation_check,
    randomised_copy,
    shortcut_flag,
)

SIZE = 16


def _squares(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class 1 holds a bright 3x3 square; every image holds a bright distractor bar."""
    x = rng.normal(0.2, 0.03, (n, 1, SIZE, SIZE)).astype(np.float32)
    y = np.arange(n) % 2
    for i in range(n):
        r, c = rng.integers(1, SIZE - 7), rng.integers(1, SIZE - 2)
        x[i, 0, r : r + 6, c] += 0.5
        if y[i]:
            a, b = rng.integers(2, SIZE - 5, 2)
            x[i, 0, a : a + 3, b : b + 3] += 0.7
    return np.clip(x, 0, 1), y


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
        self.gradcam_layer = "features.3"
        self.num_classes = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _local_gradcam(model: nn.Module, image: np.ndarray, class_index: int) -> np.ndarray:
    """Plain Grad-CAM on ``model.features`` (same resolution as the input), scaled to [0, 1]."""
    x = torch.as_tensor(image, dtype=torch.float32)[None]
    acts = model.features(x)
    acts.retain_grad()
    model.head(acts)[0, class_index].backward()
    cam = torch.relu((acts.grad.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1))[0].detach().numpy()
    span = cam.max() - cam.min()
    return ((cam - cam.min()) / span if span > 0 else np.zeros_like(cam)).astype(np.float32)


def _gradcam():
    """The project's Grad-CAM when it is there, else the plain one above."""
    try:
        from medpredict.explain.maps import gradcam
    except ImportError:
        return _local_gradcam
    return gradcam


def _predict_fn(model: nn.Module):
    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(torch.as_tensor(batch, dtype=torch.float32)), dim=1).numpy()

    return predict


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny tensors: extra intra-op threads only fight other processes for the 2 shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models_and_images(_one_torch_thread) -> tuple[nn.Module, nn.Module, np.ndarray]:
    rng = np.random.default_rng(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        trained = TinyCNN()
    untrained = copy.deepcopy(trained)
    x, y = _squares(128, rng)
    xt, yt = torch.tensor(x), torch.tensor(y)
    optimiser = torch.optim.Adam(trained.parameters(), lr=2e-2)
    for _ in range(60):  # full-batch steps: about 0.3 s on one idle core
        optimiser.zero_grad()
        nn.functional.cross_entropy(trained(xt), yt).backward()
        optimiser.step()
    x_test, y_test = _squares(64, rng)
    accuracy = (_predict_fn(trained)(x_test).argmax(axis=1) == y_test).mean()
    assert accuracy > 0.95, accuracy  # the model really learned the task
    return trained.eval(), untrained.eval(), x_test[y_test == 1][:6]


def test_gradcam_sanity_check_passes_for_trained_and_fails_for_randomised(models_and_images) -> None:
    # The acceptance test.
    trained, untrained, images = models_and_images
    explain = _gradcam()
    good = randomisation_check(trained, images, explain, seed=0)
    bad = randomisation_check(untrained, images, explain, seed=0)
    assert good["passed"] and good["similarity"] < 0.25
    assert not bad["passed"] and bad["similarity"] > 0.45
    assert good["n_images"] == 6 and len(good["per_image"]) == 6


def test_weight_independent_explanation_fails(models_and_images) -> None:
    trained, _, images = models_and_images
    out = randomisation_check(trained, images, lambda model, image, c: image[0])
    assert out["similarity"] == pytest.approx(1.0) and not out["passed"]


def test_faithfulness_separates_trained_from_untrained(models_and_images) -> None:
    trained, untrained, images = models_and_images
    explain = _gradcam()
    good = explanation_sanity(trained, images, explain, _predict_fn(trained))
    bad = explanation_sanity(untrained, images, explain, _predict_fn(untrained))
    assert good["passed"] and good["faithfulness_mean"] > 0.2
    assert good["insertion_auc_mean"] > good["deletion_auc_mean"]
    assert not bad["passed"] and abs(bad["faithfulness_mean"]) < 0.05


def test_randomised_copy_leaves_original_and_rng_alone(models_and_images) -> None:
    trained, _, _ = models_and_images
    before = [p.clone() for p in trained.parameters()]
    state = torch.random.get_rng_state()
    clone = randomised_copy(trained, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(torch.equal(a, b) for a, b in zip(before, trained.parameters(), strict=True))
    assert not torch.equal(next(clone.parameters()), before[0])
    with pytest.raises(ConfigError, match="reset_parameters"):
        randomised_copy(nn.ReLU())


def test_deletion_insertion_on_a_known_model() -> None:
    image = np.zeros((1, 8, 8), np.float32)
    image[0, 2:6, 2:6] = 1.0

    def centre(batch: np.ndarray) -> np.ndarray:
        p = batch[:, 0, 2:6, 2:6].mean(axis=(1, 2))
        return np.stack([1 - p, p], axis=1)

    right = np.zeros((8, 8))
    right[2:6, 2:6] = 1.0
    right += np.linspace(0, 0.1, 64).reshape(8, 8)  # break ties
    out = deletion_insertion(centre, image, right, steps=16, baseline=0.0)
    assert out["deletion_auc"] < 0.15 and out["insertion_auc"] > 0.85
    assert out["faithfulness"] > 0.4
    wrong = deletion_insertion(centre, image, 1.0 - right, steps=16, baseline=0.0)
    assert wrong["faithfulness"] < 0
    with pytest.raises(DataError, match="same size"):
        deletion_insertion(centre, image, np.zeros((4, 4)))


def test_border_fraction_values() -> None:
    assert border_fraction(np.ones((10, 10)), margin=0.1) == pytest.approx(0.36)
    frame = np.zeros((10, 10))
    frame[0, :] = 1.0
    assert border_fraction(frame) == 1.0
    centre = np.zeros((10, 10))
    centre[4:6, 4:6] = 1.0
    assert border_fraction(centre) == 0.0
    with pytest.raises(ConfigError, match="margin"):
        border_fraction(centre, margin=0.6)


def test_shortcut_flag_on_burned_in_text() -> None:
    image = np.full((1, 20, 20), 0.4, np.float32)
    image[0, 1:3, 14:19] = 1.0  # a burned-in "R" marker in the top-right corner
    assert burned_in_text_mask(image)[1, 15] and not burned_in_text_mask(image)[10, 10]
    on_text = np.zeros((20, 20))
    on_text[1:3, 14:19] = 1.0
    flag = shortcut_flag(on_text, image)
    assert flag["flagged"] and flag["text_fraction"] == 1.0 and len(flag["reasons"]) == 2
    lung = np.zeros((20, 20))
    lung[6:14, 5:15] = 1.0
    assert not shortcut_flag(lung, image)["flagged"]


@pytest.fixture
def table() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": rng.normal(60, 10, 300), "noise": rng.normal(0, 1, 300)})
    y = (rng.random(300) < 1 / (1 + np.exp(-(frame["age"] - 60) / 4))).astype(int)
    return frame, y


def _risk(frame: pd.DataFrame) -> np.ndarray:
    p = 1 / (1 + np.exp(-(frame["age"].to_numpy() - 60) / 4))
    return np.stack([1 - p, p], axis=1)


def test_permutation_importance_finds_the_used_feature(table) -> None:
    frame, y = table
    out = permutation_importance_table(_risk, frame, y, n_repeats=5)
    assert list(out.columns) == ["feature", "importance_mean", "importance_std"]
    assert out.iloc[0]["feature"] == "age" and out.iloc[0]["importance_mean"] > 0.2
    assert abs(out.set_index("feature").loc["noise", "importance_mean"]) < 1e-9
    with pytest.raises(DataError, match="DataFrame"):
        permutation_importance_table(_risk, frame.to_numpy(), y)


def test_local_attribution_per_patient(table) -> None:
    frame, _ = table
    patient = pd.Series({"age": 80.0, "noise": 3.0})
    out = local_attribution(_risk, patient, frame)
    assert out.iloc[0]["feature"] == "age" and out.iloc[0]["attribution"] > 0.3
    assert out.set_index("feature").loc["noise", "attribution"] == pytest.approx(0.0)
    assert out.attrs["prediction"] == pytest.approx(_risk(patient.to_frame().T)[0, 1])
    with pytest.raises(DataError, match="lacks"):
        local_attribution(_risk, pd.Series({"age": 80.0, "bmi": 30.0}), frame)
