"""Tests for medpredict.evaluation.decision_curve."""

from __future__ import annotations

import numpy as np
import pytest

from medpredict.errors import ConfigError, DataError
from medpredict.evaluation.decision_curve import decision_curve


def test_hand_computed_net_benefit() -> None:
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.3, 0.6, 0.1, 0.2])
    out = decision_curve(y, p, thresholds=[0.25, 0.5])
    # pt=0.25: treat 0.9, 0.3, 0.6 -> TP 2, FP 1 -> 2/5 - 1/5 * (1/3)
    assert out["net_benefit_model"][0] == pytest.approx(0.4 - 0.2 / 3)
    # pt=0.5: treat 0.9, 0.6 -> TP 1, FP 1 -> 1/5 - 1/5
    assert out["net_benefit_model"][1] == pytest.approx(0.0)
    assert out["net_benefit_all"][1] == pytest.approx(0.4 - 0.6)
    assert out["net_benefit_none"] == [0.0, 0.0]


def test_informative_model_beats_both_policies_over_a_range() -> None:
    rng = np.random.default_rng(0)
    risk = rng.uniform(0, 1, 4000)
    y = (rng.random(4000) < risk).astype(int)
    out = decision_curve(y, risk)
    assert out["useful_range"] is not None
    lo, hi = out["useful_range"]
    assert lo < 0.1 and hi > 0.9
    # a random score is never better than the better of treat-all and treat-none
    noise = decision_curve(y, rng.random(4000))
    best_policy = np.maximum(noise["net_benefit_all"], 0.0)
    assert np.mean(np.array(noise["net_benefit_model"]) <= best_policy + 0.02) > 0.95


def test_errors() -> None:
    with pytest.raises(ConfigError, match="strictly between"):
        decision_curve([0, 1], [0.2, 0.8], thresholds=[0.0, 0.5])
    with pytest.raises(DataError, match="0/1"):
        decision_curve([0, 2], [0.2, 0.8])
