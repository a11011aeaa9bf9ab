"""Feeding a graph trained elsewhere and reading its outputs, with checks that refuse a wrong descriptor.

A model brought from elsewhere is described by a YAML descriptor
(:class:`~medpredict.inference.onnx.OnnxDescriptor`): its input size, channels, layout and
scaling, and what its output is (``output.activation``). A wrong value there does not always
crash. A Keras graph that already ends in softmax, read with ``output.activation: softmax``,
gets softmax twice: every probability is squeezed towards 1/K while the AUC is unchanged, so
a run looks fine. This module holds the descriptor's transforms and the checks:

* :func:`check_input_shape` compares the descriptor with the input shape the graph declares,
  before anything runs, and names the key to change (``input.layout: NHWC`` for a
  channels-last graph such as Keras exports);
* :class:`ActivationCheck` looks at raw outputs: rows that are non-negative and sum to 1 are
  probabilities already (the graph ends in softmax); values in [0, 1] from one output unit
  are a sigmoid's. A declared activation that contradicts them is refused with the key to
  change. It runs on synthetic probe images when a descriptor loads
  (:func:`probe_images`), on the first batches a model sees, and in ``medpredict adopt`` on
  the whole validation split;
* :func:`graph_input` and :func:`graph_probabilities` are the descriptor's input and output
  transforms, shared by the descriptor predictor and adopted bundles;
* :func:`penultimate_tensor` finds the input of the graph's last fully connected layer, the
  features the input guard of an adopted model is fitted on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medpredict.errors import BundleError, ConfigError

if TYPE_CHECKING:
    from medpredict.inference.onnx import OnnxDescriptor

#: Rows that must all look like probabilities before a softmax or sigmoid is refused as a second one.
MIN_EVIDENCE_ROWS = 8
#: How far a row of float32 probabilities may sum from 1.
SUM_TOLERANCE = 1e-4
#: Largest feature width the input guard takes from a graph (its precision matrix is D x D in JSON).
MAX_GRAPH_FEATURES = 512
#: Operators between the last fully connected layer and the output that keep it "the head".
_HEAD_OPS = {"Softmax", "Sigmoid", "LogSoftmax", "Add", "Identity", "Reshape", "Flatten", "Squeeze", "Cast"}


def activate(values: np.ndarray, activation: str) -> np.ndarray:
    """``softmax`` over columns, element-wise ``sigmoid``, or ``none`` (unchanged), as float32."""
    if activation == "softmax":
        shifted = values - values.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    if activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-values))).astype(np.float32)
    return values.astype(np.float32)


def resize(chw: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(C, h, w)`` -> ``(C, height, width)`` float32 (bilinear with antialiasing; a no-op at the same size)."""
    if chw.shape[-2:] == (height, width):
        return chw.astype(np.float32)
    import torch
    import torch.nn.functional as F  # noqa: N812 - the PyTorch convention

    tensor = torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))[None]
    out = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out[0].numpy()


def graph_input(images: np.ndarray, d: OnnxDescriptor) -> np.ndarray:
    """The graph's input batch for images ``(N, C, h, w)`` float32 in [0, 1].

    Resizes to the descriptor's size, maps [0, 1] linearly to ``input.scale``, applies
    ``input.mean``/``input.std`` and returns ``NCHW`` or ``NHWC`` float32 as ``input.layout`` says.
    """
    batch = np.stack([resize(np.asarray(img, np.float32), d.height, d.width) for img in images])
    low, high = d.scale
    batch = low + batch * (high - low)
    if d.mean is not None:
        batch = batch - np.asarray(d.mean, np.float32).reshape(1, -1, 1, 1)
    if d.std is not None:
        batch = batch / np.asarray(d.std, np.float32).reshape(1, -1, 1, 1)
    if d.layout == "NHWC":
        batch = batch.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(batch, dtype=np.float32)


def graph_probabilities(out: np.ndarray, d: OnnxDescriptor, positive_index: int) -> np.ndarray:
    """Class probabilities ``(N, K)`` from the raw graph output ``(N, K)`` or, for two labels, ``(N, 1)``.

    A single output column of a two-label model is P(positive label) (the Keras habit).

    Raises:
        BundleError: the graph returns another number of values than the descriptor has labels.
    """
    k = len(d.labels)
    if out.shape[1] == 1 and k == 2:
        p = activate(out, "sigmoid") if d.activation == "sigmoid" else out
        p = np.clip(p[:, 0], 0.0, 1.0)
        probs = np.zeros((len(p), 2), np.float32)
        probs[:, positive_index], probs[:, 1 - positive_index] = p, 1.0 - p
        return probs
    if out.shape[1] != k:
        raise BundleError(
            f"The ONNX model returns {out.shape[1]} values per sample, but the descriptor lists {k} "
            f"labels {list(d.labels)}; fix 'labels' in the YAML."
        )
    return activate(out, d.activation)


def _distributions(out: np.ndarray) -> np.ndarray:
    """``(N,)`` True where a row is non-negative and sums to 1: a probability distribution."""
    return np.asarray((out >= -1e-6).all(axis=1) & (np.abs(out.sum(axis=1) - 1.0) <= SUM_TOLERANCE))


def _unit(out: np.ndarray) -> np.ndarray:
    """``(N,)`` True where every value of a row lies in [0, 1]."""
    return np.asarray(((out >= -1e-6) & (out <= 1.0 + 1e-6)).all(axis=1))


class ActivationCheck:
    """Refuses an ``output.activation`` that contradicts what the graph's outputs are.

    ``observe`` every raw output batch. Outputs that cannot be what ``none`` promises
    (probabilities) are refused at once; outputs that are already probabilities, under
    ``softmax`` or ``sigmoid``, are refused once :data:`MIN_EVIDENCE_ROWS` rows have all looked
    like probabilities (one row could be a coincidence); a single row that does not clears the
    model for good.

    Args:
        activation: the descriptor's ``output.activation``.
        task: ``binary``, ``multiclass`` or ``multilabel``.
        source: the descriptor, named in messages.
    """

    def __init__(self, activation: str, task: str, source: str = "the model descriptor") -> None:
        self.activation = activation
        self.task = task
        self.source = source
        self.rows_seen = 0
        self.cleared = False

    def observe(self, out: np.ndarray, *, where: str = "the first inputs") -> None:
        """Check one raw output batch ``(N, K)``.

        Raises:
            ConfigError: ``output.activation`` contradicts the outputs (names the key and the fix).
        """
        out = np.asarray(out, dtype=np.float64)
        if out.ndim != 2 or out.shape[0] == 0:
            return
        if not np.isfinite(out).all():
            raise ConfigError(f"The graph of {self.source} returned NaN or infinite values on {where}.")
        k = out.shape[1]
        one_per_class = self.task != "multilabel" and k >= 2
        if self.activation == "none":
            self._check_none(out, one_per_class, where)
            return
        if self.activation == "softmax" and k == 1:
            raise ConfigError(
                f"In {self.source}, output.activation: softmax cannot apply to a graph with one output value "
                "(softmax over one value is always 1). Set output.activation: sigmoid if the graph returns a "
                "logit, or output.activation: none if it returns P(positive label)."
            )
        if self.activation == "sigmoid" and one_per_class:
            raise ConfigError(
                f"In {self.source}, output.activation: sigmoid does not give probabilities that sum to 1 over "
                f"{k} exclusive classes. Set output.activation: softmax if the graph returns scores (logits), "
                "or output.activation: none if it already returns probabilities."
            )
        if self.cleared:
            return
        already = _distributions(out) if self.activation == "softmax" else _unit(out)
        if not already.all():
            self.cleared = True
            return
        self.rows_seen += len(out)
        if self.rows_seen >= MIN_EVIDENCE_ROWS:
            self._refuse_second_activation(out)

    def _check_none(self, out: np.ndarray, one_per_class: bool, where: str) -> None:
        if one_per_class:
            bad = np.flatnonzero(~_distributions(out))
            if bad.size:
                row = out[bad[0]]
                raise ConfigError(
                    f"In {self.source}, output.activation: none says the graph returns probabilities, but on "
                    f"{where} row {int(bad[0])} is {np.round(row, 4).tolist()} (sum {row.sum():.4g}): these are "
                    "scores (logits). Set output.activation: softmax."
                )
            return
        bad = np.flatnonzero(~_unit(out))
        if bad.size:
            raise ConfigError(
                f"In {self.source}, output.activation: none says the graph returns probabilities, but on {where} "
                f"it returned {np.round(out[bad[0]], 4).tolist()}, outside [0, 1]: these are logits. "
                "Set output.activation: sigmoid."
            )

    def _refuse_second_activation(self, out: np.ndarray) -> None:
        if self.activation == "softmax":
            what = (
                f"every one of the {self.rows_seen} output rows seen is non-negative and sums to 1: the graph "
                "already ends in softmax"
            )
        else:
            what = f"all {self.rows_seen} outputs seen lie in [0, 1]: the graph already ends in sigmoid"
        raise ConfigError(
            f"In {self.source}, output.activation: {self.activation} would apply {self.activation} a second "
            f"time: {what}. A second {self.activation} squeezes every probability towards the middle "
            "(AUC unchanged, calibration and every threshold wrong). Set output.activation: none."
        )


def probe_images(d: OnnxDescriptor, n: int = MIN_EVIDENCE_ROWS) -> np.ndarray:
    """``(n, C, H, W)`` float32 in [0, 1] synthetic images: black, white, grey, ramps and noise.

    Any input shows whether a graph ends in softmax (its rows always sum to 1), so these
    let a descriptor be checked when it loads, before it answers for a patient.
    """
    shape = (d.channels, d.height, d.width)
    across = np.broadcast_to(np.linspace(0.0, 1.0, d.width, dtype=np.float32), shape)
    down = np.broadcast_to(np.linspace(0.0, 1.0, d.height, dtype=np.float32)[:, None], shape)
    fixed = [np.zeros(shape, np.float32), np.ones(shape, np.float32), np.full(shape, 0.5, np.float32), across, down]
    rng = np.random.default_rng(0)
    noise = [rng.random(shape, dtype=np.float32) * s + (1 - s) / 2 for s in np.linspace(0.2, 1.0, max(0, n - 5))]
    return np.stack((fixed + noise)[:n]).astype(np.float32)


def check_input_shape(graph_shape: list[Any], input_name: str, d: OnnxDescriptor, source: str) -> None:
    """Refuse a descriptor whose input disagrees with the shape the graph declares.

    Symbolic dimensions (``"N"``, ``None``) fit anything.

    Raises:
        ConfigError: wrong rank, or a size/channel/layout mismatch (names ``input.layout`` when
            the other layout fits).
    """
    dims = list(graph_shape)
    if len(dims) != 4:
        raise ConfigError(
            f"The graph of {source} takes input '{input_name}' of shape {dims}; medpredict feeds image batches "
            "(N, C, H, W) or (N, H, W, C). Choose the image input with input.name."
        )
    want = {"NCHW": (d.channels, d.height, d.width), "NHWC": (d.height, d.width, d.channels)}

    def fits(layout: str) -> bool:
        return all(not isinstance(g, int) or g <= 0 or g == w for g, w in zip(dims[1:], want[layout], strict=True))

    if fits(d.layout):
        return
    other = "NHWC" if d.layout == "NCHW" else "NCHW"
    shown = ["N" if not isinstance(g, int) or g <= 0 else g for g in dims]
    if fits(other):
        kind = "channels last, as Keras/TensorFlow export" if other == "NHWC" else "channels first, as PyTorch exports"
        raise ConfigError(
            f"The graph of {source} takes input '{input_name}' of shape {shown} ({kind}), but the descriptor "
            f"says input.layout: {d.layout}. Set input.layout: {other}."
        )
    raise ConfigError(
        f"The graph of {source} takes input '{input_name}' of shape {shown}; the descriptor feeds "
        f"{['N', *want[d.layout]]} (input.height {d.height}, input.width {d.width}, input.channels "
        f"{d.channels}, input.layout {d.layout}). Change these to match the graph."
    )


def penultimate_tensor(path: str | os.PathLike[str]) -> str | None:
    """Name of the input of the graph's last fully connected layer (its penultimate features), or None.

    Walks back from the first output through the classifier head (softmax, bias add,
    reshapes) to the last ``Gemm`` or ``MatMul``; its data input is what the classifier sees.
    Returns None when the graph has no such layer there, or when that input is the graph's
    own input (a linear model on pixels has no learned features).
    """
    import onnx

    model = onnx.load(str(Path(path)), load_external_data=False)
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producers = {o: n for n in graph.node for o in n.output}
    inputs = {i.name for i in graph.input}
    name = graph.output[0].name
    for _ in range(len(graph.node)):
        node = producers.get(name)
        if node is None:
            return None
        data = [i for i in node.input if i and i not in constants]
        if node.op_type in ("Gemm", "MatMul"):
            return data[0] if data and not _reshaped_input(data[0], producers, constants, inputs) else None
        if node.op_type not in _HEAD_OPS or len(data) != 1:
            return None
        name = data[0]
    return None


def _reshaped_input(name: str, producers: dict[str, Any], constants: set[str], inputs: set[str]) -> bool:
    """True when tensor ``name`` is a graph input, possibly flattened or reshaped (no learned layer)."""
    while name not in inputs:
        node = producers.get(name)
        data = [] if node is None else [i for i in node.input if i and i not in constants]
        if node is None or node.op_type not in ("Flatten", "Reshape", "Transpose", "Identity", "Cast") or not data:
            return False
        name = data[0]
    return True
