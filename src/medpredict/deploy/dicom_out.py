"""Predictions as DICOM objects that go back into the source study, built with highdicom.

* :func:`structured_report` writes a Comprehensive SR holding a TID 1500 Measurement
  Report: the finding as a qualitative evaluation (the label at the locked threshold),
  each class probability as a measurement, and the model as the observing device and the
  algorithm identification. It references the source image.
* :func:`overlay_capture` writes a Secondary Capture image of the heat-map overlay with a
  caption burned in (the picture says what it is and that it is machine-made).

Both copy patient and study attributes from the source dataset (highdicom does this), so
the PACS files them in the same study; the overlay also copies the source's Body Part
Examined and Laterality, and its Patient Orientation when the source has a usable one.
Findings are coded as in FHIR (:mod:`medpredict.deploy.findings`): SNOMED CT where known,
else the private scheme ``99MEDPRED``, which the SR declares in its Coding Scheme
Identification Sequence. The model is named by its
:class:`~medpredict.bundle.identity.ModelIdentity` (``name vVERSION (architecture)``).
Nothing here logs patient attributes.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from medpredict.deploy.findings import LABEL_SCHEME, finding_of, label_codes
from medpredict.errors import DataError, require_extra

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from medpredict.bundle.identity import ModelIdentity

logger = logging.getLogger(__name__)

MANUFACTURER = "medpredict"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
#: SeriesDescription of every SR this module writes starts with this, then the model identity.
SR_DESCRIPTION_PREFIX = "AI result "


def identity_text(identity: ModelIdentity, limit: int = 64) -> str:
    """``identity.text(limit)`` in the DICOM default repertoire: a shortened name ends in "..." (not "…")."""
    text = identity.text(limit)
    return identity.text(limit - 2).replace("…", "...") if "…" in text else text


def sr_series_description(identity: ModelIdentity) -> str:
    """The SR's SeriesDescription (DICOM LO, 64 characters): how a PACS node recognises its own results."""
    return SR_DESCRIPTION_PREFIX + identity_text(identity, 64 - len(SR_DESCRIPTION_PREFIX))


#: Type 2 attributes of the Patient and General Study modules: required to be present, allowed to
#: be empty. Archives do hold images without them; highdicom copies them into every result.
_TYPE2_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
)


def _check_source(source: Dataset) -> Dataset:
    """The source, refused without its UIDs, with absent type 2 attributes added empty (a copy).

    Raises:
        DataError: a UID the results are linked by is missing.
    """
    missing = [
        k
        for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
        if k not in source
    ]
    if missing:
        raise DataError(f"The source DICOM dataset lacks {missing}; results cannot be linked to its study.")
    absent = [k for k in _TYPE2_COPIED if k not in source]
    if not absent:
        return source
    from pydicom.dataset import Dataset as _Dataset

    completed = _Dataset()  # the same elements in a new dataset: the caller's stays as it was
    for element in source:
        completed.add(element)
    if hasattr(source, "file_meta"):
        completed.file_meta = source.file_meta
    for keyword in absent:
        setattr(completed, keyword, "")
    return completed


def _code(label: str) -> Any:
    """The DICOM code of a label: SNOMED CT where known, else the model's own (``99MEDPRED``)."""
    require_extra("highdicom", "pacs")
    import highdicom as hd

    first = label_codes(label)[0]
    return hd.sr.CodedConcept(value=first.value, scheme_designator=first.scheme, meaning=first.meaning)


def _own(value: str, meaning: str) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value=value[:16], scheme_designator=LABEL_SCHEME, meaning=meaning[:64])


def _coding_schemes() -> list[Any]:
    """The Coding Scheme Identification item that declares the private scheme (PS3.3 C.12.1.1.5)."""
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return [
        CodingSchemeIdentificationItem(
            designator=LABEL_SCHEME,
            name="medpredict model outputs",
            responsible_organization=MANUFACTURER,
        )
    ]


def structured_report(
    source: Dataset,
    prediction: Any,
    *,
    identity: ModelIdentity,
    positive_label: str | None = None,
    series_number: int = SR_SERIES_NUMBER,
) -> Dataset:
    """A Comprehensive SR with the prediction for ``source``, in the source's study.

    Args:
        source: the image the prediction was made on (a pydicom ``Dataset``; pixel data
            not needed).
        prediction: a ``Prediction`` or its ``to_dict()`` (see
            :func:`medpredict.deploy.findings.finding_of`).
        identity: the model, recorded as device observer and algorithm.
        positive_label: the finding the report is about; defaults to the predicted label.
        series_number: series number of the new SR series.

    Returns:
        The SR as a ``pydicom`` ``Dataset`` (a highdicom ``ComprehensiveSR``), marked
        complete and unverified (PRELIMINARY): machine output not reviewed by a clinician.

    Raises:
        DataError: the source lacks UIDs or the prediction lacks probabilities.
    """
    require_extra("highdicom", "pacs")
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = _check_source(source)
    finding = finding_of(prediction, positive_label, purpose="DICOM output")
    text = identity_text(identity)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(),
            name=identity.name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=text,
        ),
    )
    algorithm = hd.sr.AlgorithmIdentification(name=identity.name[:64], version=identity.version[:64])
    no_units = hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")

    def measurement(value: str, meaning: str, number: float) -> Any:
        return hd.sr.Measurement(
            name=_own(value, meaning), value=round(float(number), 6), unit=no_units, algorithm_id=algorithm
        )

    measurements = [
        measurement(f"p-{label}", f"Probability of {label}", prob) for label, prob in finding.probabilities.items()
    ]
    measurements += [measurement(f"u-{name}", f"Uncertainty ({name})", v) for name, v in finding.numbers.items()]
    if finding.threshold is not None:
        measurements.append(measurement("threshold", "Decision threshold", finding.threshold))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{identity.name[:40]} prediction"),
        finding_type=_code(finding.target),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=_own("decision", "Model decision at locked threshold"),
                value=_code(finding.decision),
            )
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=hd.sr.CodedConcept(value="363679005", scheme_designator="SCT", meaning="Imaging"),
        imaging_measurements=[group],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # person-name warnings quote the source's names
        sr = hd.sr.ComprehensiveSR(
            evidence=[source],
            content=report,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=False,  # machine output, not verified by a clinician
            series_description=sr_series_description(identity),
            coding_schemes=_coding_schemes(),
        )
    logger.debug("Built SR for one image: finding '%s', decision '%s'", finding.target, finding.decision)
    return sr


def overlay_capture(
    source: Dataset,
    overlay_rgb: np.ndarray,
    *,
    caption: str,
    series_number: int = SC_SERIES_NUMBER,
    max_side: int = 1024,
) -> Dataset:
    """A Secondary Capture image of ``overlay_rgb`` with ``caption`` burned in, in the source's study.

    The picture keeps the source's row and column directions (it is shrunk, and a caption
    band is added below), so a usable Patient Orientation of the source is copied; without
    one (it is optional for CR) Patient Orientation is left empty, as Type 2 allows.
    Body Part Examined and Laterality are copied from the source when it has them (Laterality
    stays absent otherwise: an unpaired part such as the chest must not have it).

    Args:
        source: the image the overlay was made from.
        overlay_rgb: ``(H, W, 3)`` uint8, e.g. from :func:`medpredict.explain.maps.overlay`.
        caption: text drawn in a band under the picture (no patient identifiers).
        series_number: series number of the new series.
        max_side: the picture is shrunk (aspect kept) so its longer side is at most this.

    Raises:
        DataError: the overlay is not ``(H, W, 3)`` uint8, or the source lacks UIDs.
    """
    require_extra("highdicom", "pacs")
    import highdicom as hd

    source = _check_source(source)
    rgb = np.asarray(overlay_rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise DataError(f"The overlay must be an (H, W, 3) uint8 RGB array, got {rgb.shape} {rgb.dtype}.")
    pixels = captioned(rgb, caption, max_side=max_side)
    orientation = _orientation(source)
    laterality = str(source.get("Laterality") or "").strip().upper()
    with warnings.catch_warnings():
        # highdicom warns about odd person names copied from the source, quoting the name;
        # that would put a (referring physician's) name into logs.
        warnings.simplefilter("ignore", UserWarning)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=pixels,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            # highdicom needs an orientation for PATIENT; an unknown one is emptied below
            patient_orientation=orientation or ("L", "F"),
            laterality=laterality if laterality in ("L", "R") else None,
        )
    if orientation is None:
        sc["PatientOrientation"].value = None  # Type 2: present and empty when the direction is unknown
    body_part = str(source.get("BodyPartExamined") or "").strip()
    if body_part:
        sc.BodyPartExamined = body_part
    sc.SeriesDescription = "AI heat map overlay"
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = "Model explanation heat map blended over the source image"
    ref = _referenced_image(source)
    sc.SourceImageSequence = [ref]
    return sc


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation if it is two single-direction values highdicom accepts."""
    import highdicom as hd

    values = [str(v).strip().upper() for v in (source.get("PatientOrientation") or ())]
    allowed = {v.value for v in hd.PatientOrientationValuesBiped}
    if len(values) == 2 and all(v in allowed for v in values):
        return values[0], values[1]
    return None


def _referenced_image(source: Dataset) -> Dataset:
    from pydicom.dataset import Dataset as PydicomDataset

    ref = PydicomDataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return ref


def captioned(rgb: np.ndarray, caption: str, *, max_side: int = 1024) -> np.ndarray:
    """Shrink ``rgb`` to ``max_side`` and add a black band with ``caption`` in white under it."""
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.fromarray(rgb, mode="RGB")
    scale = min(1.0, max_side / max(picture.size))
    if scale < 1.0:
        picture = picture.resize(
            (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
            Image.Resampling.LANCZOS,
        )
    font_size = max(10, picture.width // 40)
    font = ImageFont.load_default(size=font_size)
    lines = _wrap(caption, max(20, int(picture.width / (font_size * 0.6))))
    band = (font_size + 6) * len(lines) + 8
    canvas = Image.new("RGB", (picture.width, picture.height + band), (0, 0, 0))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((6, picture.height + 4 + i * (font_size + 6)), line, fill=(255, 255, 255), font=font)
    return np.asarray(canvas, dtype=np.uint8)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width=width) or [""]


def caption_for(prediction: Any, *, identity: ModelIdentity, positive_label: str | None = None) -> str:
    """The standard burned-in caption: model, decision, probability of the finding, threshold, a caveat.

    ``positive_label`` is the finding whose probability is shown (default: the decided label).
    """
    finding = finding_of(prediction, positive_label, purpose="DICOM output")
    parts = [f"AI ({identity_text(identity)}): {finding.decision}", f"p({finding.target})={finding.score:.2f}"]
    if finding.threshold is not None:
        parts.append(f"threshold {finding.threshold:.2f}")
    return ", ".join(parts) + ". Heat map: regions that drove the prediction. Decision support only."
