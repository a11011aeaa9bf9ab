"""FHIR R4 output: every resource passes the R4 invariants (FHIRPath) and the fhir.resources R4B models.

``fhir.resources`` 8 ships R5 as its default models, and R4B and STU3 beside them; R4B is the
R4 technical correction (Observation, RiskAssessment and Bundle did not change), so the R4B
models are the R4 schema check. The invariants are the R4 specification's FHIRPath
expressions, evaluated with ``fhirpathpy`` and its R4 model (for choice types like value[x]).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fhir.resources.R4B")
fhirpathpy = pytest.importorskip("fhirpathpy")

from fhir.resources.R4B.bundle import Bundle  # noqa: E402
from fhir.resources.R4B.observation import Observation  # noqa: E402
from fhir.resources.R4B.riskassessment import RiskAssessment  # noqa: E402
from fhirpathpy.models import models  # noqa: E402

from medpredict.bundle.identity import ModelIdentity  # noqa: E402
from medpredict.deploy import fhir  # noqa: E402
from medpredict.errors import ConfigError, DataError  # noqa: E402

IDENTITY = ModelIdentity("pneumonia-cnn", "3f2a9c1b7d0e", "tiny-resnet")
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
UCUM = "http://unitsofmeasure.org"

#: R4 invariants, (key, where: a resource type, "domain" for DomainResources (not Bundle) or "*" for every
#: resource, FHIRPath expression). dom-3 is written
#: without its trailing ``.trace('unmatched', id)``, which only logs. ele-1 (every element has a value or
#: children) uses hasValue(), which fhirpathpy does not implement: :func:`_empty_elements` checks it.
INVARIANTS = [
    ("dom-2", "domain", "contained.contained.empty()"),
    ("dom-3", "domain", "contained.where((('#'+id in (%resource.descendants().reference | "
     "%resource.descendants().as(canonical) | %resource.descendants().as(uri) | %resource.descendants().as(url))) "
     "or descendants().where(reference = '#').exists() or descendants().where(as(canonical) = '#').exists() "
     "or descendants().where(as(canonical) = '#').exists()).not()).empty()"),
    ("dom-4", "domain", "contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()"),
    ("dom-5", "domain", "contained.meta.security.empty()"),
    ("dom-6", "domain", "text.`div`.exists()"),
    ("ref-1", "*", "descendants().reference.all($this.startsWith('#').not() or "
     "($this.substring(1) in %rootResource.contained.id))"),
    ("qty-3", "*", "descendants().ofType(Quantity).all(code.empty() or system.exists())"),
    ("obs-3", "Observation", "referenceRange.all(low.exists() or high.exists() or text.exists())"),
    ("obs-6", "Observation", "dataAbsentReason.empty() or value.empty()"),
    ("obs-7", "Observation", "value.empty() or component.code.where(coding.intersect(%resource.code.coding)"
     ".exists()).empty()"),
    ("ras-1", "RiskAssessment", "prediction.probability.ofType(Range).all((low.empty() or ((low.code = '%') and "
     "(low.system = %ucum))) and (high.empty() or ((high.code = '%') and (high.system = %ucum))))"),
    ("ras-2", "RiskAssessment", "prediction.all(probability is decimal implies (probability as decimal) <= 100)"),
    ("bdl-1", "Bundle", "total.empty() or (type = 'searchset') or (type = 'history')"),
    ("bdl-2", "Bundle", "entry.search.empty() or (type = 'searchset')"),
    ("bdl-3", "Bundle", "entry.all(request.exists() = (%resource.type = 'batch' or %resource.type = 'transaction' "
     "or %resource.type = 'history'))"),
    ("bdl-4", "Bundle", "entry.all(response.exists() = (%resource.type = 'batch-response' or "
     "%resource.type = 'transaction-response' or %resource.type = 'history'))"),
    ("bdl-5", "Bundle", "entry.all(resource.exists() or request.exists() or response.exists())"),
    ("bdl-7", "Bundle", "(type = 'history') or entry.where(fullUrl.exists()).select(fullUrl&resource.meta.versionId)"
     ".isDistinct()"),
    ("bdl-8", "Bundle", "entry.all(fullUrl.contains('/_history/').not())"),
    ("bdl-9", "Bundle", "type = 'document' implies (identifier.system.exists() and identifier.value.exists())"),
    ("bdl-10", "Bundle", "type = 'document' implies (timestamp.hasValue())"),
    ("bdl-11", "Bundle", "type = 'document' implies entry.first().resource.is(Composition)"),
    ("bdl-12", "Bundle", "type = 'message' implies entry.first().resource.is(MessageHeader)"),
]
R4B_MODELS = {"Bundle": Bundle, "Observation": Observation, "RiskAssessment": RiskAssessment}


def broken_invariants(resource: dict) -> list[str]:
    """The keys of the R4 invariants ``resource`` breaks (and, for a Bundle, those its entries break)."""
    broken = []
    kind = resource["resourceType"]
    context = {"resource": resource, "rootResource": resource, "ucum": UCUM}
    for key, applies_to, expression in INVARIANTS:
        if applies_to not in ("*", kind) and not (applies_to == "domain" and kind != "Bundle"):
            continue
        if kind == "Bundle" and key == "bdl-10":
            continue  # hasValue() again: only for documents, and this bundle is not one (bdl-9 covers it)
        if fhirpathpy.evaluate(resource, expression, context, models["r4"]) != [True]:
            broken.append(key)
    broken += [f"ele-1 at {path}" for path in _empty_elements(resource)]
    for entry in resource.get("entry", []) if kind == "Bundle" else []:
        broken += [f"{entry['resource']['resourceType']}: {k}" for k in broken_invariants(entry["resource"])]
    return broken


def _empty_elements(value, path="") -> list[str]:
    """Paths of JSON elements with neither a value nor children (R4 ele-1)."""
    if value is None or value == "" or value == [] or value == {}:
        return [path or "/"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _empty_elements(v, f"{path}/{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _empty_elements(v, f"{path}/{i}")]
    return []


def assert_valid_r4(resource: dict) -> None:
    """R4 invariants hold, the R4B model parses it, and no Observation/RiskAssessment is final."""
    assert broken_invariants(resource) == []
    R4B_MODELS[resource["resourceType"]].model_validate(resource)
    resources = [e["resource"] for e in resource.get("entry", [])] or [resource]
    assert all(r["status"] == "preliminary" for r in resources if "status" in r)


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


def _bundle(prediction, **kwargs) -> dict:
    subject = fhir.patient_reference("MRN-0042", system="urn:oid:1.2.3.4.5")
    return fhir.prediction_resources(
        prediction, identity=IDENTITY, input_kind="image", positive_label="pneumonia", subject=subject,
        study_uid=STUDY_UID, request_id="abc", **kwargs,
    )


def test_the_pacs_bundle_is_a_valid_r4_transaction(prediction):
    out = _bundle(_PredictionLike(prediction))
    assert_valid_r4(out)
    assert out["type"] == "transaction"
    requests = [e["request"] for e in out["entry"]]
    assert [r["url"] for r in requests] == ["RiskAssessment", "Observation"] and {r["method"] for r in requests} == {
        "POST"
    }
    risk, obs = (e["resource"] for e in out["entry"])
    for resource, request in zip((risk, obs), requests, strict=True):
        ident = resource["identifier"][0]
        assert request["ifNoneExist"] == f"identifier={ident['system']}|{ident['value']}"  # a resend files once
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in out["entry"])
    json.dumps(out)  # plain JSON, ready to POST


def test_subject_study_and_codes(prediction):
    risk, obs = (e["resource"] for e in _bundle(prediction)["entry"])
    for resource in (risk, obs):
        assert resource["subject"] == {
            "type": "Patient", "identifier": {"system": "urn:oid:1.2.3.4.5", "value": "MRN-0042"}
        }
        assert resource["status"] == "preliminary"
    study = {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"}}
    assert risk["basis"] == [study] and obs["derivedFrom"] == [study]
    outcomes = {p["outcome"]["text"]: p["outcome"]["coding"] for p in risk["prediction"]}
    assert {"system": "http://snomed.info/sct", "code": "233604007", "display": "Pneumonia"} in outcomes["pneumonia"]
    assert {"system": "http://snomed.info/sct", "code": "17621005", "display": "Normal"} in outcomes["normal"]
    assert all(any(c["system"] == "urn:medpredict:label" for c in codings) for codings in outcomes.values())
    decision = next(c for c in obs["component"] if c["code"]["coding"][0]["code"] == "decision")
    assert decision["valueCodeableConcept"]["coding"][0]["code"] == "233604007"
    assert obs["valueQuantity"]["value"] == 0.8 and obs["interpretation"][0]["coding"][0]["code"] == "POS"
    assert obs["device"]["display"] == IDENTITY.text() and obs["method"] == {"text": IDENTITY.text()}


@pytest.mark.parametrize(
    ("label", "interpretation"),
    [
        ("pneumonia", "POS"),  # decided positive at the threshold
        ("normal", "NEG"),  # decided negative
    ],
)
def test_observation_value_and_interpretation(prediction, label, interpretation):
    prediction["label"] = label
    res = fhir.observation(prediction, identity=IDENTITY, positive_label="pneumonia",
                           derived_from=[fhir.study_reference(STUDY_UID)])
    assert_valid_r4(res)
    assert res["valueQuantity"]["value"] == 0.8 and res["valueQuantity"]["code"] == "1"
    assert res["interpretation"][0]["coding"][0]["code"] == interpretation
    values = {c["code"]["text"]: c for c in res["component"]}
    assert values["uncertainty: conformal_set"]["valueString"] == "{pneumonia}"
    assert values["uncertainty: refer_to_clinician"]["valueBoolean"] is False
    assert values["probability of normal"]["valueQuantity"]["value"] == 0.2
    assert res["category"][0]["coding"][0]["code"] == "imaging"


def test_record_models_get_the_exam_category_and_a_placeholder_subject(prediction):
    out = fhir.prediction_resources(prediction, identity=IDENTITY, input_kind="table", positive_label="pneumonia")
    assert_valid_r4(out)
    obs = out["entry"][1]["resource"]
    assert obs["category"][0]["coding"][0]["code"] == "exam"
    assert "reference" not in obs["subject"] and obs["subject"]["display"]


def test_a_patient_mapping_gives_a_literal_reference():
    mapping = {"MRN-0042": "Patient/123"}
    assert fhir.patient_reference("MRN-0042", mapping=mapping) == {"reference": "Patient/123"}
    assert fhir.patient_reference("MRN-9999", mapping=mapping) is None  # not mapped, no system
    assert fhir.patient_reference("", system="urn:oid:1.2") is None
    with pytest.raises(ConfigError, match="not an absolute URI"):
        fhir.patient_reference("MRN-0042", system="MRN")
    with pytest.raises(ConfigError, match="Patient/<id>"):
        fhir.patient_reference("MRN-0042", mapping={"MRN-0042": "123"})


@pytest.mark.parametrize(
    ("breakage", "invariant"),
    [
        # the Observation of the first release: code repeated in a component, with a value
        (lambda b: b["entry"][1]["resource"]["component"][1]["code"].update(
            b["entry"][1]["resource"]["code"]), "Observation: obs-7"),
        (lambda b: b["entry"][1]["resource"].update(dataAbsentReason={"text": "x"}), "Observation: obs-6"),
        (lambda b: b["entry"][0]["resource"]["prediction"][0].update(probabilityDecimal=140), "RiskAssessment: ras-2"),
        (lambda b: b["entry"][0].pop("request"), "bdl-3"),  # a transaction entry without its request
        (lambda b: b["entry"][1]["resource"].pop("text"), "Observation: dom-6"),
        (lambda b: b["entry"][1]["resource"]["valueQuantity"].pop("system"), "Observation: qty-3"),
        (lambda b: b["entry"][1]["resource"].update(subject={"reference": "#p1"}), "Observation: ref-1"),
        (lambda b: b["entry"][1]["resource"].update(note=[{"text": ""}]), "ele-1"),
    ],
)
def test_the_invariant_checks_catch_broken_resources(prediction, breakage, invariant):
    out = _bundle(prediction)
    breakage(out)
    assert any(invariant in broken for broken in broken_invariants(out))


def test_bad_inputs_are_refused(prediction):
    with pytest.raises(DataError, match="needs 'probabilities'"):
        fhir.risk_assessment({"label": "x"}, identity=IDENTITY)
    with pytest.raises(DataError, match="not one of the predicted labels"):
        fhir.observation(prediction, identity=IDENTITY, positive_label="covid")
    with pytest.raises(DataError, match="not valid FHIR R4"):
        fhir.risk_assessment(prediction, identity=IDENTITY, occurrence="yesterday-ish")


def test_the_prediction_contract_fields_become_components():
    """A CasePrediction.to_dict(): the prediction set, the referral and the input verdict are reported."""
    case = {
        "label": "pneumonia", "decision": "pneumonia", "score": 0.55, "threshold": 0.45, "positive_label": "pneumonia",
        "probabilities": {"normal": 0.45, "pneumonia": 0.55}, "prediction_set": ["normal", "pneumonia"],
        "set_coverage": 0.9, "refer": True, "referral_reasons": ["the prediction set is not exactly the decision"],
        "input_check": {"status": "ok", "reasons": []}, "uncertainty": {"entropy": 0.99},
    }
    out = _bundle(case)
    assert_valid_r4(out)
    values = {c["code"]["text"]: c for c in out["entry"][1]["resource"]["component"]}
    assert values["uncertainty: prediction_set"]["valueString"] == "{normal, pneumonia}"
    assert values["uncertainty: refer_to_clinician"]["valueBoolean"] is True
    assert "not exactly the decision" in values["uncertainty: referral_reasons"]["valueString"]
    assert values["uncertainty: input_check"]["valueString"] == "ok"
