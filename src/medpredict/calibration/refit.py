"""The bundle's post-fit, cross-fitted within one labelled set: is a miss the fitting's fault or the data's?

Calibration and conformal sets are fitted on validation and applied to new data. When the
new data's ECE rises or its coverage falls short, two explanations compete: the fitting is
wrong, or the new cases differ from validation. :func:`cross_fitted_refit` separates them:
within the new set, k-fold, it fits what a bundle fits after training — the prior
correction and the calibrator chosen by cross-validated log-loss
(:class:`~medpredict.calibration.posthoc.PostHocCalibrator`), then class-conditional
conformal sets on the calibrated training folds — and scores each held-out fold. If the
out-of-fold figures reach their targets, the fitting works there and the miss is a shift
from validation: refitting on cases from the deployment population is the remedy.

It reads the labels of the set it diagnoses, so its figures describe that set; they never
become settings of the model.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from medpredict.calibration.conformal import SplitConformal
from medpredict.calibration.posthoc import PostHocCalibrator
from medpredict.calibration.scalers import calibration_summary, logits_from_probs, softmax
from medpredict.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Fewest cases of each class for a cross-fitted refit (each training fold then holds
#: enough of every class for Platt scaling and a 90% conformal quantile).
MIN_PER_CLASS = 50


@contextlib.contextmanager
def _quiet_fits() -> Iterator[None]:
    """Keep the per-fold fits' INFO lines (calibrator chosen, quantiles) out of the log."""
    package = logging.getLogger("medpredict.calibration")
    level = package.level
    package.setLevel(max(logging.WARNING, level))
    try:
        yield
    finally:
        package.setLevel(level)


def _ece(y: np.ndarray, probs: np.ndarray) -> float:
    """ECE of the positive class (binary) or of the top label (multiclass), as the report computes it."""
    if probs.shape[1] == 2:
        return float(calibration_summary(y, probs[:, 1])["ece"])
    top = probs.argmax(axis=1)
    return float(calibration_summary((top == y).astype(int), probs.max(axis=1))["ece"])


def cross_fitted_refit(
    raw_probs: Any,
    y: Any,
    *,
    offsets: Any = None,
    alpha: float = 0.1,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, Any] | None:
    """Out-of-fold ECE and conformal coverage of the post-fit refitted within one labelled set.

    Args:
        raw_probs: ``(N, K)`` the network's own (uncalibrated) probabilities on the set.
        y: ``(N,)`` class indices.
        offsets: the bundle's prior-correction offsets (``-log w`` of the training class
            weights, as :meth:`PostHocCalibrator.to_dict` stores them); None for an unweighted loss.
        alpha: conformal miss rate (target coverage ``1 - alpha``).
        folds, seed: the stratified folds.

    Returns:
        ``{folds, ece_raw, ece, coverage, coverage_per_class, target_coverage, n, calibrators}``,
        or None when a class has fewer than :data:`MIN_PER_CLASS` cases.
    """
    from sklearn.model_selection import StratifiedKFold

    z = logits_from_probs(raw_probs)
    labels = np.asarray(y).astype(np.int64)
    k = z.shape[1]
    counts = np.bincount(labels, minlength=k)
    if counts.min() < MIN_PER_CLASS:
        return None
    weights = None
    if offsets is not None and np.any(np.asarray(offsets, dtype=np.float64)):
        weights = np.exp(-np.asarray(offsets, dtype=np.float64))
    probs = np.zeros_like(z)
    covered = np.zeros(len(labels), dtype=bool)
    chosen: list[str] = []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    try:
        with _quiet_fits():
            for train, held in splitter.split(z, labels):
                calibrator = PostHocCalibrator(class_weights=weights, seed=seed).fit(z[train], labels[train])
                chosen.append(calibrator.method_)
                probs[held] = calibrator.transform(z[held])
                conformal = SplitConformal(alpha=alpha, method="mondrian")
                conformal.fit(calibrator.transform(z[train]), labels[train])
                covered[held] = conformal.predict_sets(probs[held])[np.arange(len(held)), labels[held]]
    except (DataError, ConfigError) as exc:
        log.info("No cross-fitted refit: %s", exc)
        return None
    return {
        "folds": folds,
        "n": int(len(labels)),
        "ece_raw": _ece(labels, softmax(z)),
        "ece": _ece(labels, probs),
        "coverage": float(covered.mean()),
        "coverage_per_class": [float(covered[labels == c].mean()) for c in range(k)],
        "target_coverage": 1.0 - alpha,
        "calibrators": chosen,
    }
