"""What every trained classifier gets after training, fitted on its validation split only.

One path for image, record and fused models:

1. calibration — prior correction for the training class weights, then the calibrator
   (temperature / Platt) with the lowest cross-validated validation log-loss
   (:class:`~medpredict.calibration.posthoc.PostHocCalibrator`);
2. the operating threshold on the positive class, locked here (Youden's J by default);
3. class-conditional conformal prediction sets (:class:`~medpredict.calibration.conformal.SplitConformal`);
4. the input guard: a Mahalanobis out-of-distribution detector on the network's pooled
   features, fitted on training features with its threshold from validation
   (:class:`~medpredict.calibration.ood.MahalanobisDetector`).

The fields go into ``bundle.json`` (1-3) and ``input_guard.json`` (4); the
:class:`~medpredict.inference.predictor.Predictor` reads them back, so evaluation and every
deployed path apply exactly these.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from medpredict.calibration.conformal import SplitConformal
from medpredict.calibration.ood import MahalanobisDetector
from medpredict.calibration.posthoc import PostHocCalibrator
from medpredict.calibration.thresholds import ThresholdPicker
from medpredict.errors import ConfigError, DataError, did_you_mean

log = logging.getLogger(__name__)

#: Target coverage of the prediction sets is ``1 - ALPHA``.
ALPHA = 0.1


def post_fit(
    val_logits: torch.Tensor | np.ndarray,
    y_val: np.ndarray,
    task: str,
    labels: tuple[str, ...],
    *,
    class_weights: np.ndarray | None = None,
    positive_index: int = 1,
    alpha: float = ALPHA,
    seed: int = 0,
) -> tuple[dict[str, Any], np.ndarray]:
    """Fit calibration, the locked threshold and conformal sets on the validation split.

    Args:
        val_logits: raw network outputs ``(N, K)`` on validation.
        y_val: ``(N,)`` class indices.
        task: the run's task; only ``binary`` and ``multiclass`` get these fields.
        labels: class names (for the log).
        class_weights: the per-class loss weights training used (undone by the calibration).
        positive_index: the class a binary threshold applies to.
        alpha: conformal miss rate.
        seed: seed of the calibrator's cross-validation folds.

    Returns:
        The bundle fields ``calibration``, ``threshold``, ``conformal`` (None where not
        applicable) and the calibrated validation probabilities.
    """
    logits = np.asarray(val_logits.detach().cpu() if isinstance(val_logits, torch.Tensor) else val_logits)
    fields: dict[str, Any] = {"calibration": None, "threshold": None, "conformal": None}
    if task not in ("binary", "multiclass"):
        tensor = torch.as_tensor(logits)
        return fields, (torch.sigmoid(tensor) if task == "multilabel" else tensor).numpy()
    calibrator = PostHocCalibrator(class_weights=class_weights, seed=seed).fit(logits, y_val)
    probs = np.asarray(calibrator.transform(logits))
    fields["calibration"] = calibrator.to_dict()
    if task == "binary":
        try:
            outcome = (np.asarray(y_val) == positive_index).astype(int)
            picker = ThresholdPicker(method="youden").fit(outcome, probs[:, positive_index])
            fields["threshold"] = picker.to_dict()
        except DataError as exc:
            log.warning("No threshold fitted (%s); using 0.5.", exc)
    try:
        fields["conformal"] = SplitConformal(alpha=alpha, method="mondrian").fit(probs, y_val).to_dict()
    except DataError as exc:
        log.warning("No prediction sets for %s (%s).", list(labels), exc)
    return fields, probs


def resolve_positive(positive: str | None, labels: tuple[str, ...], task: str) -> int:
    """Index of the positive class of a binary task (``positive`` names it; default the second).

    Raises:
        ConfigError: ``positive`` is not one of ``labels``, or the task is not binary.
    """
    if positive is None:
        return 1
    if task != "binary":
        raise ConfigError(f"--positive applies to binary tasks; this task is {task} with classes {list(labels)}.")
    if positive not in labels:
        raise ConfigError(
            f"--positive '{positive}' is not a class of this data.{did_you_mean(positive, labels)} "
            f"Classes: {list(labels)}."
        )
    return labels.index(positive)


@torch.no_grad()
def pooled_features(
    model: nn.Module, images: torch.Tensor, *, batch_size: int = 256, index: np.ndarray | None = None
) -> np.ndarray | None:
    """``(N, D)`` pooled features of images ``(N, C, *size)`` (uint8, or float in [0, 1]).

    ``index`` selects rows (a sample of a large training set). Returns None when the model
    has no ``features`` method.
    """
    features_fn = getattr(model, "features", None)
    if features_fn is None:
        return None
    rows = torch.as_tensor(index) if index is not None else torch.arange(len(images))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(rows), batch_size):
        batch = images[rows[start : start + batch_size]]
        batch = batch.float().div(255.0) if batch.dtype == torch.uint8 else batch.float()
        chunks.append(features_fn(batch.to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(chunks).numpy() if chunks else None


def fit_input_guard(
    train_features: np.ndarray | None, y_train: np.ndarray, val_features: np.ndarray | None
) -> dict[str, Any] | None:
    """The fitted out-of-distribution detector as JSON, or None when features are missing or too few."""
    if train_features is None or val_features is None or len(val_features) < 10:
        return None
    y = np.asarray(y_train)
    labels = y.astype(np.int64) if y.ndim == 1 and np.issubdtype(y.dtype, np.integer) else np.zeros(len(y), np.int64)
    try:
        return MahalanobisDetector().fit(train_features, labels, val_features).to_dict()
    except DataError as exc:
        log.warning("No input guard fitted (%s).", exc)
        return None
