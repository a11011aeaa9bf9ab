"""Uncertainty and abstention: conformal prediction sets, sampled uncertainty, referral.

* :class:`SplitConformal` - split-conformal prediction sets calibrated on validation,
  with the finite-sample guarantee P(true class in set) >= 1 - alpha for exchangeable
  data. ``aps`` (cumulative probability up to the true class; the default) adapts set
  size to how hard a case is; ``lac`` (score 1 - p_true) gives the smallest sets.
* :func:`coverage`, :func:`set_size_summary` - how the sets behave on test.
* :func:`mc_dropout_probs` and :func:`tta_probs` - repeated stochastic predictions
  (dropout left on, or small test-time augmentations) summarised as mean probability,
  spread, predictive entropy and mutual information.
* :func:`predictive_entropy`, :func:`referral_curve` - "refer to a clinician":
  accuracy on the cases kept when the most uncertain share is referred.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from medpredict.calibration.scalers import check_fitted
from medpredict.errors import ConfigError, DataError, unknown_choice

logger = logging.getLogger(__name__)

METHODS = ("aps", "lac")


def _probs_2d(probs: Any) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise DataError(f"probs must have shape (N, K) with K >= 2; got shape {p.shape}.")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise DataError("probs must be finite and non-negative; check the model outputs.")
    return p


def _labels(y: Any, n: int, k: int) -> np.ndarray:
    arr = np.asarray(y)
    if arr.shape != (n,) or not np.all(arr == np.round(arr)):
        raise DataError(f"y must hold one integer class index per row, shape ({n},); got {arr.shape}.")
    arr = arr.astype(np.int64)
    if np.any((arr < 0) | (arr >= k)):
        raise DataError(f"y holds class indices outside 0..{k - 1}.")
    return arr


class SplitConformal:
    """Split-conformal classifier sets (estimator contract; fitted on validation).

    APS is the default. When a model is right on more than ``1 - alpha`` of validation
    cases, LAC's quantile falls below 0.5 and it answers an uncertain binary case with an
    *empty* set; APS answers it with both classes ("refer"), so its coverage is spread
    evenly over easy and hard cases. That is also why APS holds its coverage far better
    when the cases in use are harder than validation's: on PneumoniaMNIST's official test
    split (a separately collected set), ``bench/calibration_transfer.py`` measured LAC at
    81-91% and APS at 90-93% coverage for a 90% target, over 10 trained models.

    Args:
        alpha: allowed miss rate; sets contain the true class for at least
            ``1 - alpha`` of exchangeable future cases.
        method: ``aps`` or ``lac``.
        seed: seed of the uniform draws that randomise APS scores (without them APS
            over-covers badly, e.g. always giving both classes in a binary task).
    """

    def __init__(self, alpha: float = 0.1, method: str = "aps", seed: int = 0) -> None:
        self.alpha = alpha
        self.method = method
        self.seed = seed

    def _validate(self) -> None:
        if self.method not in METHODS:
            raise unknown_choice("conformal method", self.method, METHODS)
        if not 0.0 < float(self.alpha) < 1.0:
            raise ConfigError(f"alpha must lie strictly between 0 and 1 (e.g. 0.1); got {self.alpha}.")

    def _scores_all(self, p: np.ndarray, salt: int) -> np.ndarray:
        """Non-conformity score of every class for every row, ``(N, K)``."""
        if self.method == "lac":
            return 1.0 - p
        # APS: mass of the classes more probable than this one, plus a uniform share
        # of its own mass (Romano et al. 2020, randomised so coverage is not inflated)
        order = np.argsort(-p, axis=1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=1)
        u = np.random.default_rng([self.seed, salt]).random((p.shape[0], 1))
        cum = np.cumsum(sorted_p, axis=1) - sorted_p + u * sorted_p
        scores = np.empty_like(p)
        np.put_along_axis(scores, order, cum, axis=1)
        return scores

    def fit(self, probs_val: Any, y_val: Any) -> SplitConformal:
        """Learn ``qhat_``, the conformal quantile of validation scores.

        Raises:
            DataError: too few validation rows for the requested ``alpha``.
        """
        self._validate()
        p = _probs_2d(probs_val)
        y = _labels(y_val, p.shape[0], p.shape[1])
        n = y.size
        level = np.ceil((n + 1) * (1.0 - self.alpha)) / n
        if level > 1.0:
            raise DataError(
                f"{n} validation rows are too few for alpha={self.alpha}: need at least "
                f"{int(np.ceil(1.0 / self.alpha - 1))}. Use a larger validation split or a larger alpha."
            )
        scores = self._scores_all(p, salt=0)[np.arange(n), y]
        self.qhat_ = float(np.quantile(scores, level, method="higher"))
        self.n_val_ = int(n)
        self.n_classes_ = int(p.shape[1])
        logger.info("Conformal (%s, alpha=%.2f): qhat=%.4f from %d rows", self.method, self.alpha,
                    self.qhat_, n)
        return self

    def predict_sets(self, probs: Any) -> np.ndarray:
        """Boolean prediction sets ``(N, K)``.

        A set may be empty (rare, randomised APS only when alpha is large): no class
        is plausible enough, which a caller should treat like a referral. Forcing the
        top class in would over-cover and void the "within alpha" calibration.
        """
        check_fitted(self, "qhat_")
        p = _probs_2d(probs)
        if p.shape[1] != self.n_classes_:
            raise DataError(f"Fitted for {self.n_classes_} classes; got probs with {p.shape[1]} columns.")
        return self._scores_all(p, salt=1) <= self.qhat_ + 1e-12

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description for ``bundle.json``."""
        check_fitted(self, "qhat_")
        return {"alpha": float(self.alpha), "method": self.method, "seed": int(self.seed),
                "qhat": self.qhat_, "n_val": self.n_val_, "n_classes": self.n_classes_}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SplitConformal:
        """Rebuild a fitted predictor from :meth:`to_dict` output."""
        obj = cls(alpha=float(data["alpha"]), method=str(data["method"]), seed=int(data.get("seed", 0)))
        obj._validate()
        obj.qhat_ = float(data["qhat"])
        obj.n_val_ = int(data.get("n_val", 0))
        obj.n_classes_ = int(data["n_classes"])
        return obj


def coverage(sets: Any, y: Any) -> float:
    """Share of rows whose true class is in the prediction set."""
    s = np.asarray(sets, dtype=bool)
    labels = _labels(y, s.shape[0], s.shape[1])
    return float(s[np.arange(labels.size), labels].mean())


def set_size_summary(sets: Any, labels: list[str] | None = None) -> dict[str, Any]:
    """Mean set size, how many rows got sets of each size, and singleton/empty shares."""
    s = np.asarray(sets, dtype=bool)
    sizes = s.sum(axis=1)
    counts = {int(k): int(v) for k, v in zip(*np.unique(sizes, return_counts=True), strict=True)}
    out: dict[str, Any] = {
        "mean_size": float(sizes.mean()),
        "singleton_rate": float(np.mean(sizes == 1)),
        "empty_rate": float(np.mean(sizes == 0)),
        "size_counts": counts,
    }
    if labels is not None:
        out["class_inclusion_rate"] = {lab: float(s[:, i].mean()) for i, lab in enumerate(labels)}
    return out


def predictive_entropy(probs: Any) -> np.ndarray:
    """Entropy (nats) of each row of ``(N, K)`` probabilities: 0 = certain."""
    p = np.clip(_probs_2d(probs), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def _summarise_samples(samples: np.ndarray) -> dict[str, np.ndarray]:
    """``(S, N, K)`` sampled probabilities -> mean, std, entropy, mutual information."""
    mean = samples.mean(axis=0)
    total = predictive_entropy(mean)
    clipped = np.clip(samples, 1e-12, 1.0)
    expected = -(clipped * np.log(clipped)).sum(axis=2).mean(axis=0)
    return {"mean": mean, "std": samples.std(axis=0), "entropy": total,
            "mutual_information": np.maximum(total - expected, 0.0)}


def mc_dropout_probs(
    model: Any, images: Any, *, n_samples: int = 20, seed: int = 0, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Monte-Carlo dropout: repeat predictions with dropout layers active.

    Only dropout modules are switched to training mode (batch norm stays frozen) and
    the model's modes are restored afterwards. The global torch RNG is forked, so the
    caller's random state is untouched.

    Args:
        model: a torch module returning logits ``(N, K)``.
        images: ``(N, C, H, W)`` float32 array or tensor.

    Returns:
        ``{mean (N, K), std (N, K), entropy (N,), mutual_information (N,)}``.

    Raises:
        ConfigError: the model has no dropout layer (every sample would be identical).
    """
    import torch

    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    if not dropouts:
        raise ConfigError(
            f"{type(model).__name__} has no dropout layer, so MC dropout gives no uncertainty. "
            "Build the model with dropout > 0 or use tta_probs()."
        )
    was_training = {m: m.training for m in model.modules()}
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    samples = []
    try:
        model.eval()
        for m in dropouts:
            m.train()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for _ in range(n_samples):
                out = [torch.softmax(model(x[i:i + batch_size]), dim=1) for i in range(0, len(x), batch_size)]
                samples.append(torch.cat(out).cpu().numpy().astype(np.float64))
    finally:
        for m, mode in was_training.items():
            m.train(mode)
    return _summarise_samples(np.stack(samples))


def tta_probs(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    images: Any,
    *,
    n_samples: int = 8,
    max_shift: int = 2,
    contrast: float = 0.1,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Test-time augmentation: small shifts and contrast changes, no flips.

    Flips are left out on purpose: anatomy is not left-right symmetric (the heart
    sits on the left of a chest X-ray). The first sample is the unaugmented image.

    Args:
        predict_fn: maps ``(N, C, H, W)`` float32 in [0, 1] to probabilities ``(N, K)``.
        images: ``(N, C, H, W)`` float32 in [0, 1].

    Returns:
        Same keys as :func:`mc_dropout_probs`.
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4:
        raise DataError(f"images must be (N, C, H, W); got shape {x.shape}.")
    rng = np.random.default_rng(seed)
    samples = [_probs_2d(predict_fn(x))]
    for _ in range(max(0, n_samples - 1)):
        dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
        shifted = np.roll(x, (int(dy), int(dx)), axis=(2, 3))
        factor = rng.uniform(1.0 - contrast, 1.0 + contrast)
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        augmented = np.clip((shifted - mean) * factor + mean, 0.0, 1.0).astype(np.float32)
        samples.append(_probs_2d(predict_fn(augmented)))
    return _summarise_samples(np.stack(samples))


def referral_curve(
    y: Any, probs: Any, uncertainty: Any = None, *, rates: Any = None, threshold: float | None = None
) -> list[dict[str, float]]:
    """Accuracy on the cases kept when the most uncertain share is referred to a clinician.

    Args:
        y: ``(N,)`` class indices.
        probs: ``(N, K)`` probabilities; the decision is the arg-max, or for two classes
            ``p_1 >= threshold`` when a (locked) threshold is given.
        uncertainty: ``(N,)`` higher = less certain; defaults to predictive entropy.
        rates: referral rates to report (default 0, 0.05, ..., 0.5).
        threshold: the binary operating threshold, so that the curve starts at the
            accuracy the model is reported with.

    Returns:
        Rows ``{referral_rate, n_kept, accuracy_kept}``; accuracy should rise with the
        rate when the uncertainty is informative.
    """
    p = _probs_2d(probs)
    labels = _labels(y, p.shape[0], p.shape[1])
    u = predictive_entropy(p) if uncertainty is None else np.asarray(uncertainty, dtype=np.float64)
    if u.shape != labels.shape:
        raise DataError(f"uncertainty must be (N,) = ({labels.size},); got {u.shape}.")
    grid = np.round(np.linspace(0.0, 0.5, 11), 4) if rates is None else np.asarray(rates, dtype=float)
    if np.any((grid < 0) | (grid >= 1)):
        raise ConfigError("Referral rates must lie in [0, 1).")
    if threshold is not None and p.shape[1] == 2:
        decision = (p[:, 1] >= threshold).astype(np.int64)
    else:
        decision = p.argmax(axis=1)
    correct = (decision == labels).astype(np.float64)
    order = np.argsort(u, kind="stable")  # most certain first
    rows = []
    for rate in grid:
        kept = order[: max(1, int(round(labels.size * (1.0 - rate))))]
        rows.append({"referral_rate": float(rate), "n_kept": int(kept.size),
                     "accuracy_kept": float(correct[kept].mean())})
    return rows
