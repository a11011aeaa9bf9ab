"""The contract every kind of model keeps, on every backend: load -> predict -> explain -> export -> evaluate.

One tiny model per kind (image, record, fused) is trained once per module and driven only
through the public surface: ``medpredict.inference.loader.load_predictor(path, backend=...)``,
``.predict(images=..., records=...)``, ``.explain(...)``, ``medpredict.deploy.export.export_run``
and ``medpredict.workflows.evaluate.evaluate``. The issue "Architecture" reproduced four crashes
at these joins; each has its own test below, named after it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conftest import make_square_npz, tiny_config
from medpredict.deploy.export import export_run
from medpredict.errors import ConfigError
from medpredict.inference.loader import load_predictor
from medpredict.workflows.evaluate import evaluate

KINDS = ("image", "record", "fused")
BACKENDS = ("torch", "onnx")
N_ROWS = 90


def _record_table(path: Path) -> Path:
    """90 patients; the outcome follows age, cholesterol and sex, with 10% missing cholesterol."""
    rng = np.random.default_rng(2)
    age, chol = rng.normal(60, 10, N_ROWS).round(0), rng.normal(230, 40, N_ROWS).round(0)
    sex = rng.choice(["male", "female"], N_ROWS)
    risk = (age - 60) / 10 + (chol - 230) / 40 + (sex == "male") + rng.normal(0, 0.5, N_ROWS)
    frame = pd.DataFrame({"age": age, "chol": chol, "sex": sex, "outcome": (risk > 0.5).astype(int)})
    frame.loc[rng.random(N_ROWS) < 0.1, "chol"] = np.nan
    frame.to_csv(path, index=False)
    return path


def _paired_manifest(folder: Path) -> Path:
    """90 paired rows (45 patients): a bright corner in the image and a lab value carry the label."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=N_ROWS), rng.normal(size=N_ROWS)
    y = (a + b > 0).astype(int)
    images = rng.normal(100, 20, size=(N_ROWS, 16, 16))
    images[:, 1:6, 1:6] += 40 * a[:, None, None]
    np.savez_compressed(folder / "paired.npz", train_images=np.clip(images, 0, 255).astype(np.uint8),
                        train_labels=y.reshape(-1, 1).astype(np.uint8))
    frame = pd.DataFrame({
        "image_path": [f"paired.npz::train_images/{i}" for i in range(N_ROWS)],
        "patient_id": [f"p{i // 2:03d}" for i in range(N_ROWS)],
        "lab_a": (100 + 15 * b).round(1),
        "smoker": rng.choice(["never", "former", "current"], N_ROWS),
        "label": np.where(y == 1, "disease", "healthy"),
    })
    frame["image_path"] = frame["image_path"].astype(object)
    frame.loc[[3, 17], "image_path"] = None  # rows without an image
    frame.loc[[5, 40], ["lab_a", "smoker"]] = None  # rows without a record
    frame.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One trained run folder per kind, exported to ONNX (the fast tracer) once."""
    from medpredict.training.fusion import train_fusion
    from medpredict.training.image import train
    from medpredict.training.record_fit import RECORD_TRAINING
    from medpredict.training.records import train_table

    root = tmp_path_factory.mktemp("contract")
    npz = make_square_npz(root / "squaremnist.npz", n=(64, 32, 32))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("medpredict.training.engine._plot_curves", lambda history, path: None)
        folders = {
            "image": train(tiny_config(npz, root, name="image", **{"train.epochs": 2}), progress=False).run_dir,
            "record": train_table(_record_table(root / "table.csv"), target="outcome", out=root / "record",
                                  train=replace(RECORD_TRAINING, epochs=10), baselines=False, n_boot=0,
                                  progress=False).run_dir,
            "fused": train_fusion(_paired_manifest(root), out=root / "fused", image_model="small-cnn", image_size=16,
                                  epochs=2, n_boot=0, progress=False).run_dir,
        }
    for folder in folders.values():
        export_run(folder, exporter="torchscript")
    return folders


def _inputs(kind: str, run: Path) -> dict[str, Any]:
    """Three cases of raw input as a caller sends them (arrays out of the readers, record dicts)."""
    rng = np.random.default_rng(0)
    images = [rng.random((1, 20, 20), dtype=np.float32) for _ in range(3)]  # resized to 16 px on the way in
    if kind == "image":
        return {"images": images}
    if kind == "record":
        return {"records": [{"age": 70, "chol": 280, "sex": "male"}, {"age": 40, "chol": None, "sex": "female"},
                            {"age": 55, "chol": 210, "sex": "male"}]}
    return {"images": [images[0], None, images[2]],  # image + record, record only, image only
            "records": [{"lab_a": 120.0, "smoker": "never"}, {"lab_a": 90.0, "smoker": "current"}, None]}


def _probabilities(predictions: list[Any], labels: list[str]) -> np.ndarray:
    return np.array([[p.probabilities[label] for label in labels] for p in predictions])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_load_and_predict(runs: dict[str, Path], kind: str, backend: str) -> None:
    predictor = load_predictor(runs[kind], backend=backend)
    probs = _probabilities(predictor.predict(**_inputs(kind, runs[kind])), predictor.labels)
    assert probs.shape == (3, 2) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    if backend == "onnx":  # the exported graph predicts what PyTorch predicts
        torch_probs = _probabilities(load_predictor(runs[kind]).predict(**_inputs(kind, runs[kind])), predictor.labels)
        np.testing.assert_allclose(probs, torch_probs, atol=1e-4)


@pytest.mark.parametrize(
    ("kind", "backend"),
    [
        ("image", "torch"),  # Grad-CAM
        ("image", "onnx"),  # occlusion: no gradients through ONNX
        ("fused", "torch"),  # Grad-CAM of the image branch
        ("fused", "onnx"),  # occlusion of the image with the record absent, as the graph's three inputs
    ],
)
def test_explain_an_image(runs: dict[str, Path], kind: str, backend: str) -> None:
    predictor = load_predictor(runs[kind], backend=backend)
    image = _inputs(kind, runs[kind])["images"][0]
    maps = [predictor.explain(image, index) for index in range(len(predictor.labels))]
    for heatmap in maps:  # a class without positive evidence gets an all-zero map, never a stretched one
        assert heatmap.shape == (16, 16) and heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    assert max(heatmap.max() for heatmap in maps) > 0
    # by default the map explains the class decided for the case
    np.testing.assert_array_equal(predictor.explain(image), maps[predictor.decided_index(predictor.prepare(image))])


@pytest.mark.parametrize("backend", BACKENDS)
def test_explain_a_record(runs: dict[str, Path], backend: str) -> None:
    """A record model explains one patient by how each value moves the risk (local attribution)."""
    from medpredict.explain.checks import local_attribution

    predictor = load_predictor(runs["record"], backend=backend)
    background = pd.read_csv(runs["record"].parent / "table.csv").drop(columns="outcome")

    def predict_fn(frame: pd.DataFrame) -> np.ndarray:
        return predictor.predict_proba(predictor.prepare_records(frame))

    row = pd.DataFrame([{"age": 75, "chol": 300, "sex": "male"}])
    attribution = local_attribution(predict_fn, row, background)
    assert set(attribution["feature"]) == {"age", "chol", "sex"}
    assert np.isfinite(attribution["attribution"]).all() and attribution["attribution"].abs().max() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_export_writes_a_graph_with_one_input_per_network_input(runs: dict[str, Path], kind: str) -> None:
    """Once ``KeyError: 'image_size'`` (record) and ``FusionNet.forward() missing 'record'`` (fused)."""
    report = json.loads((runs[kind] / "onnx" / "export.json").read_text())
    expected = {"image": ["image"], "record": ["record"], "fused": ["image", "record", "present"]}[kind]
    assert report["input_names"] == expected
    assert report["max_abs_diff"] <= 1e-4
    assert report["parity_samples"] == (32 if kind == "image" else 16)  # an image run checks on its validation images


def test_export_of_a_record_run(runs: dict[str, Path], tmp_path: Path) -> None:
    """The reproduced crash: ``medpredict export`` on a record run raised ``KeyError: 'image_size'``."""
    from medpredict.cli import main

    assert main(["export", str(runs["record"]), "--exporter", "torchscript", "--out", str(tmp_path)]) == 0
    shapes = json.loads((tmp_path / "export.json").read_text())["input_shapes"]
    assert shapes == [[-1, 4]]  # age, chol, sex, chol__missing


def test_export_of_a_fused_run(runs: dict[str, Path], tmp_path: Path) -> None:
    """The reproduced crash: ``medpredict export`` on a fused run raised ``TypeError: FusionNet.forward()``."""
    from medpredict.cli import main

    assert main(["export", str(runs["fused"]), "--exporter", "torchscript", "--out", str(tmp_path)]) == 0
    shapes = json.loads((tmp_path / "export.json").read_text())["input_shapes"]
    assert shapes[0] == [-1, 1, 16, 16] and shapes[2] == [-1, 2]


@pytest.mark.parametrize("backend", ["torch", pytest.param("onnx", marks=pytest.mark.slow)])  # ~4 s each
@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_on_the_runs_own_test_split(runs: dict[str, Path], kind: str, backend: str, tmp_path: Path) -> None:
    result = evaluate(runs[kind], backend=backend, out=tmp_path, n_boot=0, progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    bundle = json.loads((runs[kind] / "model" / "bundle.json").read_text())
    assert saved["metrics"]["n"] == bundle["data"]["rows"]["test"] == result.metrics["n"]
    assert 0.0 <= result.metrics["auc"] <= 1.0 and (tmp_path / "report.html").is_file()


def test_evaluate_of_a_fused_run(runs: dict[str, Path], tmp_path: Path) -> None:
    """The reproduced crash: ``medpredict evaluate`` on a fused run raised ``Unknown config key 'source'``."""
    from medpredict.cli import main

    run = tmp_path / "fused"
    shutil.copytree(runs["fused"], run)
    assert main(["evaluate", str(run), "--n-boot", "0"]) == 0
    # the run's own metrics.json (its views compared) stays; the evaluation has a folder of its own
    assert "views" in json.loads((run / "metrics.json").read_text())
    report = json.loads((run / "evaluation-own-test" / "metrics.json").read_text())
    assert report["metrics"]["n"] == json.loads((run / "model" / "bundle.json").read_text())["data"]["rows"]["test"]
    assert (run / "model" / "model_card.md").is_file()


def test_train_refuses_an_image_size_below_the_models_minimum_before_reading_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reproduced crash: ``train --model densenet121`` at 28 px read all data, then ``Output size is too small``."""
    from medpredict.cli import main

    absent = tmp_path / "not-read.npz"  # never opened: the size check comes first
    assert main(["train", "--model", "densenet121", "--data", str(absent), "--out", str(tmp_path / "r")]) == 2
    message = capsys.readouterr().err
    assert "densenet121" in message and "28" in message and "32" in message
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="at least 32 px"):
        from medpredict.training.fusion import train_fusion

        train_fusion(absent, image_model="densenet121", out=tmp_path / "f")
