"""Checks that keep a wrong bring-your-own-model descriptor from answering silently."""

from __future__ import annotations

import numpy as np
import pytest

from medpredict.errors import ConfigError
from medpredict.inference.graph_io import (
    MIN_EVIDENCE_ROWS,
    ActivationCheck,
    check_input_shape,
    graph_input,
    penultimate_tensor,
    probe_images,
)
from medpredict.inference.onnx import OnnxDescriptor

rng = np.random.default_rng(0)
LOGITS = rng.normal(0, 3, size=(MIN_EVIDENCE_ROWS, 2))
SOFTMAX = np.exp(LOGITS) / np.exp(LOGITS).sum(1, keepdims=True)
SIGMOID = 1 / (1 + np.exp(-LOGITS[:, :1]))


def _descriptor(**changes: object) -> OnnxDescriptor:
    values: dict = {"model": "m.onnx", "labels": ("normal", "pneumonia"), "height": 28, "width": 28}
    values.update(changes)
    return OnnxDescriptor(**values)


@pytest.mark.parametrize(
    ("activation", "task", "outputs", "message"),
    [
        ("softmax", "binary", SOFTMAX, "ends in softmax.*Set output.activation: none"),  # softmax twice
        ("softmax", "binary", LOGITS, None),  # logits, as declared
        ("none", "binary", SOFTMAX, None),  # probabilities, as declared
        ("none", "binary", LOGITS, "these are scores.*Set output.activation: softmax"),  # logits read as probabilities
        ("none", "binary", SIGMOID, None),  # one unit, P(positive)
        ("none", "binary", LOGITS[:, :1], "logits. Set output.activation: sigmoid"),  # one logit read as P
        ("sigmoid", "binary", SIGMOID, "ends in sigmoid.*Set output.activation: none"),  # sigmoid twice
        ("sigmoid", "binary", LOGITS[:, :1], None),  # one logit, as declared
        ("softmax", "binary", SIGMOID, "softmax over one value is always 1"),  # meaningless on one unit
        ("sigmoid", "multiclass", LOGITS, "not give probabilities that sum to 1"),  # sigmoid, exclusive classes
        ("sigmoid", "multilabel", LOGITS, None),  # multi-label logits, as declared
    ],
)
def test_activation_check_table(activation, task, outputs, message):
    check = ActivationCheck(activation, task, "model.yaml")
    if message is None:
        check.observe(outputs)
        return
    with pytest.raises(ConfigError, match=f"model.yaml, output.activation: {activation}(.|\n)*{message}"):
        check.observe(outputs)


def test_one_row_of_probabilities_is_not_yet_proof_and_one_logit_row_clears():
    check = ActivationCheck("softmax", "binary")
    check.observe(SOFTMAX[:3])  # 3 rows summing to 1: maybe a coincidence, not refused yet
    check.observe(np.array([[2.0, -1.0]]))  # a row that is not a distribution: the graph returns logits
    check.observe(SOFTMAX)  # from now on nothing is refused
    assert check.cleared
    fresh = ActivationCheck("softmax", "binary")
    fresh.observe(SOFTMAX[:3])
    with pytest.raises(ConfigError, match="output.activation"):
        fresh.observe(SOFTMAX[3:])  # the evidence adds up across batches


def test_layout_mismatch_points_at_input_layout():
    with pytest.raises(ConfigError, match=r"channels last.*Set input.layout: NHWC"):
        check_input_shape(["N", 28, 28, 1], "image", _descriptor(layout="NCHW"), "model.yaml")
    with pytest.raises(ConfigError, match=r"channels first.*Set input.layout: NCHW"):
        check_input_shape(["N", 3, 64, 64], "x", _descriptor(layout="NHWC", height=64, width=64, channels=3), "m")
    with pytest.raises(ConfigError, match=r"input.height 28, input.width 28"):
        check_input_shape([1, 1, 32, 32], "x", _descriptor(), "model.yaml")  # wrong size, no layout fits
    with pytest.raises(ConfigError, match="rank|shape"):
        check_input_shape(["N", 784], "x", _descriptor(), "model.yaml")
    check_input_shape(["batch", 1, 28, 28], "x", _descriptor(), "model.yaml")  # symbolic batch fits


def test_graph_input_and_probes_follow_the_descriptor():
    d = _descriptor(layout="NHWC", channels=3, height=8, width=6, scale=(0.0, 255.0))
    probes = probe_images(d)
    assert probes.shape == (MIN_EVIDENCE_ROWS, 3, 8, 6) and probes.min() >= 0.0 and probes.max() <= 1.0
    batch = graph_input(probes, d)
    assert batch.shape == (MIN_EVIDENCE_ROWS, 8, 6, 3) and batch.max() == pytest.approx(255.0)
    assert len({p.tobytes() for p in probes}) == MIN_EVIDENCE_ROWS  # all different


def test_penultimate_tensor_is_the_input_of_the_last_dense_layer(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import warnings

    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2), torch.nn.Softmax(1)
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.rand(1, 1, 4, 4),), str(tmp_path / "m.onnx"), input_names=["x"], dynamo=False)
        torch.onnx.export(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)).eval(),
                          (torch.rand(1, 1, 4, 4),), str(tmp_path / "linear.onnx"), input_names=["x"], dynamo=False)
    import onnx

    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    name = penultimate_tensor(tmp_path / "m.onnx")
    producer = next(n for n in graph.node if name in n.output)
    assert producer.op_type == "Relu"  # the 8 hidden units, not the pixels or the logits
    # a linear model on pixels has no learned features: its dense layer reads the (flattened) input
    assert penultimate_tensor(tmp_path / "linear.onnx") is None
