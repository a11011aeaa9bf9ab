"""Uncertainty and abstention: conformal prediction sets, sampled uncertainty, referral.

* :class:`SplitConformal` - split-conformal prediction sets calibrated on validation,
  with the finite-sample guarantee P(true class in set) >= 1 - alpha for exchangeable
  data; class-conditional (``mondrian``, the default) so it holds for every class.
  Deterministic per case, so served sets equal evaluated ones.
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

METHODS = ("mondrian", "aps", "lac")


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

    Every method is deterministic: a case's set depends only on its own probabilities,
    never on the batch it came in or the order of calls, so ``evaluate`` on a whole split
    and ``predict``/``serve``/``pacs`` on one image at a time give the same set.

    * ``mondrian`` (the default): class-conditional split conformal with the score
      ``1 - p_k``. One quantile per class, each from that class's validation cases, so the
      coverage guarantee ``P(k in set | true class k) >= 1 - alpha`` holds *for each class*
      (Vovk's Mondrian conformal; Sadinle et al. 2019) — a clinician gets it for the sick
      and for the healthy, not only on average. Rare classes get wider quantiles.
    * ``aps``: adaptive prediction sets (Romano et al. 2020) without randomisation (the
      randomised version draws a uniform number per case, which one-at-a-time serving
      cannot reproduce); over-covers slightly.
    * ``lac``: score ``1 - p_true`` with one quantile for all classes; smallest sets, but
      coverage is only marginal and an uncertain binary case can get an empty set.

    ``bench/conformal_methods.py`` compares them on trained runs (coverage per class, set
    sizes, referral share), which is how the default was chosen.

    Args:
        alpha: allowed miss rate; sets contain the true class for at least
            ``1 - alpha`` of exchangeable future cases (of each class, for ``mondrian``).
        method: one of :data:`METHODS`.
    """

    def __init__(self, alpha: float = 0.1, method: str = "mondrian") -> None:
        self.alpha = alpha
        self.method = method

    def _validate(self) -> None:
        if self.method not in METHODS:
            raise unknown_choice("conformal method", self.method, METHODS)
        if not 0.0 < float(self.alpha) < 1.0:
            raise ConfigError(f"alpha must lie strictly between 0 and 1 (e.g. 0.1); got {self.alpha}.")

    def _scores_all(self, p: np.ndarray) -> np.ndarray:
        """Non-conformity score of every class for every row, ``(N, K)``."""
        if self.method != "aps":
            return 1.0 - p
        # APS: the mass of the classes at least as probable as this one (non-randomised)
        order = np.argsort(-p, axis=1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=1)
        scores = np.empty_like(p)
        np.put_along_axis(scores, order, np.cumsum(sorted_p, axis=1), axis=1)
        return scores

    def _quantile(self, scores: np.ndarray, what: str) -> float:
        n = scores.size
        level = np.ceil((n + 1) * (1.0 - self.alpha)) / n if n else np.inf
        if level > 1.0:
            need = int(np.ceil(1.0 / self.alpha - 1))
            raise DataError(
                f"{n} validation rows {what} are too few for alpha={self.alpha}: need at least {need}. "
                "Use a larger validation split or a larger alpha."
            )
        return float(np.quantile(scores, level, method="higher"))

    def fit(self, probs_val: Any, y_val: Any) -> SplitConformal:
        """Learn ``qhat_`` (one conformal quantile per class for ``mondrian``, else one).

        Raises:
            DataError: too few validation rows (of some class, for ``mondrian``) for ``alpha``.
        """
        self._validate()
        p = _probs_2d(probs_val)
        y = _labels(y_val, p.shape[0], p.shape[1])
        scores = self._scores_all(p)[np.arange(y.size), y]
        if self.method == "mondrian":
            self.qhat_ = [self._quantile(scores[y == k], f"of class {k}") for k in range(p.shape[1])]
        else:
            self.qhat_ = [self._quantile(scores, "")] * p.shape[1]
        self.n_val_ = int(y.size)
        self.n_classes_ = int(p.shape[1])
        logger.info("Conformal (%s, alpha=%.2f): qhat=%s from %d rows", self.method, self.alpha,
                    [round(q, 4) for q in self.qhat_], y.size)
        return self

    def predict_sets(self, probs: Any) -> np.ndarray:
        """Boolean prediction sets ``(N, K)``; row ``i`` depends on ``probs[i]`` alone.

        A set may be empty (no class is plausible enough, e.g. ``lac`` on an uncertain
        case); callers treat that like any set that is not exactly the decision: refer.
        """
        check_fitted(self, "qhat_")
        p = _probs_2d(probs)
        if p.shape[1] != self.n_classes_:
            raise DataError(f"Fitted for {self.n_classes_} classes; got probs with {p.shape[1]} columns.")
        return self._scores_all(p) <= np.asarray(self.qhat_)[None, :] + 1e-12

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description for ``bundle.json``."""
        check_fitted(self, "qhat_")
        return {"alpha": float(self.alpha), "method": self.method, "qhat": [float(q) for q in self.qhat_],
                "n_val": self.n_val_, "n_classes": self.n_classes_}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SplitConformal:
        """Rebuild a fitted predictor from :meth:`to_dict` output (or an older bundle's)."""
        obj = cls(alpha=float(data["alpha"]), method=str(data["method"]))
        obj._validate()
        k = int(data["n_classes"])
        qhat = data["qhat"]
        # Older bundles stored one quantile of randomised APS; read as non-randomised APS.
        obj.qhat_ = [float(q) for q in qhat] if isinstance(qhat, list) else [float(qhat)] * k
        obj.n_val_ = int(data.get("n_val", 0))
        obj.n_classes_ = k
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
