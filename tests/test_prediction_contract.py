"""The one prediction contract: decisions, sets, referrals and their reasons, per case."""

from __future__ import annotations

import numpy as np

from medpredict.bundle.identity import ModelIdentity
from medpredict.calibration.conformal import SplitConformal
from medpredict.inference.contract import (
    REASON_EMPTY,
    REASON_OOD,
    REASON_SET,
    DecisionRule,
    InputCheck,
    decide,
    display_source,
)

IDENTITY = ModelIdentity("pneumonia-demo", "3f2a9c1b7d0e", "tiny-resnet", "3f2a9c1b7d0e" + "0" * 52)


def _rule(threshold: float = 0.3) -> DecisionRule:
    conformal = SplitConformal(alpha=0.1)
    conformal.qhat_, conformal.n_classes_, conformal.n_val_ = [0.6, 0.8], 2, 100  # class 0 iff p0>=0.4, 1 iff p1>=0.2
    return DecisionRule(("normal", "pneumonia"), "binary", threshold, 1, conformal, IDENTITY)


def test_each_case_is_referred_exactly_when_its_set_is_not_its_decision() -> None:
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.75, 0.25], [0.1, 0.9]])
    cases = decide(_rule(), probs)
    # p1=0.10: set {normal}, decision normal -> no referral
    assert cases[0].prediction_set == ("normal",) and cases[0].decision == "normal" and not cases[0].refer
    # p1=0.50: both classes plausible -> referral
    assert cases[1].prediction_set == ("normal", "pneumonia") and cases[1].refer
    assert cases[1].referral_reasons == (REASON_SET,)
    # p1=0.25 >= threshold 0.3? no -> normal; set {normal, pneumonia} -> referral
    assert cases[2].decision == "normal" and cases[2].refer
    assert cases[3].prediction_set == ("pneumonia",) and not cases[3].refer
    for case in cases:
        assert case.refer == (case.prediction_set != (case.decision,))


def test_a_decision_outside_its_set_and_an_empty_set_are_referred() -> None:
    rule = _rule(threshold=0.15)  # decides pneumonia from p1 >= 0.15
    conformal = rule.conformal
    conformal.qhat_ = [0.6, 0.7]  # pneumonia in the set only from p1 >= 0.3
    outside = decide(rule, np.array([[0.82, 0.18]]))[0]
    assert outside.decision == "pneumonia" and outside.prediction_set == ("normal",)
    assert outside.refer and outside.referral_reasons == (REASON_SET,)
    conformal.qhat_ = [0.3, 0.3]  # neither class from 0.3 to 0.7
    empty = decide(rule, np.array([[0.5, 0.5]]))[0]
    assert empty.prediction_set == () and empty.referral_reasons == (REASON_EMPTY,)


def test_unusual_input_is_answered_and_referred_with_its_reason() -> None:
    check = InputCheck(status="unusual", reasons=("score 99 > 20",), ood_score=99.0, ood_threshold=20.0)
    case = decide(_rule(), np.array([[0.95, 0.05]]), checks=[check])[0]
    assert case.decision == "normal" and case.refer and case.referral_reasons == (REASON_OOD,)
    as_dict = case.to_dict()
    assert as_dict["input_check"]["status"] == "unusual"
    assert as_dict["model"]["text"] == "pneumonia-demo v3f2a9c1b7d0e (tiny-resnet)"
    assert as_dict["positive_label"] == "pneumonia" and as_dict["threshold"] == 0.3


def test_sources_are_file_names_never_folders() -> None:
    assert display_source("/data/Doe^Jane/MRN-123456/chest.dcm") == "chest.dcm"
    assert display_source("/data/x/pneumoniamnist.npz::test_images/5") == "pneumoniamnist.npz::test_images/5"
    assert display_source(np.zeros((1, 4, 4))) is None
    cases = decide(_rule(), np.array([[0.9, 0.1]]), sources=["/home/ward3/Doe^Jane.png"])
    assert cases[0].source == "Doe^Jane.png"
