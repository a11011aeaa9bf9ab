"""The calibration every trained model gets: prior correction, then the calibrator validation picks.

Two things make a network's softmax output the wrong probability:

1. **Class weighting.** A loss weighted by ``w_k`` (``balanced``: inverse class frequency)
   learns ``q_k(x) ∝ w_k · p_k(x)``, so the minority class is over-predicted. No temperature
   can undo that shift of the intercept. Adding ``-log w_k`` to the logits (logit
   adjustment, Menon et al. 2021) restores the training prior exactly.
2. **Over- or under-confidence** (label smoothing, over-fitting): a calibrator fitted on
   validation — temperature (any K) or Platt (binary: slope and intercept on the log-odds);
   isotonic regression (binary, a few hundred validation rows) only when asked for. Both
   defaults are strictly increasing, so the deployed probabilities rank cases exactly as
   the network does. Isotonic regression is a step function: it ties cases the network
   ranks apart, and the probabilities a clinician sees lose discrimination although its
   log-loss may be lower (the brief's Keras CNN on PneumoniaMNIST: 624 test cases fall on
   17 distinct probabilities and test AUC drops 0.926 -> 0.906; one demo seed of five chose
   it and scored test AUC 0.935 against 0.965-0.975 for the other four).

:class:`PostHocCalibrator` applies 1, then chooses 2 by cross-validated log-loss on the
validation split (stratified folds, the same folds for every candidate), refits the winner
on the whole split, and round-trips through JSON for the bundle. Its ``transform`` takes
raw logits, so every backend (PyTorch, ONNX, int8) gets the same probabilities.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from medpredict.calibration.scalers import (
    IsotonicCalibrator,
    PlattScaler,
    TemperatureScaler,
    _labels_1d,
    calibrator_from_dict,
    check_fitted,
    softmax,
)
from medpredict.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

KIND = "posthoc"
#: Every calibrator this module can fit.
CANDIDATES = ("temperature", "platt", "isotonic")
#: The ones compared by default: strictly increasing maps, so ranking (AUC) is kept.
DEFAULT_CANDIDATES = ("temperature", "platt")
#: Isotonic regression overfits small splits: it is a candidate from this many rows on.
ISOTONIC_MIN_ROWS = 300
#: Smallest class count per fold for cross-validated selection; below it, temperature only.
MIN_PER_CLASS = 10


def prior_offsets(class_weights: Any, k: int) -> np.ndarray:
    """``-log w_k`` normalised to mean 0: what undoes a loss weighted by ``class_weights``.

    Returns zeros when ``class_weights`` is None (an unweighted loss).

    Raises:
        DataError: wrong length or a non-positive weight.
    """
    if class_weights is None:
        return np.zeros(k)
    w = np.asarray(class_weights, dtype=np.float64)
    if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise DataError(f"class_weights must be {k} positive numbers; got {w.tolist()}.")
    offsets = -np.log(w)
    return offsets - offsets.mean()


class _Binary:
    """A binary calibrator (Platt or isotonic) applied to adjusted logits ``(N, 2)``."""

    def __init__(self, inner: PlattScaler | IsotonicCalibrator, floor: float) -> None:
        self.inner = inner
        self.floor = floor

    def transform(self, z: np.ndarray) -> np.ndarray:
        p1 = softmax(z)[:, 1]
        pos = np.clip(self.inner.transform(p1), self.floor, 1.0 - self.floor)
        return np.stack([1.0 - pos, pos], axis=1)


def _fit_one(method: str, z: np.ndarray, y: np.ndarray) -> Any:
    """Fit ``method`` on adjusted logits; returns an object with ``transform(z) -> probs``."""
    if method == "temperature":
        return TemperatureScaler().fit(z, y)
    p1 = softmax(z)[:, 1]
    floor = 0.5 / (len(y) + 1)  # isotonic would otherwise report probabilities of exactly 0 or 1
    if method == "platt":
        return _Binary(PlattScaler().fit(p1, y), 1e-6)
    return _Binary(IsotonicCalibrator().fit(p1, y), floor)


def _log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    return float(-np.log(p).mean())


class PostHocCalibrator:
    """Prior correction for the training class weights, then a calibrator chosen on validation.

    Estimator contract: ``__init__`` stores arguments, :meth:`fit` learns ``offsets_``,
    ``method_``, ``calibrator_`` and ``cv_log_loss_`` and returns ``self``.

    Args:
        class_weights: the per-class loss weights training used (None: unweighted).
        candidates: calibrators to compare (default :data:`DEFAULT_CANDIDATES`); ``platt`` and
            ``isotonic`` apply to binary tasks only, ``isotonic`` from :data:`ISOTONIC_MIN_ROWS`
            validation rows, and it ties cases (see the module docstring).
        folds: cross-validation folds for the choice.
        seed: seed of the fold assignment.
    """

    kind = KIND

    def __init__(
        self,
        class_weights: Any = None,
        candidates: tuple[str, ...] = DEFAULT_CANDIDATES,
        folds: int = 5,
        seed: int = 0,
    ) -> None:
        self.class_weights = class_weights
        self.candidates = candidates
        self.folds = folds
        self.seed = seed

    def _eligible(self, n: int, k: int, counts: np.ndarray) -> list[str]:
        unknown = sorted(set(self.candidates) - set(CANDIDATES))
        if unknown:
            raise ConfigError(f"Unknown calibrator(s) {unknown}; choose from {list(CANDIDATES)}.")
        eligible = ["temperature"] if "temperature" in self.candidates else []
        if k == 2 and counts.min() >= MIN_PER_CLASS:
            eligible += [c for c in ("platt",) if c in self.candidates]
            if n >= ISOTONIC_MIN_ROWS and "isotonic" in self.candidates:
                eligible.append("isotonic")
        if not eligible:
            raise ConfigError(f"No calibrator among {list(self.candidates)} applies to {k} classes and {n} rows.")
        return eligible

    def fit(self, logits: Any, y: Any) -> PostHocCalibrator:
        """Fit on validation logits ``(N, K)`` (raw network outputs) and class indices ``(N,)``.

        Raises:
            DataError: shapes disagree, or a class is missing from validation.
        """
        z = TemperatureScaler._check_logits(logits)
        n, k = z.shape
        labels = _labels_1d(y, n, k)
        counts = np.bincount(labels, minlength=k)
        if np.any(counts == 0):
            raise DataError(
                f"Validation holds no case of class(es) {np.flatnonzero(counts == 0).tolist()}; "
                "calibration needs every class. Use a larger or stratified validation split."
            )
        self.offsets_ = prior_offsets(self.class_weights, k)
        adjusted = z + self.offsets_
        eligible = self._eligible(n, k, counts)
        self.cv_log_loss_ = self._cross_validate(adjusted, labels, eligible, counts)
        self.cv_log_loss_["none"] = _log_loss(softmax(adjusted), labels)
        self.method_ = min(eligible, key=lambda m: self.cv_log_loss_[m])
        self.calibrator_ = _fit_one(self.method_, adjusted, labels)
        logger.info(
            "Calibration: prior correction %s, %s chosen by %d-fold validation log-loss (%s)",
            "on" if self.class_weights is not None else "off",
            self.method_,
            self.folds,
            ", ".join(f"{m} {v:.4f}" for m, v in self.cv_log_loss_.items()),
        )
        return self

    def _cross_validate(
        self, z: np.ndarray, y: np.ndarray, eligible: list[str], counts: np.ndarray
    ) -> dict[str, float]:
        if len(eligible) == 1:
            return {eligible[0]: float("nan")}
        from sklearn.model_selection import StratifiedKFold

        folds = int(min(self.folds, counts.min()))
        splitter = StratifiedKFold(n_splits=max(folds, 2), shuffle=True, random_state=self.seed)
        losses = {m: np.zeros(len(y)) for m in eligible}
        for train, held in splitter.split(z, y):
            for method in eligible:
                model = _fit_one(method, z[train], y[train])
                p = np.clip(model.transform(z[held])[np.arange(len(held)), y[held]], 1e-12, 1.0)
                losses[method][held] = -np.log(p)
        return {m: float(v.mean()) for m, v in losses.items()}

    def transform(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities ``(N, K)`` from raw logits ``(N, K)``."""
        check_fitted(self, "method_")
        z = TemperatureScaler._check_logits(logits)
        return np.asarray(self.calibrator_.transform(z + self.offsets_))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description for ``bundle.json``."""
        check_fitted(self, "method_")
        inner = self.calibrator_.inner if isinstance(self.calibrator_, _Binary) else self.calibrator_
        return {
            "kind": KIND,
            "method": self.method_,
            "prior_correction": self.class_weights is not None,
            "offsets": [float(v) for v in self.offsets_],
            "calibrator": inner.to_dict(),
            "floor": self.calibrator_.floor if isinstance(self.calibrator_, _Binary) else None,
            "cv_log_loss": {m: (None if not np.isfinite(v) else float(v)) for m, v in self.cv_log_loss_.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PostHocCalibrator:
        """Rebuild a fitted calibrator from :meth:`to_dict` output."""
        obj = cls()
        obj.offsets_ = np.asarray(data["offsets"], dtype=np.float64)
        obj.method_ = str(data["method"])
        inner = calibrator_from_dict(data["calibrator"])
        if isinstance(inner, TemperatureScaler):
            obj.calibrator_ = inner
        else:
            obj.calibrator_ = _Binary(inner, float(data.get("floor") or 1e-6))
        obj.cv_log_loss_ = {m: (float("nan") if v is None else float(v)) for m, v in data["cv_log_loss"].items()}
        obj.class_weights = [1.0] * len(obj.offsets_) if data.get("prior_correction") else None
        return obj


def load_calibration(data: dict[str, Any]) -> PostHocCalibrator | TemperatureScaler:
    """The calibrator stored in ``bundle.json``: a :class:`PostHocCalibrator`, or an older bundle's scaler.

    Both take raw logits ``(N, K)`` in ``transform``.

    Raises:
        ConfigError: an unknown calibrator kind, or an older binary-only calibrator that
            cannot take logits.
    """
    if data.get("kind") == KIND:
        return PostHocCalibrator.from_dict(data)
    inner = calibrator_from_dict(data)
    if not isinstance(inner, TemperatureScaler):
        raise ConfigError(f"A stored '{data.get('kind')}' calibrator cannot be applied to logits; retrain the model.")
    return inner
