"""The same 50 test images through evaluate, predict, serve (and the PACS node): the same answers.

A clinician must see the same probability, prediction set, decision and referral for a
case whichever path it took: scored with its whole split by ``evaluate``, one file at a
time by ``predict``, uploaded to the REST service, or pulled from the PACS. This test
sends one model's 50 test images through each path and compares case by case.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import make_square_npz, tiny_config

N_TEST = 50


@pytest.fixture(scope="module")
def run_and_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    from medpredict.training.image import train

    root = tmp_path_factory.mktemp("agreement")
    npz = make_square_npz(root / "squares.npz", n=(160, 80, N_TEST), seed=3)
    # a chest-radiograph model, so the PACS node accepts the DICOM copies of the test images
    declared = {"intended_use.modalities": ["CR"], "intended_use.body_parts": ["CHEST"]}
    run = train(tiny_config(npz, root / "runs", name="agree", **declared), progress=False).run_dir
    with np.load(npz) as data:
        images = data["test_images"]
    pngs = []
    for i, image in enumerate(images):
        path = root / "png" / f"case_{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(path)
        pngs.append(path)
    return run, pngs


@pytest.fixture(scope="module")
def evaluated(run_and_images: tuple[Path, list[Path]], tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    from medpredict.workflows.evaluate import CASES_FILE, evaluate

    run, _ = run_and_images
    out = tmp_path_factory.mktemp("evaluation")
    evaluate(run, split="test", out=out, n_boot=20, progress=False)
    cases = pd.read_csv(out / CASES_FILE, keep_default_na=False)
    assert len(cases) == N_TEST
    # the npz reference names the test image's index; order the rows by it
    cases["index"] = cases["source"].str.rsplit("/", n=1).str[-1].astype(int)
    return cases.sort_values("index").reset_index(drop=True)


def _compare(reference: pd.DataFrame, rows: list[dict], what: str) -> None:
    assert len(rows) == N_TEST, what
    for i, row in enumerate(rows):
        ref = reference.iloc[i]
        for label, p in row["probabilities"].items():
            assert abs(p - float(ref[f"p_{label}"])) <= 1e-6, (what, i, label, p, ref[f"p_{label}"])
        assert row["decision"] == str(ref["decision"]), (what, i)
        assert "|".join(row["prediction_set"]) == str(ref["prediction_set"]), (what, i)
        assert row["refer"] == bool(ref["refer"] in (True, "True")), (what, i)


def test_predict_one_file_at_a_time_agrees_with_evaluate(
    run_and_images: tuple[Path, list[Path]], evaluated: pd.DataFrame, tmp_path: Path
) -> None:
    from medpredict.inference.files import predict_files

    run, pngs = run_and_images
    result = predict_files(run, [str(p) for p in pngs], tmp_path / "out", overlays=False, progress=False)
    _compare(evaluated, result.rows, "predict")
    # the sets are real sets: some case is referred, and none is decided outside its set silently
    assert any(r["refer"] for r in result.rows)
    assert all(r["refer"] or r["prediction_set"] == [r["decision"]] for r in result.rows)


def test_serve_agrees_with_evaluate(run_and_images: tuple[Path, list[Path]], evaluated: pd.DataFrame) -> None:
    from fastapi.testclient import TestClient

    from medpredict.inference.loader import load_predictor
    from medpredict.service.app import ServiceSettings, create_app

    run, pngs = run_and_images
    app = create_app(load_predictor(run), ServiceSettings(api_key="agreement-key"))
    rows = []
    with TestClient(app) as client:
        for path in pngs:
            res = client.post(
                "/api/v1/predict",
                files={"file": (path.name, path.read_bytes(), "image/png")},
                data={"explain": "false"},
                headers={"X-API-Key": "agreement-key"},
            )
            assert res.status_code == 200, res.text
            rows.append(res.json()["prediction"])
    _compare(evaluated, rows, "serve")


def _chest_dicom(image: np.ndarray, path: Path, index: int) -> Path:
    """The 8-bit test image as a chest CR whose window maps stored values v to v / 255 exactly."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage as CRImageStorage
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.PatientID, ds.PatientName = f"AGREE{index:02d}", "Agreement^Test"
    ds.SeriesDescription = f"case {index:02d}"
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 127.5, 255, "LINEAR_EXACT"
    ds.PixelData = image.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_files_of_the_same_pixels_agree_with_evaluate(
    run_and_images: tuple[Path, list[Path]], evaluated: pd.DataFrame, tmp_path: Path
) -> None:
    # What the PACS node reads: DICOM instances with a display window, tags checked against
    # the intended use (none declared here, so nothing is refused).
    from medpredict.inference.files import predict_files

    run, pngs = run_and_images
    dicoms = [
        _chest_dicom(np.asarray(Image.open(p)), tmp_path / f"case_{i:02d}.dcm", i) for i, p in enumerate(pngs)
    ]
    result = predict_files(run, [str(p) for p in dicoms], tmp_path / "out", overlays=False, progress=False)
    _compare(evaluated, result.rows, "predict on DICOM")


def test_overlay_of_a_served_case_names_the_class_it_explains(run_and_images: tuple[Path, list[Path]]) -> None:
    from fastapi.testclient import TestClient

    from medpredict.inference.loader import load_predictor
    from medpredict.service.app import ServiceSettings, create_app

    run, pngs = run_and_images
    with TestClient(create_app(load_predictor(run), ServiceSettings(api_key="agreement-key"))) as client:
        body = client.post(
            "/api/v1/predict",
            files={"file": (pngs[0].name, pngs[0].read_bytes(), "image/png")},
            headers={"X-API-Key": "agreement-key"},
        ).json()
    decision = body["prediction"]["decision"]
    assert body["explanation"] == f"Grad-CAM: evidence for '{decision}'"
    assert body["prediction"]["explanation"] == {"class": decision, "method": "grad-cam"}
    png = base64.b64decode(body["overlay_png"].split(",", 1)[1])
    assert Image.open(io.BytesIO(png)).size[0] > 0
    json.dumps(body)  # the whole answer is JSON


@pytest.mark.orthanc
def test_the_pacs_node_agrees_with_evaluate(
    run_and_images: tuple[Path, list[Path]], evaluated: pd.DataFrame, tmp_path: Path
) -> None:
    import orthanc_server
    from medpredict.deploy.pacs import run_pacs

    if not orthanc_server.available():
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    run, pngs = run_and_images
    with orthanc_server.OrthancServer(tmp_path / "orthanc") as orthanc:
        for i, png in enumerate(pngs):
            orthanc.upload(_chest_dicom(np.asarray(Image.open(png)), tmp_path / f"case_{i:02d}.dcm", i).read_bytes())
        fhir = tmp_path / "fhir"
        results = run_pacs(
            run, orthanc.dicomweb_url, ledger_path=tmp_path / "ledger.json", overlay=False, fhir_dir=fhir,
            fhir_patient_system="urn:example:mrn", limit=N_TEST + 5,
        )
    assert sum(len(r.images) for r in results) == N_TEST
    files = sorted(fhir.glob("*.fhir.json"))
    assert len(files) == N_TEST
    # FHIR carries no file name: match each Observation to its case by the probabilities it states
    rows = [_observation(f) for f in files]
    reference = evaluated.copy()
    labels = [c[2:] for c in reference.columns if c.startswith("p_")]
    matched = []
    for i in range(N_TEST):
        ref = reference.iloc[i]
        best = min(rows, key=lambda r: max(abs(r["probabilities"][k] - float(ref[f"p_{k}"])) for k in labels))
        matched.append(best)
    _compare(reference, matched, "pacs (FHIR, 6 decimals)")
    assert len({id(r) for r in matched}) == N_TEST  # each case found its own Observation


def _observation(path: Path) -> dict:
    bundle = json.loads(path.read_text())
    observation = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    values: dict = {"probabilities": {}, "prediction_set": [], "refer": None}
    for component in observation["component"]:
        coding = component["code"]["coding"][0]
        if coding["system"] == "urn:medpredict:probability":
            values["probabilities"][coding["code"]] = float(component["valueQuantity"]["value"])
        elif coding["code"] == "decision":
            values["decision"] = component["valueCodeableConcept"]["text"]
        elif coding["code"] == "prediction_set":
            values["prediction_set"] = [v.strip() for v in component["valueString"].strip("{}").split(",") if v.strip()]
        elif coding["code"] == "refer_to_clinician":
            values["refer"] = component["valueBoolean"]
    return values
