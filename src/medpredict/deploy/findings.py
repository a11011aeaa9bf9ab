"""What one prediction says, and the codes it is written with: the one mapping SR and FHIR share.

:func:`finding_of` turns a prediction (today ``Prediction.to_dict()``; tomorrow the
per-case result of :mod:`medpredict.inference`) into a :class:`Finding`, the fields the
DICOM SR (:mod:`medpredict.deploy.dicom_out`) and the FHIR resources
(:mod:`medpredict.deploy.fhir`) write. Keeping that mapping in one function means the two
outputs cannot disagree, and a change of the prediction contract touches one place.

:func:`label_codes` names a label in the codes both outputs use: a SNOMED CT concept where
one is known for certain (:data:`SNOMED_CT`), and always the model's own code
(``99MEDPRED`` in DICOM, ``urn:medpredict:label`` in FHIR) beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medpredict.errors import DataError
from medpredict.inference.predictor import prediction_dict

#: SNOMED CT concepts for model label names (compared lower-case). Only codes known for
#: certain are listed; any other label is written with the model's own code alone.
SNOMED_CT: dict[str, tuple[str, str]] = {
    "pneumonia": ("233604007", "Pneumonia"),
    "normal": ("17621005", "Normal"),
}
SNOMED_SYSTEM = "http://snomed.info/sct"
#: FHIR system and DICOM coding scheme designator of the model's own label codes.
LABEL_SYSTEM = "urn:medpredict:label"
LABEL_SCHEME = "99MEDPRED"


@dataclass(frozen=True)
class Code:
    """One code: ``value`` in the DICOM scheme ``scheme`` / the FHIR ``system``, with its ``meaning``."""

    value: str
    scheme: str
    system: str
    meaning: str


@dataclass(frozen=True)
class Finding:
    """The fields of one prediction that go into an SR and into FHIR.

    Attributes:
        probabilities: label -> calibrated probability, in the model's label order.
        decision: the label decided at the locked threshold (or the most probable).
        target: the finding the report is about (the positive class of a binary model).
        score: the probability of ``target``.
        threshold: the locked threshold, or None.
        numbers: numeric uncertainty figures (name -> value), e.g. normalised entropy.
        others: the other uncertainty entries (prediction set, referral flag) as given.
    """

    probabilities: dict[str, float]
    decision: str
    target: str
    score: float
    threshold: float | None
    numbers: dict[str, float] = field(default_factory=dict)
    others: dict[str, Any] = field(default_factory=dict)

    @property
    def positive(self) -> bool:
        """True when the decision is the target finding."""
        return self.decision == self.target


def finding_of(prediction: Any, positive_label: str | None = None, *, purpose: str = "a report") -> Finding:
    """The :class:`Finding` of ``prediction`` (a ``Prediction`` or its ``to_dict()``).

    Args:
        positive_label: the finding reported on; defaults to the decided label.
        purpose: named in the error message (e.g. ``"FHIR"``).

    Raises:
        DataError: no probabilities, or ``positive_label`` is not one of the labels.
    """
    values = prediction_dict(prediction, purpose)
    probabilities = {str(k): float(v) for k, v in values["probabilities"].items()}
    if not probabilities:
        raise DataError(f"A prediction for {purpose} needs class probabilities; this one has none (regression?).")
    decision = str(values["label"])
    target = positive_label or decision
    if target not in probabilities:
        raise DataError(f"positive_label '{target}' is not one of the predicted labels {list(probabilities)}.")
    numbers: dict[str, float] = {}
    others: dict[str, Any] = {}
    for name, value in (values.get("uncertainty") or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            numbers[str(name)] = float(value)
        else:
            others[str(name)] = value
    # the per-case fields of the prediction contract (medpredict.inference.contract.CasePrediction)
    if values.get("set_coverage") is not None:
        others["prediction_set"] = list(values.get("prediction_set") or [])
    if values.get("refer") is not None:
        others["refer_to_clinician"] = bool(values["refer"])
    if values.get("referral_reasons"):
        others["referral_reasons"] = "; ".join(str(r) for r in values["referral_reasons"])
    check = values.get("input_check")
    if isinstance(check, dict) and check.get("status"):
        others["input_check"] = str(check["status"])
    threshold = values.get("threshold")
    return Finding(
        probabilities=probabilities,
        decision=decision,
        target=target,
        score=probabilities[target],
        threshold=None if threshold is None else float(threshold),
        numbers=numbers,
        others=others,
    )


def label_codes(label: str) -> list[Code]:
    """The codes of a label: its SNOMED CT concept first where known, then the model's own code.

    The model's own code value is the label cut to 16 characters (DICOM SH); the meaning
    keeps the whole label.
    """
    own = Code(value=label[:16], scheme=LABEL_SCHEME, system=LABEL_SYSTEM, meaning=label)
    known = SNOMED_CT.get(label.strip().lower())
    if known is None:
        return [own]
    return [Code(value=known[0], scheme="SCT", system=SNOMED_SYSTEM, meaning=known[1]), own]
