"""Tests for medpredict.calibration.conformal: coverage guarantee, sampled uncertainty, referral."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medpredict.calibration.conformal import (
    SplitConformal,
    coverage,
    mc_dropout_probs,
    predictive_entropy,
    referral_curve,
    set_size_summary,
    tta_probs,
)
from medpredict.calibration.scalers import softmax
from medpredict.errors import ConfigError, DataError


def _draw(seed: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels from softmax(z); the model sees z with noise and is somewhat over-confident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, (n, k))
    y = (rng.random(n)[:, None] > softmax(z).cumsum(axis=1)).sum(axis=1)
    return softmax(1.5 * (z + rng.normal(0.0, 0.5, (n, k)))), y


@pytest.mark.parametrize(
    ("method", "k", "alpha"),
    [
        ("lac", 2, 0.1),  # binary, smallest sets
        ("lac", 4, 0.1),  # multiclass
        ("aps", 4, 0.1),  # adaptive sets
        ("aps", 2, 0.2),  # binary APS at another level
    ],
)
def test_conformal_sets_reach_target_coverage_on_test(method: str, k: int, alpha: float) -> None:
    # The acceptance test: coverage on test within +-3 points of 1 - alpha.
    probs_val, y_val = _draw(10, 3000, k)
    probs_test, y_test = _draw(11, 3000, k)
    conformal = SplitConformal(alpha=alpha, method=method).fit(probs_val, y_val)
    sets = conformal.predict_sets(probs_test)
    assert abs(coverage(sets, y_test) - (1 - alpha)) <= 0.03
    summary = set_size_summary(sets)
    assert summary["empty_rate"] < 0.1
    assert 0.8 <= summary["mean_size"] < k  # informative: not every class every time


def _accurate_binary(rng: np.random.Generator, n: int, harder_negatives: float = 0.0):
    """A binary model right on ~97% of cases; ``harder_negatives`` moves negatives towards positive."""
    y = rng.integers(0, 2, n)
    z = 3.0 * (2 * y - 1) + rng.normal(0, 1.5, n) + np.where(y == 0, harder_negatives, 0.0)
    pos = 1 / (1 + np.exp(-z))
    return np.c_[1 - pos, pos], y


def test_aps_is_the_default_and_holds_coverage_when_test_cases_are_harder() -> None:
    # Why APS is the default: with accuracy above 1 - alpha, LAC's quantile drops below 0.5,
    # so uncertain cases get empty sets, and coverage collapses once test negatives are
    # harder than validation's (as on PneumoniaMNIST's official test split). APS gives
    # such cases both classes instead.
    rng = np.random.default_rng(0)
    probs_val, y_val = _accurate_binary(rng, 1000)
    probs_test, y_test = _accurate_binary(rng, 1000, harder_negatives=1.5)
    assert SplitConformal().method == "aps"
    aps = SplitConformal(alpha=0.1).fit(probs_val, y_val).predict_sets(probs_test)
    lac = SplitConformal(alpha=0.1, method="lac").fit(probs_val, y_val).predict_sets(probs_test)
    assert abs(coverage(aps, y_test) - 0.9) <= 0.03
    assert coverage(lac, y_test) < 0.85
    assert set_size_summary(lac)["empty_rate"] > 2 * set_size_summary(aps)["empty_rate"]


def test_lower_alpha_gives_larger_sets() -> None:
    probs_val, y_val = _draw(0, 2000, 4)
    probs_test, _ = _draw(1, 2000, 4)
    small = SplitConformal(alpha=0.2).fit(probs_val, y_val).predict_sets(probs_test).sum()
    large = SplitConformal(alpha=0.05).fit(probs_val, y_val).predict_sets(probs_test).sum()
    assert large > small


def test_round_trip_and_errors() -> None:
    probs_val, y_val = _draw(0, 500, 3)
    fitted = SplitConformal(alpha=0.1, method="aps").fit(probs_val, y_val)
    restored = SplitConformal.from_dict(json.loads(json.dumps(fitted.to_dict())))
    np.testing.assert_array_equal(restored.predict_sets(probs_val), fitted.predict_sets(probs_val))
    with pytest.raises(ConfigError, match="Did you mean 'aps'"):
        SplitConformal(method="apss").fit(probs_val, y_val)
    with pytest.raises(ConfigError, match="alpha"):
        SplitConformal(alpha=1.5).fit(probs_val, y_val)
    with pytest.raises(DataError, match="too few"):
        SplitConformal(alpha=0.01).fit(probs_val[:20], y_val[:20])
    with pytest.raises(ConfigError, match="not fitted"):
        SplitConformal().predict_sets(probs_val)


def test_coverage_by_hand() -> None:
    sets = np.array([[True, False], [True, True], [False, True], [True, False]])
    assert coverage(sets, [0, 1, 0, 1]) == 0.5
    assert set_size_summary(sets)["size_counts"] == {1: 3, 2: 1}


def test_referral_curve_rises_when_uncertainty_is_informative() -> None:
    probs, y = _draw(3, 3000, 3)
    rows = referral_curve(y, probs)
    assert rows[0]["referral_rate"] == 0.0 and rows[0]["n_kept"] == 3000
    assert rows[-1]["accuracy_kept"] > rows[0]["accuracy_kept"] + 0.1
    assert rows[-1]["n_kept"] == 1500
    random_u = np.random.default_rng(0).random(3000)
    flat = referral_curve(y, probs, random_u)
    assert abs(flat[-1]["accuracy_kept"] - flat[0]["accuracy_kept"]) < 0.05


def test_referral_curve_decides_at_the_locked_threshold() -> None:
    y = np.array([1, 1, 0, 0])
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.9, 0.1], [0.8, 0.2]])
    # arg-max misses the first positive; a rule-out threshold of 0.25 catches it
    assert referral_curve(y, probs, rates=[0.0])[0]["accuracy_kept"] == 0.75
    assert referral_curve(y, probs, rates=[0.0], threshold=0.25)[0]["accuracy_kept"] == 1.0


def test_predictive_entropy_bounds() -> None:
    ent = predictive_entropy(np.array([[1.0, 0.0], [0.5, 0.5]]))
    assert ent[0] == pytest.approx(0.0, abs=1e-9) and ent[1] == pytest.approx(np.log(2))


class _DropoutNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5),
            torch.nn.Linear(32, 2),
        )
        self.norm = torch.nn.BatchNorm1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.body(x))


def test_mc_dropout_varies_restores_modes_and_rng() -> None:
    torch.manual_seed(0)
    model = _DropoutNet().eval()
    images = np.random.default_rng(0).random((6, 1, 4, 4)).astype(np.float32)
    state = torch.random.get_rng_state()
    out = mc_dropout_probs(model, images, n_samples=10, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # caller's RNG untouched
    assert out["mean"].shape == (6, 2) and np.allclose(out["mean"].sum(axis=1), 1.0)
    assert out["std"].max() > 0 and np.all(out["mutual_information"] >= 0)
    assert not model.training and not model.body[3].training  # modes restored
    again = mc_dropout_probs(model, images, n_samples=10, seed=1)
    np.testing.assert_allclose(again["mean"], out["mean"])  # seeded, reproducible
    with pytest.raises(ConfigError, match="no dropout"):
        mc_dropout_probs(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)), images)


def test_tta_probs_spread_reflects_sensitivity_to_shifts() -> None:
    images = np.zeros((3, 1, 8, 8), np.float32)
    images[:, :, 3:5, 3:5] = 1.0

    def centre_detector(x: np.ndarray) -> np.ndarray:
        p = x[:, 0, 3:5, 3:5].mean(axis=(1, 2))  # only looks at the centre pixels
        return np.stack([1 - p, p], axis=1)

    out = tta_probs(centre_detector, images, n_samples=12, seed=0)
    assert out["std"][:, 1].min() > 0  # shifted copies move the square out of view
    assert out["mean"][:, 1].max() < 1.0
