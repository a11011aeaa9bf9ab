"""The Mahalanobis out-of-distribution detector behind the input check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medpredict.calibration.ood import MahalanobisDetector
from medpredict.errors import ConfigError, DataError


def _features(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    means = np.array([[0.0] * 8, [3.0] + [0.0] * 7])
    cov = np.diag(np.linspace(0.5, 2.0, 8))
    x = means[y] + rng.multivariate_normal(np.zeros(8), cov, n) + shift
    return x, y


def test_flags_about_one_percent_of_like_inputs_and_far_ones() -> None:
    rng = np.random.default_rng(0)
    x_train, y_train = _features(rng, 3000)
    x_val, _ = _features(rng, 1000)
    x_test, _ = _features(rng, 2000)
    x_far, _ = _features(rng, 200, shift=6.0)
    detector = MahalanobisDetector(quantile=0.99).fit(x_train, y_train, x_val)
    assert detector.flags(x_test).mean() <= 0.03
    assert detector.flags(x_far).mean() >= 0.95


def test_round_trip_scores_identically() -> None:
    rng = np.random.default_rng(1)
    x_train, y_train = _features(rng, 500)
    x_val, _ = _features(rng, 200)
    fitted = MahalanobisDetector().fit(x_train, y_train, x_val)
    restored = MahalanobisDetector.from_dict(json.loads(json.dumps(fitted.to_dict())))
    np.testing.assert_allclose(restored.score(x_val), fitted.score(x_val), rtol=1e-9)
    assert restored.threshold_ == fitted.threshold_


def test_errors_name_the_problem() -> None:
    rng = np.random.default_rng(2)
    x, y = _features(rng, 100)
    with pytest.raises(ConfigError, match="quantile"):
        MahalanobisDetector(quantile=1.5).fit(x, y, x)
    fitted = MahalanobisDetector().fit(x, y, x)
    with pytest.raises(DataError, match=r"\(N, 8\)"):
        fitted.score(np.zeros((3, 5)))
    with pytest.raises(ConfigError, match="Unknown OOD detector"):
        MahalanobisDetector.from_dict({"method": "energy"})
