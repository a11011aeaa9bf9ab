"""ONNX Runtime backend and the bring-your-own-model descriptor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from medpredict.errors import BundleError, ConfigError, DataError  # noqa: E402
from medpredict.inference.onnx import (  # noqa: E402
    OnnxBackend,
    OnnxPredictor,
    is_descriptor,
    load_descriptor,
)


class KerasLike(torch.nn.Module):
    """Stands in for a TensorFlow model: NHWC input in [0, 255], one sigmoid output.

    The 'finding' is brightness of the image's top-left quadrant, so the occlusion map
    has a known answer.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quadrant = x[:, :16, :16, :].mean(dim=(1, 2, 3)) / 255.0
        return torch.sigmoid(12.0 * (quadrant - 0.5)).unsqueeze(1)


def _trace(net, example, path, name):
    """Export with the (fast) TorchScript tracer, as a model from elsewhere would arrive."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, (example,), str(path), input_names=[name], dynamic_axes={name: {0: "n"}}, dynamo=False
        )


@pytest.fixture
def keras_yaml(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            KerasLike(),
            (torch.rand(1, 32, 32, 3) * 255,),
            str(tmp_path / "keras.onnx"),
            input_names=["input_1"],
            output_names=["dense"],
            dynamic_axes={"input_1": {0: "n"}, "dense": {0: "n"}},
            dynamo=False,
        )
    spec = {
        "model": "keras.onnx",
        "name": "keras-demo",
        "version": "7",
        "input": {"size": [32, 32], "channels": 3, "layout": "NHWC", "scale": [0, 255]},
        "output": {"activation": "none"},
        "labels": ["normal", "pneumonia"],
        "positive_label": "pneumonia",
        "threshold": 0.4,
        "card": {"intended_use": "test only"},
    }
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _image(bright_top_left: bool, size: int = 64) -> np.ndarray:
    img = np.full((1, size, size), 0.1, np.float32)
    if bright_top_left:
        img[:, : size // 2, : size // 2] = 0.95
    return img


def test_backend_softmax_rows_sum_to_one(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    _trace(net, torch.rand(2, 1, 4, 4), tmp_path / "l.onnx", "image")
    backend = OnnxBackend(tmp_path / "l.onnx")
    probs = backend.predict_proba(np.random.default_rng(0).random((5, 1, 4, 4), dtype=np.float32))
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    # torch in, torch out: the call a Predictor makes on its model
    out = backend(torch.rand(2, 1, 4, 4))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
    # MONAI's MetaTensor (what medpredict's transforms return) is a tensor too
    from monai.data import MetaTensor

    out = backend(MetaTensor(torch.rand(2, 1, 4, 4)))
    assert isinstance(out, torch.Tensor) and out.float().shape == (2, 3)
    with pytest.raises(DataError, match="refused inputs of shape"):
        backend.logits(np.zeros((2, 1, 5, 5), np.float32))


def test_backend_refuses_missing_or_corrupt_files(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        OnnxBackend(tmp_path / "nope.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(BundleError, match="not a loadable ONNX model"):
        OnnxBackend(tmp_path / "bad.onnx")


def test_descriptor_loads_and_resolves_the_model_path(keras_yaml):
    d = load_descriptor(keras_yaml)
    assert (d.height, d.width, d.channels, d.layout) == (32, 32, 3, "NHWC")
    assert d.model.endswith("keras.onnx") and d.task == "binary"
    assert is_descriptor(keras_yaml)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input": {"size": [32, 32], "layuot": "NHWC"}}, "Did you mean 'layout'"),  # typo in a key
        ({"positive_label": "pneumonai"}, "Did you mean 'pneumonia'"),  # typo in a label
        ({"input": {"size": [32, 32], "layout": "HWC"}}, "Unknown input layout"),  # unknown layout
        ({"threshold": 1.5}, "threshold"),  # not a probability
        ({"labels": ["only"]}, "at least two"),  # one class is not a classifier
        ({"input": {"channels": 3}}, "input.height"),  # size missing
    ],
)
def test_descriptor_errors_name_the_problem(keras_yaml, change, message):
    spec = yaml.safe_load(keras_yaml.read_text())
    spec.update(change)
    keras_yaml.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=message):
        load_descriptor(keras_yaml)


def test_descriptor_naming_a_missing_onnx_file(keras_yaml):
    spec = yaml.safe_load(keras_yaml.read_text())
    spec["model"] = "gone.onnx"
    keras_yaml.write_text(yaml.safe_dump(spec))
    with pytest.raises(BundleError, match="gone.onnx"):
        load_descriptor(keras_yaml)


def test_preprocess_applies_layout_scale_and_size(keras_yaml):
    pred = OnnxPredictor.from_path(keras_yaml)
    batch = pred.preprocess([np.ones((1, 64, 64), np.float32)])
    assert batch.shape == (1, 32, 32, 3)  # NHWC, grey repeated to RGB, resized
    assert batch.max() == pytest.approx(255.0)


def test_single_sigmoid_output_becomes_two_class_probabilities(keras_yaml):
    pred = OnnxPredictor.from_path(keras_yaml)
    probs = pred.predict_proba_batch(pred.preprocess([_image(True), _image(False)]))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert probs[0, 1] > 0.9 and probs[1, 1] < 0.1  # pneumonia column is the model's output


def test_lower_level_surface_matches_predict(keras_yaml):
    pred = OnnxPredictor.from_path(keras_yaml)
    batch = torch.from_numpy(np.stack([_image(True, 32), _image(False, 32)]))  # what evaluation passes
    logits = pred.logits(batch)
    probs = pred.calibrate(logits)
    np.testing.assert_allclose(probs, pred.predict_proba(batch), atol=1e-6)
    # softmax(logits) gives back the graph's own probabilities, not a second activation
    np.testing.assert_allclose(
        probs, pred.predict_proba_batch(pred.preprocess(list(batch.numpy()))), atol=1e-5
    )
    assert pred.image_size == 32 and pred.meta["labels"] == ["normal", "pneumonia"]


def test_service_serves_an_external_model(keras_yaml, tmp_path):
    pytest.importorskip("fastapi")
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from medpredict.service.app import ServiceSettings, create_app

    buffer = io.BytesIO()
    Image.fromarray((_image(True)[0] * 255).astype(np.uint8)).save(buffer, format="PNG")
    app = create_app(OnnxPredictor.from_path(keras_yaml), ServiceSettings(api_key="byo-key-1234"))
    with TestClient(app) as client:
        res = client.post(
            "/api/v1/predict",
            files={"file": ("x.png", buffer.getvalue())},
            headers={"X-API-Key": "byo-key-1234"},
        )
        card = client.get("/api/v1/model", headers={"X-API-Key": "byo-key-1234"}).json()
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["prediction"]["label"] == "pneumonia"
    assert {k: body["model"][k] for k in ("name", "version", "text")} == {
        "name": "keras-demo", "version": "7", "text": "keras-demo v7 (onnx)"
    }
    assert body["explanation"] == "Occlusion: evidence for 'pneumonia'"
    assert body["overlay_png"].startswith("data:image/png")
    assert card["positive_label"] == "pneumonia" and card["threshold"] == 0.4


def test_predict_returns_predictions_at_the_locked_threshold(keras_yaml):
    pytest.importorskip("medpredict.inference.predictor")
    pred = OnnxPredictor.from_path(keras_yaml)
    out = pred.predict(images=[_image(True), _image(False)])
    assert [p.label for p in out] == ["pneumonia", "normal"]
    assert out[0].threshold == 0.4
    assert set(out[0].probabilities) == {"normal", "pneumonia"}
    assert 0.0 <= out[0].uncertainty["entropy"] <= 1.0
    with pytest.raises(DataError, match="images only"):
        pred.predict(images=[_image(True)], records=[{"age": 3}])


def test_explain_occlusion_points_at_the_finding(keras_yaml):
    pred = OnnxPredictor.from_path(keras_yaml)
    heat = pred.explain(_image(True))
    assert heat.shape == (64, 64) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat[:32, :32].mean() > 3 * heat[32:, 32:].mean()


def test_occlusion_of_a_pixel_sum():
    from medpredict.explain.maps import occlusion

    img = np.zeros((1, 8, 8), np.float32)
    img[0, 6:, 6:] = 1.0

    def score(b: np.ndarray) -> np.ndarray:
        s = b[:, 0, 6:, 6:].sum(axis=(1, 2))
        return np.stack([-s, s], axis=1)

    heat = occlusion(score, img, 1, patch=2, baseline=float(img.mean()), progress=False)
    assert heat[7, 7] == 1.0 and heat[0, 0] == 0.0


# --------------------------------------------------------------------------- bundle on ONNX Runtime


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    import shutil

    from medpredict.deploy.export import export_run
    from test_service import tiny_run

    target = tmp_path_factory.mktemp("onnxrun") / "tiny"
    shutil.copytree(tiny_run(tmp_path_factory), target)
    export_run(target, exporter="torchscript", quantize=True)  # model.onnx and model.int8.onnx
    return target


def _xrays(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(9)
    images = []
    for i in range(n):
        img = rng.random((1, 28, 28), dtype=np.float32) * 0.35
        if i % 2:
            img[:, 4:16, 4:16] += 0.55
        images.append(img)
    return images


def test_onnx_bundle_predictor_matches_pytorch(exported_run):
    from medpredict.inference.loader import load_predictor
    from medpredict.inference.onnx import OnnxBundlePredictor
    from medpredict.inference.predictor import Predictor

    torch_pred = Predictor.from_bundle(exported_run)
    onnx_pred = load_predictor(exported_run, backend="onnx")
    assert isinstance(onnx_pred, OnnxBundlePredictor)
    a = torch_pred.predict(images=_xrays(6))
    b = onnx_pred.predict(images=_xrays(6))
    assert [p.label for p in a] == [p.label for p in b]
    np.testing.assert_allclose([p.score for p in a], [p.score for p in b], atol=1e-5)
    heat = onnx_pred.explain(_xrays(2)[1])
    assert heat.shape == (28, 28) and heat.max() == pytest.approx(1.0)
    assert "occlusion" in onnx_pred.card["explanation"]


def test_stale_onnx_export_is_refused(exported_run, tmp_path):
    import shutil

    from medpredict.bundle.store import load_bundle, save_bundle
    from medpredict.inference.onnx import OnnxBundlePredictor

    stale = tmp_path / "stale"
    shutil.copytree(exported_run, stale)
    bundle = load_bundle(stale)
    retrained = {k: v + 0.01 if v.is_floating_point() else v for k, v in bundle.state_dict.items()}
    meta = {
        k: v for k, v in bundle.meta.items() if k not in ("format", "format_version", "medpredict_version")
    }
    save_bundle(stale / "model", state_dict=retrained, meta=meta)  # the bundle changed, the ONNX did not
    with pytest.raises(BundleError, match="export again"):
        OnnxBundlePredictor.from_run(stale)


def test_int8_backend_runs_the_quantised_file(exported_run, tmp_path):
    import shutil

    from medpredict.inference.loader import load_predictor
    from medpredict.inference.onnx import OnnxBundlePredictor

    fp32, int8 = load_predictor(exported_run, backend="onnx"), load_predictor(exported_run, backend="int8")
    assert isinstance(int8, OnnxBundlePredictor)
    assert Path(int8.model.path).name == "model.int8.onnx" and Path(fp32.model.path).name == "model.onnx"
    a, b = fp32.predict(images=_xrays(8)), int8.predict(images=_xrays(8))
    assert np.max(np.abs(np.array([p.score for p in a]) - [p.score for p in b])) < 0.1  # quantised, close
    bare = tmp_path / "bare"
    shutil.copytree(exported_run, bare)
    (bare / "onnx" / "model.int8.onnx").unlink()
    with pytest.raises(BundleError, match="--int8"):
        load_predictor(bare, backend="int8")


def test_cli_predict_accepts_the_int8_backend(exported_run, tmp_path):
    from fixtures_images import write_png
    from medpredict.cli import main
    from medpredict.inference.loader import load_predictor

    image = write_png(tmp_path / "x.png", (_xrays(2)[1][0] * 255).astype(np.uint8))
    assert main(["-q", "predict", str(exported_run), str(image), "--out", str(tmp_path / "out"),
                 "--backend", "int8", "--no-overlays"]) == 0
    written = json.loads((tmp_path / "out" / "predictions.json").read_text())
    expected = load_predictor(exported_run, backend="int8").predict(images=[image])[0]
    (row,) = written["predictions"]
    assert row["score"] == pytest.approx(expected.score, abs=1e-6)  # the int8 model made it


def test_unknown_backend_gets_a_suggestion(exported_run):
    from medpredict.inference.loader import load_predictor

    with pytest.raises(ConfigError, match="Did you mean 'onnx'"):
        load_predictor(exported_run, backend="onxx")


# --------------------------------------------------------------------------- a real Keras export

KERAS = Path(__file__).parent / "fixtures" / "keras"


def _keras_descriptor(tmp_path, **changes):
    """The committed Keras fixture's descriptor, copied with ``changes`` (None removes a key)."""
    import shutil

    shutil.copy(KERAS / "pneumonia_keras.onnx", tmp_path / "pneumonia_keras.onnx")
    spec = yaml.safe_load((KERAS / "model.yaml").read_text())
    for key, value in changes.items():
        section, _, name = key.rpartition(".")
        target = spec[section] if section else spec
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_keras_export_agrees_with_keras():
    """The graph Keras 3 exported (model.export(format="onnx")) gives Keras's own probabilities."""
    from medpredict.inference.loader import load_predictor

    expected = np.load(KERAS / "expected.npz")
    predictor = load_predictor(KERAS / "model.yaml")
    images = [img[None].astype(np.float32) / 255.0 for img in expected["images"]]
    got = np.array([[c.probabilities[k] for k in ("normal", "pneumonia")] for c in predictor.predict(images=images)])
    assert got.shape == expected["probabilities"].shape
    np.testing.assert_allclose(got, expected["probabilities"], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # the default output.activation (softmax) on a graph that ends in softmax: softmax twice
        ({"output.activation": None}, r"output.activation: softmax would apply softmax a second time"),
        ({"output.activation": "sigmoid"}, r"output.activation: sigmoid"),  # sigmoid on two exclusive classes
        ({"input.layout": "NCHW"}, r"Set input.layout: NHWC"),  # Keras graphs are channels-last
        ({"input.name": "images"}, r"input.name 'images' is not an input.*Did you mean 'image'"),
        ({"input.height": 32, "input.width": 32}, r"input.height 32, input.width 32"),
    ],
)
def test_wrong_keras_descriptors_are_refused_naming_the_key(tmp_path, changes, message):
    from medpredict.inference.loader import load_predictor

    with pytest.raises(ConfigError, match=message):
        load_predictor(_keras_descriptor(tmp_path, **changes))


def test_a_bare_onnx_file_gets_the_descriptor_it_needs():
    from medpredict.inference.loader import load_predictor

    with pytest.raises(ConfigError, match=r"descriptor YAML") as info:
        load_predictor(KERAS / "pneumonia_keras.onnx")
    text = str(info.value)
    # the example is filled in from the graph: 28 x 28, one channel, channels last
    assert "height: 28, width: 28, channels: 1, layout: NHWC" in text and "medpredict adopt" in text


def test_evaluating_a_descriptor_reports_its_threshold_as_given(keras_yaml, square_npz, tmp_path):
    """Not adopted: no "locked on validation", no "never saw during training", no TRIPOD+AI item 15."""
    import json

    from medpredict.workflows.evaluate import evaluate

    spec = yaml.safe_load(keras_yaml.read_text())
    spec["labels"] = ["0", "1"]  # the square data's classes
    spec["positive_label"] = "1"
    keras_yaml.write_text(yaml.safe_dump(spec))
    result = evaluate(keras_yaml, data=str(square_npz), out=tmp_path / "eval", n_boot=20, progress=False)
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["threshold"]["chosen_on"] == "given" and metrics["threshold"]["value"] == 0.4
    assert "locked on validation" not in result.summary() and "given with the model" in result.summary()
    assert metrics["run"]["trained_by"] == "elsewhere"
    assert metrics["run"]["intended_use"].startswith("test only")  # the descriptor's card.intended_use
    assert "given in the descriptor" in metrics["run"]["provenance"]["threshold"]
    card = json.loads((tmp_path / "eval" / "model_card.json").read_text())
    claimed = {item["item"] for item in card["tripod_ai"]}
    assert "15" not in claimed and "12a" not in claimed and "23a" in claimed
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "never saw during training" not in html and "cannot know which data the model saw" in html
