"""Post-hoc calibration: prior correction for class weighting, calibrator chosen on validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medpredict.calibration.posthoc import CANDIDATES, PostHocCalibrator, load_calibration, prior_offsets
from medpredict.calibration.scalers import TemperatureScaler, calibration_summary
from medpredict.errors import DataError


def _weighted_model(seed: int, n: int, prevalence: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits a balanced-weight loss learns on a rare outcome: the true log-odds plus log(w1/w0)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    true_log_odds = np.log(prevalence / (1 - prevalence)) + np.where(y == 1, 2.0, -0.3) + rng.normal(0, 1.2, n)
    # recompute y from the log-odds so the log-odds are exactly calibrated
    y = (rng.random(n) < 1 / (1 + np.exp(-true_log_odds))).astype(int)
    counts = np.bincount(y, minlength=2).astype(float)
    weights = counts.sum() / (2 * counts)
    shift = np.log(weights[1] / weights[0])
    logits = np.c_[np.zeros(n), true_log_odds + shift]
    return logits, y, weights


def test_prior_correction_restores_calibration_in_the_large() -> None:
    logits, y, weights = _weighted_model(0, 4000)
    test_logits, y_test, _ = _weighted_model(1, 4000)
    corrected = PostHocCalibrator(class_weights=weights, candidates=("temperature",)).fit(logits, y)
    plain = TemperatureScaler().fit(logits, y)
    fixed = calibration_summary(y_test, corrected.transform(test_logits)[:, 1])
    broken = calibration_summary(y_test, plain.transform(test_logits)[:, 1])
    assert abs(fixed["calibration_in_the_large"]) < 0.01
    assert abs(broken["calibration_in_the_large"]) > 3 * abs(fixed["calibration_in_the_large"])
    assert fixed["brier"] < broken["brier"]


def test_chooses_the_calibrator_with_the_lowest_cross_validated_log_loss() -> None:
    logits, y, weights = _weighted_model(2, 3000, prevalence=0.2)
    fitted = PostHocCalibrator(class_weights=weights).fit(logits, y)
    losses = {m: v for m, v in fitted.cv_log_loss_.items() if m != "none"}
    assert set(losses) == {"temperature", "platt"}  # isotonic only when asked for
    assert fitted.method_ == min(losses, key=losses.get)
    asked = PostHocCalibrator(class_weights=weights, candidates=CANDIDATES).fit(logits, y)
    assert set(asked.cv_log_loss_) - {"none"} == {"temperature", "platt", "isotonic"}


def test_the_default_calibration_keeps_the_networks_ranking() -> None:
    from sklearn.metrics import roc_auc_score

    logits, y, weights = _weighted_model(5, 3000, prevalence=0.3)
    test_logits, y_test, _ = _weighted_model(6, 3000, prevalence=0.3)
    network = roc_auc_score(y_test, test_logits[:, 1])
    fitted = PostHocCalibrator(class_weights=weights).fit(logits, y)
    assert roc_auc_score(y_test, fitted.transform(test_logits)[:, 1]) == pytest.approx(network, abs=1e-12)
    # isotonic regression, asked for, is a step function: ties cost discrimination
    isotonic = PostHocCalibrator(class_weights=weights, candidates=("isotonic",)).fit(logits, y)
    stepped = isotonic.transform(test_logits)[:, 1]
    assert len(np.unique(stepped)) < len(stepped) / 10
    assert roc_auc_score(y_test, stepped) < network


def test_small_validation_leaves_isotonic_out_and_round_trips() -> None:
    logits, y, weights = _weighted_model(3, 200, prevalence=0.3)
    fitted = PostHocCalibrator(class_weights=weights).fit(logits, y)
    assert "isotonic" not in fitted.cv_log_loss_
    restored = load_calibration(json.loads(json.dumps(fitted.to_dict())))
    np.testing.assert_allclose(restored.transform(logits), fitted.transform(logits), atol=1e-12)
    probs = fitted.transform(logits)
    assert np.all(probs > 0) and np.all(probs < 1)  # never exactly 0 or 1


def test_multiclass_uses_temperature_after_prior_correction() -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 2, (600, 3))
    y = logits.argmax(1)
    fitted = PostHocCalibrator(class_weights=[1.0, 2.0, 4.0]).fit(logits, y)
    assert fitted.method_ == "temperature"
    np.testing.assert_allclose(fitted.to_dict()["offsets"], prior_offsets([1.0, 2.0, 4.0], 3))
    assert np.allclose(fitted.transform(logits).sum(1), 1.0)


def test_reads_an_older_bundles_temperature_and_refuses_a_missing_class() -> None:
    old = load_calibration({"kind": "temperature", "temperature": 2.0, "bounds": [0.05, 20.0]})
    np.testing.assert_allclose(old.transform(np.array([[0.0, 2.0]])), [[1 / (1 + np.e), np.e / (1 + np.e)]])
    with pytest.raises(DataError, match="no case of class"):
        PostHocCalibrator().fit(np.zeros((20, 2)), np.zeros(20, int))
