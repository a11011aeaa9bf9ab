"""Choose a binary decision threshold on validation, lock it, and sweep it for plots.

The threshold is learned on the validation split only and stored in the bundle;
test metrics are then reported at that locked value, never re-tuned on test. A row
is called positive when ``p_pos >= threshold`` (the convention of
``sklearn.metrics.roc_curve`` and :mod:`medpredict.evaluation.metrics`).

Methods:

* ``youden`` - maximise sensitivity + specificity - 1.
* ``sensitivity`` - the highest threshold whose validation sensitivity is at least
  ``target`` (so specificity is as high as that allows): for rule-out use.
* ``specificity`` - the lowest threshold whose validation specificity is at least
  ``target``: for rule-in use.
* ``fixed`` - use ``target`` itself as the threshold (e.g. a clinically agreed risk).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from medpredict.calibration.scalers import check_fitted
from medpredict.errors import ConfigError, DataError, unknown_choice

logger = logging.getLogger(__name__)

METHODS = ("youden", "sensitivity", "specificity", "fixed")


def _binary(y: Any, p_pos: Any, *, need_both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y)
    p = np.asarray(p_pos, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    if y_arr.ndim != 1 or p.shape != y_arr.shape:
        raise DataError(f"y and p_pos must both be (N,); got shapes {y_arr.shape} and {p.shape}.")
    if not np.all(np.isin(y_arr, (0, 1))):
        raise DataError(f"y must hold 0/1 outcomes; got values {np.unique(y_arr).tolist()[:6]}.")
    if need_both and np.unique(y_arr).size < 2:
        raise DataError(
            "Choosing a threshold needs both outcomes in the validation labels; "
            "this split has only one. Use a larger or stratified validation split."
        )
    return y_arr.astype(np.int64), p


class ThresholdPicker:
    """Pick the operating threshold on validation predictions (estimator contract).

    Args:
        method: one of :data:`METHODS`.
        target: the sensitivity or specificity to reach (in (0, 1)), or the threshold
            itself for ``fixed``. Ignored by ``youden``.
    """

    def __init__(self, method: str = "youden", target: float = 0.9) -> None:
        self.method = method
        self.target = target

    def _validate(self) -> None:
        if self.method not in METHODS:
            raise unknown_choice("threshold method", self.method, METHODS)
        if self.method != "youden" and not 0.0 <= float(self.target) <= 1.0:
            raise ConfigError(f"threshold target must lie in [0, 1]; got {self.target}.")

    def fit(self, y: Any, p_pos: Any) -> ThresholdPicker:
        """Learn ``threshold_`` and the validation ``sensitivity_``/``specificity_`` it gives.

        Args:
            y: ``(N,)`` 0/1 validation outcomes.
            p_pos: ``(N,)`` validation positive-class probabilities (or ``(N, 2)``).

        Raises:
            ConfigError: unknown method or a target outside [0, 1].
            DataError: shapes differ or the validation split has one class only.
        """
        from sklearn.metrics import roc_curve

        self._validate()
        y_arr, p = _binary(y, p_pos, need_both=self.method != "fixed")
        if self.method == "fixed":
            threshold = float(self.target)
        else:
            fpr, tpr, thr = roc_curve(y_arr, p, drop_intermediate=False)
            thr = np.minimum(thr, 1.0)  # the first threshold is +inf ("nobody positive")
            if self.method == "youden":
                index = int(np.argmax(tpr - fpr))
            elif self.method == "sensitivity":
                # thresholds decrease along the curve: the first one reaching the target
                # is the highest, so it keeps the most specificity
                index = int(np.flatnonzero(tpr >= self.target - 1e-12)[0])
            else:
                ok = np.flatnonzero(1.0 - fpr >= self.target - 1e-12)
                index = int(ok[-1])
            threshold = float(thr[index])
        pred = p >= threshold
        self.threshold_ = threshold
        pos, neg = y_arr == 1, y_arr == 0
        self.sensitivity_ = float(pred[pos].mean()) if pos.any() else float("nan")
        self.specificity_ = float((~pred[neg]).mean()) if neg.any() else float("nan")
        self.n_val_ = int(y_arr.size)
        logger.info(
            "Threshold (%s) locked at %.4f: validation sensitivity %.3f, specificity %.3f",
            self.method, threshold, self.sensitivity_, self.specificity_,
        )
        return self

    def predict(self, p_pos: Any) -> np.ndarray:
        """0/1 decisions ``(N,)`` at the locked threshold."""
        check_fitted(self, "threshold_")
        p = np.asarray(p_pos, dtype=np.float64)
        if p.ndim == 2 and p.shape[1] == 2:
            p = p[:, 1]
        return (p >= self.threshold_).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description for ``bundle.json``."""
        check_fitted(self, "threshold_")
        return {
            "method": self.method,
            "target": float(self.target),
            "threshold": self.threshold_,
            "val_sensitivity": self.sensitivity_,
            "val_specificity": self.specificity_,
            "n_val": self.n_val_,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThresholdPicker:
        """Rebuild a locked picker from :meth:`to_dict` output."""
        obj = cls(method=str(data.get("method", "fixed")), target=float(data.get("target", 0.9)))
        obj._validate()
        threshold = float(data["threshold"])
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"A stored threshold must lie in [0, 1]; got {threshold}.")
        obj.threshold_ = threshold
        obj.sensitivity_ = float(data.get("val_sensitivity", float("nan")))
        obj.specificity_ = float(data.get("val_specificity", float("nan")))
        obj.n_val_ = int(data.get("n_val", 0))
        return obj


def threshold_sweep(y: Any, p_pos: Any, thresholds: Any = None) -> dict[str, list[float]]:
    """Sensitivity, specificity, PPV and share flagged positive over a grid of thresholds.

    Returns:
        ``{threshold, sensitivity, specificity, ppv, positive_rate}`` lists (NaN where undefined).
    """
    y_arr, p = _binary(y, p_pos, need_both=False)
    grid = np.linspace(0.0, 1.0, 101) if thresholds is None else np.asarray(thresholds, dtype=float)
    pred = p[None, :] >= grid[:, None]
    pos, neg = y_arr == 1, y_arr == 0
    tp = (pred & pos).sum(axis=1)
    fp = (pred & neg).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(pos.sum() > 0, tp / max(pos.sum(), 1), np.nan)
        spec = np.where(neg.sum() > 0, 1.0 - fp / max(neg.sum(), 1), np.nan)
        ppv = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
    return {
        "threshold": grid.tolist(),
        "sensitivity": sens.astype(float).tolist(),
        "specificity": spec.astype(float).tolist(),
        "ppv": ppv.astype(float).tolist(),
        "positive_rate": pred.mean(axis=1).astype(float).tolist(),
    }
