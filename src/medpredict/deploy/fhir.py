"""Predictions as FHIR R4 resources: ``RiskAssessment``, ``Observation`` and a transaction ``Bundle``.

Every resource is built as plain JSON data and then validated by the R4B models of
``fhir.resources`` (R4B is the R4 technical correction; ``RiskAssessment``, ``Observation``
and ``Bundle`` did not change between R4 and R4B; the package ships no plain R4 models),
so what leaves medpredict parses in an R4 server. The tests also check the R4 FHIRPath
invariants (obs-6, obs-7, ras-2, dom-2..dom-6, bdl-*) on everything written here.

What a receiving system needs to file a result:

* ``status`` is ``preliminary``: machine output that no clinician has verified (the
  DICOM SR says the same: PRELIMINARY/UNVERIFIED).
* ``subject`` is what the caller passes: built by :func:`patient_reference` from the DICOM
  Patient ID as a logical reference (``identifier`` with the hospital's identifier system),
  or a literal reference such as ``"Patient/123"`` when the caller maps Patient IDs.
* ``basis`` / ``derivedFrom`` name the imaging study by its DICOM Study Instance UID
  (:func:`study_reference`: identifier ``urn:dicom:uid`` | ``urn:oid:<UID>``), the way
  ``ImagingStudy.identifier`` carries it.
* Findings carry SNOMED CT codes where they are known, beside the model's own
  ``urn:medpredict:label`` codes (:mod:`medpredict.deploy.findings`, shared with the SR).
* :func:`prediction_resources` returns a ``transaction`` Bundle whose entries are
  conditional creates (``ifNoneExist`` on a stable identifier), so posting it twice files
  the result once.

Nothing in this module logs a patient identifier.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from medpredict.deploy.findings import Finding, finding_of, label_codes
from medpredict.errors import ConfigError, DataError, require_extra

if TYPE_CHECKING:
    from medpredict.bundle.identity import ModelIdentity

logger = logging.getLogger(__name__)

#: Coding systems of the model's own codes: observation kinds, per-class probabilities, uncertainty.
OBSERVATION_SYSTEM = "urn:medpredict:observation"
PROBABILITY_SYSTEM = "urn:medpredict:probability"
UNCERTAINTY_SYSTEM = "urn:medpredict:uncertainty"
MODEL_SYSTEM = "urn:medpredict:model"
#: How FHIR carries a DICOM UID as an identifier (ImagingStudy.identifier).
DICOM_UID_SYSTEM = "urn:dicom:uid"
RFC3986 = "urn:ietf:rfc:3986"
STATUS = "preliminary"
_INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
_UCUM = "http://unitsofmeasure.org"
_NO_PATIENT = {"display": "patient not identified by the sender"}

Reference = str | Mapping[str, Any]


def patient_reference(
    patient_id: str | None, *, system: str | None = None, mapping: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """The FHIR ``subject`` for a DICOM Patient ID.

    Args:
        patient_id: the DICOM PatientID (0010,0020); empty or None gives None.
        system: the identifier system under which the hospital's FHIR server knows that id
            (e.g. the MRN assigning authority, ``urn:oid:1.2.3.4``); gives a logical
            reference ``{"type": "Patient", "identifier": {...}}``.
        mapping: PatientID -> literal reference (``"Patient/123"``); used first when it
            holds the id.

    Raises:
        ConfigError: ``system`` is not an absolute URI, or a mapping value is not
            ``Patient/<id>`` or an absolute URL.
    """
    pid = str(patient_id or "").strip()
    if not pid:
        return None
    if mapping and pid in mapping:
        target = str(mapping[pid])
        if not (target.startswith("Patient/") or target.startswith(("http://", "https://", "urn:"))):
            raise ConfigError(f"The patient mapping gives '{target}'; use 'Patient/<id>' or an absolute URL.")
        return {"reference": target}
    if system is None:
        return None
    if ":" not in system:
        raise ConfigError(
            f"The patient identifier system '{system}' is not an absolute URI; use e.g. "
            "'urn:oid:1.2.3.4' or 'https://hospital.example/mrn'."
        )
    return {"type": "Patient", "identifier": {"system": system, "value": pid}}


def study_reference(study_uid: str) -> dict[str, Any]:
    """A logical reference to the ImagingStudy of ``study_uid`` (identifier ``urn:oid:<UID>``)."""
    return {
        "type": "ImagingStudy",
        "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"},
    }


def device_reference(identity: ModelIdentity) -> dict[str, Any]:
    """The model as a Device reference: its identity text, and name:version as identifier."""
    return {
        "type": "Device",
        "identifier": {"system": MODEL_SYSTEM, "value": f"{identity.name}:{identity.version}"},
        "display": identity.text(),
    }


def risk_assessment(
    prediction: Any,
    *,
    identity: ModelIdentity,
    positive_label: str | None = None,
    subject: Reference | None = None,
    basis: Sequence[Reference] = (),
    identifier: str | None = None,
    occurrence: str | None = None,
) -> dict[str, Any]:
    """A FHIR R4 ``RiskAssessment`` (status ``preliminary``) with one ``prediction`` per class.

    Args:
        prediction: a ``Prediction`` or its ``to_dict()``.
        identity: the model, recorded as the method and the performer.
        positive_label: the finding the decision is about (binary models).
        subject: a reference (``"Patient/123"``, or a dict from :func:`patient_reference`);
            without it a display-only placeholder.
        basis: what the prediction was made from (e.g. :func:`study_reference`).
        identifier: a stable identifier (``urn:uuid:…`` or any URI) for de-duplication.
        occurrence: ISO date-time; defaults to now (UTC).

    Raises:
        DataError: the prediction lacks probabilities, or the result is not valid FHIR.
    """
    finding = finding_of(prediction, positive_label, purpose="FHIR")
    data: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "text": _narrative(finding, identity),
        "status": STATUS,
        "method": {"text": identity.text()},
        "subject": _reference(subject) or dict(_NO_PATIENT),
        "occurrenceDateTime": occurrence or _now(),
        "performer": device_reference(identity),
        "prediction": [
            {
                "outcome": _concept(label),
                "probabilityDecimal": round(prob, 6),
                **({"rationale": _decision_text(finding)} if label == finding.decision else {}),
            }
            for label, prob in finding.probabilities.items()
        ],
        "note": [{"text": _decision_text(finding)}, {"text": "Decision support only; to be reviewed by a clinician."}],
    }
    if finding.numbers or finding.others:
        items = {**finding.numbers, **finding.others}
        data["note"].insert(1, {"text": "Uncertainty: " + ", ".join(f"{k} = {_text(v)}" for k, v in items.items())})
    if basis:
        data["basis"] = [_reference(ref) for ref in basis]
    if identifier:
        data["identifier"] = [{"system": RFC3986, "value": identifier}]
    return _validated("riskassessment:RiskAssessment", data)


def observation(
    prediction: Any,
    *,
    identity: ModelIdentity,
    positive_label: str | None = None,
    subject: Reference | None = None,
    derived_from: Sequence[Reference] = (),
    category: str = "imaging",
    identifier: str | None = None,
    issued: str | None = None,
) -> dict[str, Any]:
    """A FHIR R4 ``Observation`` (status ``preliminary``) whose value is the finding's probability.

    ``code`` names the measured quantity (the model-estimated probability of the finding,
    a model code); ``interpretation`` is ``POS``/``NEG`` for a binary decision at a
    threshold; components hold the decision (SNOMED CT + model code), each class
    probability and each uncertainty figure, each under a code other than ``code`` (R4
    invariant obs-7).

    Args:
        category: an observation-category code (``imaging``, ``exam``, ``laboratory``...).
        derived_from: the sources (e.g. :func:`study_reference`).
        Other arguments as in :func:`risk_assessment`.
    """
    finding = finding_of(prediction, positive_label, purpose="FHIR")
    components: list[dict[str, Any]] = [
        {
            "code": _model_code(OBSERVATION_SYSTEM, "decision", "Model decision at locked threshold"),
            "valueCodeableConcept": _concept(finding.decision),
        }
    ]
    components += [
        {"code": _model_code(PROBABILITY_SYSTEM, label, f"probability of {label}"), "valueQuantity": _unitless(prob)}
        for label, prob in finding.probabilities.items()
    ]
    components += [
        {"code": _model_code(UNCERTAINTY_SYSTEM, name, f"uncertainty: {name}"), "valueQuantity": _unitless(value)}
        for name, value in finding.numbers.items()
    ]
    components += [
        {"code": _model_code(UNCERTAINTY_SYSTEM, name, f"uncertainty: {name}"), **_component_value(value)}
        for name, value in finding.others.items()
    ]
    data: dict[str, Any] = {
        "resourceType": "Observation",
        "text": _narrative(finding, identity),
        "status": STATUS,
        "category": [{"coding": [{"system": _CATEGORY_SYSTEM, "code": category}]}],
        "code": _model_code(
            OBSERVATION_SYSTEM, f"probability-{finding.target}", f"Model-estimated probability of {finding.target}"
        ),
        "subject": _reference(subject) or dict(_NO_PATIENT),
        "issued": issued or _now(),
        "method": {"text": identity.text()},
        "device": device_reference(identity),
        "valueQuantity": {**_unitless(finding.score), "unit": "probability"},
        "component": components,
        "note": [{"text": _decision_text(finding) + " Decision support only; to be reviewed by a clinician."}],
    }
    if len(finding.probabilities) == 2 and finding.threshold is not None:
        code, text = ("POS", "Positive") if finding.positive else ("NEG", "Negative")
        data["interpretation"] = [{"coding": [{"system": _INTERPRETATION_SYSTEM, "code": code, "display": text}]}]
    if derived_from:
        data["derivedFrom"] = [_reference(ref) for ref in derived_from]
    if identifier:
        data["identifier"] = [{"system": RFC3986, "value": identifier}]
    return _validated("observation:Observation", data)


def transaction(resources: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Wrap resources in a FHIR R4 ``transaction`` Bundle (validated).

    Each entry is a ``POST`` of its resource type, conditional (``ifNoneExist``) on the
    resource's first identifier when it has one, so a resent bundle files nothing twice.
    """
    entries = []
    for resource in resources:
        request: dict[str, Any] = {"method": "POST", "url": resource["resourceType"]}
        ident = (resource.get("identifier") or [None])[0]
        if ident and ident.get("system") and ident.get("value"):
            request["ifNoneExist"] = f"identifier={ident['system']}|{ident['value']}"
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource, "request": request})
    data = {"resourceType": "Bundle", "type": "transaction", "timestamp": _now(), "entry": entries}
    return _validated("bundle:Bundle", data)


def prediction_resources(
    prediction: Any,
    *,
    identity: ModelIdentity,
    input_kind: str,
    positive_label: str | None = None,
    subject: Reference | None = None,
    study_uid: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The FHIR output for one prediction: a transaction ``Bundle`` of a ``RiskAssessment`` and an ``Observation``.

    Args:
        input_kind: ``image``/``table``/``fusion``: picks the observation category
            (``imaging`` for images, ``exam`` otherwise).
        study_uid: the DICOM Study Instance UID the prediction was made on (``basis`` and
            ``derivedFrom``).
        request_id: a stable id of this result (e.g. a hash of model version and SOP
            Instance UID); each resource's identifier is derived from it, so a resent bundle
            is recognised. A random one when None.
        Other arguments as in :func:`risk_assessment`.
    """
    category = "imaging" if input_kind == "image" else "exam"
    sources = [study_reference(study_uid)] if study_uid else []
    key = request_id or uuid.uuid4().hex
    common: dict[str, Any] = {"identity": identity, "positive_label": positive_label, "subject": subject}
    return transaction(
        [
            risk_assessment(prediction, basis=sources, identifier=_identifier(key, "RiskAssessment"), **common),
            observation(
                prediction,
                derived_from=sources,
                category=category,
                identifier=_identifier(key, "Observation"),
                **common,
            ),
        ]
    )


def _identifier(key: str, resource_type: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'urn:medpredict:result:{key}/{resource_type}')}"


def _validated(model_path: str, data: dict[str, Any]) -> dict[str, Any]:
    """Validate ``data`` with the R4B model class ``module:Class`` and return its JSON form.

    Raises:
        DataError: the resource does not satisfy the FHIR schema.
    """
    module_name, class_name = model_path.split(":")
    module = require_extra(f"fhir.resources.R4B.{module_name}", "pacs")
    cls = getattr(module, class_name)
    try:
        resource = cls.model_validate(data)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise DataError(f"The {class_name} built from this prediction is not valid FHIR R4: {exc}") from exc
    return dict(json.loads(resource.model_dump_json(exclude_none=True)))


def _reference(value: Reference | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {"reference": value} if value else None
    return dict(value)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _concept(label: str) -> dict[str, Any]:
    """A label as a CodeableConcept: SNOMED CT where known, and the model's own code."""
    return {
        "coding": [{"system": c.system, "code": c.value, "display": c.meaning} for c in label_codes(label)],
        "text": label,
    }


def _model_code(system: str, code: str, text: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": text}], "text": text}


def _decision_text(finding: Finding) -> str:
    if finding.threshold is None:
        return f"Decision '{finding.decision}'."
    return f"Decision '{finding.decision}' at the locked threshold {finding.threshold:g} on p({finding.target})."


def _narrative(finding: Finding, identity: ModelIdentity) -> dict[str, str]:
    """Generated narrative (dom-6): the decision and the probability, no patient data."""
    line = (
        f"AI result (preliminary, not verified by a clinician) from {identity.text()}: "
        f"{finding.decision}; p({finding.target}) = {finding.score:.3f}."
    )
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{html.escape(line)}</p></div>'}


def _unitless(value: float) -> dict[str, Any]:
    return {"value": round(float(value), 6), "system": _UCUM, "code": "1"}


def _component_value(value: Any) -> dict[str, Any]:
    """An Observation.component value[x] for a flag or anything else (e.g. a prediction set)."""
    if isinstance(value, bool):
        return {"valueBoolean": value}
    if isinstance(value, int | float):
        return {"valueQuantity": _unitless(value)}
    return {"valueString": _text(value)}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{float(value):.3f}"
    if isinstance(value, list | tuple | set):
        return "{" + ", ".join(str(v) for v in value) + "}"
    return str(value)
