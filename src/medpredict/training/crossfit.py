"""Small-data mode: k-fold cross-fitting on train + validation, the fold models kept as one ensemble.

A validation split of 78 images cannot select an epoch, fit a calibrator, lock a threshold
and set a conformal quantile: its AUC moves by several points between two epochs and a
threshold chosen on it is a coin toss (issue 16 measured sensitivity 0.67 that way). When
the validation split is small — under :data:`SMALL_CASES` cases or :data:`SMALL_PER_CLASS`
of a class — or ``train.small_data: on``:

1. training and validation rows are pooled and cut into ``train.folds`` folds, stratified by
   class and grouped by patient (and by identical image content), so no patient is on both
   sides of any fold (scikit-learn's ``StratifiedGroupKFold``);
2. each fold model trains on the other folds with early stopping on its held-out fold
   (:func:`medpredict.training.engine.fit`, checkpointed under ``RUN/folds/<i>/``);
3. its logits on the held-out fold are *out-of-fold* (OOF): every pooled case is predicted
   by a model that never saw it. Calibration, the locked threshold and the conformal
   quantile are fitted on these OOF logits (:func:`medpredict.training.postfit.post_fit`);
4. the k fold models become one :class:`~medpredict.models.ensemble.EnsembleNet` that
   predicts the mean of their logits (one bundle, one ONNX graph);
5. the input guard (:func:`medpredict.training.postfit.fit_input_guard`) reads the
   ensemble's features — the members' pooled features side by side, what its head
   classifies. No case's ensemble features are out-of-fold (each member but one has seen
   it), so the detector is fitted on the pooled cases outside fold 0 and its threshold is
   set on fold 0's cases, which the detector did not see.

Settings still at their general-purpose defaults are replaced by :data:`SMALL_DATA_DEFAULTS`
(more epochs of smaller batches, patience for noisy folds, stronger augmentation); the
resolved config that was used is what the run folder and the bundle store.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medpredict.config import RunConfig
from medpredict.data.datasets import ArrayDataset
from medpredict.data.splits import group_ids
from medpredict.errors import ConfigError, DataError
from medpredict.training.checkpoint import load_state, save_state
from medpredict.training.engine import (
    BatchTransform,
    EpochCallback,
    FitResult,
    fit,
    outputs_to_probs,
    predict_logits,
    validation_score,
)
from medpredict.training.postfit import fit_input_guard, pooled_features

log = logging.getLogger(__name__)

#: A validation split with fewer cases than this is "small".
SMALL_CASES = 300
#: ... or with fewer cases than this in one of its classes.
SMALL_PER_CLASS = 50
#: Settings small-data mode uses where the config holds the general default (dotted keys).
#: About 500 training images per fold: batches of 32 give 16 steps an epoch instead of 4,
#: and a patience of 15 outlasts the epoch-to-epoch noise of a ~130-image held-out fold.
SMALL_DATA_DEFAULTS: dict[str, Any] = {
    "train.batch_size": 32,
    "train.epochs": 60,
    "train.patience": 15,
    "augment.strength": 1.5,
}
FOLDS_DIR = "folds"
FOLD_DONE = "fold.safetensors"
#: Called after each fold with (fold index, its held-out score, the mean of the folds so far);
#: an exception it raises (e.g. ``optuna.TrialPruned``) ends the cross-fit.
FoldCallback = Callable[[int, float, float], None]
ModelFactory = Callable[[int], torch.nn.Module]


def small_data_reason(config: RunConfig, y_val: np.ndarray, task: str) -> str | None:
    """Why small-data mode applies to this run, or ``None`` when it does not.

    Raises:
        ConfigError: ``train.small_data: on`` for a task it does not cover (regression, multi-label).
    """
    mode = config.train.small_data
    if mode == "off":
        return None
    if task not in ("binary", "multiclass"):
        if mode == "on":
            raise ConfigError(
                f"train.small_data=on needs a classification task (binary or multiclass); this task is {task}. "
                "Set train.small_data=off."
            )
        return None
    if mode == "on":
        return "train.small_data is on"
    counts = np.bincount(np.asarray(y_val, dtype=np.int64), minlength=2)
    if len(y_val) < SMALL_CASES:
        return f"the validation split holds {len(y_val)} cases (< {SMALL_CASES})"
    if counts.min() < SMALL_PER_CLASS:
        return f"a class has {int(counts.min())} validation cases (< {SMALL_PER_CLASS})"
    return None


def small_data_config(config: RunConfig) -> tuple[RunConfig, dict[str, tuple[Any, Any]]]:
    """``config`` with :data:`SMALL_DATA_DEFAULTS` where it holds the general defaults.

    Returns:
        The config to train with, and ``{key: (general default, small-data value)}`` for
        every setting replaced (for the log).
    """
    general = RunConfig().to_dict()
    current = config.to_dict()
    changed: dict[str, tuple[Any, Any]] = {}
    for dotted, value in SMALL_DATA_DEFAULTS.items():
        section, key = dotted.split(".")
        if current[section][key] == general[section][key] and current[section][key] != value:
            changed[dotted] = (current[section][key], value)
    return config.replace({k: new for k, (_, new) in changed.items()}), changed


def fold_assignment(
    frame: pd.DataFrame, y: np.ndarray, folds: int, seed: int, content_keys: pd.Series | None = None
) -> np.ndarray:
    """``(N,)`` fold index of each row: stratified by class, whole patients (and identical images) per fold.

    Raises:
        DataError: fewer patients than folds, or a class with fewer patients than folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    groups = group_ids(frame["patient_id"], content_keys)
    n_groups = len(np.unique(groups))
    if n_groups < folds:
        raise DataError(
            f"Small-data mode needs at least {folds} patients for {folds} folds; the data has {n_groups}. "
            "Lower train.folds or set train.small_data=off."
        )
    for label in np.unique(y):
        holders = len(np.unique(groups[y == label]))
        if holders < folds:
            raise DataError(
                f"Class {int(label)} occurs in {holders} patients, fewer than the {folds} folds of small-data mode. "
                "Lower train.folds or set train.small_data=off."
            )
    assignment = np.full(len(frame), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for index, (_, held) in enumerate(splitter.split(np.zeros(len(frame)), y, groups)):
        assignment[held] = index
    return assignment


@dataclass
class CrossFit:
    """The fold models as one ensemble, and what post-fit needs.

    Attributes:
        model: the :class:`~medpredict.models.ensemble.EnsembleNet` of the fold models.
        oof_logits: ``(N, K)`` each pooled case's logits from the fold model that did not see it.
        y: ``(N,)`` the pooled cases' classes.
        folds: ``(N,)`` each pooled case's fold.
        fold_results: each fold's :class:`FitResult` (weights dropped).
        guard: the fitted input guard (``MahalanobisDetector.to_dict()``), or None.
        result: a :class:`FitResult` of the whole: the ensemble's weights, the OOF score,
            every fold's epochs (with a ``fold`` key) in ``history``.
    """

    model: torch.nn.Module
    oof_logits: torch.Tensor
    y: np.ndarray
    folds: np.ndarray
    fold_results: list[FitResult]
    guard: dict[str, Any] | None
    result: FitResult

    def summary(self, reason: str) -> dict[str, Any]:
        """The ``training.small_data`` entry of ``bundle.json``."""
        return {
            "reason": reason,
            "folds": len(self.fold_results),
            "fold_scores": [round(r.best_score, 5) for r in self.fold_results],
            "fold_best_epochs": [r.best_epoch for r in self.fold_results],
            "fold_sizes": np.bincount(self.folds).tolist(),
            "oof_score": round(self.result.best_score, 5),
        }


def cross_fit(
    config: RunConfig,
    pooled: ArrayDataset,
    folds: np.ndarray,
    *,
    task: str,
    build: ModelFactory,
    run_dir: Path | None,
    progress: bool = True,
    resume: bool = False,
    train_transform: BatchTransform | None = None,
    on_epoch: EpochCallback | None = None,
    on_fold: FoldCallback | None = None,
) -> CrossFit:
    """Train one model per fold (see the module docstring) and join them into an ensemble.

    Args:
        config: the run's config (``train`` section per fold; ``train.max_minutes`` is the
            budget of all folds together).
        pooled: training and validation cases together.
        folds: ``(N,)`` fold index per pooled case (:func:`fold_assignment`).
        build: ``build(seed)`` returns a fresh network (initialised under that seed).
        run_dir: fold checkpoints go to ``run_dir/folds/<i>/``; ``None`` writes nothing.
        resume: finished folds are loaded, not retrained; an unfinished one continues from
            its checkpoint.
        on_epoch: passed to every fold's ``fit`` (records carry a ``fold`` key).
        on_fold: see :data:`FoldCallback`.
    """
    from medpredict.models.ensemble import EnsembleNet

    k = int(folds.max()) + 1
    y = pooled.target.numpy()
    deadline = None if config.train.max_minutes is None else time.monotonic() + config.train.max_minutes * 60
    members: list[torch.nn.Module] = []
    results: list[FitResult] = []
    oof = None
    for fold in range(k):
        held = torch.from_numpy(np.flatnonzero(folds == fold))
        kept = torch.from_numpy(np.flatnonzero(folds != fold))
        fold_train, fold_val = _subset(pooled, kept), _subset(pooled, held)
        seed = (config.train.seed + fold) % (2**31 - 1)
        fold_dir = run_dir / FOLDS_DIR / str(fold) if run_dir is not None else None
        model = build(seed)
        done = fold_dir / FOLD_DONE if fold_dir is not None else None
        if resume and done is not None and done.exists():
            state = load_state(done)
            model.load_state_dict(state["best_model"])
            result = FitResult(
                best_state={}, best_epoch=state["best_epoch"], best_score=state["best_score"],
                history=state["history"], stopped=state["stopped"], seconds=state["seconds"],
                precision=state["precision"],
            )
            log.info("Fold %d/%d already trained (held-out score %.4f).", fold + 1, k, result.best_score)
        else:
            minutes = None
            if deadline is not None:
                minutes = max((deadline - time.monotonic()) / 60 / (k - fold), 0.01)
            fold_config = dataclasses.replace(config.train, seed=seed, max_minutes=minutes)
            log.info("Fold %d/%d: %d training, %d held-out cases.", fold + 1, k, len(kept), len(held))
            counts = np.bincount(fold_train.target.numpy(), minlength=_classes(pooled, model))
            result = fit(
                model, fold_train, fold_val, task=task, config=fold_config, run_dir=fold_dir,
                class_counts=counts, progress=progress, resume=resume, train_transform=train_transform,
                on_epoch=_tagged(on_epoch, fold),
            )
        logits = predict_logits(model, fold_val)
        if oof is None:
            oof = torch.zeros(len(pooled), logits.shape[1])
        oof[held] = logits
        if done is not None and not done.exists():
            save_state(done, {
                "best_model": model.state_dict(), "best_epoch": result.best_epoch, "best_score": result.best_score,
                "history": result.history, "stopped": result.stopped, "seconds": result.seconds,
                "precision": result.precision,
            })
        results.append(dataclasses.replace(result, best_state={}))
        members.append(model)
        if on_fold is not None:
            on_fold(fold, result.best_score, float(np.mean([r.best_score for r in results])))
    if oof is None:
        raise DataError("Cross-fitting needs at least two folds; the fold assignment has one.")
    ensemble = EnsembleNet(members).eval()
    score = validation_score(y, outputs_to_probs(oof, task).numpy(), task)
    log.info(
        "Cross-fit: %d fold models, held-out scores %s, out-of-fold score %.4f.",
        k, ", ".join(f"{r.best_score:.4f}" for r in results), score,
    )
    history = [{**record, "fold": fold} for fold, r in enumerate(results) for record in r.history]
    whole = FitResult(
        best_state={key: value.detach().cpu().clone() for key, value in ensemble.state_dict().items()},
        best_epoch=int(round(float(np.median([r.best_epoch for r in results])))),
        best_score=score,
        history=history,
        stopped="cross-fit",
        seconds=float(sum(r.seconds for r in results)),
        precision=results[0].precision,
    )
    guard = _ensemble_guard(ensemble, pooled, folds, config.train.seed)
    return CrossFit(ensemble, oof, y, folds, results, guard, whole)


def _ensemble_guard(
    ensemble: torch.nn.Module, pooled: ArrayDataset, folds: np.ndarray, seed: int, max_rows: int = 5000
) -> dict[str, Any] | None:
    """The input guard on the ensemble's features: fitted outside fold 0, threshold on fold 0."""
    fit_rows = np.flatnonzero(folds != 0)
    if len(fit_rows) > max_rows:
        fit_rows = np.sort(np.random.default_rng(seed).choice(fit_rows, max_rows, replace=False))
    images = pooled.inputs[0]
    y = pooled.target.numpy()
    return fit_input_guard(
        pooled_features(ensemble, images, index=fit_rows),
        y[fit_rows],
        pooled_features(ensemble, images, index=np.flatnonzero(folds == 0)),
    )


def pool(train_set: ArrayDataset, val_set: ArrayDataset) -> ArrayDataset:
    """Training then validation cases in one dataset (the order of the pooled frame)."""
    inputs = tuple(torch.cat([a, b]) for a, b in zip(train_set.inputs, val_set.inputs, strict=True))
    return ArrayDataset(inputs, torch.cat([train_set.target, val_set.target]))


def _subset(dataset: ArrayDataset, index: torch.Tensor) -> ArrayDataset:
    return ArrayDataset(tuple(t[index] for t in dataset.inputs), dataset.target[index])


def _classes(pooled: ArrayDataset, model: torch.nn.Module) -> int:
    num = getattr(model, "num_classes", None)
    return int(num) if num else int(pooled.target.max()) + 1


def _tagged(on_epoch: EpochCallback | None, fold: int) -> EpochCallback | None:
    if on_epoch is None:
        return None

    def tagged(record: dict[str, Any], model: torch.nn.Module) -> None:
        on_epoch({**record, "fold": fold}, model)

    return tagged
