"""Tests for medpredict.calibration.scalers: scalers, serialisation, calibration summaries."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medpredict.calibration.scalers import (
    IsotonicCalibrator,
    PlattScaler,
    TemperatureScaler,
    calibrate_probs,
    calibration_summary,
    calibrator_from_dict,
    logits_from_probs,
    softmax,
)
from medpredict.errors import ConfigError, DataError


def _overconfident(seed: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """True logits z; labels drawn from softmax(z); the 'model' reports 3 z (over-confident)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.2, size=(n, k))
    probs = softmax(z)
    y = (rng.random(n)[:, None] > probs.cumsum(axis=1)).sum(axis=1)
    return 3.0 * z, y


@pytest.mark.parametrize("k", [2, 4])  # binary and multiclass share the code path
def test_temperature_scaling_lowers_test_ece(k: int) -> None:
    val_logits, val_y = _overconfident(0, 3000, k)
    test_logits, test_y = _overconfident(1, 3000, k)
    scaler = TemperatureScaler().fit(val_logits, val_y)
    assert scaler.temperature_ == pytest.approx(3.0, rel=0.15)
    assert scaler.nll_after_ < scaler.nll_before_

    def top_label_ece(probs: np.ndarray) -> float:
        correct = (probs.argmax(axis=1) == test_y).astype(int)
        return calibration_summary(correct, probs.max(axis=1))["ece"]

    before = top_label_ece(softmax(test_logits))
    after = top_label_ece(scaler.transform(test_logits))
    assert after < 0.5 * before and after < 0.03
    # ranking is unchanged, so the arg-max is too
    assert np.array_equal(scaler.transform(test_logits).argmax(1), test_logits.argmax(1))


def test_temperature_round_trips_through_json() -> None:
    logits, y = _overconfident(0, 500, 3)
    scaler = TemperatureScaler().fit(logits, y)
    restored = calibrator_from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert isinstance(restored, TemperatureScaler)
    np.testing.assert_allclose(restored.transform(logits), scaler.transform(logits))


def test_temperature_on_log_probabilities_equals_logits() -> None:
    logits, y = _overconfident(0, 500, 3)
    a = TemperatureScaler().fit(logits, y)
    b = TemperatureScaler().fit(logits_from_probs(softmax(logits)), y)
    assert a.temperature_ == pytest.approx(b.temperature_, rel=1e-3)


@pytest.mark.parametrize("cls", [TemperatureScaler, PlattScaler, IsotonicCalibrator])
def test_unfitted_calibrators_refuse(cls) -> None:
    with pytest.raises(ConfigError, match="not fitted"):
        cls().transform(np.array([[0.2, 0.8]]) if cls is TemperatureScaler else np.array([0.5]))
    with pytest.raises(ConfigError, match="not fitted"):
        cls().to_dict()


@pytest.mark.parametrize("cls", [PlattScaler, IsotonicCalibrator])
def test_binary_calibrators_fix_a_distortion_and_round_trip(cls) -> None:
    rng = np.random.default_rng(3)
    true_p = rng.uniform(0.02, 0.98, 4000)
    y = (rng.random(4000) < true_p).astype(int)
    distorted = true_p**3  # systematically too low
    cal = cls().fit(distorted[:2000], y[:2000])
    before = calibration_summary(y[2000:], distorted[2000:])["ece"]
    fixed = cal.transform(distorted[2000:])
    assert calibration_summary(y[2000:], fixed)["ece"] < 0.5 * before
    restored = calibrator_from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(restored.transform(distorted[2000:]), fixed)
    both = calibrate_probs(restored, np.c_[1 - distorted, distorted])
    np.testing.assert_allclose(both.sum(axis=1), 1.0)


def test_calibrator_from_dict_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'platt'"):
        calibrator_from_dict({"kind": "plat"})


def test_calibration_summary_hand_written_bins() -> None:
    y = np.array([0, 1, 1, 1])
    p = np.array([0.05, 0.05, 0.95, 0.95])
    out = calibration_summary(y, p, n_bins=2)
    assert [b["n"] for b in out["bins"]] == [2, 2]
    assert out["bins"][0]["observed"] == 0.5 and out["bins"][1]["observed"] == 1.0
    # ECE = 0.5*|0.5-0.05| + 0.5*|1-0.95|
    assert out["ece"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)
    assert out["mce"] == pytest.approx(0.45)
    assert out["calibration_in_the_large"] == pytest.approx(0.75 - 0.5)


def test_calibration_slope_of_a_well_calibrated_model_is_one() -> None:
    rng = np.random.default_rng(4)
    p = rng.uniform(0.01, 0.99, 20000)
    y = (rng.random(p.size) < p).astype(int)
    out = calibration_summary(y, p)
    assert out["slope"] == pytest.approx(1.0, abs=0.06)
    assert out["intercept"] == pytest.approx(0.0, abs=0.06)
    assert out["ece"] < 0.02
    over = calibration_summary(y, 1 / (1 + np.exp(-3 * np.log(p / (1 - p)))))
    assert over["slope"] < 0.5  # over-confident risks give a slope below 1


def test_calibration_summary_rejects_bad_input() -> None:
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        calibration_summary([0, 1], [0.5, 1.5])
    with pytest.raises(ConfigError, match="n_bins"):
        calibration_summary([0, 1], [0.5, 0.5], n_bins=0)
