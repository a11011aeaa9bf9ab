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
        ("mondrian", 2, 0.1),  # the default: class-conditional, binary
        ("mondrian", 4, 0.1),  # multiclass
        ("mondrian", 2, 0.2),  # another level
        ("lac", 2, 0.1),  # one quantile for all classes, smallest sets
        ("lac", 4, 0.1),
    ],
)
def test_conformal_sets_reach_target_coverage_on_test(method: str, k: int, alpha: float) -> None:
    # Coverage on exchangeable test data within +-3 points of 1 - alpha.
    probs_val, y_val = _draw(10, 3000, k)
    probs_test, y_test = _draw(11, 3000, k)
    conformal = SplitConformal(alpha=alpha, method=method).fit(probs_val, y_val)
    sets = conformal.predict_sets(probs_test)
    assert abs(coverage(sets, y_test) - (1 - alpha)) <= 0.03
    summary = set_size_summary(sets)
    assert summary["empty_rate"] < 0.1
    assert 0.8 <= summary["mean_size"] < k  # informative: not every class every time


def test_aps_without_randomisation_never_under_covers() -> None:
    # Deterministic APS gives up the randomisation that made it exact, so it over-covers.
    probs_val, y_val = _draw(10, 3000, 4)
    probs_test, y_test = _draw(11, 3000, 4)
    sets = SplitConformal(alpha=0.1, method="aps").fit(probs_val, y_val).predict_sets(probs_test)
    assert coverage(sets, y_test) >= 0.9 - 0.02


def _accurate_binary(rng: np.random.Generator, n: int, prevalence: float = 0.5, harder_negatives: float = 0.0):
    """A binary model right on ~97% of cases; ``harder_negatives`` moves negatives towards positive."""
    y = (rng.random(n) < prevalence).astype(int)
    z = 3.0 * (2 * y - 1) + rng.normal(0, 1.5, n) + np.where(y == 0, harder_negatives, 0.0)
    pos = 1 / (1 + np.exp(-z))
    return np.c_[1 - pos, pos], y


def test_mondrian_is_the_default_and_covers_each_class() -> None:
    # Why class-conditional sets: with 10% prevalence, one quantile for all classes lets the
    # rare (sick) class be missed more often than the target; one quantile per class
    # holds the target for the sick and for the healthy.
    assert SplitConformal().method == "mondrian"
    rng = np.random.default_rng(0)
    y_val = (rng.random(4000) < 0.1).astype(int)
    z = np.where(y_val == 1, 1.0, -2.0) + rng.normal(0, 1.3, len(y_val))
    probs_val = np.c_[1 - 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(-z))]
    y_test = (rng.random(4000) < 0.1).astype(int)
    z = np.where(y_test == 1, 1.0, -2.0) + rng.normal(0, 1.3, len(y_test))
    probs_test = np.c_[1 - 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(-z))]
    for method, rare_ok in (("mondrian", True), ("lac", False)):
        sets = SplitConformal(alpha=0.1, method=method).fit(probs_val, y_val).predict_sets(probs_test)
        rare = sets[y_test == 1, 1].mean()
        assert bool(abs(rare - 0.9) <= 0.04) is rare_ok, (method, rare)
        assert abs(sets[y_test == 0, 0].mean() - 0.9) <= 0.04 or method == "lac"


def test_a_case_gets_the_same_set_alone_or_in_any_batch() -> None:
    # Served one at a time (predict, serve, pacs) or scored as a split (evaluate): same set.
    probs_val, y_val = _draw(4, 800, 2)
    probs_test, _ = _draw(5, 300, 2)
    for method in ("mondrian", "lac", "aps"):
        conformal = SplitConformal(alpha=0.1, method=method).fit(probs_val, y_val)
        together = conformal.predict_sets(probs_test)
        alone = np.concatenate([conformal.predict_sets(row[None]) for row in probs_test])
        order = np.random.default_rng(0).permutation(len(probs_test))
        shuffled = np.empty_like(together)
        shuffled[order] = conformal.predict_sets(probs_test[order])
        np.testing.assert_array_equal(together, alone)
        np.testing.assert_array_equal(together, shuffled)


def test_reads_an_older_bundles_randomised_aps_entry() -> None:
    old = {"alpha": 0.1, "method": "aps", "seed": 0, "qhat": 0.93, "n_val": 524, "n_classes": 2}
    restored = SplitConformal.from_dict(old)
    assert restored.qhat_ == [0.93, 0.93]
    assert restored.predict_sets(np.array([[0.2, 0.8]])).shape == (1, 2)


def test_lower_alpha_gives_larger_sets() -> None:
    probs_val, y_val = _draw(0, 2000, 4)
    probs_test, _ = _draw(1, 2000, 4)
    small = SplitConformal(alpha=0.2).fit(probs_val, y_val).predict_sets(probs_test).sum()
    large = SplitConformal(alpha=0.05).fit(probs_val, y_val).predict_sets(probs_test).sum()
    assert large > small


def test_round_trip_and_errors() -> None:
    probs_val, y_val = _draw(0, 500, 3)
    fitted = SplitConformal(alpha=0.1, method="mondrian").fit(probs_val, y_val)
    restored = SplitConformal.from_dict(json.loads(json.dumps(fitted.to_dict())))
    np.testing.assert_array_equal(restored.predict_sets(probs_val), fitted.predict_sets(probs_val))
    with pytest.raises(ConfigError, match="Did you mean 'aps'"):
        SplitConformal(method="apss").fit(probs_val, y_val)
    with pytest.raises(DataError, match="of class 2"):
        SplitConformal(alpha=0.1).fit(probs_val[:57], np.r_[np.zeros(35, int), np.ones(20, int), 2, 2])
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
