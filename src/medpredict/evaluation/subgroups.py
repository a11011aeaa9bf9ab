"""Performance per subgroup, and dataset-shift diagnostics for external validation.

* :func:`subgroup_table` - one row per level of each subgroup column (sex, age band,
  site, ...) with n, patients, prevalence and AUC / sensitivity / specificity with
  patient-bootstrap CIs; levels too small or with one class are reported as such
  rather than silently dropped.
* :func:`image_statistics`, :func:`reference_statistics` - input statistics to store in
  the bundle at training time.
* :func:`shift_diagnostics` - compare a new dataset or site against those reference
  statistics: standardised mean differences of inputs, prevalence change and
  calibration-in-the-large, with plain-language flags.
* :func:`validation_agreement` - compare the test figures with what the validation split
  (where calibration, threshold and conformal sets were fitted) promised, and flag the
  disagreements that chance does not explain: the sign that test is not exchangeable
  with validation, so validation-fitted guarantees do not carry over.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from medpredict.errors import DataError
from medpredict.evaluation.metrics import classification_metrics

logger = logging.getLogger(__name__)

AGE_BANDS = (0, 18, 40, 65, 200)
# A standardised mean difference above this is called a notable shift (a common
# rule of thumb in the covariate-balance literature is 0.1-0.25).
SMD_FLAG = 0.25
PREVALENCE_FLAG = 0.10
CITL_FLAG = 0.05
# A test ECE raised by less than this is within the binning noise of a few hundred cases.
ECE_WORSE_FLAG = 0.005


def _levels(column: Any, name: str, max_levels: int) -> tuple[np.ndarray, list[str]]:
    """Level label per row (``"missing"`` for NaN), binning numeric columns with many values."""
    import pandas as pd

    series = pd.Series(column).reset_index(drop=True)
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if numeric and series.nunique(dropna=True) > max_levels:
        if "age" in name.lower():
            edges = list(AGE_BANDS)
            names = [f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-2], edges[1:-1], strict=True)]
            names.append(f"{edges[-2]}+")
            binned = pd.cut(series, edges, right=False, labels=names)
        else:
            binned = pd.qcut(series, 4, duplicates="drop")
            names = [f"{iv.left:.3g}-{iv.right:.3g}" for iv in binned.cat.categories]
            binned = binned.cat.rename_categories(names)
        order = [str(c) for c in binned.cat.categories]
        values = binned.astype(object).where(binned.notna(), "missing").astype(str).to_numpy()
    else:
        values = series.astype(object).where(series.notna(), "missing").astype(str).to_numpy()
        order = sorted(set(values) - {"missing"})
    if "missing" in values:
        order.append("missing")
    return values, [lev for lev in order if np.any(values == lev)]


def subgroup_table(
    y: Any,
    probs: Any,
    frame: Any,
    columns: list[str],
    *,
    labels: list[str] | None = None,
    threshold: float | None = None,
    groups: Any = None,
    n_boot: int = 500,
    seed: int = 0,
    min_n: int = 20,
    max_levels: int = 10,
) -> list[dict[str, Any]]:
    """Metrics with patient-bootstrap CIs for each level of each subgroup column.

    Args:
        y: ``(N,)`` class indices; probs: ``(N, K)`` probabilities (rows as ``frame``).
        frame: DataFrame with one row per prediction, holding ``columns``.
        columns: subgroup columns; numeric ones with more than ``max_levels`` values
            are binned (age into clinical bands ``0-17, 18-39, 40-64, 65+``, others
            into quartiles).
        threshold: binary positive threshold (the locked one).
        groups: ``(N,)`` patient ids for the bootstrap.
        min_n: levels with fewer rows get ``status: "too_few"`` and no metrics.

    Returns:
        Rows ``{column, level, n, n_patients, prevalence, status, auc, auc_ci, ...}``;
        ``status`` is ``ok``, ``too_few`` or ``one_class`` (AUC undefined; sensitivity or
        specificity still given).

    Raises:
        DataError: a column is missing or ``frame`` has a different number of rows.
    """
    p = np.asarray(probs, dtype=np.float64)
    y_arr = np.asarray(y)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    k = p.shape[1]
    labels = list(labels) if labels is not None else [str(i) for i in range(k)]
    if len(frame) != y_arr.shape[0]:
        raise DataError(
            f"The subgroup frame has {len(frame)} rows but there are {y_arr.shape[0]} predictions; "
            "pass the rows of the evaluated split in prediction order."
        )
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"Subgroup column(s) {missing} not in the data; available: {list(frame.columns)}.")
    g = None if groups is None else np.asarray(groups)
    rows: list[dict[str, Any]] = []
    for column in columns:
        values, order = _levels(frame[column].to_numpy(), column, max_levels)
        for level in order:
            mask = values == level
            n = int(mask.sum())
            row: dict[str, Any] = {
                "column": column,
                "level": level,
                "n": n,
                "n_patients": int(np.unique(g[mask]).size) if g is not None else n,
                "prevalence": float(np.mean(y_arr[mask] == 1)) if k == 2 else None,
            }
            if n < min_n:
                row["status"] = "too_few"
                rows.append(row)
                continue
            one_class = np.unique(y_arr[mask]).size < 2
            row["status"] = "one_class" if one_class else "ok"
            result = classification_metrics(
                y_arr[mask], p[mask], labels=labels, threshold=threshold if k == 2 else None,
                groups=None if g is None else g[mask], n_boot=n_boot, seed=seed,
            )
            keys = ("auc", "sensitivity", "specificity", "accuracy") if k == 2 else ("auc", "accuracy", "f1")
            for key in keys:
                row[key] = result.get(key)
                row[f"{key}_ci"] = result.get(f"{key}_ci")
            rows.append(row)
    return rows


def image_statistics(images: Any, *, max_pixels: int = 2_000_000) -> dict[str, Any]:
    """Intensity statistics of a batch of images ``(N, C, H, W)`` (or ``(N, H, W)``).

    Pixel percentiles use an even subsample of at most ``max_pixels`` values.

    Returns:
        ``{n, shape, mean, std, p01, p05, p50, p95, p99, image_mean_mean,
        image_mean_std}``; the last two describe the per-image mean brightness and
        drive the shift check.
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim < 3 or x.shape[0] == 0:
        raise DataError(f"images must be a non-empty batch (N, C, H, W); got shape {x.shape}.")
    flat = x.reshape(x.shape[0], -1)
    per_image = flat.mean(axis=1)
    stride = max(1, flat.size // max_pixels)
    sample = flat.ravel()[::stride]
    p01, p05, p50, p95, p99 = np.percentile(sample, [1, 5, 50, 95, 99])
    return {
        "n": int(x.shape[0]),
        "shape": list(x.shape[1:]),
        "mean": float(flat.mean()),
        "std": float(flat.std()),
        "p01": float(p01), "p05": float(p05), "p50": float(p50), "p95": float(p95), "p99": float(p99),
        "image_mean_mean": float(per_image.mean()),
        "image_mean_std": float(per_image.std()),
    }


def _table_statistics(frame: Any, columns: list[str] | None) -> dict[str, dict[str, float]]:
    import pandas as pd

    cols = columns if columns is not None else [
        c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])
    ]
    stats = {}
    for c in cols:
        values = pd.to_numeric(frame[c], errors="coerce")
        stats[str(c)] = {"mean": float(values.mean()), "std": float(values.std()),
                         "missing_rate": float(values.isna().mean())}
    return stats


def reference_statistics(
    y: Any, *, images: Any = None, frame: Any = None, columns: list[str] | None = None
) -> dict[str, Any]:
    """Statistics of the training (or development) data, to store in the bundle.

    Returns:
        ``{prevalence, n, image?: image_statistics, table?: {col: {mean, std,
        missing_rate}}}`` (prevalence of class 1; multiclass: per-class shares).
    """
    y_arr = np.asarray(y).astype(np.int64)
    classes = np.bincount(y_arr)
    ref: dict[str, Any] = {
        "n": int(y_arr.size),
        "prevalence": float(np.mean(y_arr == 1)),
        "class_shares": (classes / max(1, y_arr.size)).astype(float).tolist(),
    }
    if images is not None:
        ref["image"] = image_statistics(images)
    if frame is not None:
        ref["table"] = _table_statistics(frame, columns)
    return ref


def shift_diagnostics(
    reference: dict[str, Any],
    y: Any,
    p_pos: Any,
    *,
    images: Any = None,
    frame: Any = None,
) -> dict[str, Any]:
    """Compare a new dataset (site, period) with the development data's statistics.

    Args:
        reference: :func:`reference_statistics` output stored in the bundle.
        y: ``(N,)`` 0/1 outcomes on the new data; p_pos: ``(N,)`` predicted risks.
        images / frame: the new data's inputs, compared with ``reference["image"]``
            and ``reference["table"]``.

    Returns:
        ``{prevalence_reference, prevalence, prevalence_change, mean_predicted,
        calibration_in_the_large, image_smd?, image?, table_smd?: {col: smd}, flags}``;
        SMD = (new mean - reference mean) / reference SD, ``flags`` are plain sentences.
    """
    y_arr = np.asarray(y).astype(np.float64)
    p = np.asarray(p_pos, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    if p.shape != y_arr.shape:
        raise DataError(f"y and p_pos must both be (N,); got shapes {y_arr.shape} and {p.shape}.")
    ref_prev = float(reference.get("prevalence", float("nan")))
    prevalence = float(np.mean(y_arr == 1))
    citl = float(y_arr.mean() - p.mean())
    out: dict[str, Any] = {
        "n": int(y_arr.size),
        "prevalence_reference": ref_prev,
        "prevalence": prevalence,
        "prevalence_change": prevalence - ref_prev,
        "mean_predicted": float(p.mean()),
        "calibration_in_the_large": citl,
    }
    flags = []
    if abs(prevalence - ref_prev) > PREVALENCE_FLAG:
        flags.append(
            f"Prevalence differs from the development data ({ref_prev:.1%} there, {prevalence:.1%} here): "
            "predictive values (PPV/NPV) will differ."
        )
    if abs(citl) > CITL_FLAG:
        direction = "under" if citl > 0 else "over"
        flags.append(
            f"The model {direction}-estimates risk on average by {abs(citl):.1%} here "
            "(calibration-in-the-large): consider recalibrating on local data."
        )
    if images is not None and "image" in reference:
        current = image_statistics(images)
        ref_img = reference["image"]
        spread = ref_img.get("image_mean_std") or ref_img.get("std") or 1.0
        smd = (current["image_mean_mean"] - ref_img["image_mean_mean"]) / max(spread, 1e-6)
        out["image"] = current
        out["image_smd"] = float(smd)
        if abs(smd) > SMD_FLAG:
            flags.append(
                f"Image brightness differs from the development data (standardised difference {smd:+.2f}): "
                "check scanner, protocol or preprocessing."
            )
    if frame is not None and "table" in reference:
        current_table = _table_statistics(frame, [c for c in reference["table"] if c in frame.columns])
        smds = {}
        for col, ref_col in reference["table"].items():
            if col not in current_table:
                flags.append(f"Column '{col}' of the development data is absent here.")
                continue
            sd = ref_col["std"] if ref_col["std"] and ref_col["std"] > 0 else 1.0
            smds[col] = float((current_table[col]["mean"] - ref_col["mean"]) / sd)
        out["table_smd"] = smds
        shifted = [c for c, v in smds.items() if abs(v) > SMD_FLAG]
        if shifted:
            flags.append(f"Input distribution shifted (|standardised difference| > {SMD_FLAG}) in: "
                         f"{', '.join(shifted)}.")
    out["flags"] = flags
    for flag in flags:
        logger.warning("Shift: %s", flag)
    return out


def validation_agreement(
    y_val: Any,
    probs_val: Any,
    test_metrics: dict[str, Any],
    *,
    groups_val: Any = None,
    threshold: float | None = None,
    coverage: dict[str, Any] | None = None,
    ece_change: float | None = None,
    n_boot: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Whether the test data behave like the validation data the model was tuned on.

    Calibration, the locked threshold and the conformal quantile are all fitted on
    validation; they carry over to test only when both are samples of one population.
    Each row compares a validation figure with its test counterpart. Flagged in plain
    words: a difference whose two-sided z-test (each side's standard error from its own
    patient-bootstrap 95% CI) gives p < 0.05, conformal coverage whose 95% Wilson interval
    lies wholly below the target, and a calibration that raised test ECE by more than
    :data:`ECE_WORSE_FLAG`. Validation sensitivity and specificity are taken at a threshold
    chosen on validation, so they lean optimistic; a small gap is expected, a flagged one is not.

    Args:
        y_val / probs_val: validation class indices ``(M,)`` and calibrated probabilities ``(M, K)``.
        test_metrics: :func:`medpredict.evaluation.metrics.classification_metrics` on test (with CIs).
        groups_val: validation patient ids (bootstrap unit); ``None`` resamples rows.
        threshold: the locked binary threshold (sensitivity/specificity rows); ``None`` for multiclass.
        coverage: ``{"coverage", "target_coverage", "n"}`` of the conformal sets on test.
        ece_change: test ECE after minus before calibration (positive = calibration made it worse).
        n_boot / seed: bootstrap of the validation figures.

    Returns:
        ``{rows: [{metric, validation, validation_ci, test, test_ci, p_value, agrees}], flags: [str]}``.
    """
    from scipy.stats import binomtest, norm

    y = np.asarray(y_val).astype(np.int64)
    p = np.asarray(probs_val, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise DataError(f"probs_val must be (M, K) with M = len(y_val) = {y.shape[0]}; got shape {p.shape}.")
    val = classification_metrics(y, p, labels=[str(k) for k in range(p.shape[1])], threshold=threshold,
                                 groups=groups_val, n_boot=n_boot, seed=seed)
    keys = ("auc", "sensitivity", "specificity") if p.shape[1] == 2 else ("auc", "accuracy")
    rows: list[dict[str, Any]] = []
    flags: list[str] = []
    for key in keys:
        v, v_ci = val.get(key), val.get(f"{key}_ci")
        t, t_ci = test_metrics.get(key), test_metrics.get(f"{key}_ci")
        if v is None or t is None or not v_ci or not t_ci or not np.all(np.isfinite([v, t, *v_ci, *t_ci])):
            continue
        # standard errors from the 95% percentile intervals (half-width / 1.96)
        se = np.hypot(v_ci[1] - v_ci[0], t_ci[1] - t_ci[0]) / (2 * 1.959964)
        p_value = float(2 * norm.sf(abs(v - t) / se)) if se > 0 else (1.0 if v == t else 0.0)
        agrees = p_value >= 0.05
        rows.append({"metric": key, "validation": float(v), "validation_ci": [float(c) for c in v_ci],
                     "test": float(t), "test_ci": [float(c) for c in t_ci], "p_value": p_value, "agrees": agrees})
        if not agrees:
            flags.append(
                f"{key.upper() if key == 'auc' else key.capitalize()} is {v:.3f} on validation but {t:.3f} on test "
                f"(p = {p_value:.2g}): the test cases differ from the validation cases beyond chance."
            )
    if coverage and coverage.get("n"):
        n, target = int(coverage["n"]), float(coverage["target_coverage"])
        hits = int(round(float(coverage["coverage"]) * n))
        interval = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
        agrees = bool(interval.high >= target)
        rows.append({"metric": "conformal coverage", "validation": target, "validation_ci": None,
                     "test": hits / n, "test_ci": [float(interval.low), float(interval.high)],
                     "p_value": float(binomtest(hits, n, target, alternative="less").pvalue), "agrees": agrees})
        if not agrees:
            flags.append(
                f"Prediction sets covered {hits / n:.1%} of test cases (95% CI {interval.low:.1%}-"
                f"{interval.high:.1%}) against the {target:.0%} promised on validation: the coverage guarantee "
                "needs test cases exchangeable with validation, and these are not."
            )
    if ece_change is not None and np.isfinite(ece_change) and ece_change > ECE_WORSE_FLAG:
        flags.append(
            f"Calibration fitted on validation raised the test ECE by {ece_change:.3f}: validation and test "
            "disagree on how confident the model should be; recalibrate on data like the deployment population."
        )
    for flag in flags:
        logger.warning("Validation vs test: %s", flag)
    return {"rows": rows, "flags": flags}
