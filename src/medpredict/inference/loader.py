"""The one loader: whatever a user points at becomes a :class:`~medpredict.inference.contract.PredictorLike`.

``load_predictor`` is what the CLI (``predict``, ``evaluate``, ``serve``, ``pacs``,
``export``), the REST service and the PACS node call, so they all get the same prediction
contract:

=====================  ==========  ==============================================================
``path``               ``backend`` result
=====================  ==========  ==============================================================
run or bundle folder   ``torch``   :class:`~medpredict.inference.predictor.Predictor` (PyTorch)
run or bundle folder   ``onnx``    :class:`~medpredict.inference.onnx.OnnxBundlePredictor` on
                                   ``RUN/onnx/model.onnx`` (after ``medpredict export``)
run or bundle folder   ``int8``    the same on ``RUN/onnx/model.int8.onnx`` (``export --int8``)
descriptor ``.yaml``   (any)       :class:`~medpredict.inference.onnx.OnnxPredictor`, a model
                                   trained elsewhere (docs/BRING_YOUR_OWN_MODEL.md)
run of ``adopt``       (any)       :class:`~medpredict.inference.adopted.AdoptedPredictor`: that
                                   model's ONNX graph with what ``medpredict adopt`` fitted
=====================  ==========  ==============================================================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medpredict.errors import ConfigError, unknown_choice
from medpredict.inference.adopted import AdoptedPredictor, is_adopted
from medpredict.inference.contract import PredictorLike
from medpredict.inference.onnx import DESCRIPTOR_SUFFIXES, OnnxBundlePredictor, OnnxPredictor, bare_onnx_message
from medpredict.inference.predictor import Predictor

BACKENDS = ("torch", "onnx", "int8")


def load_predictor(
    path: str | os.PathLike[str], *, backend: str = "torch", threads: int | None = None, **kwargs: Any
) -> PredictorLike:
    """Load what ``path`` names (see the module docstring).

    Args:
        path: a run folder, its ``model/`` bundle folder, or a descriptor YAML.
        backend: ``torch``, ``onnx`` or ``int8`` (ignored for a descriptor, which is ONNX).
        threads: ONNX Runtime intra-op threads.
        kwargs: passed to :meth:`Predictor.from_bundle` (e.g. ``device``).

    Raises:
        ConfigError: an unknown backend, or a bare ``.onnx`` file (the message shows the descriptor it needs).
        BundleError: no valid bundle, or no (valid) export for an ONNX backend.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise unknown_choice("backend", backend, BACKENDS)
    if path.is_file() and path.suffix.lower() in DESCRIPTOR_SUFFIXES:
        return OnnxPredictor.from_path(path, threads=threads)
    if path.is_file() and path.suffix.lower() == ".onnx":
        raise ConfigError(bare_onnx_message(path))  # names the descriptor YAML it needs, with an example
    if is_adopted(path):  # a graph trained elsewhere, wrapped by 'medpredict adopt': ONNX whatever the backend
        return AdoptedPredictor.from_bundle(path, threads=threads)
    if backend != "torch":
        return OnnxBundlePredictor.from_run(path, threads=threads, int8=backend == "int8")
    return Predictor.from_bundle(path, **kwargs)
