"""Fit one record model on one split: the network (through the shared engine) and the two baselines.

The network trains with :func:`medpredict.training.engine.fit`, the loop every network
uses, with :data:`RECORD_TRAINING`: small batches, strong weight decay, early stopping on
the validation *loss* (a validation split of 40 rows gives too coarse an AUC to steer by),
one CPU thread (extra threads only add overhead on matrices this small). On tables of a
few hundred rows one fit takes about a second, so the 10x5 repeated cross-validation
(50 fits per model) stays short on 2 CPU cores. Cross-validation and
:func:`medpredict.training.records.train_table` both fit this way, so the cross-validated
numbers describe the procedure that made the shipped model.

The baselines are scikit-learn's logistic regression (on the standardised cleaner
output, categorical codes one-hot encoded) and gradient boosting, fed the very same
cleaned matrix. For regression they are ridge regression and gradient boosting.

Every fit returns ``predict(X) -> (N, K)`` probabilities (classification) or
``(N,)`` values in the target's unit (regression).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from medpredict.config import TrainConfig
from medpredict.data.datasets import ArrayDataset
from medpredict.errors import unknown_choice
from medpredict.models.records import RecordNetwork, build_record_model
from medpredict.training import policy
from medpredict.training.engine import fit

logger = logging.getLogger(__name__)

BASELINES = ("logistic", "boosting")
PredictFn = Callable[[np.ndarray], np.ndarray]

#: How record networks train unless told otherwise (the image defaults suit images).
RECORD_TRAINING = TrainConfig(
    epochs=30,
    batch_size=64,
    lr=3e-3,
    weight_decay=1e-2,
    patience=15,
    monitor="loss",
    device="cpu",
    amp=False,
    channels_last=False,
    threads=1,
)


@dataclass
class NetFit:
    """A trained network with what the loop saw."""

    model: RecordNetwork
    epochs_run: int
    best_epoch: int
    history: list[dict[str, Any]]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(N, F)`` cleaner output -> ``(N, K)`` probabilities or ``(N,)`` regression values."""
        return predict_network(self.model, x)


@torch.no_grad()
def predict_network(model: RecordNetwork, x: np.ndarray) -> np.ndarray:
    """Run ``model`` in eval mode; softmax for classification, raw output for regression."""
    was_training = model.training
    model.eval()
    out = model(torch.as_tensor(np.asarray(x, dtype=np.float32)))
    model.train(was_training)
    if model.num_classes == 1:
        return out[:, 0].numpy().astype(np.float64)
    return torch.softmax(out, dim=1).numpy().astype(np.float64)


def new_network(
    name: str, *, n_continuous: int, cardinalities: Sequence[int], num_classes: int, seed: int, **hparams: Any
) -> RecordNetwork:
    """Build a network with initial weights drawn from ``seed`` (global RNG state untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_record_model(
            name, n_continuous=n_continuous, cardinalities=cardinalities, num_classes=num_classes, **hparams
        )


def fit_network(
    model: RecordNetwork,
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    train: TrainConfig | None = None,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    seed: int = 0,
) -> NetFit:
    """Train ``model`` on ``(x, y)``; with a validation split, keep the epoch the config's monitor prefers.

    Args:
        x: ``(N, F)`` float32 cleaner output.
        y: ``(N,)`` class indices (classification) or target values (regression).
        task: ``binary``, ``multiclass`` or ``regression``.
        train: the optimisation settings (default :data:`RECORD_TRAINING`); ``seed`` replaces its seed.
        seed: seeds the batch order, dropout and the engine's other randomness.

    For regression the target is standardised for training and the scaling folded
    back into the head afterwards, so the returned model outputs the target's unit.
    """
    config = replace(train or RECORD_TRAINING, seed=seed)
    regression = task == "regression"
    y_mean, y_std = (float(np.mean(y)), float(np.std(y)) or 1.0) if regression else (0.0, 1.0)

    def dataset(rows: np.ndarray, target: np.ndarray) -> ArrayDataset:
        values = (np.asarray(target, dtype=np.float32) - y_mean) / y_std if regression else target
        tensor = torch.as_tensor(np.asarray(values, dtype=np.float32 if regression else np.int64))
        return ArrayDataset((torch.as_tensor(np.asarray(rows, dtype=np.float32)),), tensor)

    validation = dataset(x_val, y_val) if x_val is not None and y_val is not None and len(y_val) else None
    counts = None if regression else policy.class_counts(np.asarray(y, dtype=np.int64), task, model.num_classes)
    result = fit(model, dataset(x, y), validation, task=task, config=config, class_counts=counts, progress=False)
    if regression:
        with torch.no_grad():  # outputs in the target's unit from here on
            model.head.weight.mul_(y_std)
            model.head.bias.mul_(y_std).add_(y_mean)
    model.eval()
    return NetFit(model=model, epochs_run=len(result.history), best_epoch=result.best_epoch, history=result.history)


def fit_baseline(
    kind: str, x: np.ndarray, y: np.ndarray, *, task: str, n_continuous: int, seed: int = 0
) -> PredictFn:
    """Fit a scikit-learn baseline on the cleaner output and return its predict function.

    Args:
        kind: ``logistic`` (ridge regression for regression tasks) or ``boosting``.
        n_continuous: leading float columns; the rest are categorical codes, one-hot
            encoded for the linear model (unseen codes ignored).

    Raises:
        ConfigError: unknown ``kind``.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    if kind not in BASELINES:
        raise unknown_choice("baseline", kind, BASELINES)
    regression = task == "regression"
    if kind == "logistic":
        codes = list(range(n_continuous, x.shape[1]))
        encode = ColumnTransformer(
            [("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False), codes)],
            remainder="passthrough",
        )
        estimator = Ridge(alpha=1.0) if regression else LogisticRegression(C=1.0, max_iter=5000)
        model = make_pipeline(encode, estimator) if codes else estimator
    elif regression:
        model = GradientBoostingRegressor(
            n_estimators=150, max_depth=3, learning_rate=0.05, subsample=0.8, random_state=seed
        )
    else:
        model = GradientBoostingClassifier(
            n_estimators=150, max_depth=3, learning_rate=0.05, subsample=0.8, random_state=seed
        )
    model.fit(x, y)
    if regression:
        return lambda rows: np.asarray(model.predict(rows), dtype=np.float64)
    classes = np.asarray(model.classes_)
    n_classes = int(max(np.max(y), classes.max()) + 1)

    def predict(rows: np.ndarray) -> np.ndarray:
        probs = np.zeros((len(rows), n_classes))
        probs[:, classes] = model.predict_proba(rows)  # a class absent from a fold gets 0
        return probs

    return predict


def score(y: np.ndarray, pred: np.ndarray, task: str) -> dict[str, float]:
    """Point metrics of one fold: ``auc, accuracy, brier`` or ``mae, rmse, r2``."""
    from sklearn.metrics import accuracy_score, mean_absolute_error, r2_score, roc_auc_score

    if task == "regression":
        err = pred - y
        return {
            "mae": float(mean_absolute_error(y, pred)),
            "rmse": float(np.sqrt(np.mean(err**2))),
            "r2": float(r2_score(y, pred)),
        }
    onehot = np.eye(pred.shape[1])[y]
    brier = float(np.mean(np.sum((pred - onehot) ** 2, axis=1)))
    try:
        if task == "binary":
            auc = float(roc_auc_score(y, pred[:, 1]))
        else:
            auc = float(
                roc_auc_score(y, pred, multi_class="ovr", average="macro", labels=range(pred.shape[1]))
            )
    except ValueError:  # a fold missing a class
        auc = float("nan")
    return {"auc": auc, "accuracy": float(accuracy_score(y, pred.argmax(1))), "brier": brier}
