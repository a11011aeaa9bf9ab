"""Predictions as FHIR R4 resources: ``RiskAssessment``, ``Observation`` and a ``Bundle``.

Every resource is built as plain JSON data and then validated by the R4B models of
``fhir.resources`` (R4B is the R4 technical correction; ``RiskAssessment``, ``Observation``
and ``Bundle`` did not change between R4 and R4B), so what leaves medpredict parses in an
R4 server. The functions return the validated JSON as a ``dict``.

Patient identity is the caller's business: pass ``subject`` as a FHIR reference
(``"Patient/123"``) that the receiving system understands. Nothing in this module logs it.
"""

from __future__ import annotations

import datetime as _dt
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from medpredict.errors import DataError, require_extra
from medpredict.inference.predictor import prediction_dict

logger = logging.getLogger(__name__)

#: Coding system for model outputs; codes are the model's label names.
LABEL_SYSTEM = "urn:medpredict:label"
_INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"


def _reference(subject: str | None) -> dict[str, str]:
    if subject:
        return {"reference": subject}
    return {"display": "patient not identified by the sender"}


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _device(model_name: str, model_version: str) -> dict[str, str]:
    return {"display": f"medpredict model {model_name} version {model_version}"}


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
    import json

    return json.loads(resource.model_dump_json(exclude_none=True))


def risk_assessment(
    prediction: Any,
    *,
    model_name: str,
    model_version: str,
    subject: str | None = None,
    basis: Sequence[str] = (),
    request_id: str | None = None,
    occurrence: str | None = None,
) -> dict[str, Any]:
    """A FHIR R4 ``RiskAssessment`` with one ``prediction`` entry per class.

    Args:
        prediction: a ``Prediction`` or its ``to_dict()``.
        model_name / model_version: recorded as the method and performer.
        subject: FHIR reference of the patient, e.g. ``"Patient/123"``; without it the
            subject is a display-only placeholder.
        basis: references of what the prediction was made from (``"ImagingStudy/…"``,
            ``"Observation/…"``).
        request_id: stored as the resource identifier (``urn:uuid:`` form when a UUID).
        occurrence: ISO date-time; defaults to now (UTC).

    Raises:
        DataError: the prediction lacks probabilities, or the result is not valid FHIR.
    """
    p = prediction_dict(prediction, "FHIR")
    decided = str(p["label"])
    threshold = p.get("threshold")
    notes = [
        f"Decision '{decided}' at the locked threshold {threshold}."
        if threshold is not None
        else f"Decision '{decided}'."
    ]
    uncertainty = p.get("uncertainty") or {}
    if uncertainty:
        notes.append("Uncertainty: " + ", ".join(f"{k} = {_text(v)}" for k, v in uncertainty.items()))
    notes.append("Decision support only; to be reviewed by a clinician.")
    data: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": str(uuid.uuid4()),
        "status": "final",
        "subject": _reference(subject),
        "occurrenceDateTime": occurrence or _now(),
        "method": {"text": f"{model_name} {model_version}"},
        "performer": _device(model_name, model_version),
        "prediction": [
            {
                "outcome": {"coding": [{"system": LABEL_SYSTEM, "code": str(label)}], "text": str(label)},
                "probabilityDecimal": round(float(prob), 6),
                **({"qualitativeRisk": {"text": "predicted"}} if str(label) == decided else {}),
            }
            for label, prob in p["probabilities"].items()
        ],
        "note": [{"text": text} for text in notes],
    }
    if basis:
        data["basis"] = [{"reference": ref} for ref in basis]
    if request_id:
        data["identifier"] = [{"system": "urn:ietf:rfc:3986", "value": _urn(request_id)}]
    return _validated("riskassessment:RiskAssessment", data)


def observation(
    prediction: Any,
    *,
    model_name: str,
    model_version: str,
    positive_label: str | None = None,
    subject: str | None = None,
    derived_from: Sequence[str] = (),
    category: str = "imaging",
    request_id: str | None = None,
    issued: str | None = None,
) -> dict[str, Any]:
    """A FHIR R4 ``Observation`` whose value is the positive-class probability.

    ``interpretation`` is ``POS``/``NEG`` for binary predictions (the locked-threshold
    decision); every class probability and each uncertainty figure is a ``component``.

    Args:
        positive_label: the class whose probability is the value; defaults to the
            predicted label.
        category: an observation-category code (``imaging``, ``exam``, ``laboratory``,
            ``survey``...).
        derived_from: references of the sources (``"ImagingStudy/…"``).
        Other arguments as in :func:`risk_assessment`.
    """
    p = prediction_dict(prediction, "FHIR")
    probs = {str(k): float(v) for k, v in p["probabilities"].items()}
    target = positive_label or str(p["label"])
    if target not in probs:
        raise DataError(f"positive_label '{target}' is not one of the predicted labels {list(probs)}.")
    components = [
        {
            "code": {"coding": [{"system": LABEL_SYSTEM, "code": label}], "text": f"probability of {label}"},
            "valueQuantity": _probability(prob),
        }
        for label, prob in probs.items()
    ]
    for name, value in (p.get("uncertainty") or {}).items():
        components.append({"code": {"text": f"uncertainty: {name}"}, **_component_value(value)})
    data: dict[str, Any] = {
        "resourceType": "Observation",
        "id": str(uuid.uuid4()),
        "status": "final",
        "category": [{"coding": [{"system": _CATEGORY_SYSTEM, "code": category}]}],
        "code": {
            "coding": [{"system": LABEL_SYSTEM, "code": target}],
            "text": f"Model-estimated probability of {target}",
        },
        "subject": _reference(subject),
        "issued": issued or _now(),
        "method": {"text": f"{model_name} {model_version}"},
        "device": _device(model_name, model_version),
        "valueQuantity": _probability(probs[target]),
        "component": components,
        "note": [
            {
                "text": f"Predicted '{p['label']}' at threshold {p.get('threshold')}. "
                "Decision support only; to be reviewed by a clinician."
            }
        ],
    }
    if len(probs) == 2 and p.get("threshold") is not None:
        positive = str(p["label"]) == target
        code, text = ("POS", "Positive") if positive else ("NEG", "Negative")
        data["interpretation"] = [
            {"coding": [{"system": _INTERPRETATION_SYSTEM, "code": code, "display": text}]}
        ]
    if derived_from:
        data["derivedFrom"] = [{"reference": ref} for ref in derived_from]
    if request_id:
        data["identifier"] = [{"system": "urn:ietf:rfc:3986", "value": _urn(request_id)}]
    return _validated("observation:Observation", data)


def results_bundle(resources: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Wrap resources in a FHIR R4 ``Bundle`` of type ``collection`` (validated)."""
    data = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "collection",
        "timestamp": _now(),
        "entry": [
            {"fullUrl": f"urn:uuid:{r['id']}", "resource": r} if r.get("id") else {"resource": r}
            for r in resources
        ],
    }
    return _validated("bundle:Bundle", data)


def prediction_resources(
    prediction: Any,
    *,
    model_name: str,
    model_version: str,
    input_kind: str,
    positive_label: str | None = None,
    subject: str | None = None,
    sources: Sequence[str] = (),
    request_id: str | None = None,
) -> dict[str, Any]:
    """The FHIR output for one prediction: a ``Bundle`` with a ``RiskAssessment`` and an ``Observation``.

    ``input_kind`` (``image``/``table``/``fusion``) picks the observation category:
    ``imaging`` for images, ``exam`` for records and fused inputs.
    """
    category = "imaging" if input_kind == "image" else "exam"
    common: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "subject": subject,
        "request_id": request_id,
    }
    return results_bundle(
        [
            risk_assessment(prediction, basis=sources, **common),
            observation(
                prediction, positive_label=positive_label, derived_from=sources, category=category, **common
            ),
        ]
    )


def _probability(value: float) -> dict[str, Any]:
    return {
        "value": round(float(value), 6),
        "unit": "probability",
        "system": "http://unitsofmeasure.org",
        "code": "1",
    }


def _component_value(value: Any) -> dict[str, Any]:
    """An Observation.component value[x] for a number, flag, or list (e.g. a conformal set)."""
    if isinstance(value, bool):
        return {"valueBoolean": value}
    if isinstance(value, int | float):
        # Observation.component has no valueDecimal in R4: a unitless Quantity instead.
        return {
            "valueQuantity": {
                "value": round(float(value), 6),
                "system": "http://unitsofmeasure.org",
                "code": "1",
            }
        }
    return {"valueString": _text(value)}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{float(value):.3f}"
    if isinstance(value, list | tuple | set):
        return "{" + ", ".join(str(v) for v in value) + "}"
    return str(value)


def _urn(request_id: str) -> str:
    try:
        return f"urn:uuid:{uuid.UUID(str(request_id))}"
    except ValueError:
        return f"urn:medpredict:request:{request_id}"
