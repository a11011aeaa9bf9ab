"""DICOM output: SR and secondary capture land in the source study, read back, and pass dciodvfy."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pytest

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from medpredict.bundle.identity import ModelIdentity  # noqa: E402
from medpredict.deploy import dicom_out  # noqa: E402
from medpredict.errors import DataError  # noqa: E402

IDENTITY = ModelIdentity("pneumonia-cnn", "3f2a9c1b7d0e", "tiny-resnet")
MODEL = {"identity": IDENTITY}
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "MRN-0042"


@pytest.fixture
def source(tmp_path) -> Dataset:
    """A small synthetic chest CR, written to disk and read back like a real file."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        PATIENT_NAME,
        PATIENT_ID,
        "19700101",
        "F",
    )
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "101010", "1", "A1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CR", 1, 1
    ds.PatientOrientation = ["L", "F"]
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(64 * 64, dtype=np.uint16) % 4096).tobytes()
    path = tmp_path / "cr.dcm"
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


@pytest.fixture
def prediction() -> dict:
    return {
        "probabilities": {"normal": 0.3, "pneumonia": 0.7},
        "label": "pneumonia",
        "score": 0.7,
        "threshold": 0.45,
        "uncertainty": {"entropy": 0.88, "conformal_set": ["pneumonia"], "refer_to_clinician": False},
    }


def _roundtrip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def test_sr_is_in_the_source_study_and_holds_the_result(source, prediction):
    sr = _roundtrip(dicom_out.structured_report(source, prediction, positive_label="pneumonia", **MODEL))
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.PatientID == source.PatientID  # filed under the same patient by the PACS
    assert sr.Modality == "SR"
    text = str(sr)
    assert "Probability of pneumonia" in text and "Probability of normal" in text
    values = _numeric_values(sr)
    assert values["Probability of pneumonia"] == pytest.approx(0.7)
    assert values["Probability of normal"] == pytest.approx(0.3)
    assert values["Decision threshold"] == pytest.approx(0.45)
    assert values["Uncertainty (entropy)"] == pytest.approx(0.88)
    assert IDENTITY.text() in text
    # the evidence points at the source image
    refs = [
        r.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for se in s.ReferencedSeriesSequence
        for r in se.ReferencedSOPSequence
    ]
    assert refs == [source.SOPInstanceUID]


def test_a_source_without_its_empty_type2_attributes_still_gets_results(source, prediction):
    # Archives hold images whose type 2 patient/study attributes are absent, not empty.
    for keyword in ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "AccessionNumber", "StudyID"):
        if keyword in source:
            delattr(source, keyword)
    sr = _roundtrip(dicom_out.structured_report(source, prediction, positive_label="pneumonia", **MODEL))
    sc = dicom_out.overlay_capture(source, np.zeros((32, 32, 3), np.uint8), caption="x")
    assert sr.PatientBirthDate == "" and sc.StudyInstanceUID == source.StudyInstanceUID
    assert "PatientBirthDate" not in source  # the caller's dataset is left as it was


def test_sr_finding_is_the_label_at_the_threshold(source, prediction):
    prediction["label"] = "normal"
    sr = dicom_out.structured_report(source, prediction, positive_label="pneumonia", **MODEL)
    parsed = hd.sr.srread(io.BytesIO(_bytes(sr)))
    groups = parsed.content.get_image_measurement_groups()
    assert len(groups) == 1
    group = groups[0]
    evaluations = group.get_qualitative_evaluations()
    assert [(e.value.value, e.value.scheme_designator) for e in evaluations] == [("17621005", "SCT")]  # Normal
    assert (group.finding_type.value, group.finding_type.scheme_designator) == ("233604007", "SCT")  # Pneumonia


def test_secondary_capture_is_in_the_study_with_caption(source):
    heat = np.zeros((64, 64, 3), np.uint8)
    heat[:32, :32] = (255, 0, 0)
    caption = dicom_out.caption_for(
        {"probabilities": {"a": 0.1, "b": 0.9}, "label": "b", "score": 0.9, "threshold": 0.5}, **MODEL
    )
    assert caption.startswith(f"AI ({IDENTITY.text()}): b, p(b)=0.90")
    sc = _roundtrip(dicom_out.overlay_capture(source, heat, caption=caption))
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert sc.PhotometricInterpretation == "RGB" and sc.BurnedInAnnotation == "YES"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    pixels = sc.pixel_array
    assert pixels.shape[1] == 64 and pixels.shape[0] > 64  # caption band below the picture
    assert tuple(pixels[5, 5]) == (255, 0, 0)
    assert pixels[64:].max() > 200  # white caption text in the band
    assert "threshold 0.50" in caption


def test_model_identity_is_plain_text_and_the_private_scheme_is_declared(source, prediction):
    long_name = ModelIdentity(
        "a-very-long-run-name-for-pneumonia-on-portable-chest-films-v2", "3f2a9c1b7d0e", "densenet121"
    )
    sr = _roundtrip(dicom_out.structured_report(source, prediction, identity=long_name))
    assert sr.SeriesDescription == dicom_out.sr_series_description(long_name)
    assert len(sr.SeriesDescription) <= 64 and sr.SeriesDescription.endswith("v3f2a9c1b7d0e (densenet121)")
    texts = [str(e.value) for e in sr.iterall() if e.VR in ("LO", "SH", "UT", "ST") and isinstance(e.value, str)]
    assert not [t for t in texts if "{" in t or "'name'" in t]  # no Python dict anywhere
    assert dicom_out.identity_text(long_name) in texts  # the device observer's model name
    assert all(t.isascii() for t in texts)  # the default repertoire: no "…"
    schemes = {item.CodingSchemeDesignator: item for item in sr.CodingSchemeIdentificationSequence}
    assert schemes["99MEDPRED"].CodingSchemeName
    used = {e.value for e in sr.iterall() if e.keyword == "CodingSchemeDesignator"}
    assert "99MEDPRED" in used and "SCT" in used


@pytest.mark.parametrize(
    ("orientation", "laterality", "body_part", "expected_orientation"),
    [
        (["L", "F"], None, "CHEST", ["L", "F"]),  # a usable orientation is copied
        (None, None, "CHEST", None),  # absent (optional for CR): left empty, no failure
        (["PL", "F"], None, "CHEST", None),  # oblique values highdicom cannot take: left empty
        (["R", "F"], "R", "EXTREMITY", ["R", "F"]),  # a paired part keeps its laterality
    ],
)
def test_overlay_copies_orientation_laterality_and_body_part(source, orientation, laterality, body_part,
                                                             expected_orientation):
    if orientation is None:
        del source.PatientOrientation
    else:
        source.PatientOrientation = orientation
    if laterality:
        source.Laterality = laterality
    source.BodyPartExamined = body_part
    sc = _roundtrip(dicom_out.overlay_capture(source, np.zeros((32, 32, 3), np.uint8), caption="x"))
    assert "PatientOrientation" in sc
    assert (list(sc.PatientOrientation) if sc.PatientOrientation else None) == expected_orientation
    assert sc.get("Laterality") == laterality  # absent for the chest (unpaired)
    assert sc.BodyPartExamined == body_part


DCIODVFY = shutil.which("dciodvfy")


def _dciodvfy(ds: Dataset, path) -> tuple[list[str], list[str]]:
    ds.save_as(path, enforce_file_format=True)
    run = subprocess.run([DCIODVFY or "dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


@pytest.mark.dciodvfy
@pytest.mark.parametrize(
    ("name", "drop"),
    [
        ("RG1_J2KI.dcm", ()),  # chest CR, PA
        ("RG1_J2KI.dcm", ("PatientOrientation",)),  # the same without PatientOrientation
        ("RG3_J2KR.dcm", ()),  # tibia CR with Laterality R (a paired part)
    ],
)
def test_dciodvfy_finds_no_error_in_the_sr_and_the_overlay(shared_data, tmp_path, prediction, name, drop):
    real = pydicom.dcmread(shared_data / "dicom" / "pydicom_data" / name, stop_before_pixels=True)
    for keyword in drop:
        delattr(real, keyword)
    sr = dicom_out.structured_report(real, prediction, positive_label="pneumonia", **MODEL)
    sc = dicom_out.overlay_capture(real, np.zeros((64, 64, 3), np.uint8), caption="AI overlay")
    for label, ds in (("sr", sr), ("sc", sc)):
        errors, warnings = _dciodvfy(ds, tmp_path / f"{label}.dcm")
        assert errors == [], (label, errors)
        # what remains: the private 99MEDPRED codes are "unrecognised defined terms" (they are declared), and
        # the source's retired-form Referring Physician's Name copied into the new objects
        assert all("99MEDPRED" in w or "Referring Physician" in w for w in warnings), (label, warnings)


def test_large_overlays_are_shrunk(source):
    big = np.zeros((3000, 1500, 3), np.uint8)
    out = dicom_out.captioned(big, "x", max_side=1000)
    assert out.shape[1] == 500 and out.shape[0] > 1000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"drop": "StudyInstanceUID"}, "lacks"),  # cannot link to a study
        ({"prediction": {"label": "x"}}, "needs 'probabilities'"),  # not a prediction
        ({"positive": "covid"}, "not one of the predicted labels"),  # unknown finding
    ],
)
def test_bad_inputs_are_refused(source, prediction, change, message):
    if "drop" in change:
        del source[change["drop"]]
    with pytest.raises(DataError, match=message):
        dicom_out.structured_report(
            source, change.get("prediction", prediction), positive_label=change.get("positive"), **MODEL
        )


def test_overlay_must_be_rgb_uint8(source):
    with pytest.raises(DataError, match=r"\(H, W, 3\) uint8"):
        dicom_out.overlay_capture(source, np.zeros((8, 8), np.float32), caption="x")


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _numeric_values(sr: Dataset) -> dict[str, float]:
    """Walk the SR content tree and collect NUM items by concept meaning."""
    found: dict[str, float] = {}

    def walk(items):
        for item in items:
            if item.get("ValueType") == "NUM":
                name = item.ConceptNameCodeSequence[0].CodeMeaning
                found[name] = float(item.MeasuredValueSequence[0].NumericValue)
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    return found
