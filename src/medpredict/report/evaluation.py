"""Gather every evaluation result into one dict: the input of the report and model card.

:func:`assemble_evaluation` takes the test predictions (plus, optionally, validation
predictions, the bundle's fitted calibrator / threshold / conformal dicts, subgroup
columns, explanation examples and run information), calls the metric modules and
returns the **evaluation dict** below. :func:`medpredict.report.build_report` turns it
into ``report.html``, ``metrics.json`` and the model card.

Evaluation dict (``schema_version`` 1). Every value is JSON-safe except the arrays in
``explanations.examples``, which :func:`evaluation_to_json` leaves out::

    schema_version  1
    task            "binary" | "multiclass"
    labels          [str, ...]                      class names, column order of probs
    run             {model_name, model_version, dataset, data_source, intended_use,
                     created, seed, ... anything passed in run_info,
                     splits: {train|val|test|<name>: {n, n_patients, prevalence,
                              n_positive}}}
    metrics         classification_metrics() on test at the locked threshold
    curves          {roc, roc_band, pr, threshold_sweep}          binary only
    calibration     {method, calibrator: dict|None, test: summary (as deployed),
                     test_uncalibrated: summary|None, val: summary|None,
                     ece_reduction: float|None}
                    summary = calibration_summary() with each bin's 95% Wilson
                    interval (observed_ci); multiclass = top-label
    threshold       {value, method, target, chosen_on: "validation"|"given"|"default",
                     val_sensitivity, val_specificity}            binary only
    decision_curve  decision_curve()                               binary only
    conformal       {alpha, method, qhat, target_coverage, coverage, mean_size,
                     singleton_rate, empty_rate, size_counts, chosen_on} | None
    referral        {source: "entropy"|"given", rows: referral_curve()}
    subgroups       subgroup_table() rows | None
    shift           shift_diagnostics() | None
    agreement       validation_agreement(): {rows, flags, refit_here} | None   with validation data only;
                    refit_here: calibration.refit.cross_fitted_refit() on test (+ flag) | None
    explanations    {examples: [{title, caption, image: array|PNG path, heatmap: array,
                                 shortcut: shortcut_flag()}],
                     checks: explanation_sanity() | None,
                     feature_importance: [{feature, importance_mean, importance_std}] | None,
                     local: [{title, prediction, expected, rows: [{feature, value,
                              attribution}]}] | None}
    training_curves {epoch: [...], <series>: [...]} | None
    warnings        [str, ...]                                     plain sentences
"""

from __future__ import annotations

import datetime as _dt
import logging
from typing import Any

import numpy as np

from medpredict.errors import DataError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def _split_counts(y: np.ndarray, groups: Any, k: int) -> dict[str, Any]:
    n_patients = int(np.unique(np.asarray(groups).astype(str)).size) if groups is not None else int(y.size)
    out: dict[str, Any] = {"n": int(y.size), "n_patients": n_patients}
    if k == 2:
        out["n_positive"] = int(np.sum(y == 1))
        out["prevalence"] = float(np.mean(y == 1))
    else:
        out["class_counts"] = np.bincount(y, minlength=k).astype(int).tolist()
    return out


def _table_rows(table: Any) -> list[dict[str, Any]] | None:
    """A DataFrame or a list of dicts as JSON-safe rows."""
    if table is None:
        return None
    if hasattr(table, "to_dict"):
        table = table.to_dict(orient="records")
    return [{k: _plain(v) for k, v in row.items()} for row in table]


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _top_label(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (probs.argmax(axis=1) == y).astype(int), probs.max(axis=1)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> list[float] | None:
    """The Wilson score interval of a proportion (scipy's ``binomtest``); None for ``n == 0``."""
    from scipy.stats import binomtest

    if n <= 0:
        return None
    interval = binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return [float(interval.low), float(interval.high)]


def with_bin_intervals(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with each reliability bin's observed frequency given its 95% Wilson interval
    (``bins[i]["observed_ci"]``), so a gap in a bin of 10 cases is read as the chance it may be."""
    bins = []
    for row in summary.get("bins") or []:
        observed, n = row.get("observed"), int(row.get("n") or 0)
        ci = wilson_interval(round(observed * n), n) if observed is not None and n else None
        bins.append({**row, "observed_ci": ci})
    return {**summary, "bins": bins}


def _calibration_section(
    y: np.ndarray, probs: np.ndarray, probs_uncal: Any, calibration: dict[str, Any] | None,
    y_val: Any, probs_val: Any,
) -> dict[str, Any]:
    from medpredict.calibration.scalers import calibration_summary

    binary = probs.shape[1] == 2

    def summary(labels: np.ndarray, p: np.ndarray) -> dict[str, Any]:
        out = calibration_summary(labels, p[:, 1]) if binary else calibration_summary(*_top_label(labels, p))
        return with_bin_intervals(out)

    section: dict[str, Any] = {
        "method": (calibration or {}).get("kind"),
        "calibrator": calibration,
        "scope": "positive class" if binary else "top label (confidence vs correctness)",
        "test": summary(y, probs),
        "test_uncalibrated": None,
        "val": None,
        "ece_reduction": None,
    }
    if probs_uncal is not None:
        raw = np.asarray(probs_uncal, dtype=np.float64)
        if raw.shape != probs.shape:
            raise DataError(f"probs_uncalibrated has shape {raw.shape}; expected {probs.shape} like probs.")
        section["test_uncalibrated"] = summary(y, raw)
        section["ece_reduction"] = section["test_uncalibrated"]["ece"] - section["test"]["ece"]
    if y_val is not None and probs_val is not None:
        section["val"] = summary(np.asarray(y_val).astype(np.int64), np.asarray(probs_val, dtype=np.float64))
    return section


def _threshold_section(
    threshold: float | dict[str, Any] | None, y_val: Any, probs_val: Any, method: str, target: float
) -> tuple[float, dict[str, Any]]:
    from medpredict.calibration.thresholds import ThresholdPicker

    if isinstance(threshold, dict):
        picker, source = ThresholdPicker.from_dict(threshold), "validation"
    elif threshold is not None:
        value = float(threshold)
        picker = ThresholdPicker.from_dict({"method": "fixed", "target": value, "threshold": value})
        source = "given"
    elif y_val is not None and probs_val is not None:
        picker = ThresholdPicker(method, target=target).fit(y_val, np.asarray(probs_val)[:, 1])
        source = "validation"
    else:
        picker = ThresholdPicker.from_dict({"method": "fixed", "target": 0.5, "threshold": 0.5})
        source = "default"
    info = picker.to_dict()
    return picker.threshold_, {
        "value": picker.threshold_,
        "method": info["method"],
        "target": info["target"],
        "chosen_on": source,
        "val_sensitivity": info["val_sensitivity"],
        "val_specificity": info["val_specificity"],
    }


def _conformal_section(
    y: np.ndarray, probs: np.ndarray, conformal: dict[str, Any] | None, y_val: Any, probs_val: Any,
    alpha: float,
) -> dict[str, Any] | None:
    from medpredict.calibration.conformal import SplitConformal, coverage, set_size_summary

    if conformal is not None:
        predictor, source = SplitConformal.from_dict(conformal), "bundle (validation)"
    elif y_val is not None and probs_val is not None:
        try:
            predictor = SplitConformal(alpha=alpha).fit(probs_val, y_val)
        except DataError as exc:  # too few validation rows of some class for this alpha
            logger.warning("No prediction sets in the report: %s", exc)
            return None
        source = "validation"
    else:
        return None
    sets = predictor.predict_sets(probs)
    return {
        "alpha": float(predictor.alpha),
        "method": predictor.method,
        "qhat": predictor.qhat_,
        "target_coverage": 1.0 - float(predictor.alpha),
        "coverage": coverage(sets, y),
        **set_size_summary(sets),
        "chosen_on": source,
    }


def assemble_evaluation(
    y: Any,
    probs: Any,
    *,
    labels: list[str],
    groups: Any = None,
    threshold: float | dict[str, Any] | None = None,
    threshold_method: str = "youden",
    threshold_target: float = 0.9,
    calibration: dict[str, Any] | None = None,
    probs_uncalibrated: Any = None,
    y_val: Any = None,
    probs_val: Any = None,
    groups_val: Any = None,
    conformal: dict[str, Any] | None = None,
    conformal_alpha: float = 0.1,
    uncertainty: Any = None,
    subgroup_frame: Any = None,
    subgroup_columns: list[str] | None = None,
    shift: dict[str, Any] | None = None,
    explanations: dict[str, Any] | None = None,
    training_curves: dict[str, list[float]] | None = None,
    run_info: dict[str, Any] | None = None,
    extra_splits: dict[str, dict[str, Any]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate test predictions and gather everything the report needs.

    Args:
        y: ``(N,)`` test class indices.
        probs: ``(N, K)`` test probabilities *as the deployed model outputs them*
            (after the bundle's calibrator, if any).
        labels: the K class names.
        groups: ``(N,)`` patient ids of the test rows (bootstrap unit).
        threshold: the locked threshold: the bundle's ``ThresholdPicker.to_dict()``, a
            float, or ``None`` to choose one on ``probs_val`` with ``threshold_method``
            (falls back to 0.5 without validation data). It is never tuned on test.
        calibration: the bundle's calibrator ``to_dict()`` (what was applied).
        probs_uncalibrated: ``(N, K)`` test probabilities before calibration, to show
            the before/after reliability diagram and the ECE change.
        y_val, probs_val, groups_val: validation labels and (calibrated) probabilities,
            for the threshold and conformal sets when the bundle holds none.
        conformal: the bundle's ``SplitConformal.to_dict()``; else fitted on validation.
        uncertainty: ``(N,)`` per-case uncertainty for the referral curve (e.g. MC
            dropout mutual information); default predictive entropy.
        subgroup_frame, subgroup_columns: test rows' subgroup columns (sex, age, site).
        shift: :func:`medpredict.evaluation.subgroups.shift_diagnostics` output (external data).
        explanations: see the module docstring.
        training_curves: ``{"epoch": [...], "train_loss": [...], ...}``.
        run_info: model name, dataset, intended use, seed, ...; passed through. Its
            ``splits`` entry (counts of train etc.) is merged with the computed ones.
        extra_splits: counts of splits not evaluated here, e.g. ``{"train": {"n": ...,
            "n_patients": ..., "prevalence": ...}}``.
        n_boot, seed: bootstrap replicates and seed for all intervals.

    Returns:
        The evaluation dict (module docstring).
    """
    from medpredict.calibration.conformal import predictive_entropy, referral_curve
    from medpredict.evaluation.decision_curve import decision_curve
    from medpredict.evaluation.metrics import classification_metrics
    from medpredict.evaluation.subgroups import subgroup_table, validation_agreement

    p = np.asarray(probs, dtype=np.float64)
    y_arr = np.asarray(y)
    if p.ndim != 2 or p.shape[0] != y_arr.shape[0]:
        raise DataError(f"probs must be (N, K) with N = len(y) = {y_arr.shape[0]}; got shape {p.shape}.")
    y_arr = y_arr.astype(np.int64)
    k = p.shape[1]
    binary = k == 2
    if y_val is not None:
        y_val = np.asarray(y_val).astype(np.int64)
    warnings_: list[str] = []

    locked, threshold_info = (None, None)
    if binary:
        locked, threshold_info = _threshold_section(threshold, y_val, probs_val, threshold_method,
                                                    threshold_target)
        if threshold_info["chosen_on"] == "default":
            warnings_.append("No threshold was locked on validation data; 0.5 was used.")
    metrics = classification_metrics(y_arr, p, labels=labels, threshold=locked, groups=groups,
                                     n_boot=n_boot, seed=seed)
    if groups is None:
        warnings_.append("No patient ids: the bootstrap resamples images, so intervals may be too narrow.")

    run = _run_section(run_info, extra_splits, y_arr, groups, y_val, groups_val, k)

    evaluation = _skeleton(binary, labels, run, metrics, shift, training_curves, warnings_)
    evaluation["calibration"] = _calibration_section(y_arr, p, probs_uncalibrated, calibration, y_val, probs_val)
    evaluation["threshold"] = threshold_info
    evaluation["conformal"] = _conformal_section(y_arr, p, conformal, y_val, probs_val, conformal_alpha)
    if y_val is not None and probs_val is not None:
        conformal_test = evaluation["conformal"]
        reduction = evaluation["calibration"]["ece_reduction"]
        evaluation["agreement"] = validation_agreement(
            y_val, probs_val, metrics, groups_val=groups_val, threshold=locked,
            coverage={**conformal_test, "n": int(y_arr.size)} if conformal_test else None,
            ece_change=None if reduction is None else -reduction, n_boot=min(n_boot, 500), seed=seed,
        )
        _refit_here(y_arr, probs_uncalibrated, calibration, evaluation, conformal_alpha, seed)
        warnings_.extend(evaluation["agreement"]["flags"])
    both_classes = binary and np.unique(y_arr).size == 2
    if both_classes:
        evaluation["curves"] = _curves_section(y_arr, p, groups, n_boot, seed)
        evaluation["decision_curve"] = decision_curve(y_arr, p[:, 1])
    elif binary:
        warnings_.append("The test set holds one class only: ROC, PR and decision curves are undefined.")
    u = predictive_entropy(p) if uncertainty is None else np.asarray(uncertainty, dtype=np.float64)
    evaluation["referral"] = {"source": "entropy" if uncertainty is None else "given",
                              "rows": referral_curve(y_arr, p, u, threshold=locked)}
    if subgroup_frame is not None and subgroup_columns:
        evaluation["subgroups"] = subgroup_table(
            y_arr, p, subgroup_frame, list(subgroup_columns), labels=list(labels), threshold=locked,
            groups=groups, n_boot=min(n_boot, 500), seed=seed,
        )
    if explanations:
        evaluation["explanations"] = _explanations_section(explanations)
    return evaluation


def _refit_here(
    y: np.ndarray, probs_uncal: Any, calibration: dict[str, Any] | None, evaluation: dict[str, Any],
    alpha: float, seed: int,
) -> None:
    """The bundle's post-fit cross-fitted on these cases (:mod:`medpredict.calibration.refit`).

    Sets ``evaluation["agreement"]["refit_here"]``. When validation-fitted calibration or sets
    miss here and refitting on cases like these reaches the targets (a shift, not a fault of
    the fitting), adds a flag that says so.
    """
    from medpredict.calibration.refit import cross_fitted_refit
    from medpredict.evaluation.subgroups import ECE_WORSE_FLAG

    agreement = evaluation["agreement"]
    agreement["refit_here"] = None
    if probs_uncal is None or calibration is None:
        return
    alpha = float((evaluation["conformal"] or {}).get("alpha", alpha))  # the bundle's target, when it has sets
    refit = cross_fitted_refit(probs_uncal, y, offsets=calibration.get("offsets"), alpha=alpha, seed=seed)
    agreement["refit_here"] = refit
    if refit is None:
        return
    conformal_missed = any(r["metric"] == "conformal coverage" and not r["agrees"]
                           for r in agreement["rows"])
    reduction = evaluation["calibration"]["ece_reduction"]
    ece_worse = reduction is not None and -reduction > ECE_WORSE_FLAG
    interval = wilson_interval(int(round(refit["coverage"] * refit["n"])), refit["n"])
    reaches = interval is not None and interval[1] >= refit["target_coverage"]
    if (conformal_missed or ece_worse) and reaches and refit["ece"] < evaluation["calibration"]["test"]["ece"]:
        refit["flag"] = (
            f"Refitted on these test cases instead ({refit['folds']}-fold cross-fitted: fitted on all folds but "
            f"one, scored on the one left out), calibration and prediction sets reach ECE {refit['ece']:.3f} and "
            f"coverage {refit['coverage']:.1%}: the fitting works, and it is validation that differs from these "
            "cases. Refit calibration and sets on cases from the deployment population before relying on "
            "probabilities and sets there."
        )
        agreement["flags"].append(refit["flag"])


def _skeleton(
    binary: bool,
    labels: list[str],
    run: dict[str, Any],
    metrics: dict[str, Any],
    shift: dict[str, Any] | None,
    training_curves: dict[str, list[float]] | None,
    warnings_: list[str],
) -> dict[str, Any]:
    """The evaluation dict in its key order, sections not yet computed set to ``None``."""
    return {
        "schema_version": SCHEMA_VERSION,
        "task": "binary" if binary else "multiclass",
        "labels": list(labels),
        "run": run,
        "metrics": metrics,
        "curves": None,
        "calibration": None,
        "threshold": None,
        "decision_curve": None,
        "conformal": None,
        "referral": None,
        "subgroups": None,
        "shift": shift,
        "agreement": None,
        "explanations": None,
        "training_curves": training_curves,
        "warnings": warnings_,
    }


def _run_section(
    run_info: dict[str, Any] | None,
    extra_splits: dict[str, dict[str, Any]] | None,
    y: np.ndarray,
    groups: Any,
    y_val: np.ndarray | None,
    groups_val: Any,
    k: int,
) -> dict[str, Any]:
    """``run_info`` with the counts of every split (test and validation computed here) and a timestamp."""
    run = dict(run_info or {})
    splits = dict(run.get("splits") or {})
    splits.update(extra_splits or {})
    splits["test"] = {**splits.get("test", {}), **_split_counts(y, groups, k)}
    if y_val is not None:
        splits["val"] = {**splits.get("val", {}), **_split_counts(y_val, groups_val, k)}
    run["splits"] = splits
    run.setdefault("created", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    return run


def _curves_section(y: np.ndarray, p: np.ndarray, groups: Any, n_boot: int, seed: int) -> dict[str, Any]:
    """ROC (with its bootstrap band), PR and the threshold sweep of a binary model."""
    from medpredict.calibration.thresholds import threshold_sweep
    from medpredict.evaluation.metrics import pr_points, roc_band, roc_points

    return {
        "roc": roc_points(y, p[:, 1]),
        "roc_band": roc_band(y, p[:, 1], groups=groups, n_boot=min(n_boot, 300), seed=seed) if n_boot else None,
        "pr": pr_points(y, p[:, 1]),
        "threshold_sweep": threshold_sweep(y, p[:, 1]),
    }


def _explanations_section(explanations: dict[str, Any]) -> dict[str, Any]:
    return {
        "examples": list(explanations.get("examples") or []),
        "checks": explanations.get("checks"),
        "feature_importance": _table_rows(explanations.get("feature_importance")),
        "local": explanations.get("local"),
        "shortcut": explanations.get("shortcut"),
    }


def evaluation_to_json(evaluation: dict[str, Any]) -> dict[str, Any]:
    """A JSON-safe copy of an evaluation: arrays in explanation examples are left out."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, np.ndarray):
            return value.tolist() if value.size <= 64 else f"<array {list(value.shape)}>"
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, float) and not np.isfinite(value):
            return None
        return value

    out = clean({k: v for k, v in evaluation.items() if k != "explanations"})
    explanations = evaluation.get("explanations")
    if explanations:
        examples = []
        for example in explanations.get("examples") or []:
            # file names can carry patient identifiers (e.g. "person123_..."), so no paths here
            kept = {k: v for k, v in example.items() if k not in ("image", "heatmap")}
            kept["image"] = "embedded in report.html"
            examples.append(clean(kept))
        shortcut = explanations.get("shortcut")
        if shortcut:
            flagged = [{k: v for k, v in c.items() if k not in ("image", "heatmap")} for c in shortcut["flagged_cases"]]
            shortcut = {**shortcut, "flagged_cases": flagged}
        out["explanations"] = clean({**explanations, "examples": examples, "shortcut": shortcut})
    else:
        out["explanations"] = None
    return out
