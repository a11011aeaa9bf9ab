"""Decision-curve analysis: net benefit of acting on the model against simple policies.

At a threshold probability ``pt`` a clinician accepts treating ``(1 - pt) / pt``
healthy patients to find one patient with the disease. Net benefit counts true
positives per patient, minus false positives weighted by ``pt / (1 - pt)``
(Vickers & Elkin 2006). The model is useful at ``pt`` where its net benefit beats
both "treat all" and "treat none" (which is 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medpredict.errors import ConfigError, DataError


def decision_curve(y: Any, p: Any, thresholds: Any = None) -> dict[str, Any]:
    """Net benefit of the model, treat-all and treat-none over threshold probabilities.

    Args:
        y: ``(N,)`` 0/1 outcomes.
        p: ``(N,)`` predicted risk of outcome 1 (or ``(N, 2)`` probabilities).
        thresholds: threshold probabilities strictly inside (0, 1); default
            ``np.linspace(0.01, 0.99, 99)``.

    Returns:
        ``{thresholds, net_benefit_model, net_benefit_all, net_benefit_none,
        prevalence, n, useful_range}``; ``useful_range`` is ``[lo, hi]`` of the
        thresholds where the model beats both policies, or ``None`` when it never does.

    Raises:
        DataError: shapes differ or outcomes are not 0/1.
        ConfigError: a threshold outside (0, 1).
    """
    y_arr = np.asarray(y)
    p_arr = np.asarray(p, dtype=np.float64)
    if p_arr.ndim == 2 and p_arr.shape[1] == 2:
        p_arr = p_arr[:, 1]
    if y_arr.ndim != 1 or p_arr.shape != y_arr.shape or y_arr.size == 0:
        raise DataError(f"y and p must be non-empty (N,) arrays; got shapes {y_arr.shape} and {p_arr.shape}.")
    if not np.all(np.isin(y_arr, (0, 1))):
        raise DataError(f"y must hold 0/1 outcomes; got values {np.unique(y_arr).tolist()[:6]}.")
    grid = np.linspace(0.01, 0.99, 99) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    if grid.ndim != 1 or np.any((grid <= 0) | (grid >= 1)):
        raise ConfigError("Decision-curve thresholds must lie strictly between 0 and 1.")
    n = y_arr.size
    positive = y_arr == 1
    treat = p_arr[None, :] >= grid[:, None]
    tp = (treat & positive).sum(axis=1) / n
    fp = (treat & ~positive).sum(axis=1) / n
    odds = grid / (1.0 - grid)
    prevalence = float(positive.mean())
    model = tp - fp * odds
    treat_all = prevalence - (1.0 - prevalence) * odds
    useful = np.flatnonzero((model > treat_all + 1e-12) & (model > 1e-12))
    return {
        "thresholds": grid.tolist(),
        "net_benefit_model": model.tolist(),
        "net_benefit_all": treat_all.tolist(),
        "net_benefit_none": [0.0] * grid.size,
        "prevalence": prevalence,
        "n": int(n),
        "useful_range": [float(grid[useful[0]]), float(grid[useful[-1]])] if useful.size else None,
    }
