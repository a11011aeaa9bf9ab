"""Run ONNX models with ONNX Runtime: exported medpredict models and models brought from elsewhere.

Two pieces:

* :class:`OnnxBackend` wraps one ``onnxruntime.InferenceSession``. It answers the same
  call as a medpredict PyTorch model (``backend(*inputs) -> logits``), so the
  :class:`~medpredict.inference.predictor.Predictor` can swap it in, and adds
  :meth:`OnnxBackend.predict_proba` for plain NumPy use.
* :class:`OnnxPredictor` serves a model trained elsewhere (for example a Keras model
  converted to ONNX) through the Predictor surface (``labels``, ``threshold``,
  ``predict``, ``explain``), described by a small YAML file (:func:`load_descriptor`;
  every field is explained in ``docs/BRING_YOUR_OWN_MODEL.md``)::

      model: pneumonia_keras.onnx      # relative to this YAML file
      name: keras-pneumonia
      version: "2024.06"
      input: {height: 224, width: 224, channels: 3, layout: NHWC, scale: [0, 255]}
      output: {activation: none}       # none = the graph already returns probabilities
      labels: [normal, pneumonia]
      positive_label: pneumonia
      threshold: 0.5

  The descriptor is checked against the graph when it loads (input shape and layout, and
  whether ``output.activation`` contradicts outputs that already are probabilities:
  :mod:`medpredict.inference.graph_io`). ``medpredict adopt`` turns a descriptor into a
  full bundle (:mod:`medpredict.inference.adopted`). ONNX graphs give no gradients, so
  :meth:`OnnxPredictor.explain` returns an occlusion map where a PyTorch model would give
  Grad-CAM.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medpredict.bundle.identity import ModelIdentity
from medpredict.data.intended_use import IntendedUse
from medpredict.errors import BundleError, ConfigError, DataError, did_you_mean, require_extra, unknown_choice
from medpredict.inference.contract import CasePrediction, DecisionRule, Explanation, decide
from medpredict.inference.graph_io import (
    ActivationCheck,
    check_input_shape,
    graph_input,
    graph_probabilities,
    probe_images,
)
from medpredict.inference.graph_io import activate as _activate
from medpredict.inference.graph_io import resize as _resize
from medpredict.inference.predictor import Predictor

logger = logging.getLogger(__name__)

ACTIVATIONS = ("softmax", "sigmoid", "none")
LAYOUTS = ("NCHW", "NHWC")
DESCRIPTOR_SUFFIXES = (".yaml", ".yml")
#: Name of the second output of medpredict's exported graphs: the pooled features.
FEATURES_OUTPUT = "features"


class OnnxBackend:
    """One ONNX Runtime session that maps input batches to logits or probabilities.

    Args:
        path: the ``.onnx`` file.
        activation: how outputs become probabilities in :meth:`predict_proba`:
            ``softmax`` (single-label tasks), ``sigmoid`` (multi-label), or ``none`` when the
            graph already returns probabilities.
        threads: intra-op threads for ONNX Runtime; ``None`` leaves its default.
        input_name: the graph input to feed (a descriptor's ``input.name``); default: all inputs in order.
        features_output: a tensor of the graph to return as features beside the output (added
            as a graph output in memory when the file does not export it; the file is unchanged).

    Raises:
        BundleError: the file is missing or not a valid ONNX model.
        ConfigError: ``input_name`` is not an input of the graph.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        activation: str = "softmax",
        threads: int | None = None,
        input_name: str | None = None,
        features_output: str | None = None,
    ) -> None:
        require_extra("onnxruntime", "onnx")
        import onnxruntime as ort

        if activation not in ACTIVATIONS:
            raise unknown_choice("output activation", activation, ACTIVATIONS)
        self.path = Path(path)
        self.activation = activation
        if not self.path.is_file():
            raise BundleError(f"ONNX model not found: {self.path}. Export one with 'medpredict export RUN'.")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        source: str | bytes = str(self.path)
        if features_output is not None:
            source = _with_output(self.path, features_output)
        try:
            self.session = ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own non-Python-standard exception types
            raise BundleError(f"{self.path} is not a loadable ONNX model: {exc}") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_shapes = [list(i.shape) for i in self.session.get_inputs()]
        if input_name is not None:
            if input_name not in self.input_names:
                raise ConfigError(
                    f"input.name '{input_name}' is not an input of {self.path.name}."
                    f"{did_you_mean(input_name, self.input_names)} Its inputs: {self.input_names}."
                )
            self.input_shapes = [self.input_shapes[self.input_names.index(input_name)]]
            self.input_names = [input_name]
        self.output_name = self.session.get_outputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        #: the pooled-features output medpredict's exports add for the input check, if present
        self.features_name = features_output or (FEATURES_OUTPUT if FEATURES_OUTPUT in names[1:] else None)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def logits(self, *inputs: np.ndarray) -> np.ndarray:
        """Raw graph output ``(N, K)`` float32 for one array per graph input (batch first).

        Raises:
            DataError: wrong number of inputs, or shapes the graph refuses.
        """
        return self.outputs(*inputs)[0]

    def outputs(self, *inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits ``(N, K)`` and, when the graph exports them, pooled features ``(N, D)``.

        Raises:
            DataError: wrong number of inputs, or shapes the graph refuses.
        """
        if len(inputs) != len(self.input_names):
            raise DataError(
                f"The ONNX model {self.path.name} takes {len(self.input_names)} input(s) "
                f"{self.input_names}, got {len(inputs)}."
            )
        pairs = zip(self.input_names, inputs, strict=True)
        feed = {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in pairs}
        wanted = [self.output_name] + ([self.features_name] if self.features_name else [])
        try:
            results = self.session.run(wanted, feed)
        except Exception as exc:  # ORT's InvalidArgument etc. are not Python builtins
            shapes = {k: tuple(v.shape) for k, v in feed.items()}
            raise DataError(
                f"The ONNX model {self.path.name} refused inputs of shape {shapes}; it expects "
                f"{dict(zip(self.input_names, self.input_shapes, strict=True))}. ({exc})"
            ) from None
        out = np.asarray(results[0], dtype=np.float32)
        features = np.asarray(results[1], dtype=np.float32) if len(results) > 1 else None
        return out.reshape(out.shape[0], -1), features

    def predict_proba(self, *inputs: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, K)`` float32 (rows sum to 1 for ``softmax``)."""
        return _activate(self.logits(*inputs), self.activation)

    def __call__(self, *inputs: Any) -> Any:
        """Drop-in for a PyTorch model call: tensors in, logits tensor out (arrays in, array out)."""
        torch = sys.modules.get("torch")  # only tensors need torch, and they imply it is loaded
        if inputs and torch is not None and isinstance(inputs[0], torch.Tensor):
            # .as_tensor strips subclasses such as MONAI's MetaTensor before going to NumPy
            arrays = [torch.as_tensor(t).detach().cpu().numpy() for t in inputs]
            return torch.from_numpy(self.logits(*arrays))
        return self.logits(*(np.asarray(a) for a in inputs))

    def eval(self) -> OnnxBackend:
        """No-op, so code written for ``torch.nn.Module`` can call it."""
        return self


def _with_output(path: Path, tensor: str) -> bytes:
    """The graph at ``path`` with ``tensor`` also returned as an output (serialised, in memory)."""
    import onnx

    model = onnx.load(str(path))
    if tensor not in {o.name for o in model.graph.output}:
        model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    return bytes(model.SerializeToString())


# --------------------------------------------------------------------------- descriptor


@dataclass(frozen=True)
class OnnxDescriptor:
    """A validated "bring your own model" description (see the module docstring for the YAML).

    Attributes:
        model: absolute path of the ``.onnx`` file.
        height / width / channels: the input image the graph takes.
        layout: ``NCHW`` (PyTorch) or ``NHWC`` (TensorFlow/Keras).
        scale: ``(low, high)``: images in [0, 1] are mapped linearly to this range.
        mean / std: optional per-channel normalisation applied after ``scale``.
        activation: ``none`` if the graph outputs probabilities, else ``softmax``/``sigmoid``.
        labels: class names, in output order.
        positive_label: the class whose probability is compared with ``threshold``.
        threshold: the locked decision threshold for ``positive_label``.
        task: ``binary``, ``multiclass`` or ``multilabel``.
        card: free-form model card fields (intended use, training data, ...).
        input_name: the graph input to feed (default: its only input).
        path: the descriptor file (named in messages).
        threshold_given: True when the YAML states ``threshold`` (else 0.5 is a default).
    """

    model: str
    labels: tuple[str, ...]
    height: int
    width: int
    channels: int = 1
    layout: str = "NCHW"
    scale: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    activation: str = "softmax"
    positive_label: str | None = None
    threshold: float = 0.5
    task: str = "binary"
    name: str = "external-onnx"
    version: str = "unversioned"
    input_name: str | None = None
    card: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    threshold_given: bool = False

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise unknown_choice("input layout", self.layout, LAYOUTS)
        if self.activation not in ACTIVATIONS:
            raise unknown_choice("output activation", self.activation, ACTIVATIONS)
        if self.channels not in (1, 3):
            raise ConfigError(f"input.channels = {self.channels!r}; use 1 (grey) or 3 (RGB).")
        if not (4 <= self.height <= 4096 and 4 <= self.width <= 4096):
            raise ConfigError(f"input size {self.height}x{self.width} is out of range; use 4 to 4096 pixels.")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"labels = {list(self.labels)!r}: give at least two distinct class names.")
        if self.positive_label is not None and self.positive_label not in self.labels:
            raise ConfigError(
                f"positive_label '{self.positive_label}' is not one of the labels {list(self.labels)}."
                f"{did_you_mean(self.positive_label, self.labels)}"
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold = {self.threshold!r}; give a probability in [0, 1].")
        if self.task not in ("binary", "multiclass", "multilabel"):
            raise unknown_choice("task", self.task, ("binary", "multiclass", "multilabel"))
        for key, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) not in (1, self.channels):
                raise ConfigError(f"input.{key} has {len(values)} values; give 1 or {self.channels}.")
        if self.std is not None and any(float(s) <= 0 for s in self.std):
            raise ConfigError(f"input.std = {list(self.std)!r}; every value must be positive.")


_TOP_KEYS = {
    "model",
    "name",
    "version",
    "input",
    "output",
    "labels",
    "positive_label",
    "threshold",
    "task",
    "card",
}
_INPUT_KEYS = {"height", "width", "size", "channels", "layout", "scale", "mean", "std", "name"}
_OUTPUT_KEYS = {"activation"}


def load_descriptor(path: str | os.PathLike[str]) -> OnnxDescriptor:
    """Read and validate a bring-your-own-model YAML (data only, ``yaml.safe_load``).

    Raises:
        ConfigError: missing file, unknown keys (with a suggestion), or invalid values.
        BundleError: the ``.onnx`` file it names does not exist.
    """
    from medpredict.config import read_yaml_mapping

    path = Path(path)
    if path.suffix.lower() == ".onnx":
        raise ConfigError(bare_onnx_message(path))
    raw = read_yaml_mapping(path, "Model descriptor")
    _check_keys(raw, _TOP_KEYS, "")
    inp = raw.get("input") or {}
    out = raw.get("output") or {}
    if not isinstance(inp, dict) or not isinstance(out, dict):
        raise ConfigError(f"In {path}, 'input' and 'output' must be mappings.")
    _check_keys(inp, _INPUT_KEYS, "input.")
    _check_keys(out, _OUTPUT_KEYS, "output.")
    if "model" not in raw or "labels" not in raw:
        raise ConfigError(f"Model descriptor {path} needs at least 'model' (the .onnx file) and 'labels'.")
    model = Path(str(raw["model"]))
    model = model if model.is_absolute() else (path.parent / model)
    if not model.is_file():
        raise BundleError(f"The ONNX file {model} named in {path} does not exist.")
    size = inp.get("size")
    height = inp.get("height", size[0] if isinstance(size, list | tuple) else size)
    width = inp.get("width", size[1] if isinstance(size, list | tuple) else size)
    if height is None or width is None:
        raise ConfigError(f"In {path}, give input.height and input.width (or input.size).")
    labels = tuple(str(v) for v in (raw["labels"] or []))
    task = str(raw.get("task", "binary" if len(labels) == 2 else "multiclass"))
    try:
        scale = tuple(float(v) for v in inp.get("scale", (0.0, 1.0)))
        if len(scale) != 2:
            raise ValueError(scale)
        return OnnxDescriptor(
            model=str(model.resolve()),
            labels=labels,
            height=int(height),
            width=int(width),
            channels=int(inp.get("channels", 1)),
            layout=str(inp.get("layout", "NCHW")).upper(),
            scale=(scale[0], scale[1]),
            mean=_floats(inp.get("mean")),
            std=_floats(inp.get("std")),
            activation=str(out.get("activation", "softmax")),
            positive_label=None if raw.get("positive_label") is None else str(raw["positive_label"]),
            threshold=float(raw.get("threshold", 0.5)),
            task=task,
            name=str(raw.get("name", model.stem)),
            version=str(raw.get("version", "unversioned")),
            input_name=None if inp.get("name") is None else str(inp["name"]),
            card=dict(raw.get("card") or {}),
            path=str(path),
            threshold_given="threshold" in raw,
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"Model descriptor {path} has a value of the wrong type ({exc}).") from None


def _check_keys(values: dict[str, Any], known: set[str], prefix: str) -> None:
    for key in values:
        if key not in known:
            raise ConfigError(
                f"Unknown key '{prefix}{key}' in the model descriptor.{did_you_mean(str(key), known)} "
                f"Known keys: {sorted(known)}."
            )


def _floats(values: Any) -> tuple[float, ...] | None:
    if values is None:
        return None
    if isinstance(values, int | float):
        return (float(values),)
    return tuple(float(v) for v in values)


def bare_onnx_message(path: str | os.PathLike[str]) -> str:
    """What to do when given an ``.onnx`` file where a descriptor YAML is needed, with an example."""
    path = Path(path)
    size, layout, channels = "28, width: 28", "NCHW", 1
    try:
        import onnx

        dims = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
        if len(dims) == 4 and dims[-1] in (1, 3) and dims[1] not in (1, 3):
            size, layout, channels = f"{dims[1]}, width: {dims[2]}", "NHWC", dims[3]
        elif len(dims) == 4:
            size, channels = f"{dims[2]}, width: {dims[3]}", dims[1]
    except Exception:  # noqa: BLE001 - the example falls back to generic values for any unreadable file
        pass
    return (
        f"{path} is an ONNX graph on its own; medpredict also needs to know how to feed it and how to read its "
        f"outputs. Write a descriptor YAML beside it and give that instead, for example {path.with_suffix('.yaml')}:\n"
        f"  model: {path.name}\n"
        f"  input: {{height: {size}, channels: {channels}, layout: {layout}, scale: [0, 1]}}\n"
        "  output: {activation: none}   # none: the graph ends in softmax/sigmoid; softmax: it returns logits\n"
        "  labels: [normal, pneumonia]  # class names in the graph's output order\n"
        "  positive_label: pneumonia\n"
        "Every field: docs/BRING_YOUR_OWN_MODEL.md. To fit calibration, a threshold, prediction sets and an "
        "input check on your validation data: medpredict adopt DESCRIPTOR.yaml --data DATA --out runs/NAME."
    )


def descriptor_intended_use(d: OnnxDescriptor) -> IntendedUse:
    """The intended use a descriptor's ``card.intended_use`` declares (a sentence or a mapping).

    Raises:
        ConfigError: a mapping with unknown keys (names them).
    """
    stated = d.card.get("intended_use")
    if isinstance(stated, dict):
        return IntendedUse.from_dict({"channels": d.channels, **stated, "source": stated.get("source", "descriptor")})
    if stated:
        return IntendedUse(description=str(stated), channels=d.channels, source="descriptor")
    return IntendedUse(channels=d.channels)


def is_descriptor(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` names a bring-your-own-model YAML (or a bare ``.onnx`` file)."""
    suffix = Path(path).suffix.lower()
    return Path(path).is_file() and (suffix in DESCRIPTOR_SUFFIXES or suffix == ".onnx")


# --------------------------------------------------------------------------- predictor


class OnnxPredictor:
    """The Predictor surface over an external ONNX model described by an :class:`OnnxDescriptor`.

    ``predict`` and ``explain`` take images as out of the readers (``(C, H, W)`` float32 in
    [0, 1]) or paths, resize them to the descriptor's input size and apply its scaling and
    channel layout. Record inputs are not supported for external models.
    """

    input_kind = "image"

    def __init__(self, descriptor: OnnxDescriptor, *, threads: int | None = None) -> None:
        self.descriptor = descriptor
        source = descriptor.path or descriptor.model
        # A single-column output of a two-label model is P(positive), the Keras habit.
        self.backend = OnnxBackend(
            descriptor.model, activation="none", threads=threads, input_name=descriptor.input_name
        )
        if len(self.backend.input_names) != 1:
            raise ConfigError(
                f"The graph {Path(descriptor.model).name} takes {len(self.backend.input_names)} inputs "
                f"{self.backend.input_names}; name the image input with input.name in {source}."
            )
        check_input_shape(self.backend.input_shapes[0], self.backend.input_names[0], descriptor, source)
        self.activation_check = ActivationCheck(descriptor.activation, descriptor.task, source)
        self.labels = list(descriptor.labels)
        self.task = descriptor.task
        self.threshold = float(descriptor.threshold)
        self.positive_index = (
            self.labels.index(descriptor.positive_label)
            if descriptor.positive_label
            else len(self.labels) - 1
        )
        self.identity = ModelIdentity(
            name=descriptor.name,
            version=descriptor.version,
            architecture="onnx",
            weights_sha256=_file_sha256(descriptor.model),
        )
        self.version = self.identity.version
        self.positive_label = self.labels[self.positive_index] if self.task == "binary" else None
        self.intended_use = descriptor_intended_use(descriptor)
        self.card = {
            "name": descriptor.name,
            "version": descriptor.version,
            "source": "external ONNX model (bring your own model)",
            "labels": self.labels,
            "positive_label": self.labels[self.positive_index],
            "threshold": self.threshold,
            "input": {
                "height": descriptor.height,
                "width": descriptor.width,
                "channels": descriptor.channels,
                "layout": descriptor.layout,
            },
            "explanation": "occlusion sensitivity (no gradients through ONNX)",
            "trained_by": "elsewhere",
            "provenance": self.provenance,
            **descriptor.card,
        }
        self.input_shapes = [(descriptor.channels, descriptor.height, descriptor.width)]
        self.channels = descriptor.channels
        # probe: a graph that ends in softmax shows it on any input, before any patient's image
        self.activation_check.observe(self._run(graph_input(probe_images(descriptor), descriptor)),
                                      where="synthetic probe images")

    @property
    def provenance(self) -> dict[str, str]:
        """Where each setting comes from, in words (the report and model card show these)."""
        name = Path(self.descriptor.path).name or "the descriptor"
        threshold = (
            f"given in the descriptor {name}; not fitted by medpredict"
            if self.descriptor.threshold_given
            else f"default 0.5 (the descriptor {name} states none); not fitted by medpredict"
        )
        stated = self.intended_use
        return {
            "training": "trained elsewhere: medpredict cannot know which data the model saw during training",
            "threshold": threshold,
            "calibration": "none: the graph's own probabilities (run 'medpredict adopt' to calibrate)",
            "conformal": "none (run 'medpredict adopt' to fit prediction sets on validation data)",
            "input_guard": "none (run 'medpredict adopt' to fit an out-of-distribution check)",
            "intended_use": f"the descriptor's card: {stated.summary()}" if stated.description or stated.declared
            else "not declared",
        }

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], **kwargs: Any) -> OnnxPredictor:
        """Load from a descriptor YAML."""
        return cls(load_descriptor(path), **kwargs)

    # -- preprocessing

    def preprocess(self, images: Sequence[np.ndarray | str | os.PathLike[str]]) -> np.ndarray:
        """Turn images into the graph's input batch (``NCHW`` or ``NHWC`` float32).

        Raises:
            DataError: an image is not 2-D/3-D or cannot be read.
        """
        return graph_input(np.stack([self._to_chw(img) for img in images]), self.descriptor)

    def prepare(self, image: np.ndarray | str | os.PathLike[str]) -> np.ndarray:
        """One image (array ``(C, H, W)`` in [0, 1], or a path) at the graph's input size, before scaling.

        Predicting (or explaining) the result gives the same answer as the original image:
        the service keeps this small array instead of a large upload.
        """
        return self._to_chw(image)

    def _to_chw(self, image: np.ndarray | str | os.PathLike[str]) -> np.ndarray:
        d = self.descriptor
        if isinstance(image, str | os.PathLike):
            from medpredict.readers import read_image

            image = read_image(image, channels=d.channels)
        arr = np.asarray(image, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise DataError(f"Expected an image (C, H, W) or (H, W), got an array of shape {arr.shape}.")
        if arr.shape[0] not in (1, 3) and arr.shape[-1] in (1, 3):
            arr = arr.transpose(2, 0, 1)
        if arr.shape[0] != d.channels:
            arr = np.repeat(arr[:1], 3, axis=0) if d.channels == 3 else arr.mean(axis=0, keepdims=True)
        return _resize(arr, d.height, d.width)

    # -- prediction

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self.backend.logits(batch)
        except DataError as exc:
            raise DataError(f"{exc} Check input.height/width/channels and input.layout (NHWC for Keras).") from None

    def predict_proba_batch(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, K)`` for an already-preprocessed graph input batch.

        Raises:
            ConfigError: the outputs contradict ``output.activation`` (:class:`ActivationCheck`).
        """
        out = self._run(batch)
        self.activation_check.observe(out)
        return graph_probabilities(out, self.descriptor, self.positive_index)

    # -- the Predictor's lower-level surface, so evaluation code can treat both alike

    @property
    def image_size(self) -> int:
        """Square side evaluation code resizes to; :meth:`logits` then resizes to the graph's size."""
        return max(self.descriptor.height, self.descriptor.width)

    @property
    def spatial_dims(self) -> int:
        return 2

    @property
    def meta(self) -> dict[str, Any]:
        """What a bundle's ``bundle.json`` would say; there is no training config to reuse."""
        d = self.descriptor
        return {
            "name": d.name,
            "input_kind": "image",
            "task": self.task,
            "labels": self.labels,
            "preprocess": {"image_size": self.image_size, "spatial_dims": 2, "channels": d.channels},
            # a number, not a fitted picker: evaluation reports it as given, not chosen on validation
            "threshold": self.threshold,
            "positive_label": self.positive_label,
            "intended_use": self.intended_use.to_dict(),
            "source": "external ONNX model",
            "trained_by": "elsewhere",
            "provenance": self.provenance,
        }

    def logits(self, batch: Any) -> np.ndarray:
        """Log-probabilities ``(N, K)`` for a batch ``(N, C, H, W)`` in [0, 1] (tensor or array).

        External graphs may return probabilities; their logarithm is returned so that
        ``softmax(logits)`` gives back exactly the model's probabilities (``calibrate``
        does that), whatever the graph's own output activation.
        """
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(batch, torch.Tensor):
            batch = torch.as_tensor(batch).detach().cpu().numpy()
        probs = self.predict_proba_batch(self.preprocess(list(np.asarray(batch, dtype=np.float32))))
        clipped = np.clip(probs.astype(np.float64), 1e-12, 1.0 - 1e-12)
        if self.task == "multilabel":
            return np.log(clipped / (1.0 - clipped)).astype(np.float32)
        return np.log(clipped).astype(np.float32)

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities from :meth:`logits` (no calibrator: the descriptor brings none)."""
        return _activate(
            np.asarray(logits, np.float32), "sigmoid" if self.task == "multilabel" else "softmax"
        )

    def predict_proba(self, batch: Any) -> np.ndarray:
        """Probabilities ``(N, K)`` for a batch ``(N, C, H, W)`` in [0, 1]."""
        return self.calibrate(self.logits(batch))

    @property
    def rule(self) -> DecisionRule:
        """The descriptor's decision rule: its threshold on the positive class; no conformal sets."""
        return DecisionRule(
            labels=tuple(self.labels),
            task=self.task,
            threshold=self.threshold if self.task == "binary" else None,
            positive_index=self.positive_index if self.task == "binary" else None,
            conformal=None,
            identity=self.identity,
        )

    def predict(
        self,
        images: Sequence[Any] | None = None,
        records: Sequence[dict[str, Any]] | None = None,
        *,
        tags: Sequence[Any] | None = None,
        explain: bool = False,
        ignore_intended_use: bool = False,
    ) -> list[CasePrediction]:
        """Predict for a list of images (arrays or paths); returns the prediction contract per image.

        Raises:
            DataError: records were given (external models take images only) or no images.
        """
        if records:
            raise DataError("This external ONNX model takes images only; remove the clinical record.")
        if not images:
            raise DataError("No image given; an external ONNX model needs at least one image.")
        items = list(images)
        probs = self.predict_proba_batch(self.preprocess(items))
        cases = decide(self.rule, probs, sources=items)
        if explain:
            from dataclasses import replace

            cases = [
                replace(c, explanation=Explanation(self.explain(item), c.decision, "occlusion"))
                for c, item in zip(cases, items, strict=True)
            ]
        return cases

    def outputs(self, batch: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Log-probabilities ``(N, K)`` of a batch in [0, 1]; an outside graph exports no features."""
        return self.logits(batch), None

    def cases(
        self,
        probs: np.ndarray,
        features: np.ndarray | None = None,
        *,
        sources: Sequence[Any] | None = None,
        tags: Sequence[Any] | None = None,
    ) -> list[CasePrediction]:
        """The contract for already computed probabilities (no input check without features)."""
        return decide(self.rule, probs, sources=sources)

    def explanation(self, image: Any, class_label: str | None = None) -> Explanation:
        """An occlusion map with the class it explains (by default the decided one)."""
        index = None if class_label is None else self.labels.index(class_label)
        if index is None:
            probs = self.predict_proba_batch(self.preprocess([image]))
            index = int(self.rule.decisions(probs)[0])
        return Explanation(self.explain(image, index), self.labels[index], "occlusion")

    def explain(
        self, image: np.ndarray | str | os.PathLike[str], class_index: int | None = None, *, patch: int | None = None
    ) -> np.ndarray:
        """Occlusion map ``(H, W)`` float32 in [0, 1] at the image's own size.

        Each square patch is replaced by the image mean; the drop of the explained class's
        probability is the patch's importance. ``class_index`` defaults to the decided class.
        """
        if isinstance(image, str | os.PathLike):
            from medpredict.readers import read_image

            image = read_image(image, channels=self.descriptor.channels)
        out_h, out_w = np.asarray(image).shape[-2:]
        chw = self._to_chw(image)
        d = self.descriptor
        if class_index is None:  # the class decided for the image, as the contract explains
            class_index = int(self.rule.decisions(self.predict_proba_batch(self.preprocess([chw])))[0])
        target = class_index
        from medpredict.explain.maps import occlusion

        heat = occlusion(
            lambda batch: self.predict_proba_batch(self.preprocess(list(batch))),
            chw,
            target,
            patch=patch or max(2, min(d.height, d.width) // 7),
            baseline=float(chw.mean()),
            progress=False,
        )
        return _resize(heat[None], int(out_h), int(out_w))[0]


def _file_sha256(path: str | os.PathLike[str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _uncertainty(row: np.ndarray, score: float, threshold: float) -> dict[str, float]:
    p = np.clip(row.astype(np.float64), 1e-12, 1.0)
    entropy = float(-(p * np.log(p)).sum() / np.log(len(p)))
    return {"entropy": entropy, "margin_to_threshold": float(abs(score - threshold))}


class OnnxBundlePredictor(Predictor):
    """A medpredict bundle whose network runs in ONNX Runtime (``RUN/onnx/model.onnx``).

    Everything but the network call is the bundle's own Predictor: preprocessing,
    calibration, threshold, conformal sets. The exported graph contains the input
    normalisation, so it takes the same ``[0, 1]`` batch as the PyTorch model. ONNX gives no
    gradients, so :meth:`explain` returns an occlusion map instead of Grad-CAM.
    """

    explanation_text = "occlusion sensitivity (ONNX Runtime backend)"
    explanation_method = "occlusion"

    @classmethod
    def from_run(
        cls,
        path: str | os.PathLike[str],
        *,
        onnx_path: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        int8: bool = False,
    ) -> OnnxBundlePredictor:
        """Load the bundle at ``path`` and its exported ONNX model.

        Args:
            path: a run folder or its ``model/`` bundle folder.
            onnx_path: the ``.onnx`` file; defaults to ``RUN/onnx/model.onnx`` (or
                ``model.int8.onnx`` with ``int8``).
            threads: ONNX Runtime intra-op threads.

        Raises:
            BundleError: the bundle is invalid, the ONNX file is missing, or it was exported
                from other weights than the bundle's (a stale export).
        """
        from medpredict.bundle.schema import read_bundle

        bundle = read_bundle(Path(path))
        default = bundle.path.parent / "onnx" / ("model.int8.onnx" if int8 else "model.onnx")
        onnx_file = Path(onnx_path) if onnx_path is not None else default
        if int8 and not onnx_file.is_file():
            raise BundleError(
                f"int8 model not found: {onnx_file}. Write it with 'medpredict export RUN --int8'."
            )
        if onnx_file.is_file():
            verify_export(onnx_file, bundle, required=onnx_path is None)
        backend = OnnxBackend(onnx_file, threads=threads)
        exported_from = backend.metadata.get("medpredict.weights_sha256", "")
        sums = bundle.read_json("checksums.json") or {}
        current = sums.get("files", {}).get("weights.safetensors", "")
        if exported_from and current and exported_from != current:
            raise BundleError(
                f"{onnx_file} was exported from other weights than the bundle in {bundle.path}; "
                "export again with 'medpredict export RUN'."
            )
        import torch

        return cls(bundle, backend, torch.device("cpu"), bundle.cleaner())  # type: ignore[arg-type]

    @property
    def card(self) -> dict[str, Any]:
        return {**super().card, "explanation": self.explanation_text, "backend": "onnxruntime"}

    def outputs(self, batch: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and (when the export has them) pooled features, from ONNX Runtime."""
        import torch

        array = torch.as_tensor(batch).detach().cpu().numpy() if isinstance(batch, torch.Tensor) else batch
        backend: OnnxBackend = self.model  # type: ignore[assignment]
        logits, features = backend.outputs(np.asarray(array, dtype=np.float32))
        if self.input_kind == "table":  # a record model's features are the cleaned record itself
            features = np.asarray(array, dtype=np.float32)
        return logits, features

    def explain(self, image: Any, class_index: int | None = None) -> np.ndarray:
        """Occlusion map ``(H, W)`` float32 in [0, 1] at the model's input size.

        A fused graph takes (image, record, present): its image is explained with the record
        absent (masked zeros), as Grad-CAM explains the PyTorch model's image branch.
        """
        import torch

        from medpredict.explain.maps import occlusion

        prepared = self.prepare(image)
        if class_index is None:
            class_index = self.decided_index(prepared)
        return occlusion(
            lambda batch: self._image_probabilities(torch.from_numpy(np.asarray(batch, np.float32))),
            prepared.numpy(),
            class_index,
            spatial_dims=self.spatial_dims,
            progress=False,
        )

    def decided_index(self, prepared: Any) -> int:
        """The class decided for one prepared image (a fused graph's with the record absent)."""
        return int(self.rule.decisions(self._image_probabilities(prepared[None]))[0])

    def _image_probabilities(self, batch: Any) -> np.ndarray:
        """Calibrated probabilities of a batch of prepared images (for a fused graph: no records)."""
        if self.input_kind != "fusion":
            return self.predict_proba(batch)
        from medpredict.models.fusion import prepare_fusion_batch

        width = len(self.cleaner.feature_names_) if self.cleaner is not None else None
        inputs = prepare_fusion_batch(batch, None, len(batch), record_width=width)
        return self.calibrate(self.model(*inputs).float().cpu().numpy())


def verify_export(onnx_file: Path, bundle: Any, *, required: bool = True) -> None:
    """Check an exported ONNX file against its folder's ``checksums.json`` and the bundle's weights.

    ``export`` writes the SHA-256 of every file of ``RUN/onnx`` there, bound to the bundle's
    weights (and signed when ``MEDPREDICT_BUNDLE_KEY`` is set). A file elsewhere without a
    checksum list (``required=False``, an explicit path) is loaded with a warning.

    Raises:
        BundleError: a changed, unlisted or unsigned file; an export of other weights.
    """
    from medpredict.bundle.store import CHECKSUMS, WEIGHTS, verify

    folder = onnx_file.parent
    if not (folder / CHECKSUMS).is_file() and not required:
        logger.warning("%s has no %s beside it: its integrity is not checked.", onnx_file, CHECKSUMS)
        return
    if not (folder / CHECKSUMS).is_file():
        raise BundleError(
            f"The ONNX export {folder} has no {CHECKSUMS} (written by an older medpredict, or altered); "
            "export again with 'medpredict export RUN'."
        )
    verify(folder, required=(onnx_file.name,), what="ONNX export")  # files, and bound_to under the HMAC
    import json

    bound_to = json.loads((folder / CHECKSUMS).read_text(encoding="utf-8")).get("bound_to") or {}
    exported_from = bound_to.get(WEIGHTS)
    current = (bundle.read_json(CHECKSUMS) or {}).get("files", {}).get(WEIGHTS)
    if exported_from != current:
        raise BundleError(
            f"{onnx_file} was exported from other weights than the bundle in {bundle.path}; "
            "export again with 'medpredict export RUN'."
        )

