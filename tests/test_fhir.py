"""FHIR R4 output: resources validate against the R4B models and carry the prediction."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fhir.resources.R4B")

from fhir.resources.R4B.bundle import Bundle  # noqa: E402
from fhir.resources.R4B.observation import Observation  # noqa: E402
from fhir.resources.R4B.riskassessment import RiskAssessment  # noqa: E402

from medpredict.deploy import fhir  # noqa: E402
from medpredict.errors import DataError  # noqa: E402

MODEL = {"model_name": "pneumonia-cnn", "model_version": "1.2.0"}


@pytest.fixture
def prediction() -> dict:
    return {
        "probabilities": {"normal": 0.2, "pneumonia": 0.8},
        "label": "pneumonia",
        "score": 0.8,
        "threshold": 0.45,
        "uncertainty": {"entropy": 0.72, "conformal_set": ["pneumonia"], "refer_to_clinician": False},
    }


class _PredictionLike:
    """Anything with to_dict(), like medpredict.inference.predictor.Prediction."""

    def __init__(self, values: dict) -> None:
        self.values = values

    def to_dict(self) -> dict:
        return self.values


def test_risk_assessment_is_valid_r4_with_one_entry_per_class(prediction):
    res = fhir.risk_assessment(
        prediction,
        subject="Patient/abc",
        basis=["ImagingStudy/s1"],
        request_id="6f1c1d1e-8a4b-4a57-9a53-0b6b9d7f0c11",
        **MODEL,
    )
    parsed = RiskAssessment.model_validate(res)  # the R4(B) schema accepts it
    assert parsed.subject.reference == "Patient/abc"
    probs = {p["outcome"]["text"]: p["probabilityDecimal"] for p in res["prediction"]}
    assert probs == {"normal": 0.2, "pneumonia": 0.8}
    flagged = [p["outcome"]["text"] for p in res["prediction"] if "qualitativeRisk" in p]
    assert flagged == ["pneumonia"]
    assert res["method"]["text"] == "pneumonia-cnn 1.2.0"
    assert res["identifier"][0]["value"] == "urn:uuid:6f1c1d1e-8a4b-4a57-9a53-0b6b9d7f0c11"
    assert res["basis"] == [{"reference": "ImagingStudy/s1"}]
    assert any("0.45" in n["text"] for n in res["note"])


@pytest.mark.parametrize(
    ("label", "interpretation"),
    [
        ("pneumonia", "POS"),  # decided positive at the threshold
        ("normal", "NEG"),  # decided negative
    ],
)
def test_observation_value_and_interpretation(prediction, label, interpretation):
    prediction["label"] = label
    res = fhir.observation(prediction, positive_label="pneumonia", derived_from=["ImagingStudy/s1"], **MODEL)
    Observation.model_validate(res)
    assert res["valueQuantity"]["value"] == 0.8
    assert res["valueQuantity"]["code"] == "1"
    assert res["interpretation"][0]["coding"][0]["code"] == interpretation
    texts = {c["code"]["text"] for c in res["component"]}
    assert {
        "probability of normal",
        "probability of pneumonia",
        "uncertainty: entropy",
        "uncertainty: conformal_set",
        "uncertainty: refer_to_clinician",
    } == texts
    values = {c["code"]["text"]: c for c in res["component"]}
    assert values["uncertainty: conformal_set"]["valueString"] == "{pneumonia}"
    assert values["uncertainty: refer_to_clinician"]["valueBoolean"] is False
    assert res["category"][0]["coding"][0]["code"] == "imaging"


def test_bundle_for_a_record_model_uses_exam_category(prediction):
    out = fhir.prediction_resources(
        _PredictionLike(prediction), input_kind="table", positive_label="pneumonia", **MODEL
    )
    bundle = Bundle.model_validate(out)
    assert bundle.type == "collection"
    kinds = [e["resource"]["resourceType"] for e in out["entry"]]
    assert kinds == ["RiskAssessment", "Observation"]
    assert out["entry"][1]["resource"]["category"][0]["coding"][0]["code"] == "exam"
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in out["entry"])
    json.dumps(out)  # plain JSON, ready to POST


def test_without_subject_a_placeholder_is_used(prediction):
    res = fhir.risk_assessment(prediction, **MODEL)
    assert "reference" not in res["subject"] and res["subject"]["display"]


def test_bad_inputs_are_refused(prediction):
    with pytest.raises(DataError, match="needs 'probabilities'"):
        fhir.risk_assessment({"label": "x"}, **MODEL)
    with pytest.raises(DataError, match="not one of the predicted labels"):
        fhir.observation(prediction, positive_label="covid", **MODEL)
    with pytest.raises(DataError, match="not valid FHIR R4"):
        fhir.risk_assessment(prediction, occurrence="yesterday-ish", **MODEL)
