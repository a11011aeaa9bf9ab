"""Tests for medpredict.calibration.thresholds: picking on validation, locking, sweeping."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medpredict.calibration.thresholds import ThresholdPicker, threshold_sweep
from medpredict.errors import ConfigError, DataError
from medpredict.evaluation.metrics import classification_metrics


@pytest.fixture
def val_test() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        p = 1 / (1 + np.exp(-(1.6 * (2 * y - 1) + rng.normal(0, 1.2, n))))
        return y, p

    return (*draw(800), *draw(800))


def test_youden_on_hand_written_data() -> None:
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.5, 0.4, 0.6, 0.7, 0.9])
    picker = ThresholdPicker("youden").fit(y, p)
    # 0.6: sens 3/4, spec 1 (J=0.75) beats 0.4: sens 1, spec 2/3 (J=0.67)
    assert picker.threshold_ == 0.6
    assert picker.sensitivity_ == 0.75 and picker.specificity_ == 1.0


@pytest.mark.parametrize("method", ["sensitivity", "specificity"])
def test_targets_reached_on_validation(val_test, method: str) -> None:
    y, p, _, _ = val_test
    picker = ThresholdPicker(method, target=0.9).fit(y, p)
    achieved = picker.sensitivity_ if method == "sensitivity" else picker.specificity_
    assert achieved >= 0.9
    # and it is the tightest such threshold: nudging it the other way loses the target
    step = 1e-9 if method == "sensitivity" else -1e-9
    moved = ThresholdPicker("fixed", target=picker.threshold_ + step).fit(y, p)
    moved_value = moved.sensitivity_ if method == "sensitivity" else moved.specificity_
    assert moved_value < 0.9 or moved_value == achieved


def test_locked_threshold_is_the_validation_one(val_test) -> None:
    # The acceptance test: test metrics use the threshold chosen on validation.
    y_val, p_val, y_test, p_test = val_test
    picker = ThresholdPicker("sensitivity", target=0.95).fit(y_val, p_val)
    stored = json.loads(json.dumps(picker.to_dict()))
    locked = ThresholdPicker.from_dict(stored)
    assert locked.threshold_ == picker.threshold_
    test = classification_metrics(
        y_test, p_test, labels=["neg", "pos"], threshold=locked.threshold_, n_boot=0
    )
    assert test["threshold"] == picker.threshold_
    retuned = ThresholdPicker("sensitivity", target=0.95).fit(y_test, p_test).threshold_
    assert retuned != picker.threshold_  # re-tuning on test would have moved it
    np.testing.assert_array_equal(locked.predict(p_test), (p_test >= picker.threshold_).astype(int))


def test_fixed_method_and_errors() -> None:
    assert ThresholdPicker("fixed", target=0.3).fit([0, 0], [0.1, 0.5]).threshold_ == 0.3
    with pytest.raises(ConfigError, match="Did you mean 'youden'"):
        ThresholdPicker("yuoden").fit([0, 1], [0.2, 0.8])
    with pytest.raises(ConfigError, match="target"):
        ThresholdPicker("sensitivity", target=1.2).fit([0, 1], [0.2, 0.8])
    with pytest.raises(DataError, match="both outcomes"):
        ThresholdPicker("youden").fit([1, 1], [0.2, 0.8])
    with pytest.raises(ConfigError, match="not fitted"):
        ThresholdPicker().predict([0.5])


def test_threshold_sweep_is_monotone(val_test) -> None:
    y, p, _, _ = val_test
    sweep = threshold_sweep(y, p)
    sens, spec = np.array(sweep["sensitivity"]), np.array(sweep["specificity"])
    assert sens[0] == 1.0 and spec[0] == 0.0
    assert np.all(np.diff(sens) <= 0) and np.all(np.diff(spec) >= 0)
    assert len(sweep["threshold"]) == 101
