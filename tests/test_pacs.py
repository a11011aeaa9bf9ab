"""PACS round trip: QIDO find -> WADO fetch -> predict -> STOW SR + overlay, against a real Orthanc."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("dicomweb_client")
pytest.importorskip("highdicom")

import orthanc_server  # noqa: E402
from medpredict.deploy import pacs  # noqa: E402
from medpredict.errors import ConfigError  # noqa: E402

CHEST_CR = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dicom" / "pydicom_data" / "RG1_J2KI.dcm"
)


class FakeClient:
    """Records QIDO calls; enough of DICOMwebClient for find_studies."""

    def __init__(self, studies):
        self.studies = studies
        self.calls = []

    def search_for_studies(self, search_filters=None, limit=None):
        self.calls.append((search_filters, limit))
        return [{"0020000D": {"vr": "UI", "Value": [uid]}} for uid in self.studies]


def test_find_studies_builds_qido_filters():
    client = FakeClient(["1.2.3", "1.2.4"])
    assert pacs.find_studies(client, modality="CR", since="20240101", limit=7) == ["1.2.3", "1.2.4"]
    assert client.calls == [({"ModalitiesInStudy": "CR", "StudyDate": "20240101-"}, 7)]


def test_connect_refuses_a_non_http_url():
    with pytest.raises(ConfigError, match="must start with http"):
        pacs.connect("dicom://pacs:104")


def test_ledger_persists_hashes_only(tmp_path):
    ledger = pacs.Ledger(tmp_path / "l.json")
    ledger.record("1.2.840.99.1", status="processed")
    again = pacs.Ledger(tmp_path / "l.json")
    assert again.done("1.2.840.99.1") and not again.done("1.2.840.99.2")
    assert "1.2.840.99.1" not in (tmp_path / "l.json").read_text()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if not orthanc_server.available():
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    if not CHEST_CR.is_file():
        pytest.skip(f"shared test image {CHEST_CR} is missing")
    server = orthanc_server.OrthancServer(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    """The real Predictor on the tiny run trained (once per session) through the library."""
    from medpredict.inference.predictor import Predictor
    from test_service import tiny_run

    return Predictor.from_bundle(tiny_run(tmp_path_factory))


@pytest.mark.orthanc
def test_round_trip_sr_and_overlay_land_in_the_source_study(orthanc, predictor, tmp_path):
    import pydicom

    from medpredict.readers import read_dicom

    source = pydicom.dcmread(CHEST_CR, stop_before_pixels=True)
    expected = predictor.predict(images=[read_dicom(CHEST_CR).pixels])[0]
    name, version = pacs.model_identity(predictor)
    orthanc.upload(CHEST_CR.read_bytes())
    client = pacs.connect(orthanc.dicomweb_url)
    ledger = pacs.Ledger(tmp_path / "ledger.json")

    results = pacs.process_new_studies(
        client, predictor, ledger=ledger, modality="CR", fhir_dir=tmp_path / "fhir"
    )

    assert [r.status for r in results] == ["processed"]
    assert len(results[0].images) == 1
    # the fetched CR went through the same reader and predictor as a local file would
    assert results[0].images[0].score == pytest.approx(expected.score, abs=1e-6)
    assert results[0].images[0].label == expected.label
    series = client.search_for_series(source.StudyInstanceUID, fields=["Modality", "SeriesDescription"])
    modalities = sorted(pacs._value(s, "00080060") for s in series)
    assert modalities == ["CR", "OT", "SR"]  # source, overlay (secondary capture), report

    image = results[0].images[0]
    sr = _retrieve(client, source.StudyInstanceUID, image.sr_sop_instance_uid)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.Modality == "SR"
    values = _numeric_values(sr)
    assert values["Probability of pneumonia"] == pytest.approx(image.score, abs=1e-6)
    assert values["Decision threshold"] == pytest.approx(predictor.threshold)
    assert name in str(sr) and version in str(sr)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID

    sc = _retrieve(client, source.StudyInstanceUID, image.sc_sop_instance_uid)
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    pixels = sc.pixel_array
    assert pixels.ndim == 3 and pixels.shape[2] == 3 and max(pixels.shape[:2]) <= 1024 + 200
    fhir_bundle = json.loads(Path(image.fhir_path).read_text())
    assert fhir_bundle["resourceType"] == "Bundle"

    # A second pass does nothing: the ledger remembers the study.
    assert pacs.process_new_studies(client, predictor, ledger=ledger, modality="CR") == []
    # With the ledger lost, the SR already in the study stops a duplicate.
    again = pacs.process_new_studies(client, predictor, ledger=pacs.Ledger(), modality="CR")
    assert [(r.status, r.reason) for r in again] == [("skipped", "already holds a result from this model")]
    # The ledger holds no patient identifiers and no UIDs in clear.
    text = (tmp_path / "ledger.json").read_text()
    for secret in (str(source.PatientName), str(source.PatientID), source.StudyInstanceUID):
        assert secret and secret not in text


def _retrieve(client, study_uid, sop_uid):
    found = client.search_for_instances(study_uid, search_filters={"SOPInstanceUID": sop_uid})
    assert len(found) == 1
    series_uid = found[0]["0020000E"]["Value"][0]
    return client.retrieve_instance(study_uid, series_uid, sop_uid, media_types=(("application/dicom", "*"),))


def _numeric_values(sr) -> dict[str, float]:
    found: dict[str, float] = {}

    def walk(items):
        for item in items:
            if item.get("ValueType") == "NUM":
                found[item.ConceptNameCodeSequence[0].CodeMeaning] = float(
                    item.MeasuredValueSequence[0].NumericValue
                )
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    return found
