"""Headline metrics with 95% confidence intervals from a bootstrap over patients.

A test set often holds several images of one patient. Those images are not
independent, so resampling images makes intervals too narrow. Every interval here
comes from resampling *groups* (patients; each row its own group when no groups are
given): a bootstrap replicate draws patients with replacement and gives each row the
weight "how many times its patient was drawn". All metrics are then computed as
weighted sums, for all replicates at once, which keeps 1,000 replicates of 5,000
rows to a second or two.

Public functions (arrays in, JSON-safe dicts out):

* :func:`classification_metrics` - binary or multiclass metrics with CIs.
* :func:`regression_metrics` - MAE, RMSE and R² with CIs.
* :func:`roc_points`, :func:`roc_band`, :func:`pr_points` - curves for plots.
* :func:`delong_test` - DeLong test for two correlated AUCs (independent rows).
* :func:`paired_bootstrap_compare` - paired bootstrap over patients for two runs.

Conventions: ``y_true`` holds integer class indices; ``probs`` is ``(N, K)`` with one
column per label; for binary tasks the positive class is index 1 and a row is called
positive when ``probs[:, 1] >= threshold``. Percentile intervals, ``ci_level`` 0.95.
Replicates in which a class is missing are skipped and counted in ``n_boot_skipped``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from medpredict.errors import ConfigError, DataError, unknown_choice

logger = logging.getLogger(__name__)

CI_LEVEL = 0.95
# Bootstrap weights are built in chunks of at most this many cells, so memory stays
# near 40 MB whatever the test-set size.
_CHUNK_CELLS = 5_000_000

BINARY_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "brier")
MULTICLASS_METRICS = ("auc", "accuracy", "f1", "brier")
REGRESSION_METRICS = ("mae", "rmse", "r2")
COMPARE_METRICS = ("auc", "brier", "accuracy")


# --------------------------------------------------------------------------- inputs


def _check_inputs(
    y_true: Any, probs: Any, labels: list[str], groups: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Validate and convert inputs; return ``(y, probs, group_codes, n_groups)``."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    labels = list(labels)
    if len(labels) < 2:
        raise DataError(f"labels must name at least two classes; got {labels!r}.")
    if p.ndim == 1 and len(labels) == 2:
        p = np.stack([1.0 - p, p], axis=1)  # positive-class probabilities given alone
    if y.ndim != 1:
        raise DataError(f"y_true must be one-dimensional (N,); got shape {y.shape}.")
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] != len(labels):
        raise DataError(
            f"probs must have shape (N, K) = ({y.shape[0]}, {len(labels)}) to match y_true and "
            f"labels {labels!r}; got shape {p.shape}."
        )
    if y.shape[0] == 0:
        raise DataError("No samples to evaluate: y_true is empty. Check the split you evaluate on.")
    if not np.all(np.isfinite(p)):
        raise DataError(
            f"probs contain {int(np.sum(~np.isfinite(p)))} NaN or infinite values; "
            "check the model outputs before evaluating."
        )
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError("y_true must hold integer class indices; got non-integer values.")
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"y_true must hold integer class indices; got dtype {y.dtype}.")
    bad = (y < 0) | (y >= len(labels))
    if np.any(bad):
        raise DataError(
            f"y_true holds class indices outside 0..{len(labels) - 1} (e.g. {int(y[bad][0])}); "
            f"labels are {labels!r}."
        )
    codes, n_groups = _group_codes(groups, y.shape[0])
    return y.astype(np.int64), p, codes, n_groups


def _group_codes(groups: Any, n: int) -> tuple[np.ndarray, int]:
    """Map group ids to ``0..G-1``; ``None`` makes every row its own group."""
    if groups is None:
        return np.arange(n), n
    g = np.asarray(groups)
    if g.shape != (n,):
        raise DataError(f"groups must have one entry per sample, shape ({n},); got shape {g.shape}.")
    if g.dtype.kind == "O" and any(v is None or v != v for v in g):
        raise DataError("groups contain missing patient ids; fill them before evaluating.")
    _, codes = np.unique(g.astype(str) if g.dtype.kind == "O" else g, return_inverse=True)
    codes = codes.ravel()
    return codes, int(codes.max()) + 1


def _bootstrap_weights(
    codes: np.ndarray, n_groups: int, n_boot: int, seed: int
) -> Iterator[np.ndarray]:
    """Yield row weights ``(b, N)`` for ``n_boot`` replicates that resample groups."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(codes.shape[0], n_groups))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        draws = rng.integers(0, n_groups, size=(b, n_groups)) + n_groups * np.arange(b)[:, None]
        counts = np.bincount(draws.ravel(), minlength=b * n_groups).reshape(b, n_groups)
        yield counts[:, codes].astype(np.float64)
        done += b


def _percentile_ci(values: np.ndarray) -> list[float]:
    """Percentile interval of the finite values; NaNs when none are finite."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [float("nan"), float("nan")]
    tail = (1.0 - CI_LEVEL) / 2.0 * 100.0
    lo, hi = np.percentile(finite, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# ------------------------------------------------------------ weighted kernels


class _AucKernel:
    """Weighted Mann-Whitney AUC for many weight vectors at once (ties count one half)."""

    def __init__(self, y_bin: np.ndarray, score: np.ndarray) -> None:
        self.order = np.argsort(score, kind="mergesort")
        s = score[self.order]
        self.starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        self.pos = y_bin[self.order].astype(np.float64)

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        w = weights[:, self.order]
        pos = np.add.reduceat(w * self.pos, self.starts, axis=1)
        neg = np.add.reduceat(w * (1.0 - self.pos), self.starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        return _ratio((pos * (below + 0.5 * neg)).sum(axis=1), pos.sum(axis=1) * neg.sum(axis=1))


def _binary_replicates(
    y: np.ndarray, p_pos: np.ndarray, threshold: float, weights: np.ndarray, auc: _AucKernel
) -> dict[str, np.ndarray]:
    """All binary metrics for each row of ``weights`` ``(b, N)``."""
    pred = p_pos >= threshold
    tp = weights @ ((y == 1) & pred).astype(np.float64)
    fn = weights @ ((y == 1) & ~pred).astype(np.float64)
    fp = weights @ ((y == 0) & pred).astype(np.float64)
    tn = weights @ ((y == 0) & ~pred).astype(np.float64)
    total = tp + fn + fp + tn
    return {
        "auc": auc(weights),
        "accuracy": _ratio(tp + tn, total),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "brier": _ratio(weights @ (p_pos - y) ** 2, total),
    }


def _multiclass_replicates(
    y: np.ndarray, probs: np.ndarray, weights: np.ndarray, aucs: list[_AucKernel]
) -> dict[str, np.ndarray]:
    """Macro metrics and per-class sensitivity/specificity/AUC for each weight row."""
    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    onehot = np.eye(k)[y]
    total = weights.sum(axis=1)
    out: dict[str, np.ndarray] = {}
    f1s, class_aucs = [], []
    for c in range(k):
        tp = weights @ ((y == c) & (pred == c)).astype(np.float64)
        fn = weights @ ((y == c) & (pred != c)).astype(np.float64)
        fp = weights @ ((y != c) & (pred == c)).astype(np.float64)
        tn = total - tp - fn - fp
        out[f"sensitivity/{c}"] = _ratio(tp, tp + fn)
        out[f"specificity/{c}"] = _ratio(tn, tn + fp)
        out[f"auc/{c}"] = aucs[c](weights)
        class_aucs.append(out[f"auc/{c}"])
        # sklearn's macro F1 counts a class with no true and no predicted rows as 0.
        f1s.append(np.nan_to_num(_ratio(2 * tp, 2 * tp + fp + fn)))
    out["auc"] = np.mean(class_aucs, axis=0)
    out["f1"] = np.mean(f1s, axis=0)
    out["accuracy"] = _ratio(weights @ (pred == y).astype(np.float64), total)
    out["brier"] = _ratio(weights @ ((probs - onehot) ** 2).sum(axis=1), total)
    return out


# ---------------------------------------------------------------- public API


def classification_metrics(
    y_true: Any,
    probs: Any,
    *,
    labels: list[str],
    threshold: float | None = None,
    groups: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Compute headline classification metrics, each with a patient-bootstrap 95% CI.

    Args:
        y_true: ``(N,)`` integer class indices.
        probs: ``(N, K)`` class probabilities (``(N,)`` positive-class probabilities are
            accepted when ``K == 2``).
        labels: the K class names, in column order.
        threshold: binary only: a row is positive when ``probs[:, 1] >= threshold``
            (default 0.5). Ignored for multiclass, which uses the arg-max.
        groups: ``(N,)`` patient ids; the bootstrap resamples these. ``None`` treats
            every row as its own patient.
        n_boot: bootstrap replicates; 0 skips the intervals.
        seed: seed of the bootstrap's random generator.

    Returns:
        A JSON-safe dict. Binary: ``auc, accuracy, sensitivity, specificity, ppv, npv,
        f1, brier`` and ``<name>_ci: [lo, hi]``, plus ``prevalence, n, n_patients,
        confusion_matrix`` (rows = true, columns = predicted), ``threshold``.
        Multiclass: ``auc`` (macro one-vs-rest), ``accuracy, f1`` (macro), ``brier``
        with CIs, ``per_class: {label: {n, prevalence, auc, sensitivity, specificity,
        *_ci}}`` and the confusion matrix. Both carry ``task, labels, n_boot,
        n_boot_skipped, ci_level, bootstrap_unit``.

    Raises:
        DataError: shapes, classes or groups that do not fit together.
        ConfigError: a threshold outside [0, 1] or a negative ``n_boot``.
    """
    y, p, codes, n_groups = _check_inputs(y_true, probs, labels, groups)
    if n_boot < 0:
        raise ConfigError(f"n_boot must be 0 (no intervals) or positive; got {n_boot}.")
    k = p.shape[1]
    binary = k == 2
    if threshold is None:
        threshold = 0.5
    elif not binary:
        logger.info("threshold=%s ignored: multiclass predictions use the arg-max.", threshold)
    if not 0.0 <= float(threshold) <= 1.0:
        raise ConfigError(f"threshold must lie in [0, 1]; got {threshold}.")
    threshold = float(threshold)

    if binary:
        point = _binary_point(y, p[:, 1], threshold)
        names: tuple[str, ...] = BINARY_METRICS
    else:
        point = _multiclass_point(y, p, labels)
        names = MULTICLASS_METRICS

    result: dict[str, Any] = {
        "task": "binary" if binary else "multiclass",
        "labels": list(labels),
        "n": int(y.shape[0]),
        "n_patients": n_groups,
        **point,
        "ci_level": CI_LEVEL,
        "n_boot": int(n_boot),
        "n_boot_skipped": 0,
        "bootstrap_unit": "patient" if groups is not None else "image",
    }
    if binary:
        result["threshold"] = threshold
    if n_boot == 0:
        return result

    reps: dict[str, list[np.ndarray]] = {}
    skipped = 0
    if binary:
        kernel = _AucKernel(y == 1, p[:, 1])
    else:
        kernels = [_AucKernel(y == c, p[:, c]) for c in range(k)]
    present = [c for c in range(k) if np.any(y == c)]
    for w in _bootstrap_weights(codes, n_groups, n_boot, seed):
        # A replicate that lost a class present in the data cannot give an AUC: skip it.
        class_w = np.stack([w[:, y == c].sum(axis=1) for c in present], axis=1)
        ok = np.all(class_w > 0, axis=1)
        skipped += int(np.sum(~ok))
        w = w[ok]
        if w.shape[0] == 0:
            continue
        batch = (
            _binary_replicates(y, p[:, 1], threshold, w, kernel)
            if binary
            else _multiclass_replicates(y, p, w, kernels)
        )
        for key, values in batch.items():
            reps.setdefault(key, []).append(values)
    if skipped:
        logger.warning(
            "%d of %d bootstrap replicates had a single class and were skipped.", skipped, n_boot
        )
    result["n_boot_skipped"] = skipped
    stacked = {key: np.concatenate(v) for key, v in reps.items()}
    nan_ci = [float("nan"), float("nan")]
    for name in names:
        result[f"{name}_ci"] = _percentile_ci(stacked[name]) if name in stacked else nan_ci
    if not binary:
        for c, label in enumerate(labels):
            for name in ("auc", "sensitivity", "specificity"):
                class_values = stacked.get(f"{name}/{c}")
                result["per_class"][label][f"{name}_ci"] = (
                    _percentile_ci(class_values) if class_values is not None else nan_ci
                )
    return result


def _binary_point(y: np.ndarray, p_pos: np.ndarray, threshold: float) -> dict[str, Any]:
    from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

    pred = (p_pos >= threshold).astype(np.int64)
    cm = confusion_matrix(y, pred, labels=[0, 1])
    tn, fp, fn, tp = (float(v) for v in cm.ravel())
    both = np.unique(y).size == 2
    if not both:
        logger.warning("Only one class in y_true: AUC is undefined and reported as NaN.")

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    return {
        "auc": float(roc_auc_score(y, p_pos)) if both else float("nan"),
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "brier": float(brier_score_loss(y, p_pos, pos_label=1)),
        "prevalence": float(np.mean(y == 1)),
        "confusion_matrix": cm.astype(int).tolist(),
    }


def _multiclass_point(y: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    per_class: dict[str, dict[str, Any]] = {}
    for c, label in enumerate(labels):
        tp = cm[c, c]
        fn = cm[c].sum() - tp
        fp = cm[:, c].sum() - tp
        tn = cm.sum() - tp - fn - fp
        has_both = 0 < np.sum(y == c) < y.shape[0]
        per_class[label] = {
            "n": int(np.sum(y == c)),
            "prevalence": float(np.mean(y == c)),
            "auc": float(roc_auc_score(y == c, probs[:, c])) if has_both else float("nan"),
            "sensitivity": float(tp / (tp + fn)) if tp + fn > 0 else float("nan"),
            "specificity": float(tn / (tn + fp)) if tn + fp > 0 else float("nan"),
        }
    onehot = np.eye(k)[y]
    return {
        "auc": float(np.mean([v["auc"] for v in per_class.values()])),
        "accuracy": float(accuracy_score(y, pred)),
        "f1": float(f1_score(y, pred, labels=list(range(k)), average="macro", zero_division=0)),
        "brier": float(np.mean(((probs - onehot) ** 2).sum(axis=1))),
        "prevalence": {label: v["prevalence"] for label, v in per_class.items()},
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
    }


def regression_metrics(
    y_true: Any, y_pred: Any, *, groups: Any = None, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """MAE, RMSE and R² with patient-bootstrap 95% CIs.

    Args:
        y_true, y_pred: ``(N,)`` floats in the target's unit.
        groups: ``(N,)`` patient ids to resample; ``None`` resamples rows.
        n_boot: bootstrap replicates; 0 skips the intervals.
        seed: seed of the bootstrap's random generator.

    Raises:
        DataError: shapes differ, or values are not finite.
    """
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y = np.asarray(y_true, dtype=np.float64)
    yhat = np.asarray(y_pred, dtype=np.float64)
    if y.ndim != 1 or y.shape != yhat.shape or y.size == 0:
        raise DataError(f"y_true and y_pred must both be non-empty (N,); got {y.shape} and {yhat.shape}.")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(yhat))):
        raise DataError("y_true or y_pred contain NaN or infinite values; remove or impute them first.")
    codes, n_groups = _group_codes(groups, y.shape[0])
    result: dict[str, Any] = {
        "task": "regression",
        "n": int(y.size),
        "n_patients": n_groups,
        "mae": float(mean_absolute_error(y, yhat)),
        "rmse": float(np.sqrt(mean_squared_error(y, yhat))),
        "r2": float(r2_score(y, yhat)) if y.size > 1 else float("nan"),
        "ci_level": CI_LEVEL,
        "n_boot": int(n_boot),
        "bootstrap_unit": "patient" if groups is not None else "image",
    }
    if n_boot <= 0:
        return result
    err, sq = np.abs(y - yhat), (y - yhat) ** 2
    reps: dict[str, list[np.ndarray]] = {name: [] for name in REGRESSION_METRICS}
    for w in _bootstrap_weights(codes, n_groups, n_boot, seed):
        total = w.sum(axis=1)
        mean_y = (w @ y) / total
        ss_tot = w @ (y**2) - total * mean_y**2
        mse = (w @ sq) / total
        reps["mae"].append((w @ err) / total)
        reps["rmse"].append(np.sqrt(mse))
        reps["r2"].append(1.0 - _ratio(w @ sq, ss_tot))
    for name in REGRESSION_METRICS:
        result[f"{name}_ci"] = _percentile_ci(np.concatenate(reps[name]))
    return result


def roc_points(y_true: Any, p_pos: Any) -> dict[str, list[float]]:
    """ROC curve as ``{fpr, tpr, thresholds}`` lists (scikit-learn's ``roc_curve``)."""
    from sklearn.metrics import roc_curve

    y, p = _binary_arrays(y_true, p_pos)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=True)
    thr = np.minimum(thr, 1.0)  # sklearn's first threshold is +inf; keep JSON finite
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr.tolist()}


def pr_points(y_true: Any, p_pos: Any) -> dict[str, Any]:
    """Precision-recall curve ``{recall, precision, average_precision, prevalence}``."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, p = _binary_arrays(y_true, p_pos)
    precision, recall, _ = precision_recall_curve(y, p)
    return {
        "recall": recall.tolist(),
        "precision": precision.tolist(),
        "average_precision": float(average_precision_score(y, p)),
        "prevalence": float(np.mean(y)),
    }


def roc_band(
    y_true: Any, p_pos: Any, *, groups: Any = None, n_boot: int = 200, seed: int = 0, n_grid: int = 101
) -> dict[str, list[float]]:
    """Pointwise 95% band of the ROC curve: bootstrap TPR at a fixed FPR grid.

    Returns:
        ``{fpr, tpr_lo, tpr_hi}``, each ``n_grid`` long.
    """
    y, p = _binary_arrays(y_true, p_pos)
    codes, n_groups = _group_codes(groups, y.shape[0])
    grid = np.linspace(0.0, 1.0, n_grid)
    order = np.argsort(-p, kind="mergesort")
    s = p[order]
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    yo = y[order].astype(np.float64)
    curves = []
    for w in _bootstrap_weights(codes, n_groups, n_boot, seed):
        w = w[:, order]
        tp = np.cumsum(w * yo, axis=1)[:, ends]
        fp = np.cumsum(w * (1.0 - yo), axis=1)[:, ends]
        for tp_row, fp_row in zip(tp, fp, strict=True):
            if tp_row[-1] > 0 and fp_row[-1] > 0:
                fpr = np.r_[0.0, fp_row / fp_row[-1]]
                tpr = np.r_[0.0, tp_row / tp_row[-1]]
                curves.append(np.interp(grid, fpr, tpr))
    if not curves:
        nan = [float("nan")] * n_grid
        return {"fpr": grid.tolist(), "tpr_lo": nan, "tpr_hi": nan}
    tail = (1.0 - CI_LEVEL) / 2.0 * 100.0
    lo, hi = np.percentile(np.asarray(curves), [tail, 100.0 - tail], axis=0)
    return {"fpr": grid.tolist(), "tpr_lo": lo.tolist(), "tpr_hi": hi.tolist()}


def _binary_arrays(y_true: Any, p_pos: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(p_pos, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    if y.ndim != 1 or p.shape != y.shape:
        raise DataError(f"y_true and p_pos must both be (N,); got {y.shape} and {p.shape}.")
    if np.unique(y).size != 2 or not np.all(np.isin(y, (0, 1))):
        raise DataError(
            f"A curve needs both classes 0 and 1 in y_true; got values {np.unique(y).tolist()[:5]}."
        )
    return y, p


def _midrank(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, method="average")


def delong_test(y_true: Any, p1: Any, p2: Any) -> dict[str, float]:
    """DeLong test that two models' AUCs on the same rows are equal (fast algorithm).

    Uses the O(N log N) formulation of Sun & Xu (2014). It assumes rows are
    independent; when patients contribute several images, prefer
    :func:`paired_bootstrap_compare` with ``groups``.

    Returns:
        ``{auc1, auc2, diff, se, z, p_value}`` (two-sided; ``diff = auc1 - auc2``).
    """
    from scipy.stats import norm

    y, a = _binary_arrays(y_true, p1)
    _, b = _binary_arrays(y_true, p2)
    m, n = int(np.sum(y == 1)), int(np.sum(y == 0))
    aucs, v01, v10 = [], [], []
    for score in (a, b):
        sp, sn = score[y == 1], score[y == 0]
        tx, ty, tz = _midrank(sp), _midrank(sn), _midrank(np.r_[sp, sn])
        aucs.append((tz[:m].sum() - m * (m + 1) / 2.0) / (m * n))
        v01.append((tz[:m] - tx) / n)
        v10.append(1.0 - (tz[m:] - ty) / m)
    s01 = np.cov(np.vstack(v01))
    s10 = np.cov(np.vstack(v10))
    cov = s01 / m + s10 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    if var <= 0:
        z, p_value = 0.0, 1.0
    else:
        z = diff / np.sqrt(var)
        p_value = float(2.0 * norm.sf(abs(z)))
    return {
        "auc1": float(aucs[0]),
        "auc2": float(aucs[1]),
        "diff": diff,
        "se": float(np.sqrt(max(var, 0.0))),
        "z": float(z),
        "p_value": p_value,
    }


def paired_bootstrap_compare(
    y_true: Any,
    p1: Any,
    p2: Any,
    *,
    metric: str = "auc",
    threshold: float = 0.5,
    groups: Any = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare two models on the same test rows by a paired bootstrap over patients.

    Both models are scored on the *same* resampled patients in every replicate, so
    the interval of the difference accounts for their correlation.

    Args:
        metric: ``auc``, ``brier`` or ``accuracy`` (at ``threshold``).

    Returns:
        ``{metric, value1, value2, diff, diff_ci, p_value, n_boot, n_boot_skipped}``
        with ``diff = value1 - value2`` and a two-sided bootstrap p-value.
    """
    if metric not in COMPARE_METRICS:
        raise unknown_choice("comparison metric", metric, COMPARE_METRICS)
    if n_boot <= 0:
        raise ConfigError(f"n_boot must be positive for a bootstrap comparison; got {n_boot}.")
    y, a = _binary_arrays(y_true, p1)
    _, b = _binary_arrays(y_true, p2)
    codes, n_groups = _group_codes(groups, y.shape[0])

    def score(p: np.ndarray, w: np.ndarray, kernel: _AucKernel) -> np.ndarray:
        if metric == "auc":
            return kernel(w)
        total = w.sum(axis=1)
        if metric == "brier":
            return (w @ (p - y) ** 2) / total
        return (w @ ((p >= threshold) == (y == 1)).astype(np.float64)) / total

    ka, kb = _AucKernel(y == 1, a), _AucKernel(y == 1, b)
    ones = np.ones((1, y.shape[0]))
    v1, v2 = float(score(a, ones, ka)[0]), float(score(b, ones, kb)[0])
    diffs, skipped = [], 0
    for w in _bootstrap_weights(codes, n_groups, n_boot, seed):
        ok = (w[:, y == 1].sum(axis=1) > 0) & (w[:, y == 0].sum(axis=1) > 0)
        skipped += int(np.sum(~ok))
        w = w[ok]
        if w.shape[0]:
            diffs.append(score(a, w, ka) - score(b, w, kb))
    d = np.concatenate(diffs) if diffs else np.array([])
    two_sided = 2.0 * min(np.mean(d <= 0), np.mean(d >= 0)) if d.size else float("nan")
    p_value = float(min(1.0, two_sided))
    return {
        "metric": metric,
        "value1": v1,
        "value2": v2,
        "diff": v1 - v2,
        "diff_ci": _percentile_ci(d),
        "p_value": p_value,
        "n_boot": int(n_boot),
        "n_boot_skipped": skipped,
        "bootstrap_unit": "patient" if groups is not None else "image",
    }
