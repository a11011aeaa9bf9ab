"""ONNX export: parity with PyTorch, dynamic batch, metadata, int8 quantisation report."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from medpredict.deploy import export  # noqa: E402
from medpredict.errors import BundleError, ConfigError  # noqa: E402
from medpredict.inference.onnx import OnnxBackend  # noqa: E402


class TinyCNN(torch.nn.Module):
    """A few-hundred-parameter CNN with batch norm, the layers real models use."""

    def __init__(self, channels: int = 1, classes: int = 2) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 4, 3, padding=1),
            torch.nn.BatchNorm2d(4),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(4, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.head = torch.nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Fusion(torch.nn.Module):
    """Image + record model, called as model(image, record)."""

    def __init__(self) -> None:
        super().__init__()
        self.image = TinyCNN(classes=3)
        self.record = torch.nn.Linear(5, 3)

    def forward(self, image: torch.Tensor, record: torch.Tensor) -> torch.Tensor:
        return self.image(image) + self.record(record)


@pytest.fixture
def model() -> TinyCNN:
    torch.manual_seed(0)
    net = TinyCNN()
    net.eval()
    return net


def _images(n: int, seed: int = 0, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, size, size), dtype=np.float32)


@pytest.mark.parametrize(
    "exporter",
    [
        pytest.param("dynamo", marks=pytest.mark.slow),  # the default exporter; ~5-10 s on first use
        "torchscript",  # the fallback tracer
    ],
)
def test_export_matches_pytorch_and_batch_axis_is_dynamic(model, tmp_path, exporter):
    path = tmp_path / "m.onnx"
    # exported with batch 2, checked with batch 7: a fixed batch axis would fail here
    report = export.export_onnx(
        model, path, [_images(2)], parity_inputs=[_images(7, seed=1)], exporter=exporter
    )
    assert path.is_file()
    assert report.max_abs_diff < 1e-4
    assert report.parity_samples == 7
    assert report.input_shapes == [[-1, 1, 16, 16]]
    backend = OnnxBackend(path)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(_images(3, seed=2))), 1).numpy()
    np.testing.assert_allclose(backend.predict_proba(_images(3, seed=2)), expected, atol=1e-5)


def test_export_of_a_two_input_model(tmp_path):
    torch.manual_seed(1)
    net = Fusion().eval()
    rec = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    report = export.export_onnx(
        net, tmp_path / "f.onnx", [_images(4), rec], exporter="torchscript", input_names=("image", "record")
    )
    assert report.input_names == ["image", "record"]
    assert OnnxBackend(tmp_path / "f.onnx").logits(_images(4), rec).shape == (4, 3)


def test_metadata_is_stored_in_the_graph(model, tmp_path):
    export.export_onnx(
        model,
        tmp_path / "m.onnx",
        [_images(2)],
        exporter="torchscript",
        metadata={"weights_sha256": "abc", "medpredict.labels": "normal,pneumonia"},
    )
    meta = OnnxBackend(tmp_path / "m.onnx").metadata
    assert meta["medpredict.weights_sha256"] == "abc"
    assert meta["medpredict.labels"] == "normal,pneumonia"
    assert meta["medpredict.producer"] == "medpredict"


def test_parity_failure_is_refused(model, tmp_path, monkeypatch):
    # Simulate an exporter that silently changed the maths.
    monkeypatch.setattr(export, "parity_max_abs_diff", lambda *a, **k: 0.5)
    with pytest.raises(BundleError, match="differs from PyTorch by 0.5"):
        export.export_onnx(model, tmp_path / "m.onnx", [_images(2)], exporter="torchscript")


def test_unknown_exporter_gets_a_suggestion(model, tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'dynamo'"):
        export.export_onnx(model, tmp_path / "m.onnx", [_images(2)], exporter="dynamoo")


def test_dynamic_int8_quantisation_reports_accuracy_change(model, tmp_path):
    export.export_onnx(model, tmp_path / "m.onnx", [_images(2)], exporter="torchscript")
    x = _images(40, seed=3)
    with torch.no_grad():
        labels = model(torch.from_numpy(x)).argmax(1).numpy()  # fp32 is right on every sample
    q = export.quantize_int8(tmp_path / "m.onnx", tmp_path / "m8.onnx", [x], labels=labels, method="dynamic")
    assert q.method == "dynamic"
    assert (tmp_path / "m8.onnx").is_file()
    assert q.accuracy_fp32 == 1.0
    assert q.accuracy_change == pytest.approx(q.accuracy_int8 - 1.0)
    assert 0.0 <= q.max_abs_prob_diff < 0.2
    assert q.samples == 40
    assert "accuracy_change" in q.to_dict()
    # the quantised graph really uses integer kernels
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "m8.onnx")).graph.node}
    assert ops & {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}


def test_static_int8_quantisation_uses_integer_convolutions_and_reports_auc(model, tmp_path):
    export.export_onnx(model, tmp_path / "m.onnx", [_images(2)], exporter="torchscript")
    x = _images(60, seed=4)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    labels = (logits[:, 1] - logits[:, 0] > np.median(logits[:, 1] - logits[:, 0])).astype(int)
    q = export.quantize_int8(tmp_path / "m.onnx", tmp_path / "m8.onnx", [x], labels=labels,
                             calibration_inputs=[_images(32, seed=5)])
    assert q.method == "static" and q.auc_fp32 == 1.0  # labels were made from the fp32 scores
    assert q.auc_change == pytest.approx(q.auc_int8 - 1.0) and q.auc_int8 > 0.9
    assert "auc_change" in q.to_dict()
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "m8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ graph: ORT runs int8 kernels
    with pytest.raises(ConfigError, match="Did you mean 'static'"):
        export.quantize_int8(tmp_path / "m.onnx", tmp_path / "m9.onnx", [x], method="statik")
    assert not (tmp_path / "m9.onnx").exists()


# --------------------------------------------------------------------------- a real bundle


@pytest.fixture(scope="module")
def run_copy(tmp_path_factory):
    """A private copy of the shared tiny run, so these tests may export into it and tamper with it."""
    import shutil

    from test_service import tiny_run

    target = tmp_path_factory.mktemp("export") / "tiny"
    shutil.copytree(tiny_run(tmp_path_factory), target)
    return target


def test_export_run_writes_onnx_parity_and_int8_report(run_copy):
    import json

    report = export.export_run(run_copy, quantize=True, exporter="torchscript")
    assert (run_copy / "onnx" / "model.onnx").is_file() and (run_copy / "onnx" / "model.int8.onnx").is_file()
    assert report.max_abs_diff < 1e-4
    assert report.input_shapes == [[-1, 1, 28, 28]]
    # checked on the run's own 20 validation images, int8 calibrated on its training images
    assert report.parity_samples == 20
    assert report.quantized.method == "static" and report.quantized.samples == 20
    assert report.quantized.auc_fp32 is not None
    saved = json.loads((run_copy / "onnx" / "export.json").read_text())
    assert saved["max_abs_diff"] == report.max_abs_diff
    assert 0.0 <= saved["quantized"]["label_agreement"] <= 1.0
    assert saved["quantized"]["auc_change"] == pytest.approx(report.quantized.auc_change)
    meta = OnnxBackend(run_copy / "onnx" / "model.onnx").metadata
    assert meta["medpredict.labels"] == "normal,pneumonia"
    assert len(meta["medpredict.weights_sha256"]) == 64


def test_onnx_backend_gives_the_same_contract_as_pytorch(run_copy):
    # The exported graph also returns the pooled features, so the input check agrees too.
    from medpredict.inference.loader import load_predictor

    if not (run_copy / "onnx" / "model.onnx").is_file():
        export.export_run(run_copy, exporter="torchscript")
    torch_p, onnx_p = load_predictor(run_copy), load_predictor(run_copy, backend="onnx")
    rng = np.random.default_rng(0)
    images = [rng.random((1, 28, 28), dtype=np.float32) for _ in range(6)]
    for a, b in zip(torch_p.predict(images), onnx_p.predict(images), strict=True):
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) <= 1e-6
        assert (a.decision, a.prediction_set, a.refer) == (b.decision, b.prediction_set, b.refer)
        assert a.input_check.status == b.input_check.status != "not checked"
        assert b.input_check.ood_score == pytest.approx(a.input_check.ood_score, rel=1e-4)


def test_export_refuses_a_tampered_bundle(run_copy, tmp_path):
    import shutil

    tampered = tmp_path / "tampered"
    shutil.copytree(run_copy, tampered)
    weights = tampered / "model" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the weights
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        export.export_run(tampered, exporter="torchscript")


def test_cli_export_int8_prints_the_validation_auc_change(run_copy, capsys):
    from medpredict.cli import main

    assert main(["export", str(run_copy), "--int8", "--exporter", "torchscript", "--out",
                 str(run_copy / "onnx-cli")]) == 0
    out = capsys.readouterr().out
    assert "int8 model (static)" in out and "int8 AUC on 20 validation images" in out
    assert main(["export", str(run_copy), "--int8", "--int8-method", "dynamic", "--exporter", "torchscript",
                 "--out", str(run_copy / "onnx-dyn")]) == 0
    assert "int8 model (dynamic)" in capsys.readouterr().out


# --------------------------------------------------------------------------- issue 13: integrity of the export


def _change_a_weight(path) -> None:
    """Edit one value of the largest initializer and save: a valid ONNX file with other weights."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = numpy_helper.to_array(init).copy()
    values.flat[0] = values.flat[1] if values.flat[0] != values.flat[1] else values.flat[0] // 2 + 1
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(proto, str(path))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, run_copy):
    """A copy of the run with an fp32 and an int8 export, written once for these tests."""
    import shutil

    run = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("onnx*"))
    export.export_run(run, quantize=True, exporter="torchscript")
    return run


@pytest.mark.parametrize(("name", "int8"), [("model.onnx", False), ("model.int8.onnx", True)])
def test_a_changed_weight_inside_the_onnx_file_is_refused(exported, tmp_path, name, int8):
    import json
    import shutil

    from medpredict.inference.onnx import OnnxBundlePredictor

    run = tmp_path / "run"
    shutil.copytree(exported, run)
    sums = json.loads((run / "onnx" / "checksums.json").read_text())
    assert {"model.onnx", "model.int8.onnx", "export.json"} <= set(sums["files"])
    assert sums["bound_to"]["weights.safetensors"] == json.loads(
        (run / "model" / "checksums.json").read_text())["files"]["weights.safetensors"]
    OnnxBundlePredictor.from_run(run, int8=int8)  # loads before the change
    _change_a_weight(run / "onnx" / name)
    with pytest.raises(BundleError, match=f"{name} does not match its checksum: the ONNX export was modified"):
        OnnxBundlePredictor.from_run(run, int8=int8)


def test_a_rewritten_checksum_list_is_refused_when_a_key_is_set(exported, tmp_path, monkeypatch):
    import json
    import shutil

    from medpredict.bundle.store import load_bundle, save_bundle, write_checksums
    from medpredict.inference.loader import load_predictor

    run = tmp_path / "run"
    shutil.copytree(exported, run)
    bundle = load_bundle(run / "model")  # re-sign the bundle itself with the key, as a deployment would
    extra = {p.name: json.loads(p.read_text()) for p in (run / "model").glob("*.json")
             if p.name not in ("bundle.json", "checksums.json")}
    monkeypatch.setenv("MEDPREDICT_BUNDLE_KEY", "hospital-secret")
    save_bundle(run / "model", state_dict=bundle.state_dict, meta=bundle.meta, json_files=extra)
    weights = json.loads((run / "model" / "checksums.json").read_text())["files"]["weights.safetensors"]
    write_checksums(run / "onnx", bound_to={"weights.safetensors": weights})  # signed with the key
    load_predictor(run, backend="onnx")
    _change_a_weight(run / "onnx" / "model.onnx")
    monkeypatch.setenv("MEDPREDICT_BUNDLE_KEY", "attacker-key")
    write_checksums(run / "onnx", bound_to={"weights.safetensors": weights})  # consistent sums, wrong key
    monkeypatch.setenv("MEDPREDICT_BUNDLE_KEY", "hospital-secret")
    with pytest.raises(BundleError, match="ONNX export .* is not signed with the key"):
        load_predictor(run, backend="onnx")


def test_an_export_without_checksums_is_refused(exported, tmp_path):
    import shutil

    from medpredict.inference.loader import load_predictor

    run = tmp_path / "run"
    shutil.copytree(exported, run)
    (run / "onnx" / "checksums.json").unlink()
    with pytest.raises(BundleError, match="has no checksums.json .* export again"):
        load_predictor(run, backend="onnx")


def test_an_export_failing_parity_leaves_nothing_behind(exported, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(exported, run)
    before = {p.name: p.read_bytes() for p in (run / "onnx").iterdir()}
    fresh = tmp_path / "fresh"
    shutil.copytree(exported, fresh, ignore=shutil.ignore_patterns("onnx"))
    monkeypatch.setattr(export, "parity_max_abs_diff", lambda *args, **kwargs: 0.5)
    for target in (run, fresh):
        with pytest.raises(BundleError, match="differs from PyTorch by 0.5 .* nothing was written"):
            export.export_run(target, exporter="torchscript")
    assert {p.name: p.read_bytes() for p in (run / "onnx").iterdir()} == before  # the previous export, intact
    assert not (fresh / "onnx").exists()  # no model.onnx for --backend onnx to pick up
    assert not [p for p in tmp_path.rglob(".*tmp*")]  # no temporary left either


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("model", "inside .*model|a model bundle"),  # --out RUN/model would replace the bundle
        ("file.txt", "is a file, not a folder"),
        ("other", "already holds other files"),
    ],
)
def test_export_out_that_cannot_take_an_export_is_refused(exported, tmp_path, out, message):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(exported, run)
    (run / "file.txt").write_text("x")
    (run / "other").mkdir()
    (run / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=message):
        export.export_run(run, out_dir=run / out, exporter="torchscript")
    assert (run / "model" / "bundle.json").is_file() and (run / "other" / "notes.txt").is_file()


@pytest.mark.parametrize("atol", [0.0, -1.0, float("nan")])
def test_a_bad_atol_is_refused_before_any_work(exported, atol):
    with pytest.raises(ConfigError, match="--atol"):
        export.export_run(exported, atol=atol)
