"""The shipped non-chest DICOMs are refused by ``predict`` and ``serve`` for a chest-radiograph model.

Issue 11: a CT, a head MR, an ultrasound and a tibia radiograph all got a pneumonia
probability. A bundle that declares the chest-radiograph intended use refuses each, naming the
tag that contradicts it (``predict`` exit 2, ``serve`` 422); the chest CR is answered. (``pacs``
skips the same studies: ``tests/test_pacs.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

KEY = "k" * 32
NON_CHEST = {  # file under ../shared/data/dicom -> the tag the refusal names
    "pydicom_data/RG3_J2KR.dcm": "BodyPartExamined",  # a tibia CR
    "pydicom_data/MR2_UNCR.dcm": "Modality",
    "pydicom_data/US1_UNCR.dcm": "Modality",
    "pydicom_wheel/CT_small.dcm": "Modality",
}
CHEST = "pydicom_data/RG1_J2KI.dcm"


@pytest.fixture(scope="module")
def chest_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny run, copied and re-saved with the chest-radiograph intended use."""
    from test_service import chest_radiograph_copy, tiny_run

    return chest_radiograph_copy(tiny_run(tmp_path_factory), tmp_path_factory.mktemp("chest") / "run")


def test_predict_refuses_each_non_chest_dicom_and_answers_the_chest_cr(
    chest_run: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medpredict.cli import main

    dicom = shared_data / "dicom"
    files = [str(dicom / name) for name in [*NON_CHEST, CHEST]]
    code = main(["-q", "predict", str(chest_run), *files, "--out", str(tmp_path / "out"), "--no-overlays"])
    assert code == 2  # some inputs were refused
    assert f"{len(NON_CHEST)} refused, 0 failed" in capsys.readouterr().out
    rows = pd.read_csv(tmp_path / "out" / "predictions.csv").set_index("source")
    for name, tag in NON_CHEST.items():
        row = rows.loc[Path(name).name]
        assert tag in row["refused"] and pd.isna(row["label"]), (name, row.to_dict())
    chest = rows.loc[Path(CHEST).name]
    assert pd.isna(chest["refused"]) and chest["label"] in ("normal", "pneumonia")


def test_serve_answers_422_naming_the_tag_and_200_for_the_chest_cr(chest_run: Path, shared_data: Path,
                                                                  tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from medpredict.inference.loader import load_predictor
    from medpredict.service.app import ServiceSettings, create_app

    settings = ServiceSettings(api_key=KEY, max_upload_bytes=8 * 1024 * 1024, audit_path=str(tmp_path / "audit.db"))
    headers = {"X-API-Key": KEY}
    with TestClient(create_app(load_predictor(chest_run), settings)) as client:
        for name, tag in NON_CHEST.items():
            path = shared_data / "dicom" / name
            response = client.post("/api/v1/predict", files={"file": (path.name, path.read_bytes())}, headers=headers)
            assert response.status_code == 422 and tag in response.json()["detail"], (name, response.text)
        path = shared_data / "dicom" / CHEST
        response = client.post("/api/v1/predict", files={"file": (path.name, path.read_bytes())}, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["prediction"]["decision"] in ("normal", "pneumonia")
