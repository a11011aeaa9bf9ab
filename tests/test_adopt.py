"""medpredict adopt: a model trained elsewhere gets the bundle a medpredict-trained model carries."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from medpredict.errors import BundleError, ConfigError, DataError  # noqa: E402

KERAS = Path(__file__).parent / "fixtures" / "keras"


class SquareNet(torch.nn.Module):
    """Stands in for a network trained elsewhere on the square data: NHWC in [0, 1], softmax output.

    Two hand-set dense layers on (corner mean, image mean): the hidden layer is the
    penultimate layer adopt should find.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(2, 4)
        self.out = torch.nn.Linear(4, 2)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([[30.0, -30.0], [-30.0, 30.0], [1.0, 0.0], [0.0, 1.0]]))
            self.hidden.bias.zero_()
            self.out.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, -2.0, 0.0, 0.0]]))
            self.out.bias.copy_(torch.tensor([0.0, -1.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        corner = x[:, 1:6, 1:6, :].mean(dim=(1, 2, 3))
        whole = x.mean(dim=(1, 2, 3))
        hidden = torch.relu(self.hidden(torch.stack([corner, whole], dim=1)))
        return torch.softmax(self.out(hidden), dim=1)


def _export(net: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net.eval(), (torch.rand(2, 16, 16, 1),), str(path), input_names=["pixels"],
                          dynamic_axes={"pixels": {0: "n"}}, dynamo=False)
    return path


def _descriptor(folder: Path, model: str = "square.onnx", **changes: object) -> Path:
    spec = {
        "model": model,
        "name": "square-net",
        "version": "3",
        "input": {"size": [16, 16], "channels": 1, "layout": "NHWC", "name": "pixels"},
        "output": {"activation": "none"},
        "labels": ["0", "1"],
        "positive_label": "1",
        "threshold": 0.5,
        "card": {"intended_use": {"description": "square detection", "modalities": ["CR", "DX"]}},
    }
    spec.update(changes)
    path = folder / "square.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def square_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("square")
    _export(SquareNet(), folder / "square.onnx")
    return folder


@pytest.fixture(scope="module")
def adopted(square_graph: Path, square_npz: Path, tmp_path_factory: pytest.TempPathFactory):
    """An adopted run through the command line, and what it printed."""
    import contextlib
    import io

    from medpredict.cli import main

    out = tmp_path_factory.mktemp("adopted") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["-q", "adopt", str(_descriptor(square_graph)), "--data", str(square_npz), "--out", str(out)])
    assert code == 0
    return out, printed.getvalue()


def test_adopt_writes_a_verified_bundle_that_wraps_the_onnx_file(adopted, square_graph):
    from medpredict.bundle.store import verify

    run, printed = adopted
    bundle = run / "model"
    original = hashlib.sha256((square_graph / "square.onnx").read_bytes()).hexdigest()
    files = verify(bundle)
    assert files["model.onnx"] == original  # the user's bytes, covered by the checksums
    assert "weights.safetensors" not in files and "input_guard.json" in files
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["model"]["kind"] == "onnx" and meta["trained_by"] == "elsewhere"
    assert meta["preprocess"]["quantised"]  # inputs rounded to 8-bit steps, as the fitted images were
    assert meta["calibration"]["method"] in ("temperature", "platt", "isotonic")
    assert meta["threshold"]["method"] == "youden" and 0.0 < meta["threshold"]["threshold"] < 1.0
    assert meta["conformal"]["method"] == "mondrian" and meta["adoption"]["n"] == 48
    # the penultimate layer (the 4 hidden units) feeds the input guard
    assert meta["model"]["features"]["source"] == "graph" and meta["model"]["features"]["dim"] == 4
    assert meta["intended_use"]["modalities"] == ["CR", "DX"] and meta["intended_use"]["source"] == "descriptor"
    assert "fitted on validation by medpredict adopt" in meta["provenance"]["threshold"]
    assert "cannot know which data" in meta["provenance"]["training"]
    assert "fitted on validation by medpredict adopt" in printed and "locked on validation" not in printed


def test_the_adopted_bundle_gives_the_whole_contract(adopted, square_npz):
    from medpredict.inference.adopted import AdoptedPredictor
    from medpredict.inference.contract import InputRefused
    from medpredict.inference.loader import load_predictor

    predictor = load_predictor(adopted[0])
    assert isinstance(predictor, AdoptedPredictor)
    assert predictor.identity.architecture == "onnx" and len(predictor.version) == 12
    with np.load(square_npz) as data:
        images = [img[None].astype(np.float32) / 255 for img in data["test_images"][:6]]
    cases = predictor.predict(images=images)
    assert all(c.threshold == pytest.approx(predictor.threshold) for c in cases)
    assert all(c.prediction_set and c.set_coverage == 0.9 for c in cases)  # conformal sets
    assert {c.input_check.status for c in cases} <= {"ok", "unusual"}  # every input checked
    blank = np.ones((1, 16, 16), np.float32)  # nothing like the validation images
    assert predictor.predict(images=[blank])[0].input_check.status == "unusual"
    with pytest.raises(InputRefused, match="Modality is MR"):
        predictor.predict(images=images[:1], tags=[{"Modality": "MR"}])
    assert predictor.explanation(images[1]).method == "occlusion"
    assert predictor.card["trained_by"] == "elsewhere" and "provenance" in predictor.card


def test_a_changed_onnx_file_is_refused(adopted, tmp_path):
    import shutil

    from medpredict.inference.loader import load_predictor

    copy = tmp_path / "run"
    shutil.copytree(adopted[0], copy)
    graph = copy / "model" / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[-10] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its checksum"):
        load_predictor(copy)


def test_evaluate_treats_the_adopted_bundle_like_any_other(adopted, square_npz, tmp_path):
    from medpredict.workflows.evaluate import evaluate

    result = evaluate(adopted[0], data=str(square_npz), out=tmp_path / "eval", n_boot=20, progress=False)
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["threshold"]["chosen_on"] == "validation"
    assert "locked on validation (fitted by medpredict adopt)" in result.summary()
    assert metrics["conformal"]["chosen_on"] == "bundle (validation)" and metrics["input_guard"]["n"] == 48
    assert metrics["calibration"]["method"] == json.loads((adopted[0] / "model" / "bundle.json").read_text())[
        "calibration"]["method"]
    assert metrics["run"]["splits"]["val"]["n"] == 48  # the adoption split, predicted again for the report
    assert metrics["run"]["intended_use"].startswith("square detection")
    cases = (tmp_path / "eval" / "evaluation_cases.csv").read_text().splitlines()
    assert cases[0].startswith("source,true_class,decision") and len(cases) == 49
    card = json.loads((tmp_path / "eval" / "model_card.json").read_text())
    claimed = {item["item"] for item in card["tripod_ai"]}
    assert "15" in claimed and "12f" in claimed  # threshold chosen, model recalibrated, on validation
    assert not claimed & {"12a", "12c", "20a"}  # how it was developed is not medpredict's to document
    assert card["provenance"]["threshold"].startswith(f"{metrics['threshold']['value']:.4f} fitted on validation")
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "never saw during training" not in html and "fitted on validation by medpredict adopt" in html


def test_the_descriptor_threshold_can_be_kept_and_is_reported_as_given(square_graph, square_npz, tmp_path):
    from medpredict.workflows.adopt import adopt
    from medpredict.workflows.evaluate import evaluate

    adopt(_descriptor(square_graph, threshold=0.3), square_npz, tmp_path / "run", threshold_from="descriptor",
          progress=False)
    meta = json.loads((tmp_path / "run" / "model" / "bundle.json").read_text())
    assert meta["threshold"]["method"] == "fixed" and meta["threshold"]["threshold"] == 0.3
    assert "given in the descriptor" in meta["provenance"]["threshold"]
    result = evaluate(tmp_path / "run", out=tmp_path / "eval", n_boot=0, progress=False)  # data: the adopted one
    assert result.metrics["threshold"] == 0.3 and "given with the model" in result.summary()


def test_a_graph_without_a_dense_layer_gets_generic_guard_features(tmp_path, square_npz):
    from medpredict.inference.loader import load_predictor
    from medpredict.workflows.adopt import adopt

    class Corner(torch.nn.Module):  # a probability straight from pixels: no layer to take features from
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(40.0 * (x[:, 1:6, 1:6, :].mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3)) - 0.05))[:, None]

    _export(Corner(), tmp_path / "corner.onnx")
    adopt(_descriptor(tmp_path, model="corner.onnx"), square_npz, tmp_path / "run", progress=False)
    meta = json.loads((tmp_path / "run" / "model" / "bundle.json").read_text())
    assert meta["model"]["features"] == {"source": "generic", "dim": 2 + 64 + 2}
    predictor = load_predictor(tmp_path / "run")
    assert predictor.predict(images=[np.ones((1, 16, 16), np.float32)])[0].input_check.status == "unusual"


@pytest.mark.parametrize(
    ("changes", "kwargs", "error", "message"),
    [
        ({"output": {"activation": "softmax"}}, {}, ConfigError, "output.activation: softmax"),  # softmax twice
        ({}, {"split": "valid"}, DataError, "no 'valid' split"),  # no such split
        ({"labels": ["normal", "pneumonia"], "positive_label": "pneumonia"}, {}, DataError, "Labels"),  # other classes
        ({}, {"threshold_from": "test"}, ConfigError, "Unknown threshold source 'test'"),  # never from test
    ],
)
def test_adopt_refuses_what_it_cannot_fit_honestly(square_graph, square_npz, tmp_path, changes, kwargs, error, message):
    from medpredict.workflows.adopt import adopt

    with pytest.raises(error, match=message):
        adopt(_descriptor(square_graph, **changes), square_npz, tmp_path / "run", progress=False, **kwargs)
    assert not (tmp_path / "run" / "model").exists()  # nothing written half-way


@pytest.mark.slow
def test_keras_export_adopted_and_evaluated_on_pneumoniamnist(shared_data, tmp_path):
    """The committed Keras graph through adopt (val slice) and evaluate (test slice): AUC as the graph's own."""
    import shutil

    from sklearn.metrics import roc_auc_score

    from medpredict.inference.loader import load_predictor
    from medpredict.workflows.adopt import adopt
    from medpredict.workflows.evaluate import evaluate

    with np.load(shared_data / "medmnist" / "pneumoniamnist.npz") as full:
        small = {f"{s}_{k}": full[f"{s}_{k}"][:200] for s in ("val", "test") for k in ("images", "labels")}
    np.savez(tmp_path / "pneumoniamnist.npz", **small)
    for name in ("pneumonia_keras.onnx", "model.yaml"):
        shutil.copy(KERAS / name, tmp_path / name)
    result = adopt(tmp_path / "model.yaml", tmp_path / "pneumoniamnist.npz", tmp_path / "run", progress=False)
    assert result.report["features"]["source"] == "graph"
    evaluation = evaluate(tmp_path / "run", split="test", out=tmp_path / "eval", n_boot=0, progress=False)
    graph = load_predictor(tmp_path / "model.yaml")  # the graph's own probabilities, not adopted
    raw = graph.predict_proba_batch(graph.preprocess(list(small["test_images"][:, None].astype(np.float32) / 255)))
    y = small["test_labels"].reshape(-1)
    assert evaluation.metrics["auc"] == pytest.approx(roc_auc_score(y, raw[:, 1]), abs=1e-6)
    metrics = json.loads(evaluation.metrics_path.read_text())
    assert metrics["calibration"]["test"]["ece"] < metrics["calibration"]["test_uncalibrated"]["ece"]
    assert "fitted on validation by medpredict adopt" in metrics["run"]["provenance"]["calibration"]


def test_predict_files_and_the_service_answer_with_the_adopted_bundle(adopted, tmp_path):
    pytest.importorskip("fastapi")
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from medpredict.inference.files import predict_files
    from medpredict.inference.loader import load_predictor
    from medpredict.service.app import ServiceSettings, create_app

    image = np.full((16, 16), 60, np.uint8)
    image[1:6, 1:6] = 200  # a bright corner: class "1"
    Image.fromarray(image).save(tmp_path / "case.png")
    result = predict_files(adopted[0], [tmp_path / "case.png"], tmp_path / "out", progress=False)
    row = result.rows[0]
    assert row["decision"] == "1" and row["prediction_set"] and row["input_check"]["status"] in ("ok", "unusual")
    assert (tmp_path / "out" / row["overlay"]).is_file()  # an occlusion overlay
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    app = create_app(load_predictor(adopted[0]), ServiceSettings(api_key="adopt-key-1234"))
    with TestClient(app) as client:
        res = client.post("/api/v1/predict", files={"file": ("case.png", buffer.getvalue())},
                          headers={"X-API-Key": "adopt-key-1234"})
    assert res.status_code == 200, res.text
    answer = res.json()["prediction"]
    assert answer["decision"] == "1" and answer["prediction_set"] == row["prediction_set"]
    assert answer["probabilities"] == pytest.approx(row["probabilities"], abs=1e-6)


def test_adopt_into_a_folder_holding_a_run_is_refused_and_force_moves_it_aside(adopted, square_graph, square_npz,
                                                                              tmp_path):
    import shutil

    from medpredict.workflows.adopt import adopt

    run = tmp_path / "run"
    shutil.copytree(adopted[0], run)
    with pytest.raises(ConfigError, match="already holds an image model.*--force"):
        adopt(_descriptor(square_graph), square_npz, run, progress=False)
    adopt(_descriptor(square_graph), square_npz, run, progress=False, force=True)
    assert (run / "model" / "bundle.json").is_file() and len(list(tmp_path.glob("run.old-*"))) == 1
