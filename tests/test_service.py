"""REST service: key, limits, 4xx reasons, predictions with overlay, FHIR, audit log without identifiers."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from fixtures_images import write_dicom, write_png  # noqa: E402
from medpredict.errors import ConfigError  # noqa: E402
from medpredict.service.app import ServiceSettings, create_app, serve  # noqa: E402
from medpredict.service.uploads import sniff_format  # noqa: E402

KEY = "test-key-123456"
PATIENT_NAME = "Doe^Janet"
PATIENT_ID = "MRN-778899"


_TRAINED: dict[str, Path] = {}


def tiny_run(tmp_path_factory) -> Path:
    """The tiny run, trained once per test session and shared (read-only) by the test modules."""
    if "run" not in _TRAINED:
        _TRAINED["run"] = train_tiny_run(tmp_path_factory.mktemp("tiny"))
    return _TRAINED["run"]


def chest_radiograph_copy(run: Path, dest: Path) -> Path:
    """``run`` copied to ``dest`` and re-saved declaring the chest-radiograph intended use (CR/DX, chest, PA/AP)."""
    import shutil

    from medpredict.bundle.store import load_bundle, save_bundle
    from medpredict.data.intended_use import CHEST_RADIOGRAPH

    shutil.copytree(run, dest)
    bundle = load_bundle(dest / "model")
    extra = {p.name: json.loads(p.read_text()) for p in (dest / "model").glob("*.json")
             if p.name not in ("bundle.json", "checksums.json")}
    save_bundle(dest / "model", state_dict=bundle.state_dict, meta={**bundle.meta, "intended_use": CHEST_RADIOGRAPH},
                json_files=extra)
    return dest


def train_tiny_run(root: Path) -> Path:
    """Train a 2-epoch tiny-resnet on 28 px synthetic 'X-rays' through the library; return the run folder."""
    from medpredict.config import from_dict
    from medpredict.training.image import train

    rng = np.random.default_rng(0)
    # Given splits (train/val/test folders), one class folder each.
    for split, count in (("train", 24), ("val", 10), ("test", 4)):
        for label in ("normal", "pneumonia"):
            folder = root / "data" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                img = (rng.random((28, 28)) * 90).astype(np.uint8)
                if label == "pneumonia":
                    img[4:16, 4:16] += 140  # the 'finding': a bright upper-left region
                write_png(folder / f"{i}.png", img)
    config = from_dict(
        {
            "name": "tiny",
            "out_dir": str(root / "runs"),
            "data": {"source": str(root / "data")},
            "model": {"name": "tiny-resnet"},
            "train": {"epochs": 2, "batch_size": 16, "threads": 1, "amp": False, "patience": 2, "small_data": "off"},
        }
    )
    return train(config, progress=False).run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(run_dir):
    from medpredict.inference.predictor import Predictor

    return Predictor.from_bundle(run_dir)


@pytest.fixture
def client(predictor, tmp_path):
    settings = ServiceSettings(
        api_key=KEY, max_upload_bytes=256 * 1024, audit_path=str(tmp_path / "audit.sqlite"), max_batch=3
    )
    with TestClient(create_app(predictor, settings)) as test_client:
        yield test_client


def _png(bright: bool = True, size: int = 28) -> bytes:
    img = (np.random.default_rng(1).random((size, size)) * 90).astype(np.uint8)
    if bright:
        img[4 * size // 28 : 16 * size // 28, 4 * size // 28 : 16 * size // 28] += 140
    buffer = io.BytesIO()
    from PIL import Image

    Image.fromarray(img).save(buffer, format="PNG")
    return buffer.getvalue()


def _dicom(tmp_path: Path, modality: str = "CR") -> bytes:
    pixels = (np.random.default_rng(2).random((64, 64)) * 4000).astype(np.uint16)
    path = write_dicom(
        tmp_path / "x.dcm", pixels, Modality=modality, PatientName=PATIENT_NAME, PatientID=PATIENT_ID,
        SeriesDescription="AP chest", StudyDescription="CHEST",
    )
    return path.read_bytes()


H = {"X-API-Key": KEY}
BASIC = {"Authorization": "Basic " + base64.b64encode(f"clinician:{KEY}".encode()).decode()}


def test_health_is_public_and_the_api_needs_the_key(client):
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/api/v1/model").status_code == 401
    assert client.get("/api/v1/model", headers={"X-API-Key": "wrong-key-000"}).status_code == 401
    assert client.post("/api/v1/predict", files={"file": ("a.png", _png())}).status_code == 401
    assert client.get("/api/v1/model", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    card = client.get("/api/v1/model", headers=H).json()
    assert card["labels"] == ["normal", "pneumonia"]
    assert card["input_kind"] == "image" and 0 < card["threshold"] < 1


def test_predict_png_returns_probabilities_label_uncertainty_and_overlay(client, predictor):
    res = client.post("/api/v1/predict", files={"file": ("../../etc/passwd.png", _png())}, headers=H)
    assert res.status_code == 200, res.text
    body = res.json()
    p = body["prediction"]
    assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert p["threshold"] == pytest.approx(predictor.threshold)
    assert p["label"] == ("pneumonia" if p["score"] >= p["threshold"] else "normal")
    assert 0.0 <= p["uncertainty"]["entropy"] <= 1.0
    assert p["source"] == "passwd.png"  # the upload's base name: which file this result is for
    assert body["model"]["version"] == predictor.version
    assert body["model"]["text"] == predictor.identity.text()
    # the overlay is a real PNG
    assert body["overlay_png"].startswith("data:image/png;base64,")
    png = base64.b64decode(body["overlay_png"].split(",", 1)[1])
    assert sniff_format(png) == "png"
    from PIL import Image

    assert Image.open(io.BytesIO(png)).mode == "RGB"
    # same answer as the library: one inference path
    from medpredict.readers import read_image

    tmp = Path(client.app.state.settings.audit_path).parent / "same.png"
    tmp.write_bytes(_png())
    direct = predictor.predict(images=[read_image(tmp)])[0]
    assert p["score"] == pytest.approx(direct.score, abs=1e-6)


def test_predict_dicom_upload_and_modality_check(client, predictor, tmp_path):
    res = client.post("/api/v1/predict?explain=false", files={"file": ("x.dcm", _dicom(tmp_path))}, headers=H)
    assert res.status_code == 200, res.text
    assert res.json()["input"] == {"format": "dicom", "modality": "CR", "size": [64, 64]}
    assert "overlay_png" not in res.json() and "image_png" not in res.json()
    assert res.json()["prediction"]["source"] == "x.dcm (series 'AP chest', study 'CHEST')"  # never the patient
    strict = ServiceSettings(api_key=KEY, modalities=("DX",))
    with TestClient(create_app(predictor, strict)) as other:
        res = other.post("/api/v1/predict", files={"file": ("x.dcm", _dicom(tmp_path))}, headers=H)
    assert res.status_code == 422 and "'CR'" in res.json()["detail"]


@pytest.mark.parametrize(
    ("payload", "status", "reason"),
    [
        (b"name,age\nx,3\n", 415, "not a PNG, JPEG or DICOM"),  # a CSV sent as an image
        (b"", 422, "empty"),  # an empty file
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 422, "The upload is not a readable image"),  # a truncated PNG
        ("tiny", 422, "outside the accepted range"),  # a 4x4 image: wrong size
    ],
)
def test_bad_uploads_get_4xx_with_a_reason(client, payload, status, reason):
    if payload == "tiny":
        payload = _png(size=4)
    res = client.post("/api/v1/predict", files={"file": ("x.png", payload)}, headers=H)
    assert res.status_code == status, res.text
    assert reason in res.json()["detail"]


def test_oversized_upload_is_cut_off_with_413(client):
    big = b"\x89PNG\r\n\x1a\n" + bytes(400 * 1024)
    res = client.post("/api/v1/predict", files={"file": ("big.png", big)}, headers=H)
    assert res.status_code == 413
    assert "limit" in res.json()["detail"]

    # No Content-Length (chunked): the limit is enforced while streaming.
    def chunks():
        yield b'--abc\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(100):  # 800 KB of file content, never terminated
            yield b"x" * 8192

    res = client.post(
        "/api/v1/predict",
        content=chunks(),
        headers={**H, "Content-Type": "multipart/form-data; boundary=abc"},
    )
    assert res.status_code == 413


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ('{"age": 63}', "images only"),  # image model given a record
        ("{not json", "not valid JSON"),  # malformed JSON
        ('{"age": [1, 2]}', "must be a number"),  # a list is not a clinical value
    ],
)
def test_bad_records_get_422(client, record, reason):
    res = client.post("/api/v1/predict", files={"file": ("x.png", _png())}, data={"record": record}, headers=H)
    assert res.status_code == 422
    assert reason in res.json()["detail"]


def test_record_route_refuses_non_objects(client):
    res = client.post("/api/v1/predict/record", content=b"[1,2]", headers={**H, "Content-Type": "application/json"})
    assert res.status_code == 422
    res = client.post("/api/v1/predict/record", json={"record": {"age": 1}}, headers=H)
    assert res.status_code == 422
    assert "images only" in res.json()["detail"]  # an image model refuses a record


def test_batch_and_its_limit(client):
    files = [("files", (f"{i}.png", _png(i % 2 == 0))) for i in range(3)]
    res = client.post("/api/v1/predict/batch", files=files, headers=H)
    assert res.status_code == 200, res.text
    scores = [r["prediction"]["score"] for r in res.json()["results"]]
    assert len(scores) == 3 and scores[0] == pytest.approx(scores[2])
    files.append(("files", ("3.png", _png())))
    assert client.post("/api/v1/predict/batch", files=files, headers=H).status_code == 422


def test_fhir_output_on_request(client):
    res = client.post("/api/v1/predict?fhir=true&explain=false", files={"file": ("x.png", _png())}, headers=H)
    bundle = res.json()["fhir"]
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["RiskAssessment", "Observation"]


def test_audit_log_has_every_request_and_no_patient_identifiers(client, tmp_path):
    ok = client.post("/api/v1/predict?explain=false", files={"file": ("x.dcm", _dicom(tmp_path))}, headers=H)
    bad = client.post("/api/v1/predict", files={"file": ("x.txt", b"hello")}, headers=H)
    rows = client.app.state.audit.recent()
    by_id = {r["request_id"]: r for r in rows}
    assert by_id[ok.json()["request_id"]]["status"] == 200
    assert json.loads(by_id[ok.json()["request_id"]]["output_json"])["label"] in ("normal", "pneumonia")
    assert {r["status"] for r in rows} == {200, 415}
    assert bad.status_code == 415
    assert all(len(r["input_sha256"]) == 64 for r in rows)
    # Neither the patient's name nor id is anywhere in the database files (WAL included).
    audit_path = Path(client.app.state.settings.audit_path)
    blob = b"".join(p.read_bytes() for p in audit_path.parent.glob(audit_path.name + "*"))
    for secret in (PATIENT_NAME, PATIENT_ID, "Janet", "778899"):
        assert secret.encode() not in blob
    assert b"x.dcm" not in blob  # nor the uploaded file name


def test_openapi_lists_the_routes_the_key_and_the_errors(client):
    spec = client.get("/openapi.json", headers=H).json()
    paths = spec["paths"]
    assert {"/health", "/api/v1/model", "/api/v1/predict", "/api/v1/predict/batch"} <= set(paths)
    assert spec["components"]["securitySchemes"]["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert paths["/health"]["get"]["security"] == []  # liveness needs no key
    predict = paths["/api/v1/predict"]["post"]
    assert {"ApiKey": []} in predict["security"]
    assert {"200", "401", "413", "415", "422", "503"} <= set(predict["responses"])
    assert "401" in paths["/api/v1/model"]["get"]["responses"]


def test_api_docs_work_offline(client):
    """/docs loads Swagger UI from this service, not from a CDN; /redoc (CDN-only) is gone."""
    import re

    page = client.get("/docs", headers=BASIC)  # a browser, logged in with the key
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/") for s in sources), sources  # nothing from another host
    for source in sources:
        assert client.get(source, headers=BASIC).status_code == 200, source  # every asset is served here
        assert client.get(source).status_code == 401, source  # and, like every route but /health, needs the key
    assert client.get("/redoc", headers=H).status_code == 404


def test_page_is_served(client):
    res = client.get("/", headers=H)
    assert res.status_code == 200 and "api-key" in res.text
    assert client.get("/static/app.js", headers=H).status_code == 200


@pytest.mark.parametrize(
    ("path", "browser"),
    [
        ("/", True),  # the web page
        ("/docs", True),  # Swagger UI (served offline)
        ("/docs-assets/swagger-ui.css", True),  # its files
        ("/openapi.json", True),  # the API description
        ("/static/app.js", True),  # the page's script
        ("/favicon.ico", True),
        ("/api/v1/model", False),  # an API route: no login dialog for scripts
    ],
)
def test_every_route_but_health_needs_the_key(client, path, browser):
    res = client.get(path)
    assert res.status_code == 401, path
    challenge = res.headers["www-authenticate"]
    assert challenge.startswith("Basic realm=") if browser else challenge == "ApiKey"
    # A browser answers the Basic challenge with the key as password; scripts send X-API-Key.
    assert client.get(path, headers=BASIC).status_code in (200, 204)
    assert client.get(path, headers=H).status_code in (200, 204)
    wrong = {"Authorization": "Basic " + base64.b64encode(b"clinician:wrong-key-000").decode()}
    assert client.get(path, headers=wrong).status_code == 401


def test_public_docs_opens_the_page_and_docs_but_no_data(predictor):
    settings = ServiceSettings(api_key=KEY, public_docs=True)
    with TestClient(create_app(predictor, settings)) as public:
        for path in ("/", "/docs", "/docs-assets/swagger-ui-bundle.js", "/openapi.json", "/static/app.js"):
            assert public.get(path).status_code == 200, path
        assert public.get("/api/v1/model").status_code == 401
        assert public.post("/api/v1/predict", files={"file": ("a.png", _png())}).status_code == 401


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"api_key": None}, "No API key"),  # no key, no env var
        ({"api_key": KEY, "host": "0.0.0.0"}, "Refusing to listen"),  # not loopback
    ],
)
def test_serve_refuses_unsafe_settings(run_dir, monkeypatch, kwargs, message):
    monkeypatch.delenv("MEDPREDICT_API_KEY", raising=False)
    monkeypatch.delenv("MEDPREDICT_ALLOW_REMOTE", raising=False)
    with pytest.raises(ConfigError, match=message):
        serve(run_dir, **kwargs)


def test_cli_passes_the_pool_and_docs_flags_to_serve(run_dir, monkeypatch):
    from medpredict import cli
    from medpredict.service import app as service_app

    seen = {}
    monkeypatch.setattr(service_app, "serve", lambda run, **kwargs: seen.update(run=run, **kwargs))
    assert cli.main(["serve", str(run_dir), "--workers", "3", "--queue", "0", "--public-docs"]) == 0
    assert (seen["workers"], seen["queue"], seen["public_docs"], seen["lang"]) == (3, 0, True, "en")
    assert cli.main(["serve", str(run_dir), "--lang", "zh"]) == 0 and seen["lang"] == "zh"
    with pytest.raises(ConfigError, match="page language 'fr'"):
        ServiceSettings(api_key=KEY, lang="fr")


def test_warm_up_predicts_once_with_an_explanation_and_audits_nothing(predictor):
    from medpredict.service.pipeline import warm_up

    calls = []

    class Spy:
        def __getattr__(self, name):
            return getattr(predictor, name)

        def predict(self, **kwargs):
            calls.append(kwargs)
            return predictor.predict(**kwargs)

    app = create_app(Spy(), ServiceSettings(api_key=KEY))
    assert warm_up(app.state.pipeline) > 0
    assert len(calls) == 1 and calls[0]["explain"] is True
    assert app.state.audit.recent() == []  # not a request


def test_short_keys_are_refused():
    with pytest.raises(ConfigError, match="at least 8"):
        ServiceSettings(api_key="abc")


# --------------------------------------------------------------------------- a record model


def record_run(tmp_path_factory) -> Path:
    """A record model on age, chol (numbers with plausibility ranges) and sex (F/M), trained once per session."""
    if "record" not in _TRAINED:
        import pandas as pd

        from medpredict.training.records import train_table

        root = tmp_path_factory.mktemp("table")
        rng = np.random.default_rng(0)
        n = 120
        age, chol = rng.normal(60, 10, n), rng.normal(220, 30, n)
        disease = ((age - 60) / 10 + (chol - 220) / 30 + rng.normal(0, 0.5, n) > 0).astype(int)
        frame = pd.DataFrame({"age": age, "chol": chol, "sex": rng.choice(["F", "M"], n), "disease": disease})
        frame.to_csv(root / "table.csv", index=False)
        train_table(root / "table.csv", target="disease", out=root / "run", baselines=False, n_boot=20, progress=False)
        _TRAINED["record"] = root / "run"
    return _TRAINED["record"]


@pytest.fixture(scope="module")
def record_client(tmp_path_factory):
    from medpredict.inference.predictor import Predictor

    run = record_run(tmp_path_factory)
    settings = ServiceSettings(api_key=KEY, audit_path=str(run.parent / "audit.sqlite"))
    with TestClient(create_app(Predictor.from_bundle(run), settings)) as test_client:
        yield test_client


def test_record_model_predicts_from_json_with_fhir(record_client):
    res = record_client.post("/api/v1/predict/record", json={"record": {"age": 75, "chol": 280, "sex": "M"}}, headers=H)
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["prediction"]["score"] > 0.5  # old age and high cholesterol: the positive class
    observation = body["fhir"]["entry"][1]["resource"]
    assert observation["category"][0]["coding"][0]["code"] == "exam"
    assert observation["valueQuantity"]["value"] == pytest.approx(body["prediction"]["score"], abs=1e-6)
    # the same record as a form field of the general route
    res = record_client.post("/api/v1/predict", data={"record": '{"age": 75, "chol": 280, "sex": "M"}'}, headers=H)
    assert res.json()["prediction"]["score"] == pytest.approx(body["prediction"]["score"])


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"json": {"record": {"age": 75}}}, "lacks field(s) the model needs: chol, sex"),  # required fields missing
        ({"json": {"record": "age=75"}}, "JSON object"),  # not an object
        ({"content": b"{bad json"}, "body is not valid JSON"),  # malformed body
    ],
)
def test_record_model_refuses_bad_records(record_client, kwargs, reason):
    res = record_client.post("/api/v1/predict/record", headers={**H, "Content-Type": "application/json"}, **kwargs)
    assert res.status_code == 422
    assert reason in res.json()["detail"]


def test_record_model_refuses_an_image(record_client):
    res = record_client.post("/api/v1/predict", files={"file": ("x.png", _png())}, headers=H)
    assert res.status_code == 422 and "records only" in res.json()["detail"]
