"""PACS node: intended-use filter, instance ledger, quarantine, hashed logs, one-line errors; real Orthanc."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import logging
import shutil
import threading
from pathlib import Path

import pytest

pytest.importorskip("dicomweb_client")
pytest.importorskip("highdicom")

import orthanc_server  # noqa: E402
from fixtures_images import SHARED_DATA  # noqa: E402
from medpredict.cli import main  # noqa: E402
from medpredict.data.intended_use import CHEST_RADIOGRAPH, IntendedUse  # noqa: E402
from medpredict.deploy import pacs  # noqa: E402
from medpredict.deploy.pacs_ledger import Ledger, RetryPolicy  # noqa: E402
from medpredict.deploy.remote import server_error  # noqa: E402
from medpredict.deploy.uid_log import hashed_uids, scrub, short_id  # noqa: E402
from medpredict.errors import ConfigError  # noqa: E402
from test_fhir import assert_valid_r4  # noqa: E402

DICOM = SHARED_DATA / "dicom"
CHEST_CR = DICOM / "pydicom_data" / "RG1_J2KI.dcm"  # CR, CHEST, PA, JPEG 2000
TIBIA_CR = DICOM / "pydicom_data" / "RG3_J2KR.dcm"  # CR, EXTREMITY, AP, Laterality R
MR = DICOM / "pydicom_data" / "MR2_UNCR.dcm"
US = DICOM / "pydicom_data" / "US1_UNCR.dcm"
CT = DICOM / "pydicom_wheel" / "CT_small.dcm"
SOURCES = (CHEST_CR, TIBIA_CR, MR, US, CT)


# --------------------------------------------------------------------------- without a server


class FakeClient:
    """Records QIDO calls; enough of DICOMwebClient for find_studies."""

    def __init__(self, studies):
        self.studies = studies
        self.calls = []

    def search_for_studies(self, search_filters=None, fields=None, offset=None):
        self.calls.append(search_filters)
        if offset:  # a server that ignores offset repeats its page: the search must still end
            return [{"0020000D": {"vr": "UI", "Value": [uid]}} for uid, _ in self.studies]
        return [
            {"0020000D": {"vr": "UI", "Value": [uid]}, "00201208": {"vr": "IS", "Value": [n]}}
            for uid, n in self.studies
        ]


def test_find_studies_queries_each_modality_and_keeps_counts():
    client = FakeClient([("1.2.3", 2), ("1.2.4", 1)])
    found = pacs.find_studies(client, modalities=["CR", "DX"], since="20240101")
    assert [(s.uid, s.instances) for s in found] == [("1.2.3", 2), ("1.2.4", 1)]  # one entry per study
    cr, dx = ({"StudyDate": "20240101-", "ModalitiesInStudy": m} for m in ("CR", "DX"))
    assert client.calls == [cr, cr, dx, dx]  # every --modality value is used; a second page ends each


def test_connect_refuses_a_non_http_url():
    with pytest.raises(ConfigError, match="must start with http"):
        pacs.connect("dicom://pacs:104")


class _Model:
    def __init__(self, intended_use):
        self.intended_use = intended_use


CHEST = IntendedUse.from_dict(CHEST_RADIOGRAPH)


@pytest.mark.parametrize(
    ("modalities", "tags", "refused"),
    [
        ((), {"Modality": "CR", "BodyPartExamined": "CHEST", "ViewPosition": "PA"}, ""),  # the intended input
        ((), {"Modality": "CR"}, ""),  # absent tags contradict nothing
        ((), {"Modality": "CR", "BodyPartExamined": "EXTREMITY"}, "BodyPartExamined is EXTREMITY"),  # tibia
        ((), {"Modality": "US"}, "Modality is US"),  # ultrasound
        ((), {"Modality": "DX", "ViewPosition": "LL"}, "ViewPosition is LL"),  # lateral view
        (("CR", "DX"), {"Modality": "DX"}, ""),  # the second --modality counts too
        (("CR",), {"Modality": "DX"}, "--modality allows CR"),  # narrowed by the user
    ],
)
def test_input_policy(modalities, tags, refused):
    policy = pacs.InputPolicy.for_predictor(_Model(CHEST), modalities=modalities)
    reasons = " ".join(policy.reasons(tags))
    assert (refused in reasons) if refused else reasons == ""


def test_input_policy_refuses_what_would_widen_the_intended_use(caplog):
    with pytest.raises(ConfigError, match="declares no intended use"):
        pacs.InputPolicy.for_predictor(_Model(IntendedUse()))
    with pytest.raises(ConfigError, match="--modality MR is outside"):
        pacs.InputPolicy.for_predictor(_Model(CHEST), modalities=["MR"])
    with caplog.at_level(logging.WARNING):
        policy = pacs.InputPolicy.for_predictor(_Model(CHEST), modalities=["MR"], ignore_intended_use=True)
    assert policy.reasons({"Modality": "MR", "BodyPartExamined": "HEAD"}) == []  # the user's explicit choice
    assert policy.reasons({"Modality": "CR"})  # still narrowed to MR
    assert "--ignore-intended-use" in caplog.text
    assert policy.study_reason(["CT"]) and policy.study_reason(["MR", "SR"]) is None


def test_ledger_keeps_hashes_quarantine_and_backoff(tmp_path):
    ledger = Ledger(tmp_path / "l.json")
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    policy = RetryPolicy(max_attempts=3, backoff_s=60)
    ledger.record_study("1.2.840.99.1", instances=3, status="processed")
    ledger.record_result("1.2.840.99.1.1", "1.2.840.99.1", label="normal")
    first = ledger.put_in_quarantine("1.2.840.99.1.2", "1.2.840.99.1", "ValueError: x", policy, now)
    assert first["retry_after"] == "2024-01-01T00:01:00+00:00"
    again = Ledger(tmp_path / "l.json")
    assert again.has_result("1.2.840.99.1.1") and not again.has_result("1.2.840.99.1.2")
    assert not again.needs_look("1.2.840.99.1", 3, now)  # unchanged, retry not due
    assert again.needs_look("1.2.840.99.1", 4, now)  # an image was added
    assert again.needs_look("1.2.840.99.1", 3, now + dt.timedelta(seconds=61))  # the retry is due
    second = again.put_in_quarantine("1.2.840.99.1.2", "1.2.840.99.1", "ValueError: x", policy, now)
    assert second["attempts"] == 2 and second["retry_after"] == "2024-01-01T00:02:00+00:00"  # doubled
    third = again.put_in_quarantine("1.2.840.99.1.2", "1.2.840.99.1", "ValueError: x", policy, now)
    assert third["retry_after"] is None  # given up, kept on the list
    assert not again.retry_due("1.2.840.99.1.2", now + dt.timedelta(days=365))
    assert "1.2.840.99.1" not in (tmp_path / "l.json").read_text()


def test_a_format_1_ledger_is_examined_again(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": "medpredict-pacs-ledger/1", "studies": {short_id("1.2.3.4.5"): {}}}))
    assert Ledger(path).needs_look("1.2.3.4.5", 2, dt.datetime.now(dt.UTC))


def test_uids_are_hashed_in_library_log_records(caplog):
    uid = "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"
    with caplog.at_level(logging.DEBUG), hashed_uids():
        logging.getLogger("dicomweb_client.web").info('search for instances of study "%s"', uid)
        logging.getLogger("highdicom.sr.templates").debug(f"evidence {uid} of class 1.2.840.10008.5.1.4.1.1.1")
    assert uid not in caplog.text
    assert short_id(uid) in caplog.text and "1.2.840.10008.5.1.4.1.1.1" in caplog.text  # standard UIDs kept
    assert scrub("GET http://127.0.0.1:8042/x") == "GET http://127.0.0.1:8042/x"  # an IP address is no UID


# --------------------------------------------------------------------------- servers on loopback


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request with ``status`` and records POST bodies (a stand-in FHIR server)."""

    status = 200
    received: list[tuple[str, dict]] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append((self.headers.get("Content-Type"), json.loads(body)))
        self._answer()

    def do_GET(self):  # noqa: N802
        self._answer()

    def _answer(self):
        payload = json.dumps({"resourceType": "Bundle", "type": "transaction-response"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def _serve(status: int) -> tuple[http.server.ThreadingHTTPServer, type]:
    handler = type("Handler", (_Recorder,), {"status": status, "received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


@pytest.fixture(scope="module")
def chest_run(tmp_path_factory):
    """The session's tiny run, copied and re-saved with the chest-radiograph intended use."""
    from test_service import chest_radiograph_copy, tiny_run

    return chest_radiograph_copy(tiny_run(tmp_path_factory), tmp_path_factory.mktemp("chest") / "run")


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("refused", "Cannot connect to the DICOMweb server"),  # nothing listens on the port
        ("tls", "TLS with the DICOMweb server"),  # https:// to a plain-HTTP server
        (401, "refused the credentials (HTTP 401"),  # wrong user or password
        (403, "HTTP 403 Forbidden"),  # known account without rights
    ],
)
def test_server_failures_are_one_line_errors(chest_run, tmp_path, capsys, server, expected):
    listener = None
    if server == "refused":
        url = f"http://127.0.0.1:{orthanc_server.free_port()}/dicom-web"
    else:
        listener, _ = _serve(200 if server == "tls" else server)
        scheme = "https" if server == "tls" else "http"
        url = f"{scheme}://127.0.0.1:{listener.server_address[1]}/dicom-web"
    try:
        code = main(["-q", "pacs", str(chest_run), "--url", url, "--ledger", str(tmp_path / "l.json")])
    finally:
        if listener is not None:
            listener.shutdown()
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err, err
    assert url.split("/dicom-web")[0] in err


def test_server_error_is_none_for_a_study_level_failure():
    import requests

    response = requests.Response()
    response.status_code = 500
    assert server_error(requests.HTTPError(response=response), what="x", url="http://h") is None


# --------------------------------------------------------------------------- a real Orthanc


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if not orthanc_server.available():
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    missing = [p for p in SOURCES if not p.is_file()]
    if missing:
        pytest.skip(f"shared test images {missing} are missing")
    server = orthanc_server.OrthancServer(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


def _variant(path: Path, *, new_study: bool, drop=(), **changes) -> tuple[bytes, object]:
    """``path`` with new series and instance UIDs (and a new study UID), elements dropped or changed."""
    import io

    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(path)
    if new_study:
        ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword in drop:
        delattr(ds, keyword)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), ds


def _series(client, study_uid: str) -> list[str]:
    found = client.search_for_series(study_uid, fields=["Modality"])
    return sorted(pacs._value(s, "00080060") for s in found)


def _all_uids(client) -> set[str]:
    uids = set()
    for study in client.search_for_studies(get_remaining=True):
        study_uid = pacs._value(study, "0020000D")
        for item in client.search_for_instances(study_uid, get_remaining=True):
            uids |= {study_uid, pacs._value(item, "0020000E"), pacs._value(item, "00080018")}
    return uids


class _Records(logging.Handler):
    """Keeps every record logged anywhere while it is attached to the root logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(r.getMessage() + (self.format(r) if r.exc_info else "") for r in self.records)


def _pass(chest_run, orthanc, tmp_path, capsys, *extra, records: _Records | None = None) -> tuple[int, str]:
    """One ``medpredict -v pacs`` run (DEBUG logging); its log records go to ``records``."""
    root, level = logging.getLogger(), logging.getLogger().level
    if records is not None:
        root.addHandler(records)
        root.setLevel(logging.DEBUG)  # as the CLI's basicConfig does outside pytest: every library's records
    try:
        code = main(
            [
                "-v", "pacs", str(chest_run), "--url", orthanc.dicomweb_url, "--ledger", str(tmp_path / "ledger.json"),
                "--fhir-dir", str(tmp_path / "fhir"), "--fhir-patient-system", "urn:oid:1.2.3.4.5", *extra,
            ]
        )
    finally:
        root.removeHandler(records) if records is not None else None
        root.setLevel(level)
    return code, capsys.readouterr().out


@pytest.mark.orthanc
def test_only_the_intended_studies_get_results_once_and_new_images_later(orthanc, chest_run, tmp_path, capsys):
    """The archive of the issue: two chest CRs (one without PatientOrientation), a tibia CR, MR, US, CT."""
    import pydicom

    from medpredict.deploy.pacs_ledger import Ledger as LedgerFile

    no_orientation, chest_b = _variant(CHEST_CR, new_study=True, drop=("PatientOrientation",))
    for source in SOURCES:
        orthanc.upload(source.read_bytes())
    orthanc.upload(no_orientation)
    chest_a = pydicom.dcmread(CHEST_CR, stop_before_pixels=True)
    chests = {chest_a.StudyInstanceUID, chest_b.StudyInstanceUID}
    others = {pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in (TIBIA_CR, MR, US, CT)}
    fhir_server, fhir_log = _serve(200)
    fhir_url = f"http://127.0.0.1:{fhir_server.server_address[1]}/fhir"
    client = pacs.connect(orthanc.dicomweb_url)
    records, printed = _Records(), []

    code, out = _pass(chest_run, orthanc, tmp_path, capsys, "--fhir-url", fhir_url, records=records)
    printed.append(out)

    assert code == 0, out
    assert "2 processed, 4 skipped, 0 quarantined, 0 failed" in out
    for uid in chests:
        assert _series(client, uid) == ["CR", "OT", "SR"]  # source, overlay, report
    sr = _retrieve_sr(client, chest_a.StudyInstanceUID)
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    from medpredict.inference.predictor import Predictor
    from medpredict.readers import read_dicom

    expected = Predictor.from_bundle(chest_run).predict(images=[read_dicom(CHEST_CR).pixels])[0]
    assert _numeric_values(sr)["Probability of pneumonia"] == pytest.approx(expected.score, abs=1e-6)
    for uid in others:
        assert "SR" not in _series(client, uid) and "OT" not in _series(client, uid)
    ledger = LedgerFile(tmp_path / "ledger.json")
    reasons = sorted(entry["reason"] for entry in ledger.skipped.values())
    assert any("BodyPartExamined is EXTREMITY" in r for r in reasons)  # the tibia CR
    assert sum("Modality is" in r for r in reasons) == 3  # MR, US, CT
    assert len(ledger.instances) == 2 and not ledger.quarantine
    posted = [body for _, body in fhir_log.received]
    assert len(posted) == 2 and all(b["type"] == "transaction" for b in posted)
    assert {t for t, _ in fhir_log.received} == {"application/fhir+json"}
    written = [json.loads(p.read_text()) for p in (tmp_path / "fhir").glob("*.fhir.json")]
    assert len(written) == 2
    for bundle in written + posted:  # every FHIR resource written or sent passes R4 and R4B validation
        assert_valid_r4(bundle)
        for entry in bundle["entry"]:
            assert entry["resource"]["subject"]["identifier"] == {"system": "urn:oid:1.2.3.4.5",
                                                                  "value": chest_a.PatientID}

    # A second pass stores nothing new and exits 0.
    count_before = len(_all_uids(client))
    code, out = _pass(chest_run, orthanc, tmp_path, capsys, "--fhir-url", fhir_url, records=records)
    printed.append(out)
    assert code == 0 and "0 processed, 0 skipped" in out
    assert len(_all_uids(client)) == count_before and len(fhir_log.received) == 2

    # A third image added to the first chest study later (no VOI window either) gets its result.
    third, third_ds = _variant(CHEST_CR, new_study=False, drop=("WindowCenter", "WindowWidth"))
    orthanc.upload(third)
    code, out = _pass(chest_run, orthanc, tmp_path, capsys, "--fhir-url", fhir_url, records=records)
    printed.append(out)
    assert code == 0 and "1 processed" in out and out.count("  image ") == 1
    assert short_id(str(third_ds.SOPInstanceUID)) in out
    assert _series(client, chest_a.StudyInstanceUID) == ["CR", "CR", "OT", "OT", "SR", "SR"]
    assert len(fhir_log.received) == 3

    # With the ledger lost, the SRs already in the studies stop duplicates.
    (tmp_path / "ledger.json").unlink()
    count_before = len(_all_uids(client))
    code, out = _pass(chest_run, orthanc, tmp_path, capsys, records=records)
    printed.append(out)
    assert code == 0 and len(_all_uids(client)) == count_before
    fhir_server.shutdown()

    # No full UID of any stored object in any log record of these passes (nor on stdout).
    uids = _all_uids(client)
    assert len(uids) > 15
    logged = records.text() + "\n".join(printed)
    names = {r.name.split(".")[0] for r in records.records}
    assert {"dicomweb_client", "urllib3", "medpredict"} <= names  # their records were captured, at DEBUG
    assert [uid for uid in uids if uid in logged] == []


@pytest.mark.orthanc
def test_a_failing_image_is_quarantined_retried_with_backoff_then_given_up(orthanc, chest_run, tmp_path, capsys):
    """A chest CR whose JPEG 2000 stream is cut: quarantined, not retried before its time, exit 0 throughout."""
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    frame = next(generate_frames(pydicom.dcmread(CHEST_CR).PixelData, number_of_frames=1))
    broken, broken_ds = _variant(CHEST_CR, new_study=True, StudyDate="20300101",
                                 PixelData=encapsulate([frame[:2000]]))  # the header and a little of the stream
    orthanc.upload(broken)
    since = ("--since", "20300101")  # this study only
    code, out = _pass(chest_run, orthanc, tmp_path, capsys, *since, "--max-attempts", "2")
    assert code == 0 and "1 quarantined" in out
    ledger = Ledger(tmp_path / "ledger.json")
    (entry,) = ledger.quarantine.values()
    assert entry["attempts"] == 1 and entry["retry_after"] and entry["reason"]
    assert str(broken_ds.SOPInstanceUID) not in (tmp_path / "ledger.json").read_text()

    code, out = _pass(chest_run, orthanc, tmp_path, capsys, *since, "--max-attempts", "2")
    assert code == 0 and "0 quarantined" in out  # not retried before its time: nothing downloaded again
    assert Ledger(tmp_path / "ledger.json").quarantine == ledger.quarantine

    code, out = _pass(chest_run, orthanc, tmp_path, capsys, *since, "--max-attempts", "2", "--retry-quarantined")
    assert code == 0 and "1 quarantined" in out
    (entry,) = Ledger(tmp_path / "ledger.json").quarantine.values()
    assert entry["attempts"] == 1  # released, tried once more, failed again
    code, out = _pass(chest_run, orthanc, tmp_path, capsys, *since, "--max-attempts", "1", "--retry-quarantined")
    (entry,) = Ledger(tmp_path / "ledger.json").quarantine.values()
    assert code == 0 and entry["retry_after"] is None  # given up, still listed with its reason
    assert _series(pacs.connect(orthanc.dicomweb_url), broken_ds.StudyInstanceUID) == ["CR"]  # nothing half-way


@pytest.mark.orthanc
def test_pacs_runs_the_int8_model(orthanc, chest_run, tmp_path, capsys):
    """``--backend int8``: the exported, quantised network makes the stored result."""
    from medpredict.deploy.export import export_run
    from medpredict.inference.loader import load_predictor
    from medpredict.readers import read_dicom

    run = tmp_path / "run"
    shutil.copytree(chest_run, run)
    export_run(run, exporter="torchscript", quantize=True)
    data, ds = _variant(CHEST_CR, new_study=True, StudyDate="20310101")
    orthanc.upload(data)
    (tmp_path / "in.dcm").write_bytes(data)
    expected = load_predictor(run, backend="int8").predict(images=[read_dicom(tmp_path / "in.dcm").pixels])[0]

    code, out = _pass(run, orthanc, tmp_path, capsys, "--since", "20310101", "--backend", "int8", "--no-overlay")

    assert code == 0 and "1 processed" in out
    sr = _retrieve_sr(pacs.connect(orthanc.dicomweb_url), ds.StudyInstanceUID)
    assert _numeric_values(sr)["Probability of pneumonia"] == pytest.approx(expected.score, abs=1e-6)


def _retrieve_sr(client, study_uid: str):
    (item,) = [i for i in client.search_for_instances(study_uid, fields=["Modality"])
               if pacs._value(i, "00080060") == "SR"]
    return client.retrieve_instance(study_uid, pacs._value(item, "0020000E"), pacs._value(item, "00080018"),
                                    media_types=(("application/dicom", "*"),))


def _numeric_values(sr) -> dict[str, float]:
    """NUM content items of an SR by concept meaning."""
    found: dict[str, float] = {}

    def walk(items):
        for item in items:
            if item.get("ValueType") == "NUM":
                found[item.ConceptNameCodeSequence[0].CodeMeaning] = float(item.MeasuredValueSequence[0].NumericValue)
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found
