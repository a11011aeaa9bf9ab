"""Tests for medpredict.evaluation.metrics: point estimates, patient bootstrap, DeLong, comparisons."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from medpredict.errors import ConfigError, DataError
from medpredict.evaluation.metrics import (
    _AucKernel,
    classification_metrics,
    delong_test,
    paired_bootstrap_compare,
    pr_points,
    regression_metrics,
    roc_band,
    roc_points,
)


@pytest.fixture
def binary_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.35 * y + 0.65 * rng.random(400), 0.0, 1.0)
    return y, p


@pytest.fixture
def clustered_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """60 patients with 8 near-identical images each: the label and score live at patient level."""
    rng = np.random.default_rng(7)
    n_patients, per_patient = 60, 8
    patient_y = np.tile([0, 1], n_patients // 2)
    patient_score = 0.5 * patient_y + rng.normal(0.0, 0.45, n_patients)
    y = np.repeat(patient_y, per_patient)
    logit = np.repeat(patient_score, per_patient) + rng.normal(0.0, 0.02, y.size)
    p = 1.0 / (1.0 + np.exp(-4 * (logit - 0.25)))
    groups = np.repeat([f"P{i:03d}" for i in range(n_patients)], per_patient)
    return y, p, groups


def test_tiny_hand_written_binary_values() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    out = classification_metrics(y, p, labels=["neg", "pos"], n_boot=0)
    # threshold 0.5: predictions 0,1,0,1 -> tp=1 fn=1 fp=1 tn=1
    assert out["confusion_matrix"] == [[1, 1], [1, 1]]
    assert out["sensitivity"] == out["specificity"] == out["ppv"] == out["npv"] == 0.5
    assert out["auc"] == pytest.approx(0.75)
    assert out["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert out["n"] == 4 and out["n_patients"] == 4 and out["prevalence"] == 0.5
    assert "auc_ci" not in out


def test_threshold_changes_operating_point() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    out = classification_metrics(y, p, labels=["neg", "pos"], threshold=0.35, n_boot=0)
    assert out["sensitivity"] == 1.0 and out["specificity"] == 0.5 and out["threshold"] == 0.35


def test_binary_cis_contain_point_and_match_sklearn(binary_data) -> None:
    y, p = binary_data
    out = classification_metrics(y, np.c_[1 - p, p], labels=["a", "b"], n_boot=300, seed=3)
    assert out["auc"] == pytest.approx(roc_auc_score(y, p))
    assert out["f1"] == pytest.approx(f1_score(y, p >= 0.5))
    for name in ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "brier"):
        lo, hi = out[f"{name}_ci"]
        assert lo <= out[name] <= hi, name
        assert hi - lo > 0, name
    assert out["bootstrap_unit"] == "image"


def test_weighted_auc_kernel_equals_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300), 1)  # many ties
    weights = rng.integers(0, 3, size=(4, 300)).astype(float)
    got = _AucKernel(y == 1, p)(weights)
    for row, w in zip(got, weights, strict=True):
        assert row == pytest.approx(roc_auc_score(y, p, sample_weight=w))


def test_patient_bootstrap_is_wider_than_image_bootstrap(clustered_data) -> None:
    # The acceptance test: 8 strongly correlated images per patient carry about the
    # information of one image, so resampling images understates the uncertainty.
    y, p, groups = clustered_data
    by_image = classification_metrics(y, p, labels=["n", "p"], n_boot=1000, seed=0)
    by_patient = classification_metrics(y, p, labels=["n", "p"], groups=groups, n_boot=1000, seed=0)
    assert by_patient["n_patients"] == 60 and by_image["n_patients"] == 480
    assert by_patient["bootstrap_unit"] == "patient"
    assert by_patient["auc"] == by_image["auc"]
    for name in ("auc", "sensitivity", "accuracy"):
        w_img = np.diff(by_image[f"{name}_ci"])[0]
        w_pat = np.diff(by_patient[f"{name}_ci"])[0]
        assert w_pat > 1.8 * w_img, (name, w_pat, w_img)


def test_degenerate_replicates_are_skipped_and_counted() -> None:
    # Two patients, one per class: about half of the replicates draw a single class.
    y = np.array([0, 0, 1, 1])
    p = np.array([0.2, 0.3, 0.7, 0.8])
    out = classification_metrics(y, p, labels=["a", "b"], groups=["x", "x", "y", "y"], n_boot=200)
    assert 50 < out["n_boot_skipped"] < 150
    assert out["auc_ci"] == [1.0, 1.0]


def test_multiclass_macro_metrics_and_per_class() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 2.0 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    out = classification_metrics(y, probs, labels=["a", "b", "c"], n_boot=200)
    assert out["task"] == "multiclass"
    assert out["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert out["f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))
    assert np.array(out["confusion_matrix"]).sum() == 300
    assert set(out["per_class"]) == {"a", "b", "c"}
    lo, hi = out["per_class"]["b"]["sensitivity_ci"]
    assert lo <= out["per_class"]["b"]["sensitivity"] <= hi
    assert out["auc_ci"][0] <= out["auc"] <= out["auc_ci"][1]


@pytest.mark.parametrize(
    ("y", "probs", "labels", "match"),
    [
        ([0, 1], [[0.5, 0.5]], ["a", "b"], "shape"),  # one row of probs for two labels
        ([0, 2], [[0.5, 0.5], [0.4, 0.6]], ["a", "b"], "outside"),  # class index 2 with two labels
        ([0, 1], [[0.5, 0.5], [np.nan, 0.6]], ["a", "b"], "NaN"),  # model output NaN
        ([0.5, 1], [[0.5, 0.5], [0.4, 0.6]], ["a", "b"], "integer"),  # fractional labels
        ([0, 1], [[0.5, 0.5], [0.4, 0.6]], ["a"], "two classes"),  # one label only
    ],
)
def test_bad_inputs_raise_data_error(y, probs, labels, match) -> None:
    with pytest.raises(DataError, match=match):
        classification_metrics(y, probs, labels=labels, n_boot=0)


def test_bad_threshold_and_groups() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        classification_metrics([0, 1], [0.2, 0.8], labels=["a", "b"], threshold=1.5)
    with pytest.raises(DataError, match="groups"):
        classification_metrics([0, 1], [0.2, 0.8], labels=["a", "b"], groups=["x"])


def test_bootstrap_is_fast_enough() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)
    p = np.clip(0.3 * y + 0.7 * rng.random(5000), 0, 1)
    groups = np.repeat(np.arange(1250), 4)
    start = time.perf_counter()
    classification_metrics(y, p, labels=["a", "b"], groups=groups, n_boot=1000)
    assert time.perf_counter() - start < 15.0  # a few seconds on 2 shared cores


def test_delong_matches_sklearn_auc_and_detects_difference(binary_data) -> None:
    y, p = binary_data
    rng = np.random.default_rng(5)
    worse = np.clip(p + rng.normal(0, 0.4, p.size), 0, 1)
    out = delong_test(y, p, worse)
    assert out["auc1"] == pytest.approx(roc_auc_score(y, p))
    assert out["auc2"] == pytest.approx(roc_auc_score(y, worse))
    assert out["p_value"] < 0.01 and out["z"] > 0
    same = delong_test(y, p, p)
    assert same["diff"] == 0 and same["p_value"] == 1.0


def test_paired_bootstrap_compare(binary_data) -> None:
    y, p = binary_data
    rng = np.random.default_rng(5)
    worse = np.clip(p + rng.normal(0, 0.4, p.size), 0, 1)
    out = paired_bootstrap_compare(y, p, worse, n_boot=400)
    assert out["diff"] > 0 and out["diff_ci"][0] > 0 and out["p_value"] < 0.05
    brier = paired_bootstrap_compare(y, p, worse, metric="brier", n_boot=100)
    assert brier["diff"] < 0
    with pytest.raises(ConfigError, match="Did you mean 'auc'"):
        paired_bootstrap_compare(y, p, worse, metric="aux")


def test_curves(binary_data) -> None:
    y, p = binary_data
    roc = roc_points(y, p)
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0 and max(roc["thresholds"]) <= 1.0
    pr = pr_points(y, p)
    assert 0 < pr["average_precision"] <= 1 and pr["prevalence"] == pytest.approx(y.mean())
    band = roc_band(y, p, n_boot=50)
    assert len(band["fpr"]) == 101
    assert all(lo <= hi for lo, hi in zip(band["tpr_lo"], band["tpr_hi"], strict=True))
    with pytest.raises(DataError, match="both classes"):
        roc_points(np.zeros(5, int), np.linspace(0, 1, 5))


def test_regression_metrics() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=200)
    yhat = y + rng.normal(0, 0.5, 200)
    out = regression_metrics(y, yhat, groups=np.repeat(np.arange(50), 4), n_boot=300)
    assert out["mae"] == pytest.approx(np.mean(np.abs(y - yhat)))
    assert out["rmse_ci"][0] <= out["rmse"] <= out["rmse_ci"][1]
    assert out["r2_ci"][0] <= out["r2"] <= out["r2_ci"][1] and out["n_patients"] == 50
    with pytest.raises(DataError):
        regression_metrics([1.0, 2.0], [1.0])
