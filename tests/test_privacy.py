"""Patient identifiers in DICOM headers never reach logs, audit records, reports or exported files.

A whole run on DICOM inputs whose headers carry known fake identifiers — training,
evaluation with its HTML report, ``predict_files`` with overlays, the REST service with its
audit log and FHIR output, DICOM de-identification — and then a scan of every file written
(text, PNG text chunks, SQLite pages and WAL) and every log record for the identifiers.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import zlib
from pathlib import Path

import numpy as np
import pytest

from fixtures_images import write_dicom

NAME, PATIENT_ID, BIRTH_DATE = "Doe^Jane", "MRN-123456", "19800101"
#: Every form an identifier could take once a program has reformatted it (long enough not to occur
#: by chance inside base64 images or printed floats).
NEEDLES = (
    NAME,
    "Doe Jane",
    "Jane Doe",
    "DOE^JANE",
    PATIENT_ID,
    BIRTH_DATE,
    "1980-01-01",
    "01/01/1980",
    "St Example Hospital",
    "ALT-998877",
)


def _dicom_dataset(root: Path) -> Path:
    """A manifest of 2 x 28 small CR DICOMs (class 1 has a bright corner), all of the same patient."""
    rng = np.random.default_rng(5)
    rows = ["image_path,patient_id,label,split"]
    for i in range(56):
        label = i % 2
        pixels = (rng.random((24, 24)) * 2000).astype(np.uint16)
        if label:
            pixels[2:10, 2:10] += 1800
        path = write_dicom(
            root / f"img_{i:03d}.dcm",
            pixels,
            Modality="CR",
            PatientName=NAME,
            PatientID=PATIENT_ID,
            PatientBirthDate=BIRTH_DATE,
            InstitutionName="St Example Hospital",
            OtherPatientIDs="ALT-998877",
        )
        split = "train" if i < 32 else ("val" if i < 46 else "test")
        rows.append(f"{path},P{i // 2:03d},{'finding' if label else 'normal'},{split}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


class _Capture(logging.Handler):
    """Every log record of every logger, formatted with its arguments, at DEBUG."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    """Run everything once on the identified DICOMs; return (folders written, captured log lines)."""
    from conftest import tiny_config
    from medpredict.inference.files import predict_files
    from medpredict.training.image import train
    from medpredict.workflows.evaluate import evaluate

    root = tmp_path_factory.mktemp("privacy")
    data = root / "data"
    data.mkdir()
    manifest = _dicom_dataset(data)
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        run = train(tiny_config(manifest, root / "runs", name="dicomrun", **{"train.epochs": 2}), progress=False)
        evaluate(run.run_dir, data=str(manifest), n_boot=20, progress=False, out=root / "report")
        predict_files(run.run_dir, [data], root / "predictions", progress=False)
        service_dir = root / "service"
        service_dir.mkdir()
        responses = _service_round(run.run_dir, data, service_dir)
        (service_dir / "responses.json").write_text(json.dumps(responses))
        from medpredict.deploy.deid import deidentify_file

        deid_dir = root / "deidentified"
        for source in sorted(data.glob("*.dcm"))[:3]:
            deidentify_file(source, deid_dir / source.name, salt="s")
    finally:
        logging.getLogger().removeHandler(capture)
        logging.getLogger().setLevel(previous)
    outputs = [run.run_dir, root / "report", root / "predictions", service_dir, deid_dir]
    return outputs, capture.lines


def _service_round(run_dir: Path, data: Path, audit_dir: Path) -> list[dict]:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from medpredict.inference.predictor import Predictor
    from medpredict.service.app import ServiceSettings, create_app

    settings = ServiceSettings(api_key="privacy-key-123", audit_path=str(audit_dir / "audit.sqlite"))
    headers = {"X-API-Key": "privacy-key-123"}
    out = []
    with TestClient(create_app(Predictor.from_bundle(run_dir), settings)) as client:
        for path in sorted(data.glob("*.dcm"))[:3]:
            res = client.post(
                "/api/v1/predict?fhir=true", files={"file": (path.name, path.read_bytes())}, headers=headers
            )
            assert res.status_code == 200, res.text
            out.append(res.json())
        batch = [("files", (p.name, p.read_bytes())) for p in sorted(data.glob("*.dcm"))[:2]]
        res = client.post("/api/v1/predict/batch?fhir=true", files=batch, headers=headers)
        assert res.status_code == 200, res.text
        out.append(res.json())
        # A refused upload: errors must not echo header values either.
        bad = (data / "img_000.dcm").read_bytes()[:600]
        out.append(client.post("/api/v1/predict", files={"file": ("x.dcm", bad)}, headers=headers).json())
    return out


def _texts_of(path: Path) -> list[bytes]:
    """What a file can reveal: its bytes, plus decompressed PNG text chunks and zlib/gzip streams."""
    data = path.read_bytes()
    found = [data]
    if data.startswith(b"\x89PNG"):
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            found.append(json.dumps({str(k): str(v) for k, v in image.info.items()}).encode())
    if data[:2] == b"\x1f\x8b":
        with contextlib.suppress(zlib.error):
            found.append(zlib.decompress(data, 47))  # gzip or zlib, detected from the header
    return found


def test_the_pipeline_wrote_what_it_should(pipeline) -> None:
    outputs, _ = pipeline
    run, report, predictions, service, deid = outputs
    assert (run / "model" / "weights.safetensors").is_file() and (run / "train.log").is_file()
    assert (report / "report.html").is_file() and (report / "metrics.json").is_file()
    assert (predictions / "predictions.csv").is_file() and list((predictions / "overlays").glob("*.png"))
    assert list(service.glob("audit.sqlite*")) and len(list(deid.glob("*.dcm"))) == 3


def test_no_output_file_carries_a_patient_identifier(pipeline) -> None:
    outputs, _ = pipeline
    leaks = []
    scanned = 0
    for folder in outputs:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            scanned += 1
            for blob in _texts_of(path):
                leaks += [f"{path.relative_to(folder.parent)}: {n!r}" for n in NEEDLES if n.encode() in blob]
    assert scanned >= 20
    assert leaks == []


def test_no_log_record_carries_a_patient_identifier(pipeline) -> None:
    _, lines = pipeline
    assert lines, "nothing was logged: the capture is broken"
    text = "\n".join(lines)
    assert [n for n in NEEDLES if n in text] == []


def test_the_scan_would_find_an_identifier(tmp_path: Path) -> None:
    """The scanner itself works: identifiers in plain text, PNG text chunks and SQLite pages are found."""
    import sqlite3

    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("Comment", NAME, zip=True)  # compressed: invisible to a byte scan
    Image.new("L", (4, 4)).save(tmp_path / "x.png", pnginfo=info)
    db = sqlite3.connect(tmp_path / "a.sqlite")
    db.execute("CREATE TABLE t (v TEXT)")
    db.execute("INSERT INTO t VALUES (?)", (PATIENT_ID,))
    db.commit()
    db.close()
    assert any(NAME.encode() in blob for blob in _texts_of(tmp_path / "x.png"))
    assert any(PATIENT_ID.encode() in blob for blob in _texts_of(tmp_path / "a.sqlite"))
