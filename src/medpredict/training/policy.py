"""How every network is optimised: loss and class weights, parameter groups, optimiser, schedule.

One policy for image, record and fused networks, read from a
:class:`~medpredict.config.TrainConfig`:

* loss: cross-entropy (label smoothing from the config) for single-label tasks,
  binary cross-entropy for multi-label, MSE for regression;
* ``class_weighting="balanced"``: each class weighted by ``N / (K * n_k)`` (inverse
  frequency, classes never seen count as one sample); multi-label positives by
  ``n_negative / n_positive`` clipped to [1, 100];
* AdamW with weight decay on weights only — biases, norms and other 1-D parameters get none;
* ``onecycle``: warm-up over the first 15% of steps from ``lr/10`` to ``lr``, then down to
  ``lr/1000``; ``cosine``: 5% linear warm-up then cosine decay; ``constant``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from medpredict.config import TrainConfig

#: One-cycle constants: share of steps warming up, start and end divisors of the peak rate.
ONECYCLE_PCT_START = 0.15
ONECYCLE_DIV = 10.0
ONECYCLE_FINAL_DIV = 100.0


def class_counts(target: torch.Tensor | np.ndarray, task: str, num_outputs: int) -> np.ndarray | None:
    """Samples per class (single-label) or positives per label (multi-label); ``None`` for regression."""
    values = np.asarray(target)
    if task in ("binary", "multiclass"):
        return np.bincount(values.astype(np.int64), minlength=num_outputs)
    if task == "multilabel":
        return values.sum(0)
    return None


def loss_function(task: str, config: TrainConfig, counts: np.ndarray | None, n_samples: int | None = None) -> nn.Module:
    """The training loss for ``task`` with the config's class weighting and label smoothing.

    Args:
        counts: from :func:`class_counts` on the training targets (``None``: unweighted).
        n_samples: training samples, for multi-label positive weights (defaults to the
            largest count, a lower bound).
    """
    balanced = config.class_weighting == "balanced" and counts is not None
    if task == "regression":
        return nn.MSELoss()
    if task == "multilabel":
        pos_weight = None
        if balanced and counts is not None:
            pos = counts.astype(float)
            n = float(n_samples if n_samples is not None else max(pos.max(), 1.0))
            pos_weight = torch.tensor(np.clip((n - pos) / np.maximum(pos, 1), 1, 100), dtype=torch.float32)
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    weights = class_weights(counts, config.class_weighting)
    weight = None if weights is None else torch.tensor(weights, dtype=torch.float32)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)


def class_weights(counts: np.ndarray | None, class_weighting: str) -> np.ndarray | None:
    """Per-class loss weights of a single-label task (None for an unweighted loss).

    ``balanced`` weighs each class by ``N / (K * n_k)`` (inverse frequency). Post-fit
    calibration undoes exactly this prior shift (``medpredict.calibration.posthoc``).
    """
    if class_weighting != "balanced" or counts is None:
        return None
    safe = np.maximum(np.asarray(counts, dtype=float), 1.0)
    return safe.sum() / (len(safe) * safe)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Trainable parameters split into decayed (matrices, kernels) and undecayed (biases, norms)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over :func:`parameter_groups` at the config's peak learning rate."""
    return torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr)


def scheduler(
    optim: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule over ``total_steps`` optimiser steps (see the module docstring)."""
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optim,
            max_lr=config.lr,
            total_steps=max(total_steps, 2),
            pct_start=ONECYCLE_PCT_START,
            div_factor=ONECYCLE_DIV,
            final_div_factor=ONECYCLE_FINAL_DIV,
        )
    if config.schedule == "cosine":
        warm = max(1, total_steps // 20)
        return torch.optim.lr_scheduler.LambdaLR(
            optim,
            lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(total_steps, 1)))),
        )
    return torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 1.0)
