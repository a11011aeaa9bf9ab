"""Out-of-distribution detection on the network's own features: "this input is not like training".

:class:`MahalanobisDetector` (Lee et al., NeurIPS 2018) fits one mean per class and a shared
covariance (Ledoit-Wolf shrinkage, scikit-learn) to the pooled features the classifier head
sees on the *training* images; an input's score is its smallest squared Mahalanobis
distance to a class mean. The flagging threshold is a high quantile of the *validation*
scores (0.99 by default: about 1% of validation-like inputs are flagged), so it is set on
data the detector was not fitted on. A flagged input still gets its answer, with a referral
and the reason; DICOM tags that contradict the intended use are the hard refusal
(:mod:`medpredict.data.intended_use`).

The fitted detector (means and precision matrix) is stored as JSON in the bundle, so the
ONNX backends, which export the same features, score inputs identically.

pytorch-ood implements the same detector but depends on torchvision, which does not import
beside the CPU build of PyTorch this project targets; the estimator here is a few lines on
top of scikit-learn's covariance estimator.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from medpredict.calibration.scalers import check_fitted
from medpredict.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

METHOD = "mahalanobis"


def _features(x: Any, dim: int | None = None) -> np.ndarray:
    f = np.asarray(x, dtype=np.float64)
    if f.ndim != 2 or (dim is not None and f.shape[1] != dim):
        want = f"(N, {dim})" if dim is not None else "(N, D)"
        raise DataError(f"Features must have shape {want}; got {f.shape}.")
    if not np.all(np.isfinite(f)):
        raise DataError("Features hold NaN or infinite values; check the model outputs.")
    return f


class MahalanobisDetector:
    """Class-conditional Gaussian on training features; threshold from validation.

    Args:
        quantile: the validation-score quantile above which an input is flagged.
        max_rows: training rows used for the fit (a seeded sample beyond this).
        seed: seed of that sample.
    """

    method = METHOD

    def __init__(self, quantile: float = 0.99, max_rows: int = 20000, seed: int = 0) -> None:
        self.quantile = quantile
        self.max_rows = max_rows
        self.seed = seed

    def fit(self, features_train: Any, y_train: Any, features_val: Any) -> MahalanobisDetector:
        """Learn ``means_``, ``precision_`` on training features and ``threshold_`` on validation ones.

        Args:
            features_train: ``(N, D)`` pooled features of training inputs.
            y_train: ``(N,)`` class indices (regression or multi-label: pass zeros).
            features_val: ``(M, D)`` features of validation inputs.

        Raises:
            ConfigError: ``quantile`` outside (0, 1).
            DataError: shapes disagree or too few rows.
        """
        from sklearn.covariance import LedoitWolf

        if not 0.0 < float(self.quantile) < 1.0:
            raise ConfigError(f"OOD quantile must lie in (0, 1), e.g. 0.99; got {self.quantile}.")
        f = _features(features_train)
        y = np.asarray(y_train).astype(np.int64).reshape(-1)
        if y.shape[0] != f.shape[0]:
            raise DataError(f"{f.shape[0]} feature rows but {y.shape[0]} labels.")
        if f.shape[0] > self.max_rows:
            keep = np.random.default_rng(self.seed).choice(f.shape[0], self.max_rows, replace=False)
            f, y = f[keep], y[keep]
        classes = np.unique(y)
        if f.shape[0] < 10:
            raise DataError(f"The OOD detector needs at least 10 training rows; got {f.shape[0]}.")
        self.classes_ = classes.tolist()
        self.means_ = np.stack([f[y == c].mean(axis=0) for c in classes])
        centred = f - self.means_[np.searchsorted(classes, y)]
        self.precision_ = LedoitWolf(assume_centered=True).fit(centred).precision_
        # the bundle stores float32; score with exactly what will be stored
        self.means_ = self.means_.astype(np.float32).astype(np.float64)
        self.precision_ = self.precision_.astype(np.float32).astype(np.float64)
        val_scores = self.score(features_val)
        self.threshold_ = float(np.quantile(val_scores, self.quantile, method="higher"))
        self.n_train_, self.n_val_ = int(f.shape[0]), int(val_scores.size)
        logger.info(
            "OOD detector (%s on %d features): threshold %.2f at validation quantile %.3f",
            METHOD, f.shape[1], self.threshold_, self.quantile,
        )
        return self

    def score(self, features: Any) -> np.ndarray:
        """``(N,)`` smallest squared Mahalanobis distance to a class mean (higher = more unusual)."""
        check_fitted(self, "precision_")
        f = _features(features, self.means_.shape[1])
        best = np.full(f.shape[0], np.inf)
        for mean in self.means_:
            d = f - mean
            best = np.minimum(best, np.einsum("nd,de,ne->n", d, self.precision_, d))
        return best

    def flags(self, features: Any) -> np.ndarray:
        """``(N,)`` True where the score exceeds the validation threshold."""
        check_fitted(self, "threshold_")
        return self.score(features) > self.threshold_

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description (stored as ``input_guard.json`` in the bundle)."""
        check_fitted(self, "threshold_")
        return {
            "method": METHOD,
            "quantile": float(self.quantile),
            "threshold": self.threshold_,
            "classes": self.classes_,
            "means": self.means_.astype(np.float32).tolist(),
            "precision": self.precision_.astype(np.float32).tolist(),
            "n_train": self.n_train_,
            "n_val": self.n_val_,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MahalanobisDetector:
        """Rebuild a fitted detector from :meth:`to_dict` output.

        Raises:
            ConfigError: another method or inconsistent shapes.
        """
        if data.get("method") != METHOD:
            raise ConfigError(f"Unknown OOD detector {data.get('method')!r}; this medpredict reads '{METHOD}'.")
        obj = cls(quantile=float(data["quantile"]))
        obj.means_ = np.asarray(data["means"], dtype=np.float64)
        obj.precision_ = np.asarray(data["precision"], dtype=np.float64)
        if obj.precision_.shape != (obj.means_.shape[1], obj.means_.shape[1]):
            raise ConfigError("The stored OOD detector's precision matrix does not match its means.")
        obj.threshold_ = float(data["threshold"])
        obj.classes_ = list(data["classes"])
        obj.n_train_, obj.n_val_ = int(data.get("n_train", 0)), int(data.get("n_val", 0))
        return obj
