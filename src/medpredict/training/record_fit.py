"""Fit one tabular model on one split: the network's training loop and the two baselines.

The network loop is deliberately small (AdamW, one-cycle schedule, balanced class
weights, optional early stopping on a validation split): on tables of a few hundred
rows one fit takes about a second, so the 10x5 repeated cross-validation (50 fits
per model) stays short on 2 CPU cores. It is the *only* loop tabular networks train
with, in cross-validation and in :func:`medpredict.training.records.train_table`, so the
cross-validated numbers describe the procedure that made the shipped model.

The baselines are scikit-learn's logistic regression (on the standardised cleaner
output, categorical codes one-hot encoded) and gradient boosting, fed the very same
cleaned matrix. For regression they are ridge regression and gradient boosting.

Every fit returns ``predict(X) -> (N, K)`` probabilities (classification) or
``(N,)`` values in the target's unit (regression).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medpredict.errors import ConfigError, unknown_choice
from medpredict.models.tabular import TabularNet, build_tabular_model

logger = logging.getLogger(__name__)

BASELINES = ("logistic", "boosting")
Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class NetSettings:
    """Optimisation of a tabular network.

    Attributes:
        epochs: passes over the training rows (the maximum, with early stopping).
        batch_size: rows per step.
        lr: peak learning rate of the one-cycle schedule.
        weight_decay: AdamW weight decay (not on biases or embeddings' norms).
        patience: epochs without a better validation loss before stopping (only when a
            validation split is given).
        class_weighting: ``balanced`` or ``none``.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-2
    patience: int = 15
    class_weighting: str = "balanced"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ConfigError(
                f"epochs ({self.epochs}), batch_size ({self.batch_size}) and patience ({self.patience}) "
                "must be at least 1."
            )
        if not 0 < self.lr < 10:
            raise ConfigError(f"lr = {self.lr} is out of range; expected a value in (0, 10).")
        if self.class_weighting not in ("balanced", "none"):
            raise unknown_choice("class_weighting", self.class_weighting, ("balanced", "none"))


@dataclass
class NetFit:
    """A trained network with what the loop saw."""

    model: TabularNet
    epochs_run: int
    best_epoch: int
    history: list[dict[str, float]]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``(N, F)`` cleaner output -> ``(N, K)`` probabilities or ``(N,)`` regression values."""
        return predict_network(self.model, x)


@torch.no_grad()
def predict_network(model: TabularNet, x: np.ndarray) -> np.ndarray:
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
) -> TabularNet:
    """Build a network with initial weights drawn from ``seed`` (global RNG state untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_tabular_model(
            name, n_continuous=n_continuous, cardinalities=cardinalities, num_classes=num_classes, **hparams
        )


def fit_network(
    model: TabularNet,
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    settings: NetSettings | None = None,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    seed: int = 0,
) -> NetFit:
    """Train ``model`` on ``(x, y)``; with a validation split, keep the epoch of lowest validation loss.

    Args:
        x: ``(N, F)`` float32 cleaner output.
        y: ``(N,)`` class indices (classification) or target values (regression).
        task: ``binary``, ``multiclass`` or ``regression``.
        seed: seeds a private generator for dropout and batch order.

    For regression the target is standardised for training and the scaling folded
    back into the head afterwards, so the returned model outputs the target's unit.
    """
    settings = settings or NetSettings()
    regression = task == "regression"
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    y_mean, y_std = (float(np.mean(y)), float(np.std(y)) or 1.0) if regression else (0.0, 1.0)
    if regression:
        yt = torch.as_tensor((np.asarray(y, dtype=np.float32) - y_mean) / y_std)
        loss_fn: nn.Module = nn.MSELoss()
    else:
        yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
        weight = None
        if settings.class_weighting == "balanced":
            counts = np.maximum(np.bincount(np.asarray(y, dtype=np.int64), minlength=model.num_classes), 1)
            weight = torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)
        loss_fn = nn.CrossEntropyLoss(weight=weight)
    val = None
    if x_val is not None and y_val is not None and len(y_val):
        yv = (
            (np.asarray(y_val, dtype=np.float32) - y_mean) / y_std
            if regression
            else np.asarray(y_val, dtype=np.int64)
        )
        val = (torch.as_tensor(np.asarray(x_val, dtype=np.float32)), torch.as_tensor(yv))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on matrices this small, extra threads only add overhead; restored below
    try:
        return _loop(model, xt, yt, loss_fn, val, settings, seed, regression, y_mean, y_std)
    finally:
        torch.set_num_threads(threads)


def _loop(
    model: TabularNet,
    xt: torch.Tensor,
    yt: torch.Tensor,
    loss_fn: nn.Module,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    settings: NetSettings,
    seed: int,
    regression: bool,
    y_mean: float,
    y_std: float,
) -> NetFit:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
    )
    n = len(xt)
    steps_per_epoch = max(1, math.ceil(n / settings.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=settings.lr,
        total_steps=max(2, steps_per_epoch * settings.epochs),
        pct_start=0.15,
        div_factor=10,
        final_div_factor=100,
    )
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state, bad = math.inf, settings.epochs - 1, None, 0
    epoch = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout draws from the global generator; keep it private
        for epoch in range(settings.epochs):
            model.train()
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for start in range(0, n, settings.batch_size):
                index = order[start : start + settings.batch_size]
                if len(index) < 2 and n > 1:
                    continue  # a batch of one row gives a useless gradient estimate
                out = model(xt[index])
                loss = loss_fn(out[:, 0] if regression else out, yt[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += float(loss.detach()) * len(index)
            record = {"epoch": float(epoch), "train_loss": total / n}
            if val is not None:
                model.eval()
                with torch.no_grad():
                    out = model(val[0])
                    record["val_loss"] = float(loss_fn(out[:, 0] if regression else out, val[1]))
                if record["val_loss"] < best_loss - 1e-4:
                    best_loss, best_epoch, bad = record["val_loss"], epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    bad += 1
            history.append(record)
            if val is not None and bad >= settings.patience:
                logger.debug("Early stop at epoch %d (best %d).", epoch + 1, best_epoch + 1)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    if regression:
        with torch.no_grad():  # outputs in the target's unit from here on
            model.head.weight.mul_(y_std)
            model.head.bias.mul_(y_std).add_(y_mean)
    model.eval()
    return NetFit(model=model, epochs_run=epoch + 1, best_epoch=best_epoch + 1, history=history)


def fit_baseline(
    kind: str, x: np.ndarray, y: np.ndarray, *, task: str, n_continuous: int, seed: int = 0
) -> Predictor:
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
