"""Train, evaluate and cross-validate models on a clinical table, in one call each.

* :func:`load_table_data` reads a table, infers its schema, removes exact duplicate
  rows and rows without a target, and encodes the target (binary, multiclass or
  regression; ``"num>0"`` style rules make a binary target).
* :func:`cross_validate` runs repeated stratified k-fold cross-validation (grouped by
  the id column when there is one) with the record network and the two baselines on
  *the same folds*, the cleaner refitted on each training fold; it reports each
  model's mean with a 95% interval.
* :func:`train_table` splits by patient into train/validation/test, fits the cleaner
  on the training rows, trains the network with early stopping on validation,
  calibrates and picks a threshold on validation (the shared
  :func:`medpredict.training.postfit.post_fit`), evaluates network and baselines on the test
  rows, and writes a run folder with a bundle the shared predictor loads.

Run folder: ``config.yaml``, ``metrics.json`` (test metrics of all models side by side,
and CV results when asked), ``cleaning_report.json``, ``test_predictions.csv`` (row
numbers, never ids) and ``model/`` (``weights.safetensors``, ``bundle.json``,
``cleaner.json``, ``checksums.json``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medpredict.atomic import write_json, write_text
from medpredict.bundle.kinds import RecordInput, RecordNet
from medpredict.bundle.schema import BundleMeta, write_bundle
from medpredict.calibration.posthoc import load_calibration
from medpredict.config import (
    RECORD_TASKS,
    CleaningConfig,
    DataConfig,
    RecordModelConfig,
    RunConfig,
    TrainConfig,
    run_location,
)
from medpredict.data.manifest import Manifest
from medpredict.data.splits import assign_splits
from medpredict.errors import ConfigError, DataError, unknown_choice
from medpredict.evaluation.metrics import classification_metrics, regression_metrics
from medpredict.models.records import RECORD_MODELS
from medpredict.progress import progress_bar
from medpredict.records.cleaning import TableCleaner, drop_duplicate_rows
from medpredict.records.tables import (
    TableSchema,
    apply_target_rule,
    clean_target_token,
    clean_token,
    load_table,
    written_as,
)
from medpredict.rundirs import claim_run_dir
from medpredict.training import policy
from medpredict.training.postfit import fit_input_guard, post_fit
from medpredict.training.record_fit import (
    BASELINES,
    RECORD_TRAINING,
    fit_baseline,
    fit_network,
    new_network,
    score,
)

logger = logging.getLogger(__name__)

MODEL_KINDS = ("mlp", "transformer", *BASELINES)


@dataclass
class TableData:
    """A table ready for modelling.

    Attributes:
        frame: the rows kept, raw cells (cleaning happens per split, later).
        schema: the table's schema.
        y: ``(N,)`` class indices (int64) or target values (float64, regression).
        labels: class names in index order; empty for regression.
        task: ``binary``, ``multiclass`` or ``regression``.
        groups: ``(N,)`` patient group per row (the id column, else the row number).
        source: where the table came from.
        removed: rows dropped and why (``duplicates``, ``missing_target``).
    """

    frame: pd.DataFrame
    schema: TableSchema
    y: np.ndarray
    labels: list[str]
    task: str
    groups: np.ndarray
    source: str
    removed: dict[str, int] = field(default_factory=dict)


def _natural(value: str) -> tuple[int, float | str]:
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def encode_target(
    frame: pd.DataFrame, schema: TableSchema, task: str = "auto"
) -> tuple[np.ndarray, list[str], str, np.ndarray]:
    """Encode the schema's target column.

    Returns:
        ``(y, labels, task, keep)`` where ``keep`` marks rows that have a target.

    Raises:
        DataError: no target column, fewer than two classes, or a non-numeric regression target.
        ConfigError: unknown task.
    """
    if task not in RECORD_TASKS:
        raise unknown_choice("task", task, RECORD_TASKS)
    column = schema.target
    if column is None or column not in frame.columns:
        raise DataError(
            f"The table has no target column '{column}'. Name the target with target=... or in the schema."
        )
    if schema.kinds.get(column) == "id":
        raise DataError(
            f"The target column '{column}' holds identifiers (one value per patient or row), not an outcome. "
            "Name the outcome column with --target."
        )
    if schema.target_rule:
        values = apply_target_rule(frame[column], schema.target_rule)
        keep = values.notna().to_numpy()
        rule = f"{column}{schema.target_rule}"
        labels = [schema.labels.get("0", f"not {rule}"), schema.labels.get("1", rule)]
        present = set(values[keep].astype(int))
        if len(present) < 2:
            only = labels[present.pop()] if present else "none"
            raise DataError(
                f"The target rule '{rule}' gives a single class ('{only}' for all {int(keep.sum())} rows with a "
                f"value); a classifier needs both. Check the rule's threshold against the values of '{column}'."
            )
        return values.to_numpy()[keep].astype(np.int64), labels, "binary", keep
    tokens = frame[column].map(clean_target_token)
    keep = tokens.notna().to_numpy()
    tokens = tokens[keep].map(lambda v: f"{float(v):g}" if _natural(str(v))[0] == 0 else str(v))
    distinct = sorted(tokens.unique(), key=_natural)
    numeric = all(_natural(v)[0] == 0 for v in distinct)
    if task == "regression" or (task == "auto" and numeric and len(distinct) > 10):
        if not numeric:
            raise DataError(
                f"Regression target '{column}' has values that are not numbers; "
                "clean them or choose a classification task."
            )
        return tokens.astype(float).to_numpy(), [], "regression", keep
    if len(distinct) < 2:
        raise DataError(
            f"Target '{column}' has {len(distinct)} distinct value(s); a classifier needs at least two."
        )
    if task == "binary" and len(distinct) != 2:
        raise DataError(
            f"Target '{column}' has {len(distinct)} classes, not 2; use task='multiclass' or a rule such as "
            f"'{column}>0'."
        )
    index = {v: i for i, v in enumerate(distinct)}
    labels = [schema.labels.get(v, v) for v in distinct]
    return (
        tokens.map(index).to_numpy().astype(np.int64),
        labels,
        "binary" if len(distinct) == 2 else "multiclass",
        keep,
    )


def table_data_from_frame(
    frame: pd.DataFrame,
    schema: TableSchema,
    *,
    task: str = "auto",
    source: str = "<frame>",
    drop_duplicates: bool = True,
) -> TableData:
    """Build :class:`TableData` from an in-memory frame and schema (EHR extracts use this)."""
    removed = {"duplicates": 0, "missing_target": 0}
    if drop_duplicates:
        frame, removed["duplicates"] = drop_duplicate_rows(frame)
    y, labels, task, keep = encode_target(frame, schema, schema.task if task == "auto" else task)
    removed["missing_target"] = int((~keep).sum())
    if removed["missing_target"]:
        logger.warning(
            "Dropped %d row(s) with no value in target '%s' (written as %s).", removed["missing_target"],
            schema.target, written_as(frame[schema.target][~keep]),
        )
    frame = frame.loc[keep].reset_index(drop=True)
    id_column = schema.id_column()
    if id_column is not None:
        groups = pd.factorize(frame[id_column].map(clean_token).fillna("").astype(str))[0]
    else:
        groups = np.arange(len(frame))
    return TableData(
        frame=frame,
        schema=schema,
        y=y,
        labels=labels,
        task=task,
        groups=np.asarray(groups),
        source=source,
        removed=removed,
    )


def load_table_data(
    path: str | Path,
    *,
    target: str | None = None,
    schema: str | Path | Mapping[str, Any] | None = None,
    task: str = "auto",
    names: Sequence[str] | None = None,
) -> TableData:
    """Read a table file and prepare it for modelling (see :func:`medpredict.records.tables.load_table`)."""
    frame, table_schema = load_table(path, target=target, schema=schema, names=names)
    return table_data_from_frame(frame, table_schema, task=task, source=str(path))


# --------------------------------------------------------------------------- cross-validation


def cv_folds(
    data: TableData, *, n_splits: int = 5, n_repeats: int = 10, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Repeated k-fold splits, stratified by class (by quintile for regression), grouped by patient."""
    from sklearn.model_selection import StratifiedGroupKFold

    if n_splits < 2 or n_repeats < 1:
        raise ConfigError(f"n_splits ({n_splits}) must be >= 2 and n_repeats ({n_repeats}) >= 1.")
    strata = data.y
    if data.task == "regression":
        strata = pd.qcut(pd.Series(data.y).rank(method="first"), q=5, labels=False).to_numpy()
    folds = []
    for repeat in range(n_repeats):
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + repeat)
        folds += list(splitter.split(np.zeros(len(data.y)), strata, data.groups))
    return folds


def corrected_interval(
    scores: Sequence[float], n_train: int, n_test: int, level: float = 0.95
) -> list[float]:
    """Confidence interval of a repeated-CV mean with the Nadeau-Bengio variance correction.

    Folds share training rows, so the plain standard error is far too small; the
    corrected variance is ``(1/J + n_test/n_train) * s^2`` over the ``J`` fold scores
    (Nadeau & Bengio, Machine Learning 2003; Bouckaert & Frank 2004).
    """
    from scipy import stats

    values = np.asarray([s for s in scores if np.isfinite(s)], dtype=float)
    if len(values) < 2:
        return [float("nan"), float("nan")]
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * math.sqrt(
        (1 / len(values) + n_test / n_train) * values.var(ddof=1)
    )
    return [float(values.mean() - half), float(values.mean() + half)]


def corrected_paired_p(a: Sequence[float], b: Sequence[float], n_train: int, n_test: int) -> float:
    """Two-sided p-value that two models' repeated-CV scores differ (corrected resampled t-test)."""
    from scipy import stats

    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    diff = diff[np.isfinite(diff)]
    if len(diff) < 2 or diff.var(ddof=1) == 0:
        return float("nan")
    t = diff.mean() / math.sqrt((1 / len(diff) + n_test / n_train) * diff.var(ddof=1))
    return float(2 * stats.t.sf(abs(t), len(diff) - 1))


def cross_validate(
    data: TableData,
    *,
    models: Sequence[str] = ("mlp", "logistic", "boosting"),
    n_splits: int = 5,
    n_repeats: int = 10,
    seed: int = 0,
    train: TrainConfig | None = None,
    hparams: Mapping[str, Any] | None = None,
    cleaning: CleaningConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Repeated cross-validation of several models on the same folds.

    Returns:
        A JSON-safe dict: ``task, metric, n_splits, n_repeats, n_rows, folds`` and
        ``models: {name: {metric, metric_ci, <other>_mean, scores, seconds_per_fold}}``,
        plus ``compare`` (each model against ``logistic``: mean difference and p-value).
    """
    for name in models:
        if name not in MODEL_KINDS:
            raise unknown_choice("model", name, MODEL_KINDS)
    folds = cv_folds(data, n_splits=n_splits, n_repeats=n_repeats, seed=seed)
    per_model: dict[str, list[dict[str, float]]] = {m: [] for m in models}
    seconds: dict[str, float] = dict.fromkeys(models, 0.0)
    bar = progress_bar(folds, desc=f"CV {Path(data.source).name}", enabled=progress)
    for i, (fit_rows, test_rows) in enumerate(bar):
        cleaner = TableCleaner(data.schema, cleaning).fit(data.frame.iloc[fit_rows])
        x_train, x_test = cleaner.transform(data.frame.iloc[fit_rows]), cleaner.transform(data.frame.iloc[test_rows])
        for name in models:
            started = time.perf_counter()
            predict = _fit_any(
                name, cleaner, x_train, data.y[fit_rows], data, seed=seed + i, train=train, hparams=hparams,
                groups=data.groups[fit_rows],
            )
            per_model[name].append(score(data.y[test_rows], predict(x_test), data.task))
            seconds[name] += time.perf_counter() - started
    metric = "r2" if data.task == "regression" else "auc"
    n_test = len(data.y) / n_splits
    n_train = len(data.y) - n_test
    result: dict[str, Any] = {
        "source": data.source,
        "task": data.task,
        "metric": metric,
        "n_splits": n_splits,
        "n_repeats": n_repeats,
        "n_rows": len(data.y),
        "n_groups": int(len(np.unique(data.groups))),
        "removed": data.removed,
        "interval": "95% t-interval with the Nadeau-Bengio corrected variance",
        "models": {},
    }
    for name, rows in per_model.items():
        entry: dict[str, Any] = {}
        for key in rows[0]:
            values = [r[key] for r in rows]
            entry[f"{key}_mean"] = float(np.nanmean(values))
            interval = corrected_interval(values, int(n_train), int(n_test))
            if key in ("auc", "accuracy", "brier"):  # bounded scores keep bounded intervals
                interval = [float(np.clip(v, 0.0, 1.0)) for v in interval]
            entry[f"{key}_ci"] = interval
        entry["scores"] = [r[metric] for r in rows]
        entry["seconds_per_fold"] = seconds[name] / len(folds)
        result["models"][name] = entry
    if "logistic" in per_model:
        reference = result["models"]["logistic"]["scores"]
        result["compare"] = {
            name: {
                "difference_vs_logistic": float(np.nanmean(np.subtract(e["scores"], reference))),
                "p_value": corrected_paired_p(e["scores"], reference, int(n_train), int(n_test)),
            }
            for name, e in result["models"].items()
            if name != "logistic"
        }
    return result


def _fit_any(
    name: str,
    cleaner: TableCleaner,
    x: np.ndarray,
    y: np.ndarray,
    data: TableData,
    *,
    seed: int,
    train: TrainConfig | None,
    hparams: Mapping[str, Any] | None,
    groups: np.ndarray | None = None,
) -> Any:
    """Fit one model on a cross-validation fold's training rows; return its ``predict``.

    A network is fitted as :func:`train_table` fits the shipped model: a patient-grouped,
    stratified fifth of the fold's training rows is its validation split, for early stopping
    and for the post-fit calibration (prior correction + calibrator), so the cross-validated
    probabilities are those the shipped procedure gives.
    """
    if name in BASELINES:
        return fit_baseline(name, x, y, task=data.task, n_continuous=cleaner.n_continuous_, seed=seed)
    net = new_network(
        name,
        n_continuous=cleaner.n_continuous_,
        cardinalities=cleaner.cardinalities_,
        num_classes=_outputs(data),
        seed=seed,
        **dict(hparams or {}),
    )
    if data.task == "regression":
        return fit_network(net, x, y, task=data.task, train=train, seed=seed).predict
    inner, held = _inner_split(y, groups if groups is not None else np.arange(len(y)), seed)
    train = train or RECORD_TRAINING
    fitted = fit_network(
        net, x[inner], y[inner], task=data.task, train=train, x_val=x[held], y_val=y[held], seed=seed
    )
    fields, _ = _post_fit(fitted.model, x[held], y[held], data, inner, train, y_train=y[inner])

    def predict(rows: np.ndarray) -> np.ndarray:
        return _apply_calibration(fitted.model, rows, fields)

    return predict


def _inner_split(y: np.ndarray, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified, patient-grouped 80/20 split of a fold's training rows."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(y).astype(int)
    folds = int(min(5, np.bincount(labels).min())) if len(np.unique(labels)) > 1 else 0
    if folds < 2:
        raise DataError("A cross-validation fold has fewer than 2 rows of some class; use fewer folds.")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    inner, held = next(splitter.split(np.zeros(len(labels)), labels, np.asarray(groups).astype(str)))
    return inner, held


def _outputs(data: TableData) -> int:
    return 1 if data.task == "regression" else len(data.labels)


# --------------------------------------------------------------------------- train one model


@dataclass
class TableRun:
    """What :func:`train_table` produced."""

    run_dir: Path
    bundle_dir: Path
    metrics: dict[str, Any]
    cleaner: TableCleaner
    data: TableData
    splits: np.ndarray
    model: Any = None
    exit_code = 0

    def summary(self) -> str:
        """Each model's test figure (validation when there is no test split) and where the run went."""
        key = "r2" if self.data.task == "regression" else "auc"
        lines = []
        for name, splits in self.metrics["models"].items():
            result = splits.get("test") or splits.get("val") or {}
            low, high = result.get(f"{key}_ci") or [float("nan"), float("nan")]
            lines.append(f"{name:10s} test {key} {result.get(key, float('nan')):.3f} [{low:.3f}, {high:.3f}]")
        return "\n".join([*lines, f"Run folder: {self.run_dir} (bundle in {self.bundle_dir})"])


@dataclass(frozen=True)
class CrossValidation:
    """A cross-validation's results (:func:`cross_validate`) and the ``cv.json`` they were written to."""

    result: dict[str, Any]
    path: Path
    exit_code = 0

    def summary(self) -> str:
        key = self.result["metric"]
        lines = []
        for name, entry in self.result["models"].items():
            low, high = entry[f"{key}_ci"]
            lines.append(f"{name:10s} {key} {entry[f'{key}_mean']:.3f} [{low:.3f}, {high:.3f}]")
        return "\n".join([*lines, f"Results: {self.path}"])


def cross_validate_table(
    source: str | Path,
    *,
    out: str | Path,
    target: str | None = None,
    schema: str | Path | Mapping[str, Any] | None = None,
    task: str = "auto",
    model: str = "mlp",
    n_splits: int = 5,
    n_repeats: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> CrossValidation:
    """Read a table, cross-validate ``model`` against both baselines on the same folds, write ``out/cv.json``.

    Raises:
        DataError: unreadable table or missing target.
        ConfigError: unknown model or task.
    """
    data = load_table_data(source, target=target, schema=schema, task=task)
    result = cross_validate(
        data, models=(model, *BASELINES), n_splits=n_splits, n_repeats=n_repeats, seed=seed, progress=progress
    )
    path = write_json(Path(out) / "cv.json", result)
    return CrossValidation(result, path)


def split_rows(data: TableData, *, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """``train``/``val``/``test`` per row, by patient group and stratified (the shared splitter)."""
    frame = pd.DataFrame({"patient_id": data.groups.astype(str), "target": data.y})
    # An object column of None: assign_splits' own NaN column is float and pandas 3
    # refuses to write split names into it.
    frame["split"] = pd.Series([None] * len(frame), dtype=object)
    manifest = Manifest(frame=frame, labels=tuple(data.labels), task=data.task, source=data.source)
    split = assign_splits(manifest, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    return split.frame["split"].to_numpy()


def train_table(
    source: str | Path | TableData,
    *,
    target: str | None = None,
    out: str | Path = "runs/table",
    model: str = "mlp",
    schema: str | Path | Mapping[str, Any] | None = None,
    task: str = "auto",
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    train: TrainConfig | None = None,
    hparams: Mapping[str, Any] | None = None,
    cleaning: CleaningConfig | None = None,
    baselines: bool = True,
    cv_repeats: int = 0,
    n_boot: int = 1000,
    progress: bool = True,
    force: bool = False,
    allow_target_proxy: bool = False,
) -> TableRun:
    """Train a record network on a table and write a run folder with its bundle.

    Args:
        source: a table file, or prepared :class:`TableData`.
        target: target column or rule (``"num>0"``); ``None`` guesses (see
            :func:`medpredict.records.tables.pick_target`).
        out: the run folder.
        model: ``mlp`` or ``transformer``.
        schema: YAML schema file or mapping overriding the inferred schema.
        val_fraction / test_fraction: patient fractions held out.
        train: the optimisation settings (default
            :data:`~medpredict.training.record_fit.RECORD_TRAINING`; ``seed`` replaces its seed).
        baselines: also fit logistic regression and gradient boosting on the same
            training rows and report them on the same test rows.
        cv_repeats: if > 0, also run ``cv_repeats`` x 5-fold cross-validation of all
            three models (on all rows) and store it in ``metrics.json``.
        n_boot: patient-bootstrap replicates for the metric intervals.
        force: move a run already in ``out`` aside (``NAME.old-<time>``) instead of refusing.
        allow_target_proxy: train even with a column that restates the target on its own
            (:mod:`medpredict.data.proxies`); refused by default as a leak.

    Raises:
        DataError: unreadable table, missing target, too few patients to split, a column that
            restates the target.
        ConfigError: unknown model, task or option; ``out`` holds a run (without ``force``).
    """
    if model not in RECORD_MODELS:
        raise unknown_choice("record network", model, RECORD_MODELS)
    started = time.monotonic()
    run_dir = Path(*run_location(out))
    claim_run_dir(run_dir, force=force)
    data = (
        source
        if isinstance(source, TableData)
        else load_table_data(source, target=target, schema=schema, task=task)
    )
    config = RunConfig(
        name=run_dir.name,
        out_dir=str(run_dir.parent),
        kind="record",
        data=DataConfig(
            source=str(data.source),
            target=f"{data.schema.target}{data.schema.target_rule or ''}",
            task=data.task,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
        ),
        record_model=RecordModelConfig(name=model, hparams=dict(hparams or {})),
        cleaning=cleaning or CleaningConfig(),
        train=replace(train or RECORD_TRAINING, seed=seed),
    )
    splits = split_rows(data, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    part = {name: np.flatnonzero(splits == name) for name in ("train", "val", "test")}
    if len(part["train"]) == 0 or len(part["val"]) == 0:
        raise DataError(
            f"The train or validation split of {data.source} is empty; give more rows or other fractions."
        )
    refuse_target_proxies(data, part["train"], allowed=allow_target_proxy)
    cleaner = TableCleaner(data.schema, config.cleaning).fit(data.frame.iloc[part["train"]])
    x = {name: cleaner.transform(data.frame.iloc[rows]) for name, rows in part.items()}
    net = new_network(
        model,
        n_continuous=cleaner.n_continuous_,
        cardinalities=cleaner.cardinalities_,
        num_classes=_outputs(data),
        seed=seed,
        **config.record_model.hparams,
    )
    fitted = fit_network(
        net, x["train"], data.y[part["train"]], task=data.task, train=config.train, x_val=x["val"],
        y_val=data.y[part["val"]], seed=seed,
    )
    fields, val_probs = _post_fit(net, x["val"], data.y[part["val"]], data, part["train"], config.train)
    metrics, test_probs = _record_metrics(
        net, x, part, data, fields, val_probs, config, baselines=baselines, n_boot=n_boot,
        n_continuous=cleaner.n_continuous_,
    )
    if cv_repeats > 0:
        metrics["cross_validation"] = cross_validate(
            data, n_repeats=cv_repeats, seed=seed, train=config.train, hparams=hparams, cleaning=config.cleaning,
            models=(model, *BASELINES), progress=progress,
        )
    meta = _record_bundle_meta(config, data, part, net, cleaner, fields, metrics)
    meta = dataclasses.replace(meta, training={
        "best_epoch": fitted.best_epoch, "epochs_run": fitted.epochs_run,
        "seconds": round(time.monotonic() - started, 1), "device": config.train.device,
    })
    # the input check of a record model: Mahalanobis distance of the cleaned record to training's
    guard = fit_input_guard(x["train"], data.y[part["train"]], x["val"]) if data.task != "regression" else None
    write_bundle(run_dir / "model", meta, state_dict=net.state_dict(), cleaner=cleaner.to_dict(), guard=guard)
    write_text(run_dir / "config.yaml", config.to_yaml())
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "cleaning_report.json", cleaner.report_.to_dict())
    if test_probs is not None:
        write_text(run_dir / "test_predictions.csv", _predictions_csv(part["test"], data, test_probs))
    logger.info("Record run written to %s: %s", run_dir, _headline(metrics, model))
    return TableRun(run_dir=run_dir, bundle_dir=run_dir / "model", metrics=metrics, cleaner=cleaner, data=data,
                    splits=splits, model=net)


def _record_metrics(
    net: Any,
    x: dict[str, np.ndarray],
    part: dict[str, np.ndarray],
    data: TableData,
    fields: Mapping[str, Any],
    val_probs: np.ndarray,
    config: RunConfig,
    *,
    baselines: bool,
    n_boot: int,
    n_continuous: int,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Validation and test metrics of the network (and the baselines on the same rows); the test probabilities."""
    seed = config.train.seed

    def evaluate(pred: np.ndarray, rows: np.ndarray, threshold: float | None) -> dict[str, Any]:
        if data.task == "regression":
            return regression_metrics(data.y[rows], pred, groups=data.groups[rows], seed=seed, n_boot=n_boot)
        return classification_metrics(
            data.y[rows], pred, labels=data.labels, threshold=threshold, groups=data.groups[rows], seed=seed,
            n_boot=n_boot,
        )

    model = config.record_model.name
    threshold = (fields.get("threshold") or {}).get("threshold") if data.task == "binary" else None
    evaluated = {"val": part["val"]} | ({"test": part["test"]} if len(part["test"]) else {})
    metrics: dict[str, Any] = {"task": data.task, "labels": data.labels, "models": {}}
    test_probs = None
    for split_name, rows in evaluated.items():
        probs = _apply_calibration(net, x[split_name], fields) if split_name == "test" else val_probs
        if split_name == "test":
            test_probs = probs
        metrics["models"].setdefault(model, {})[split_name] = evaluate(probs, rows, threshold)
    for name in BASELINES if baselines else ():
        predict = fit_baseline(
            name, x["train"], data.y[part["train"]], task=data.task, n_continuous=n_continuous, seed=seed
        )
        for split_name, rows in evaluated.items():
            metrics["models"].setdefault(name, {})[split_name] = evaluate(predict(x[split_name]), rows, None)
    return metrics, test_probs


def _record_bundle_meta(
    config: RunConfig,
    data: TableData,
    part: dict[str, np.ndarray],
    net: Any,
    cleaner: TableCleaner,
    fields: Mapping[str, Any],
    metrics: dict[str, Any],
) -> BundleMeta:
    """What the bundle says about a record model (``training`` is added by the caller)."""
    model = config.record_model.name
    return BundleMeta(
        name=config.name,
        kind="record",
        task=data.task,
        labels=tuple(data.labels),
        config=config,
        model=RecordNet(dict(net.hparams)),
        record=RecordInput(input_columns=tuple(cleaner.columns_), features=tuple(cleaner.feature_names_)),
        **fields,
        val_metrics=metrics["models"][model]["val"],
        metrics=metrics["models"][model].get("test"),
        data={
            "source": data.source,
            "units": "patient",
            "rows": {k: int(len(v)) for k, v in part.items()},
            "patients": {k: int(len(np.unique(data.groups[v]))) for k, v in part.items()},
            "removed": data.removed,
        },
    )


def refuse_target_proxies(data: TableData, rows: np.ndarray, *, allowed: bool) -> None:
    """Log the record columns a model reads; refuse one that restates the target (unless ``allowed``).

    Raises:
        DataError: names the column, its balanced accuracy alone, and how to leave it out or keep it.
    """
    from medpredict.data.proxies import target_proxies

    features = data.schema.features()
    logger.info("Record columns the model reads (%d): %s", len(features), ", ".join(features))
    if data.task == "regression":
        return
    frame = data.frame.iloc[rows]
    proxies = target_proxies(frame, np.asarray(data.labels, dtype=object)[data.y[rows]], features)
    if not proxies:
        return
    found = "; ".join(p.describe(str(data.schema.target)) for p in proxies)
    if allowed:
        logger.warning("Training with a possible leak, as asked: %s.", found)
        return
    ignored = ", ".join(f"{p.column}: ignore" for p in proxies)
    raise DataError(
        f"Refusing to train on {data.source}: {found}. A model reading it learns nothing usable before the "
        f"outcome is known. Leave it out (a --schema file with columns: {{{ignored}}}), or pass "
        "--allow-target-proxy if it is truly known before the outcome."
    )


def _post_fit(
    net: Any,
    x_val: np.ndarray,
    y_val: np.ndarray,
    data: TableData,
    train_rows: np.ndarray,
    train: TrainConfig,
    *,
    y_train: np.ndarray | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Calibration, threshold and conformal sets on validation, exactly as image runs do."""
    with torch.no_grad():
        net.eval()
        logits = net(torch.as_tensor(x_val))
    if data.task == "regression":
        return {"calibration": None, "threshold": None, "conformal": None}, logits[:, 0].numpy().astype(
            np.float64
        )
    trained_on = data.y[train_rows] if y_train is None else y_train
    counts = np.bincount(np.asarray(trained_on).astype(int), minlength=len(data.labels))
    weights = policy.class_weights(counts, train.class_weighting)
    return post_fit(logits, y_val, data.task, tuple(data.labels), class_weights=weights)


def _apply_calibration(net: Any, x: np.ndarray, fields: Mapping[str, Any]) -> np.ndarray:
    with torch.no_grad():
        net.eval()
        logits = net(torch.as_tensor(x))
    if net.num_classes == 1:
        return logits[:, 0].numpy().astype(np.float64)
    if fields.get("calibration"):
        return np.asarray(load_calibration(fields["calibration"]).transform(logits.numpy()), dtype=np.float64)
    return torch.softmax(logits, dim=1).numpy().astype(np.float64)


def _predictions_csv(rows: np.ndarray, data: TableData, probs: np.ndarray) -> str:
    table = pd.DataFrame({"row": rows, "target": data.y[rows]})
    if data.task == "regression":
        table["prediction"] = probs
    else:
        for k, label in enumerate(data.labels):
            table[f"p_{label}"] = probs[:, k]
    return table.to_csv(index=False)


def _headline(metrics: Mapping[str, Any], model: str) -> str:
    key = "r2" if metrics["task"] == "regression" else "auc"
    parts = []
    for name, splits in metrics["models"].items():
        result = splits.get("test") or splits.get("val") or {}
        if key in result:
            parts.append(f"{name} {key} {result[key]:.3f}")
    return ", ".join(parts)
