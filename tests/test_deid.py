"""DICOM de-identification (basic profile of PS3.15 Annex E): nothing identifying survives anywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from fixtures_images import SHARED_DATA, write_dicom  # noqa: E402
from medpredict.deploy.deid import EMPTY, REMOVE, deidentify, deidentify_file  # noqa: E402
from medpredict.errors import DataError  # noqa: E402

# Fake identifiers, each distinctive enough that a substring scan finds it wherever it hides.
SECRETS = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN-123456",
    "PatientBirthDate": "19800101",
    "OtherPatientIDs": "ALT-998877",
    "OtherPatientNames": "Roe^Janet",
    "PatientAddress": "12 Elm Street Springfield",
    "PatientTelephoneNumbers": "555-0199",
    "InstitutionName": "St Example Hospital",
    "InstitutionAddress": "1 Hospital Way Shelbyville",
    "ReferringPhysicianName": "House^Gregory",
    "PerformingPhysicianName": "Quinn^Michaela",
    "OperatorsName": "Tech^Tara",
    "AccessionNumber": "ACC-55501",
    "StudyID": "STUDY-7788",
    "StudyDate": "20240229",
    "StudyTime": "101112",
    "StationName": "XRAYROOM7",
    "DeviceSerialNumber": "SN-4242-XYZ",
    "PatientComments": "lives with daughter Alice",
    "StudyDescription": "CHEST for Jane Doe",
    "IssuerOfPatientID": "HOSPITAL-MRN-ISSUER",
    "MedicalRecordLocator": "SHELF-B-19",
}
PRIVATE_SECRET = "PRIVATE-VENDOR-NOTE-42"
NESTED_SECRET = "Nested^Physician"


def _identified(path: Path) -> Path:
    """A synthetic CR with every identifier above filled, a private tag and a nested sequence."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    pixels = (np.arange(64 * 64) % 4096).reshape(64, 64).astype(np.uint16)
    write_dicom(path, pixels, Modality="CR", **SECRETS)
    ds = pydicom.dcmread(path)
    ds.add_new(0x00091010, "LO", PRIVATE_SECRET)  # a private tag (odd group)
    item = Dataset()
    item.ReferringPhysicianName = NESTED_SECRET
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    item.ReferencedSOPClassUID = ds.SOPClassUID
    ds.ReferencedStudySequence = Sequence([item])
    ds.save_as(path)
    return path


def _all_values(ds) -> list[str]:
    """Every element value as text, recursing into sequences and File Meta."""
    values: list[str] = []
    for elem in ds.iterall():
        if elem.VR != "SQ" and elem.tag != 0x7FE00010:
            values.append(str(elem.value))
    values.extend(str(e.value) for e in getattr(ds, "file_meta", []))
    return values


def _uids(ds) -> dict[str, str]:
    return {k: str(ds.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}


def test_every_identifier_is_gone_including_private_and_nested(tmp_path: Path) -> None:
    source = _identified(tmp_path / "in.dcm")
    original = pydicom.dcmread(source)
    clean = deidentify(original, salt="s1")
    text = "\n".join(_all_values(clean))
    for keyword, secret in SECRETS.items():
        assert secret not in text, keyword
    for secret in (PRIVATE_SECRET, NESTED_SECRET, "Jane", "123456", "1980"):
        assert secret not in text
    assert not any(elem.tag.is_private for elem in clean.iterall())
    # The input is untouched (a copy is returned) and pixels are unchanged.
    assert str(original.PatientName) == SECRETS["PatientName"]
    assert clean.PixelData == original.PixelData
    assert np.array_equal(clean.pixel_array, original.pixel_array)
    # Type 2 attributes stay, empty; the profile is recorded.
    assert "PatientName" in clean and not clean.PatientName
    assert clean.PatientIdentityRemoved == "YES"
    assert "Annex E" in clean.DeidentificationMethod[0]
    assert all(len(v) <= 64 for v in clean.DeidentificationMethod)  # LO, one step per value
    assert clean.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert clean.LongitudinalTemporalInformationModified == "REMOVED"
    # The standard's own UIDs (classes, transfer syntax) are not touched; instance UIDs are.
    assert clean.SOPClassUID == original.SOPClassUID
    assert clean.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    for keyword, uid in _uids(original).items():
        assert str(clean.get(keyword)) != uid
    assert clean.file_meta.MediaStorageSOPInstanceUID == clean.SOPInstanceUID
    assert clean.ReferencedStudySequence[0].ReferencedSOPInstanceUID == clean.SOPInstanceUID


def test_uids_are_consistent_across_a_study_and_depend_on_the_salt(tmp_path: Path) -> None:
    first = pydicom.dcmread(_identified(tmp_path / "a.dcm"))
    second = pydicom.dcmread(_identified(tmp_path / "b.dcm"))
    second.StudyInstanceUID = first.StudyInstanceUID  # two images of one study
    a, b = deidentify(first, salt="site-secret"), deidentify(second, salt="site-secret")
    assert a.StudyInstanceUID == b.StudyInstanceUID != first.StudyInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID  # distinct instances stay distinct
    assert deidentify(first, salt="site-secret").SOPInstanceUID == a.SOPInstanceUID  # repeatable
    assert deidentify(first, salt="other").StudyInstanceUID != a.StudyInstanceUID
    assert pydicom.uid.UID(str(a.StudyInstanceUID)).is_valid
    kept = deidentify(first, keep_uids=True)
    assert _uids(kept) == _uids(first)
    assert [c.CodeValue for c in kept.DeidentificationMethodCodeSequence] == ["113100", "113110"]


def test_burned_in_annotation_is_refused_unless_allowed(tmp_path: Path, caplog) -> None:
    ds = pydicom.dcmread(_identified(tmp_path / "in.dcm"))
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(DataError, match="Burned In Annotation"):
        deidentify(ds)
    with caplog.at_level("WARNING", logger="medpredict.deploy.deid"):
        clean = deidentify(ds, allow_burned_in=True)
    assert "burned-in" in caplog.text and not clean.PatientName


def test_keep_retains_a_listed_attribute_but_never_names_or_ids(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_identified(tmp_path / "in.dcm"))
    ds.PatientAge = "043Y"
    assert "PatientAge" not in deidentify(ds)
    assert deidentify(ds, keep=("PatientAge",)).PatientAge == "043Y"
    with pytest.raises(DataError, match="cannot be kept"):
        deidentify(ds, keep=("PatientID",))
    with pytest.raises(DataError, match="Unknown DICOM keyword"):
        deidentify(ds, keep=("PatientAgee",))


def test_profile_tables_name_real_keywords() -> None:
    from pydicom.datadict import tag_for_keyword

    assert [k for k in (*REMOVE, *EMPTY) if tag_for_keyword(k) is None] == []


_SHIPPED = sorted(
    p
    for p in (SHARED_DATA / "dicom").rglob("*")
    if p.is_file() and p.suffix.lower() == ".dcm" and "dicomdirtests" not in p.parts
)


@pytest.mark.parametrize("path", _SHIPPED, ids=[p.name for p in _SHIPPED])
def test_shipped_dicoms_lose_names_ids_dates_and_keep_pixels(path: Path, tmp_path: Path) -> None:
    original = pydicom.dcmread(path)
    out = deidentify_file(path, tmp_path / "clean.dcm", salt="x")
    clean = pydicom.dcmread(out)
    identifiers = [
        str(original.get(k))
        for k in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs")
        if original.get(k) and len(str(original.get(k))) >= 4
    ]
    text = "\n".join(_all_values(clean))
    assert [i for i in identifiers if i in text] == []
    # Institution names can equal the (kept) manufacturer, so check those by element.
    assert not any(clean.get(k) for k in ("InstitutionName", "InstitutionAddress", "OperatorsName"))
    for elem in clean.iterall():
        if elem.VR in ("PN", "DA", "DT", "TM"):
            assert not elem.value, elem
        assert not elem.tag.is_private
    assert clean.get("PixelData") == original.get("PixelData")
    assert clean.PatientIdentityRemoved == "YES"


def test_deidentify_file_refuses_non_dicom_and_writes_atomically(tmp_path: Path) -> None:
    bad = tmp_path / "notes.dcm"
    bad.write_bytes(b"hello, not dicom")
    with pytest.raises(DataError):
        deidentify_file(bad, tmp_path / "out.dcm")
    assert not (tmp_path / "out.dcm").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["notes.dcm"]  # no temporary left behind


def test_data_deid_cli_cleans_a_pacs_export_folder(tmp_path: Path, capsys) -> None:
    """``medpredict data deid IN OUT`` on the shipped DICOMs, in an export folder named after a patient."""
    import json
    import shutil

    from medpredict.cli import main

    shipped = sorted((SHARED_DATA / "dicom" / "pydicom_data").glob("*.dcm"))
    if len(shipped) < 4:
        pytest.skip("the shipped DICOM files are missing")
    export = tmp_path / "export" / "DOE_JANE_MRN-123456"  # export folders often carry names
    export.mkdir(parents=True)
    for path in shipped:
        shutil.copy(path, export / path.name)
    burned = pydicom.dcmread(shipped[0])
    burned.BurnedInAnnotation = "YES"
    burned.save_as(export / "burned.dcm")
    (export / "README.txt").write_text("not DICOM")
    originals = {p.name: pydicom.dcmread(p, stop_before_pixels=True) for p in export.glob("*.dcm")}

    code = main(["-q", "data", "deid", str(tmp_path / "export"), str(tmp_path / "clean")])

    out = capsys.readouterr().out
    assert code == 1  # one file refused
    assert f"De-identified {len(shipped)} file(s)" in out and "REFUSED" in out and "burned.dcm" in out
    written = sorted((tmp_path / "clean").rglob("*.dcm"))
    assert len(written) == len(shipped)
    old_uids = {str(ds.StudyInstanceUID) for ds in originals.values()} | {str(ds.SOPInstanceUID)
                                                                          for ds in originals.values()}
    for path in written:
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES" and not ds.PatientName and not ds.PatientID
        assert path.stem == ds.SOPInstanceUID and path.parent.parent.name == ds.StudyInstanceUID  # named by new UIDs
        assert str(ds.SOPInstanceUID) not in old_uids
    tree = "\n".join(str(p) for p in (tmp_path / "clean").rglob("*"))
    assert "DOE" not in tree and "MRN" not in tree  # no name from the export's folders
    report = json.loads((tmp_path / "clean" / "deid_report.json").read_text())
    assert report["written"] == len(shipped) and report["refused_by_reason"] == {"burned-in annotation": 1}
    assert report["not_dicom"] == 1 and "DOE" not in json.dumps(report)
    flagged = " ".join(report["flagged_for_pixel_review"].values())
    assert "modality US" in flagged  # ultrasound without Burned In Annotation: look at the pixels


def test_data_deid_refuses_an_output_inside_the_input(tmp_path: Path, capsys) -> None:
    from medpredict.cli import main

    (tmp_path / "in").mkdir()
    assert main(["data", "deid", str(tmp_path / "in"), str(tmp_path / "in" / "out")]) == 2
    assert "lies inside the input" in capsys.readouterr().err
