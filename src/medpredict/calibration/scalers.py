"""Probability calibration: fitted scalers stored in the bundle, and calibration summaries.

Calibrators follow the estimator contract: ``__init__`` only stores arguments, ``fit``
learns ``name_`` attributes on the *validation* split and returns ``self``,
``transform`` refuses to run unfitted, and ``to_dict``/``from_dict`` round-trip through
JSON (no pickle), so the fitted calibrator travels inside ``bundle.json``.

* :class:`TemperatureScaler` - one temperature for K-class logits (any K).
* :class:`PlattScaler` - logistic regression on the positive-class logit (binary).
* :class:`IsotonicCalibrator` - monotone step function on the positive-class
  probability (binary; needs a few hundred validation rows to be stable).
* :func:`calibrator_from_dict` rebuilds any of them from its ``to_dict()``.
* :func:`calibration_summary` - ECE, MCE, Brier, calibration slope and intercept,
  calibration-in-the-large and reliability-diagram bins.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

from medpredict.errors import ConfigError, DataError, unknown_choice

logger = logging.getLogger(__name__)

_EPS = 1e-7


def check_fitted(obj: Any, attr: str) -> None:
    """Raise :class:`ConfigError` when the fitted attribute ``attr`` is missing on ``obj``."""
    if getattr(obj, attr, None) is None:
        raise ConfigError(
            f"This {type(obj).__name__} is not fitted yet. Call fit() on validation predictions "
            f"first, or load a fitted one with {type(obj).__name__}.from_dict()."
        )


def _labels_1d(y: Any, n: int, k: int | None = None) -> np.ndarray:
    arr = np.asarray(y)
    if arr.shape != (n,):
        raise DataError(f"y must have one class index per row, shape ({n},); got shape {arr.shape}.")
    if not np.all(arr == np.round(arr)):
        raise DataError("y must hold integer class indices; got non-integer values.")
    arr = arr.astype(np.int64)
    upper = 2 if k is None else k
    if np.any((arr < 0) | (arr >= upper)):
        raise DataError(f"y holds class indices outside 0..{upper - 1}: {np.unique(arr).tolist()[:6]}.")
    return arr


def _p_pos_1d(p: Any) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 2:
        arr = arr[:, 1]
    if arr.ndim != 1:
        raise DataError(
            f"Expected positive-class probabilities of shape (N,) or (N, 2); got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)) or np.any((arr < 0) | (arr > 1)):
        raise DataError("Probabilities must be finite and lie in [0, 1]; check the model outputs.")
    return arr


def logit(p: Any) -> np.ndarray:
    """Log-odds of probabilities, clipped away from 0 and 1 so the result stays finite."""
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(q / (1.0 - q))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, K)`` logits, numerically stable."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def logits_from_probs(probs: Any) -> np.ndarray:
    """Log-probabilities ``(N, K)``: valid logits for temperature scaling when only probabilities exist."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))


class TemperatureScaler:
    """Divide logits by one temperature ``T`` fitted to minimise validation NLL.

    ``T > 1`` softens over-confident predictions; ranking (and so AUC) is unchanged.

    Args:
        bounds: search interval for ``T``.
    """

    kind = "temperature"

    def __init__(self, bounds: tuple[float, float] = (0.05, 20.0)) -> None:
        self.bounds = bounds

    def fit(self, logits: Any, y: Any) -> TemperatureScaler:
        """Fit ``temperature_`` on validation logits ``(N, K)`` and class indices ``(N,)``.

        Log-probabilities (:func:`logits_from_probs`) work as logits too.
        """
        from scipy.optimize import minimize_scalar

        z = self._check_logits(logits)
        labels = _labels_1d(y, z.shape[0], z.shape[1])
        rows = np.arange(z.shape[0])

        def nll(log_t: float) -> float:
            scaled = z / np.exp(log_t)
            scaled = scaled - scaled.max(axis=1, keepdims=True)
            log_norm = np.log(np.exp(scaled).sum(axis=1))
            return float(np.mean(log_norm - scaled[rows, labels]))

        lo, hi = np.log(self.bounds[0]), np.log(self.bounds[1])
        res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
        self.temperature_ = float(np.exp(res.x))
        self.nll_before_ = nll(0.0)
        self.nll_after_ = float(res.fun)
        logger.info(
            "Temperature scaling: T=%.3f, validation NLL %.4f -> %.4f",
            self.temperature_, self.nll_before_, self.nll_after_,
        )
        return self

    def transform(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities ``(N, K)`` from logits ``(N, K)``."""
        check_fitted(self, "temperature_")
        return softmax(self._check_logits(logits) / self.temperature_)

    @staticmethod
    def _check_logits(logits: Any) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] < 2:
            raise DataError(f"logits must have shape (N, K) with K >= 2; got shape {z.shape}.")
        if not np.all(np.isfinite(z)):
            raise DataError("logits contain NaN or infinite values; check the model outputs.")
        return z

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description of the fitted scaler."""
        check_fitted(self, "temperature_")
        return {"kind": self.kind, "temperature": self.temperature_, "bounds": list(self.bounds)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemperatureScaler:
        """Rebuild a fitted scaler from :meth:`to_dict` output."""
        obj = cls(bounds=tuple(data.get("bounds", (0.05, 20.0))))  # type: ignore[arg-type]
        temperature = float(data["temperature"])
        if not temperature > 0:
            raise ConfigError(f"A stored temperature must be positive; got {temperature}.")
        obj.temperature_ = temperature
        return obj


class PlattScaler:
    """Binary Platt scaling: ``p' = sigmoid(a * logit(p) + b)`` fitted on validation."""

    kind = "platt"

    def fit(self, p_pos: Any, y: Any) -> PlattScaler:
        """Fit ``slope_`` and ``intercept_`` on positive-class probabilities ``(N,)``."""
        from sklearn.linear_model import LogisticRegression

        p = _p_pos_1d(p_pos)
        labels = _labels_1d(y, p.shape[0])
        if np.unique(labels).size < 2:
            raise DataError("Platt scaling needs both classes in the validation labels.")
        model = LogisticRegression(C=1e6).fit(logit(p)[:, None], labels)
        self.slope_ = float(model.coef_[0, 0])
        self.intercept_ = float(model.intercept_[0])
        return self

    def transform(self, p_pos: Any) -> np.ndarray:
        """Calibrated positive-class probabilities ``(N,)``."""
        check_fitted(self, "slope_")
        z = self.slope_ * logit(_p_pos_1d(p_pos)) + self.intercept_
        return 1.0 / (1.0 + np.exp(-z))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description of the fitted scaler."""
        check_fitted(self, "slope_")
        return {"kind": self.kind, "slope": self.slope_, "intercept": self.intercept_}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlattScaler:
        """Rebuild a fitted scaler from :meth:`to_dict` output."""
        obj = cls()
        obj.slope_, obj.intercept_ = float(data["slope"]), float(data["intercept"])
        return obj


class IsotonicCalibrator:
    """Binary isotonic calibration (scikit-learn ``IsotonicRegression``), stored as its knots."""

    kind = "isotonic"

    def fit(self, p_pos: Any, y: Any) -> IsotonicCalibrator:
        """Fit ``x_`` and ``y_`` (the monotone step function's knots) on validation."""
        from sklearn.isotonic import IsotonicRegression

        p = _p_pos_1d(p_pos)
        labels = _labels_1d(y, p.shape[0])
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, labels)
        self.x_ = iso.X_thresholds_.astype(float).tolist()
        self.y_ = iso.y_thresholds_.astype(float).tolist()
        return self

    def transform(self, p_pos: Any) -> np.ndarray:
        """Calibrated positive-class probabilities ``(N,)`` (linear between knots, as sklearn)."""
        check_fitted(self, "x_")
        return np.interp(_p_pos_1d(p_pos), self.x_, self.y_)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description of the fitted calibrator."""
        check_fitted(self, "x_")
        return {"kind": self.kind, "x": list(self.x_), "y": list(self.y_)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IsotonicCalibrator:
        """Rebuild a fitted calibrator from :meth:`to_dict` output."""
        obj = cls()
        obj.x_ = [float(v) for v in data["x"]]
        obj.y_ = [float(v) for v in data["y"]]
        if len(obj.x_) != len(obj.y_) or not obj.x_:
            raise ConfigError("A stored isotonic calibrator needs equally long, non-empty 'x' and 'y'.")
        return obj


CALIBRATORS: dict[str, type[TemperatureScaler] | type[PlattScaler] | type[IsotonicCalibrator]] = {
    "temperature": TemperatureScaler,
    "platt": PlattScaler,
    "isotonic": IsotonicCalibrator,
}


def calibrator_from_dict(data: dict[str, Any]) -> TemperatureScaler | PlattScaler | IsotonicCalibrator:
    """Rebuild whichever calibrator ``data["kind"]`` names (as stored in ``bundle.json``)."""
    kind = str(data.get("kind", ""))
    if kind not in CALIBRATORS:
        raise unknown_choice("calibrator kind", kind, CALIBRATORS)
    return CALIBRATORS[kind].from_dict(data)


def calibrate_probs(
    calibrator: TemperatureScaler | PlattScaler | IsotonicCalibrator, probs: Any
) -> np.ndarray:
    """Apply any fitted calibrator to class probabilities ``(N, K)`` and return ``(N, K)``.

    The temperature scaler works on log-probabilities; the binary calibrators map the
    positive-class column and rebuild the negative one.
    """
    p = np.asarray(probs, dtype=np.float64)
    if isinstance(calibrator, TemperatureScaler):
        return calibrator.transform(logits_from_probs(p))
    if p.ndim != 2 or p.shape[1] != 2:
        raise DataError(f"{calibrator.kind} calibration is for binary (N, 2) probabilities; got {p.shape}.")
    pos = calibrator.transform(p[:, 1])
    return np.stack([1.0 - pos, pos], axis=1)


def calibration_summary(y: Any, p_pos: Any, n_bins: int = 10) -> dict[str, Any]:
    """Summarise how well predicted risks match observed frequencies (binary).

    For a multiclass model pass ``y = (argmax == true)`` and ``p_pos = max prob``
    (top-label calibration).

    Args:
        y: ``(N,)`` 0/1 outcomes.
        p_pos: ``(N,)`` predicted probabilities of outcome 1.
        n_bins: equal-width bins on [0, 1] for ECE and the reliability diagram.

    Returns:
        ``{ece, mce, brier, slope, intercept, calibration_in_the_large, n, n_bins,
        bins: [{lo, hi, n, mean_predicted, observed}]}``. Slope and intercept come from
        an unpenalised logistic regression of ``y`` on ``logit(p)`` (ideal: 1 and 0);
        ``calibration_in_the_large = mean(y) - mean(p)`` (ideal 0). ECE weighs each
        bin's |observed - predicted| gap by its share of rows; MCE is the largest gap.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss

    p = _p_pos_1d(p_pos)
    labels = _labels_1d(y, p.shape[0])
    if not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ConfigError(f"n_bins must be a positive integer; got {n_bins!r}.")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece, mce = [], 0.0, 0.0
    for b in range(n_bins):
        mask = index == b
        count = int(mask.sum())
        row: dict[str, Any] = {"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": count}
        if count:
            mean_p, observed = float(p[mask].mean()), float(labels[mask].mean())
            gap = abs(observed - mean_p)
            ece += gap * count / p.size
            mce = max(mce, gap)
            row.update(mean_predicted=mean_p, observed=observed)
        else:
            row.update(mean_predicted=None, observed=None)
        bins.append(row)

    slope = intercept = float("nan")
    if np.unique(labels).size == 2:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # C=inf: the calibration slope is defined by the unpenalised fit.
            model = LogisticRegression(C=np.inf, max_iter=1000).fit(logit(p)[:, None], labels)
        if caught:
            logger.warning("Calibration slope fit: %s", caught[0].message)
        slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    else:
        logger.warning("Only one outcome class present: calibration slope/intercept undefined.")
    return {
        "ece": float(ece),
        "mce": float(mce),
        "brier": float(brier_score_loss(labels, p, pos_label=1)),
        "slope": slope,
        "intercept": intercept,
        "calibration_in_the_large": float(labels.mean() - p.mean()),
        "n": int(p.size),
        "n_bins": int(n_bins),
        "bins": bins,
    }
