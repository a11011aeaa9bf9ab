"""Predictions as DICOM objects that go back into the source study, built with highdicom.

* :func:`structured_report` writes a Comprehensive SR holding a TID 1500 Measurement
  Report: the finding as a qualitative evaluation (the label at the locked threshold),
  each class probability as a measurement, and the model as the observing device and the
  algorithm identification. It references the source image.
* :func:`overlay_capture` writes a Secondary Capture image of the heat-map overlay with a
  caption burned in (the picture says what it is and that it is machine-made).

Both copy patient and study attributes from the source dataset (highdicom does this), so
the PACS files them in the same study. Nothing here logs those attributes.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from medpredict.errors import DataError, require_extra
from medpredict.inference.predictor import prediction_dict

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

MANUFACTURER = "medpredict"
#: Coding scheme designator for model labels (private, as DICOM allows with a "99" prefix).
LABEL_SCHEME = "99MEDPRED"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902


def _check_source(source: Dataset) -> None:
    missing = [
        k
        for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
        if k not in source
    ]
    if missing:
        raise DataError(f"The source DICOM dataset lacks {missing}; results cannot be linked to its study.")


def _label_code(label: str) -> Any:
    require_extra("highdicom", "pacs")
    import highdicom as hd

    # CodeValue is at most 16 characters; longer labels keep their text as the meaning.
    value = label if len(label) <= 16 else label[:16]
    return hd.sr.CodedConcept(value=value, scheme_designator=LABEL_SCHEME, meaning=label)


def structured_report(
    source: Dataset,
    prediction: Any,
    *,
    model_name: str,
    model_version: str,
    positive_label: str | None = None,
    series_number: int = SR_SERIES_NUMBER,
) -> Dataset:
    """A Comprehensive SR with the prediction for ``source``, in the source's study.

    Args:
        source: the image the prediction was made on (a pydicom ``Dataset``; pixel data
            not needed).
        prediction: a ``Prediction`` or its ``to_dict()``: ``probabilities``, ``label``,
            optionally ``score``, ``threshold``, ``uncertainty``.
        model_name / model_version: recorded as device observer and algorithm.
        positive_label: the finding the report is about; defaults to the predicted label.
        series_number: series number of the new SR series.

    Returns:
        The SR as a ``pydicom`` ``Dataset`` (a highdicom ``ComprehensiveSR``).

    Raises:
        DataError: the source lacks UIDs or the prediction lacks probabilities.
    """
    require_extra("highdicom", "pacs")
    import highdicom as hd
    from pydicom.sr.codedict import codes

    _check_source(source)
    p = prediction_dict(prediction, "DICOM output")
    probs = {str(k): float(v) for k, v in p["probabilities"].items()}
    finding = positive_label or str(p["label"])
    if finding not in probs:
        raise DataError(f"positive_label '{finding}' is not one of the predicted labels {list(probs)}.")

    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(),
            name=model_name,
            manufacturer_name=MANUFACTURER,
            model_name=f"{model_name} {model_version}",
        ),
    )
    algorithm = hd.sr.AlgorithmIdentification(name=model_name[:64], version=str(model_version)[:64])
    no_units = hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
    measurements = [
        hd.sr.Measurement(
            name=hd.sr.CodedConcept(
                value=f"p-{label}"[:16], scheme_designator=LABEL_SCHEME, meaning=f"Probability of {label}"
            ),
            value=round(prob, 6),
            unit=no_units,
            algorithm_id=algorithm,
        )
        for label, prob in probs.items()
    ]
    for name, value in (p.get("uncertainty") or {}).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue  # sets and flags (conformal set, referral) stay out of the numeric report
        measurements.append(
            hd.sr.Measurement(
                name=hd.sr.CodedConcept(
                    value=f"u-{name}"[:16], scheme_designator=LABEL_SCHEME, meaning=f"Uncertainty ({name})"
                ),
                value=round(float(value), 6),
                unit=no_units,
                algorithm_id=algorithm,
            )
        )
    if p.get("threshold") is not None:
        measurements.append(
            hd.sr.Measurement(
                name=hd.sr.CodedConcept(
                    value="threshold", scheme_designator=LABEL_SCHEME, meaning="Decision threshold"
                ),
                value=float(p["threshold"]),
                unit=no_units,
                algorithm_id=algorithm,
            )
        )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{model_name} prediction"),
        finding_type=_label_code(finding),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=hd.sr.CodedConcept(
                    value="decision",
                    scheme_designator=LABEL_SCHEME,
                    meaning="Model decision at locked threshold",
                ),
                value=_label_code(str(p["label"])),
            )
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=hd.sr.CodedConcept(value="363679005", scheme_designator="SCT", meaning="Imaging"),
        imaging_measurements=[group],
    )
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
        series_description=f"AI result {model_name} {model_version}"[:64],
    )
    logger.info("Built SR for one image: finding '%s', label '%s'", finding, p["label"])
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

    _check_source(source)
    rgb = np.asarray(overlay_rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise DataError(f"The overlay must be an (H, W, 3) uint8 RGB array, got {rgb.shape} {rgb.dtype}.")
    pixels = captioned(rgb, caption, max_side=max_side)
    orientation = tuple(source.get("PatientOrientation") or ()) or ("", "")
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
            patient_orientation=orientation if len(orientation) == 2 else ("", ""),
        )
    sc.SeriesDescription = "AI heat map overlay"
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = "Model explanation heat map blended over the source image"
    ref = _referenced_image(source)
    sc.SourceImageSequence = [ref]
    return sc


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


def caption_for(prediction: Any, *, model_name: str, model_version: str) -> str:
    """The standard burned-in caption: model, decision, probability, threshold, and a caveat."""
    p = prediction_dict(prediction, "DICOM output")
    score = p.get("score")
    parts = [f"AI ({model_name} {model_version}): {p['label']}"]
    if score is not None:
        parts.append(f"p={float(score):.2f}")
    if p.get("threshold") is not None:
        parts.append(f"threshold {float(p['threshold']):.2f}")
    return ", ".join(parts) + ". Heat map: regions that drove the prediction. Decision support only."
