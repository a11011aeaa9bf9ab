"""A model trained elsewhere, wrapped in a medpredict bundle by ``medpredict adopt``.

The bundle holds the user's ONNX file byte for byte (``model.onnx``, covered by the
checksums) and what ``medpredict adopt`` fitted on the user's validation split — the same
fields a bundle medpredict trained carries, so ``evaluate``, ``predict``, ``serve``, ``pacs``
and the model card treat both alike::

    model.onnx         the graph as the user gave it
    bundle.json        name, input_kind "image", task, labels, positive_label,
                       model: {kind: "onnx", file, version, input: {...}, output: {activation},
                               features: {source: graph|generic, tensor, dim}},
                       preprocess, calibration, threshold, conformal, intended_use,
                       val_metrics, data (the adoption split), adoption, provenance, card
    input_guard.json   the out-of-distribution detector on those features
    checksums.json

:class:`GraphNetwork` is the network call, the one piece that differs from a PyTorch
bundle: the descriptor's input transform, the graph, its output read as probabilities (the
declared ``output.activation`` re-checked on every batch), and their logarithm as
"logits" (``softmax(log p) = p``, so the calibrator fitted on them starts from exactly the
model's probabilities), plus the features the input guard scores.

**Features for the input guard.** A medpredict network exposes its pooled features; a graph
from elsewhere has no such output. ``adopt`` adds one in memory when the graph allows it:
the input of its last fully connected layer (:func:`~medpredict.inference.graph_io.penultimate_tensor`;
for the brief's Keras CNN the 128 ReLU units before the softmax layer). These are the
features the Mahalanobis detector was designed for (Lee et al. 2018) and what medpredict's
own bundles use, so "unusual for this model" means the same for both. The file in the bundle
stays the user's: the extra output is added when the session is built. When no such layer
is found (or it is wider than :data:`~medpredict.inference.graph_io.MAX_GRAPH_FEATURES`),
the guard falls back to a representation any model gives (:func:`generic_features`): the
log-probabilities and an 8 x 8 thumbnail of the image with its mean and spread. The bundle
records which one it holds (``model.features.source``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpredict.bundle.identity import ModelIdentity
from medpredict.bundle.store import META, ONNX_MODEL, Bundle, load_bundle, resolve_bundle_dir
from medpredict.errors import BundleError
from medpredict.inference.graph_io import ActivationCheck, graph_input, graph_probabilities
from medpredict.inference.onnx import OnnxBackend, OnnxDescriptor
from medpredict.inference.predictor import Predictor

log = logging.getLogger(__name__)

#: ``bundle.json``'s ``model.kind`` of an adopted graph.
ONNX_KIND = "onnx"
#: Side of the thumbnail in :func:`generic_features`.
THUMBNAIL = 8


def generic_features(images: np.ndarray, log_probs: np.ndarray) -> np.ndarray:
    """``(N, K + 66)`` float32: log-probabilities, an 8 x 8 thumbnail, the image mean and std.

    Args:
        images: ``(N, C, H, W)`` float32 in [0, 1] (channels are averaged).
        log_probs: ``(N, K)`` the model's log-probabilities.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).mean(dim=1, keepdim=True)
    thumb = torch.nn.functional.adaptive_avg_pool2d(tensor, THUMBNAIL).flatten(1).numpy()
    flat = tensor.flatten(1).numpy()
    stats = np.stack([flat.mean(axis=1), flat.std(axis=1)], axis=1)
    clipped = np.maximum(np.asarray(log_probs, np.float32), np.log(1e-6))
    return np.concatenate([clipped, thumb, stats], axis=1).astype(np.float32)


def descriptor_spec(d: OnnxDescriptor, features: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` entry of an adopted bundle's ``bundle.json`` for descriptor ``d``."""
    return {
        "kind": ONNX_KIND,
        "file": ONNX_MODEL,
        "version": d.version,
        "input": {
            "height": d.height,
            "width": d.width,
            "channels": d.channels,
            "layout": d.layout,
            "scale": list(d.scale),
            "mean": None if d.mean is None else list(d.mean),
            "std": None if d.std is None else list(d.std),
            "name": d.input_name,
        },
        "output": {"activation": d.activation},
        "features": features,
    }


def descriptor_from_bundle(meta: dict[str, Any], folder: Path) -> OnnxDescriptor:
    """Rebuild the descriptor an adopted bundle was made from (the graph is the bundle's copy).

    Raises:
        BundleError: the ``model`` entry is malformed.
    """
    try:
        spec = meta["model"]
        inp = spec["input"]
        stored = meta.get("threshold")
        threshold = float(stored["threshold"]) if isinstance(stored, dict) else float(stored or 0.5)
        return OnnxDescriptor(
            model=str(folder / spec.get("file", ONNX_MODEL)),
            labels=tuple(str(v) for v in meta["labels"]),
            height=int(inp["height"]),
            width=int(inp["width"]),
            channels=int(inp["channels"]),
            layout=str(inp["layout"]),
            scale=(float(inp["scale"][0]), float(inp["scale"][1])),
            mean=None if inp.get("mean") is None else tuple(float(v) for v in inp["mean"]),
            std=None if inp.get("std") is None else tuple(float(v) for v in inp["std"]),
            activation=str(spec["output"]["activation"]),
            positive_label=meta.get("positive_label"),
            threshold=threshold,
            task=str(meta["task"]),
            name=str(meta.get("name") or "model"),
            version=str(spec.get("version", "unversioned")),
            input_name=inp.get("name"),
            card=dict(meta.get("card") or {}),
            path=str(folder / META),
            threshold_given=True,
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise BundleError(f"{folder / META} has a malformed 'model' entry for an ONNX graph ({exc}).") from None


class GraphNetwork:
    """The descriptor's graph as a network on images in [0, 1]: log-probabilities and features.

    Args:
        descriptor: what the graph takes and returns.
        features: ``{"source": "graph", "tensor": NAME}``, ``{"source": "generic"}`` or
            ``{"source": "none"}`` (see the module docstring).
        threads: ONNX Runtime intra-op threads.
    """

    def __init__(
        self, descriptor: OnnxDescriptor, features: dict[str, Any], *, threads: int | None = None
    ) -> None:
        self.descriptor = descriptor
        self.features = dict(features)
        tensor = self.features.get("tensor") if self.features.get("source") == "graph" else None
        self.backend = OnnxBackend(
            descriptor.model, activation="none", threads=threads, input_name=descriptor.input_name,
            features_output=tensor,
        )
        self.activation_check = ActivationCheck(descriptor.activation, descriptor.task, descriptor.path)
        labels = list(descriptor.labels)
        self.positive_index = (
            labels.index(descriptor.positive_label) if descriptor.positive_label in labels else len(labels) - 1
        )

    def outputs(self, images: np.ndarray, *, where: str = "the first inputs") -> tuple[np.ndarray, np.ndarray | None]:
        """Log-probabilities ``(N, K)`` and features ``(N, D)`` (None without a guard) of ``(N, C, H, W)`` images.

        Raises:
            ConfigError: the outputs contradict ``output.activation``.
            DataError: the graph refuses the batch.
        """
        images = np.asarray(images, dtype=np.float32)
        out, tensor = self.backend.outputs(graph_input(images, self.descriptor))
        self.activation_check.observe(out, where=where)
        probs = graph_probabilities(out, self.descriptor, self.positive_index)
        log_probs = np.log(np.clip(probs.astype(np.float64), 1e-12, 1.0)).astype(np.float32)
        source = self.features.get("source")
        if source == "graph" and tensor is not None:
            return log_probs, tensor.reshape(len(out), -1).astype(np.float32)
        if source == "generic":
            return log_probs, generic_features(images, log_probs)
        return log_probs, None

    def eval(self) -> GraphNetwork:
        """No-op, so code written for ``torch.nn.Module`` can call it."""
        return self


def is_adopted(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a run folder or bundle written by ``medpredict adopt`` (not yet verified)."""
    try:
        folder = resolve_bundle_dir(Path(path))
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (BundleError, OSError, ValueError):
        return False
    model = meta.get("model") if isinstance(meta, dict) else None
    return isinstance(model, dict) and model.get("kind") == ONNX_KIND


class AdoptedPredictor(Predictor):
    """The Predictor of an adopted bundle: the graph runs in ONNX Runtime, the rest is the shared Predictor.

    Calibration, the locked threshold, conformal sets, the input guard and the intended use
    come from the bundle exactly as for a bundle medpredict trained. ONNX gives no gradients,
    so :meth:`explain` returns occlusion maps.
    """

    explanation_method = "occlusion"
    explanation_text = "occlusion sensitivity (ONNX graph trained elsewhere)"

    def __init__(self, bundle: Bundle, *, threads: int | None = None) -> None:
        self.descriptor = descriptor_from_bundle(bundle.meta, bundle.path)
        network = GraphNetwork(self.descriptor, bundle.meta["model"].get("features") or {}, threads=threads)
        super().__init__(bundle, network, torch.device("cpu"))  # type: ignore[arg-type]

    @classmethod
    def from_bundle(
        cls, path: str | os.PathLike[str], *, device: str = "cpu", threads: int | None = None
    ) -> AdoptedPredictor:
        """Load and verify an adopted bundle (a run folder or its ``model/`` folder).

        Raises:
            BundleError: missing, tampered with, or not written by ``medpredict adopt``.
        """
        bundle = load_bundle(Path(path))
        if (bundle.meta.get("model") or {}).get("kind") != ONNX_KIND:
            raise BundleError(f"{bundle.path} holds a network medpredict trained, not an adopted ONNX graph.")
        return cls(bundle, threads=threads)

    @property
    def identity(self) -> ModelIdentity:
        """Name, version (the ONNX file's SHA-256, first 12 hex digits) and architecture ``onnx``."""
        sums = self.bundle.read_json("checksums.json") or {}
        digest = str(sums.get("files", {}).get(ONNX_MODEL, ""))
        return ModelIdentity(
            name=str(self.meta.get("name") or "model"),
            version=digest[:12] if digest else "unversioned",
            architecture="onnx",
            weights_sha256=digest,
        )

    @property
    def card(self) -> dict[str, Any]:
        """The bundle's card with where each setting came from, and the descriptor's own card fields."""
        given = {k: v for k, v in (self.meta.get("card") or {}).items() if k != "intended_use"}
        return {
            **given,
            **super().card,
            "explanation": self.explanation_text,
            "backend": "onnxruntime",
            "trained_by": "elsewhere",
            "provenance": self.meta.get("provenance"),
        }

    def outputs(self, batch: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Log-probabilities and input-guard features for prepared images ``(N, C, H, W)`` in [0, 1]."""
        array = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        network: GraphNetwork = self.model  # type: ignore[assignment]
        return network.outputs(array)

    def explain(self, image: Any, class_index: int | None = None) -> np.ndarray:
        """Occlusion map ``(H, W)`` float32 in [0, 1] at the model's input size."""
        from medpredict.explain.maps import occlusion

        prepared = self.prepare(image)
        if class_index is None:
            class_index = self.decided_index(prepared)
        return occlusion(
            lambda batch: self.predict_proba(torch.from_numpy(np.asarray(batch, np.float32))),
            prepared.numpy(),
            class_index,
            spatial_dims=self.spatial_dims,
            progress=False,
        )
