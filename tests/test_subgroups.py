"""Tests for medpredict.evaluation.subgroups: subgroup tables, shift diagnostics and validation-test agreement."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medpredict.errors import DataError
from medpredict.evaluation.subgroups import (
    image_statistics,
    reference_statistics,
    shift_diagnostics,
    subgroup_table,
    validation_agreement,
)


@pytest.fixture
def cohort() -> tuple[np.ndarray, np.ndarray, pd.DataFrame, np.ndarray]:
    """600 rows, 300 patients; the model works well at site A and poorly at site B."""
    rng = np.random.default_rng(0)
    n = 600
    site = np.where(np.arange(n) < 400, "A", "B")
    y = rng.integers(0, 2, n)
    signal = np.where(site == "A", 2.5, 0.2)
    p = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, n))))
    age = rng.uniform(20, 90, n)
    age[:5] = np.nan
    frame = pd.DataFrame({
        "site": site,
        "sex": rng.choice(["F", "M"], n),
        "age": age,
        "rare": np.where(np.arange(n) < 8, "x", "y"),  # 8-row level: too few
    })
    return y, np.c_[1 - p, p], frame, np.repeat(np.arange(300), 2)


def test_subgroup_table_levels_metrics_and_statuses(cohort) -> None:
    y, probs, frame, groups = cohort
    rows = subgroup_table(y, probs, frame, ["site", "sex", "age", "rare"], labels=["neg", "pos"],
                          threshold=0.5, groups=groups, n_boot=200)
    by = {(r["column"], r["level"]): r for r in rows}
    site_a, site_b = by[("site", "A")], by[("site", "B")]
    assert site_a["n"] == 400 and site_a["n_patients"] == 200
    assert site_a["auc"] > 0.9 and site_b["auc"] < 0.75  # the weak site is visible
    assert site_a["auc_ci"][0] > site_b["auc_ci"][1]
    assert site_a["sensitivity_ci"][0] <= site_a["sensitivity"] <= site_a["sensitivity_ci"][1]
    # age is binned into clinical bands; NaN ages get their own level
    age_levels = [r["level"] for r in rows if r["column"] == "age"]
    assert age_levels == ["18-39", "40-64", "65+", "missing"]
    assert by[("age", "missing")]["status"] == "too_few"
    assert by[("rare", "x")]["status"] == "too_few" and "auc" not in by[("rare", "x")]
    assert sum(r["n"] for r in rows if r["column"] == "sex") == 600


def test_one_class_level_is_reported_not_dropped() -> None:
    y = np.r_[np.zeros(30, int), np.tile([0, 1], 15)]
    p = np.linspace(0.1, 0.9, 60)
    frame = pd.DataFrame({"unit": ["icu"] * 30 + ["ward"] * 30})
    rows = subgroup_table(y, p, frame, ["unit"], n_boot=0)
    icu = next(r for r in rows if r["level"] == "icu")
    assert icu["status"] == "one_class" and np.isnan(icu["auc"]) and icu["specificity"] is not None


def test_subgroup_errors(cohort) -> None:
    y, probs, frame, _ = cohort
    with pytest.raises(DataError, match="'sexx'"):
        subgroup_table(y, probs, frame, ["sexx"])
    with pytest.raises(DataError, match="rows"):
        subgroup_table(y[:10], probs[:10], frame, ["sex"])


def test_image_statistics_by_hand() -> None:
    images = np.zeros((2, 1, 4, 4), np.float32)
    images[1] = 1.0
    stats = image_statistics(images)
    assert stats["mean"] == 0.5 and stats["image_mean_std"] == 0.5 and stats["n"] == 2
    assert stats["shape"] == [1, 4, 4] and stats["p01"] == 0.0 and stats["p99"] == 1.0


def test_shift_diagnostics_flags_brightness_prevalence_and_citl() -> None:
    rng = np.random.default_rng(1)
    # 500 images so that sampling noise in mean brightness stays far below the flag level
    dev_images = rng.uniform(0.3, 0.5, (500, 1, 8, 8)).astype(np.float32)
    dev_frame = pd.DataFrame({"age": rng.normal(60, 10, 200), "chol": rng.normal(240, 40, 200)})
    reference = reference_statistics(rng.integers(0, 2, 200), images=dev_images, frame=dev_frame)
    # same site: nothing to flag
    y_same = (rng.random(200) < reference["prevalence"]).astype(int)
    same_frame = pd.DataFrame({"age": rng.normal(60, 10, 200), "chol": rng.normal(240, 40, 200)})
    same = shift_diagnostics(reference, y_same, np.full(200, y_same.mean()),
                             images=rng.uniform(0.3, 0.5, (500, 1, 8, 8)), frame=same_frame)
    assert same["flags"] == []
    # external site: brighter images, older patients, more disease, model under-estimates
    y_ext = (rng.random(200) < 0.8).astype(int)
    ext = shift_diagnostics(reference, y_ext, np.full(200, 0.5),
                            images=rng.uniform(0.6, 0.8, (500, 1, 8, 8)),
                            frame=pd.DataFrame({"age": rng.normal(75, 10, 200)}))
    assert ext["image_smd"] > 1 and ext["table_smd"]["age"] > 1
    assert ext["calibration_in_the_large"] == pytest.approx(y_ext.mean() - 0.5)
    text = " ".join(ext["flags"])
    assert "brightness" in text and "Prevalence" in text and "under-estimates" in text
    assert "'chol'" in text and "age" in text


def _scored(rng: np.random.Generator, n: int, negative_shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated-looking binary probabilities; ``negative_shift`` pushes the negatives' scores up."""
    y = rng.integers(0, 2, n)
    z = 2.0 * (2 * y - 1) + rng.normal(0, 1.5, n) + np.where(y == 0, negative_shift, 0.0)
    pos = 1 / (1 + np.exp(-z))
    return y, np.c_[1 - pos, pos]


def _agreement(y_val, p_val, y, p):
    from medpredict.calibration.conformal import SplitConformal, coverage
    from medpredict.evaluation.metrics import classification_metrics

    sets = SplitConformal(0.1).fit(p_val, y_val).predict_sets(p)
    metrics = classification_metrics(y, p, labels=["neg", "pos"], threshold=0.5, n_boot=300, seed=0)
    cov = {"coverage": coverage(sets, y), "target_coverage": 0.9, "n": y.size}
    return validation_agreement(y_val, p_val, metrics, threshold=0.5, coverage=cov)


def test_validation_agreement_is_quiet_when_test_resembles_validation() -> None:
    rng = np.random.default_rng(3)
    out = _agreement(*_scored(rng, 600), *_scored(rng, 600))
    assert [r["metric"] for r in out["rows"]] == ["auc", "sensitivity", "specificity", "conformal coverage"]
    assert all(r["agrees"] for r in out["rows"]) and out["flags"] == []


def test_validation_agreement_flags_a_test_set_whose_negatives_look_positive() -> None:
    # like the Kermany/PneumoniaMNIST test split: normals score higher than on validation
    rng = np.random.default_rng(4)
    out = _agreement(*_scored(rng, 600), *_scored(rng, 600, negative_shift=2.0))
    verdict = {r["metric"]: r["agrees"] for r in out["rows"]}
    assert verdict["specificity"] is False and verdict["conformal coverage"] is False
    assert verdict["sensitivity"] is True  # positives unchanged
    text = " ".join(out["flags"])
    assert "Specificity is" in text and "exchangeable" in text


def test_validation_agreement_flags_calibration_that_made_test_worse() -> None:
    rng = np.random.default_rng(5)
    y, p = _scored(rng, 300)
    from medpredict.evaluation.metrics import classification_metrics

    metrics = classification_metrics(y, p, labels=["neg", "pos"], threshold=0.5, n_boot=100, seed=0)
    worse = validation_agreement(y, p, metrics, threshold=0.5, ece_change=0.012)
    assert any("raised the test ECE by 0.012" in f for f in worse["flags"])
    assert validation_agreement(y, p, metrics, threshold=0.5, ece_change=-0.01)["flags"] == []
    assert validation_agreement(y, p, metrics, threshold=0.5, ece_change=0.002)["flags"] == []  # binning noise
    with pytest.raises(DataError, match="probs_val must be"):
        validation_agreement(y, p[:10], metrics)
