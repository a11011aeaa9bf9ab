"""A miss on test, told apart: a shift from validation, or a fault of the fitting.

Validation-fitted calibration and prediction sets miss on a test set whose negatives look
more positive than validation's. The report must then say what the same fitting reaches
when refitted on the test cases themselves (cross-fitted), so its reader knows the remedy
is refitting on the deployment population, not distrusting the method; and say nothing of
the kind when test resembles validation.
"""

from __future__ import annotations

import numpy as np

from medpredict.calibration.conformal import SplitConformal
from medpredict.calibration.posthoc import PostHocCalibrator
from medpredict.calibration.refit import MIN_PER_CLASS, cross_fitted_refit
from medpredict.calibration.scalers import softmax
from medpredict.report import assemble_evaluation
from medpredict.report.i18n import translator

REFIT = "Refitted on these test cases instead"


def _logits(y: np.ndarray, rng: np.random.Generator, negative_shift: float = 0.0) -> np.ndarray:
    """Over-confident raw logits (x3) whose negatives can be shifted towards the positive class."""
    score = np.where(y == 1, 1.5, -1.5) + rng.normal(size=y.size) + negative_shift * (y == 0)
    return np.stack([np.zeros_like(score), 3.0 * score], axis=1)


def _evaluate(negative_shift: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    y_val = rng.integers(0, 2, 800)
    y_test = rng.integers(0, 2, 800)
    z_val, z_test = _logits(y_val, rng), _logits(y_test, rng, negative_shift)
    calibrator = PostHocCalibrator().fit(z_val, y_val)
    p_val, p_test = calibrator.transform(z_val), calibrator.transform(z_test)
    conformal = SplitConformal(alpha=0.1).fit(p_val, y_val).to_dict()
    return assemble_evaluation(
        y_test, p_test, labels=["normal", "pneumonia"], calibration=calibrator.to_dict(),
        probs_uncalibrated=softmax(z_test), y_val=y_val, probs_val=p_val, conformal=conformal, n_boot=50,
    )


def test_a_shifted_test_set_gets_what_refitting_on_it_would_reach() -> None:
    ev = _evaluate(negative_shift=1.5)
    agreement = ev["agreement"]
    assert ev["conformal"]["coverage"] < 0.85  # the validation-fitted sets miss on the shifted cases
    refit = agreement["refit_here"]
    assert refit["folds"] == 5 and refit["n"] == 800
    assert abs(refit["coverage"] - 0.9) < 0.04 and refit["coverage"] > ev["conformal"]["coverage"] + 0.05
    assert refit["ece"] < ev["calibration"]["test"]["ece"]
    flag = next(f for f in agreement["flags"] if f.startswith(REFIT))
    assert f"coverage {refit['coverage']:.1%}" in flag and f"ECE {refit['ece']:.3f}" in flag
    assert flag in ev["warnings"]
    zh = translator("zh").message(flag)
    assert "重新拟合" in zh and f"{refit['coverage']:.1%}" in zh and REFIT not in zh


def test_a_test_set_like_validation_gets_no_refit_sentence() -> None:
    ev = _evaluate(negative_shift=0.0, seed=1)
    assert ev["conformal"]["coverage"] >= 0.9  # this draw of validation and test agree on coverage
    assert not any(f.startswith("Prediction sets covered") for f in ev["agreement"]["flags"])
    assert ev["agreement"]["refit_here"] is not None  # computed, in metrics.json
    assert not any(f.startswith(REFIT) for f in ev["agreement"]["flags"])


def test_refit_needs_enough_cases_of_every_class() -> None:
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(300, int), np.ones(MIN_PER_CLASS - 1, int)]
    assert cross_fitted_refit(softmax(_logits(y, rng)), y) is None
    y = np.r_[np.zeros(300, int), np.ones(MIN_PER_CLASS, int)]
    refit = cross_fitted_refit(softmax(_logits(y, rng)), y)
    assert refit is not None and len(refit["coverage_per_class"]) == 2
