"""Export a trained PyTorch model to ONNX, check it against PyTorch, and quantise it to int8.

The exported graph returns the same logits as the PyTorch model, with a dynamic batch
axis. :func:`export_onnx` always runs a parity check on the exported file and refuses a
graph whose outputs differ from PyTorch by more than ``atol``; the measured maximum
absolute difference is part of the returned :class:`ExportReport`. :func:`quantize_int8`
applies ONNX Runtime's int8 quantisation (static QDQ with calibrated activation ranges for
image networks, dynamic for record models) and reports how far the outputs (and, given
labels, the accuracy and AUC) moved.

:func:`export_run` does the whole job for a training run folder and writes
``RUN/onnx/model.onnx``, optionally ``RUN/onnx/model.int8.onnx``, the figures as
``RUN/onnx/export.json`` and ``RUN/onnx/checksums.json``: the SHA-256 of every file, bound
to the bundle's weights and signed like the bundle when ``MEDPREDICT_BUNDLE_KEY`` is set,
so a changed weight inside an ONNX file is refused on load
(:meth:`medpredict.inference.onnx.OnnxBundlePredictor.from_run`). The folder is written
whole or not at all: an export that fails its parity check leaves nothing behind. The
bundle in ``RUN/model/`` is left untouched, so its checksum manifest stays valid; the ONNX
file also carries the bundle's weight checksum in its metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medpredict.atomic import atomic_dir, write_bytes, write_json
from medpredict.bundle.schema import BundleMeta
from medpredict.bundle.store import CHECKSUMS, WEIGHTS, write_checksums
from medpredict.errors import BundleError, ConfigError, DataError, require_extra, unknown_choice

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

EXPORTERS = ("dynamo", "torchscript")
DEFAULT_OPSET = 18
OUTPUT_NAME = "logits"
QUANT_METHODS = ("static", "dynamic")
#: The files of an export folder (``RUN/onnx``), covered by its ``checksums.json``.
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"


@dataclass(frozen=True)
class ExportReport:
    """What an export produced and how close it is to PyTorch.

    Attributes:
        path: the written ``.onnx`` file.
        exporter: ``dynamo`` or ``torchscript`` (the one that actually produced the file).
        opset: ONNX opset of the graph.
        input_names / input_shapes: graph inputs; the batch axis is written as ``-1``.
        max_abs_diff: largest absolute difference between ONNX Runtime and PyTorch logits
            on the parity inputs.
        atol: the bound ``max_abs_diff`` was checked against.
        parity_samples: number of inputs the parity check ran on.
        sha256: checksum of the written file.
        quantized: the int8 report, when quantisation was asked for.
    """

    path: str
    exporter: str
    opset: int
    input_names: list[str]
    input_shapes: list[list[int]]
    max_abs_diff: float
    atol: float
    parity_samples: int
    sha256: str
    quantized: QuantizationReport | None = None
    exit_code = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """Where the graph went, its parity with PyTorch, and the int8 model's changes."""
        lines = [
            f"ONNX model: {self.path} ({self.exporter} exporter, opset {self.opset})",
            f"Parity: max |ONNX - PyTorch| = {self.max_abs_diff:.3g} on {self.parity_samples} inputs",
        ]
        q = self.quantized
        if q is not None:
            lines.append(f"int8 model ({q.method}): {q.path} ({q.size_fp32_bytes} -> {q.size_int8_bytes} bytes, "
                         f"max |dp| = {q.max_abs_prob_diff:.3g}, label agreement {q.label_agreement:.3f})")
            if q.auc_change is not None:
                lines.append(f"int8 AUC on {q.samples} validation images: {q.auc_fp32:.4f} -> {q.auc_int8:.4f} "
                             f"({q.auc_change:+.4f})")
        return "\n".join(lines)


@dataclass(frozen=True)
class QuantizationReport:
    """How int8 quantisation changed the model.

    Attributes:
        path: the written int8 ``.onnx`` file.
        method: ``static`` (QDQ, calibrated activation ranges) or ``dynamic``.
        size_fp32_bytes / size_int8_bytes: file sizes before and after.
        max_abs_prob_diff: largest change of any class probability on the check inputs.
        label_agreement: fraction of check inputs whose arg-max class did not change.
        accuracy_fp32 / accuracy_int8: accuracies on the check inputs when labels were given.
        auc_fp32 / auc_int8: the same for AUC (two classes, both present).
    """

    path: str
    method: str
    size_fp32_bytes: int
    size_int8_bytes: int
    max_abs_prob_diff: float
    label_agreement: float
    samples: int
    accuracy_fp32: float | None = None
    accuracy_int8: float | None = None
    auc_fp32: float | None = None
    auc_int8: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def accuracy_change(self) -> float | None:
        """int8 accuracy minus fp32 accuracy, or ``None`` without labels."""
        if self.accuracy_fp32 is None or self.accuracy_int8 is None:
            return None
        return self.accuracy_int8 - self.accuracy_fp32

    @property
    def auc_change(self) -> float | None:
        """int8 AUC minus fp32 AUC (binary, labelled check inputs), else ``None``."""
        if self.auc_fp32 is None or self.auc_int8 is None:
            return None
        return self.auc_int8 - self.auc_fp32

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["accuracy_change"] = self.accuracy_change
        out["auc_change"] = self.auc_change
        return out


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    example_inputs: Sequence[np.ndarray],
    *,
    parity_inputs: Sequence[np.ndarray] | None = None,
    atol: float = 1e-4,
    exporter: str = "dynamo",
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, str] | None = None,
    output_names: Sequence[str] = (OUTPUT_NAME,),
    input_names: Sequence[str] | None = None,
) -> ExportReport:
    """Export ``model`` to ONNX at ``path`` and check it against PyTorch.

    Args:
        model: a module called as ``model(*inputs)`` returning logits ``(N, K)``.
        path: where to write the ``.onnx`` file (written atomically).
        example_inputs: one array per model input, each with a batch axis, e.g. an image
            batch ``(N, C, H, W) float32``; they fix every axis but the batch.
        parity_inputs: inputs for the parity check; defaults to ``example_inputs``.
            Use a batch size different from ``example_inputs`` to prove the batch axis is
            dynamic.
        atol: largest allowed absolute difference between ONNX Runtime and PyTorch logits.
        exporter: ``dynamo`` (``torch.export``-based, the default) or ``torchscript``
            (the legacy tracer). If the dynamo exporter fails, the tracer is tried and a
            warning logged.
        opset: ONNX opset version to target.
        metadata: extra ``key -> value`` strings stored in the model's metadata.
        output_names: graph output names; the first is the logits (the parity check
            compares it), a model returning a tuple names the rest (e.g. ``features``).
        input_names: the graph's input names, one per example input; defaults to
            ``input_0, input_1, ...`` (``image`` for a single input).

    Returns:
        The :class:`ExportReport` with the measured ``max_abs_diff``.

    Raises:
        ConfigError: unknown ``exporter``.
        BundleError: the export failed, or parity is worse than ``atol``.
    """
    require_extra("onnx", "onnx")
    import torch

    if exporter not in EXPORTERS:
        raise unknown_choice("ONNX exporter", exporter, EXPORTERS)
    if not example_inputs:
        raise ConfigError(
            "export_onnx needs at least one example input array, e.g. an image batch (N, C, H, W)."
        )
    path = Path(path)
    if input_names is not None and len(input_names) != len(example_inputs):
        raise ConfigError(f"export_onnx got {len(input_names)} input names for {len(example_inputs)} inputs.")
    names = (
        list(input_names)
        if input_names is not None
        else ["image"] if len(example_inputs) == 1 else [f"input_{i}" for i in range(len(example_inputs))]
    )
    tensors = tuple(torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in example_inputs)
    was_training = model.training
    model.eval()
    try:
        data, used = _export_bytes(model, tensors, names, exporter, opset, list(output_names))
    finally:
        model.train(was_training)
    data = _with_metadata(data, {"producer": "medpredict", **(metadata or {})})
    parity = list(parity_inputs) if parity_inputs is not None else list(example_inputs)
    # Checked as a temporary file and renamed only after the parity check passes: a graph that
    # fails it never lies where a loader would find it.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        diff = parity_max_abs_diff(model, tmp, parity)
        if not np.isfinite(diff) or diff > atol:
            raise BundleError(
                f"The ONNX export {path} differs from PyTorch by {diff:.3g} (allowed {atol:.3g}); nothing was "
                "written. Try exporter='torchscript' or another opset, or report the model as unsupported."
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("Exported %s with %s exporter; max |ONNX - PyTorch| = %.3g", path, used, diff)
    return ExportReport(
        path=str(path),
        exporter=used,
        opset=opset,
        input_names=names,
        input_shapes=[[-1, *np.asarray(a).shape[1:]] for a in example_inputs],
        max_abs_diff=float(diff),
        atol=atol,
        parity_samples=int(np.asarray(parity[0]).shape[0]),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _export_bytes(
    model: torch.nn.Module, tensors: tuple[Any, ...], names: list[str], exporter: str, opset: int, outputs: list[str]
) -> tuple[bytes, str]:
    """Run the chosen exporter and return the serialised model and the exporter used."""
    if exporter == "dynamo":
        try:
            return _export_dynamo(model, tensors, names, opset, outputs), "dynamo"
        except Exception as exc:  # noqa: BLE001 - any exporter failure falls back to the tracer
            logger.warning(
                "The dynamo ONNX exporter failed (%s: %s); falling back to the TorchScript tracer.",
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
    try:
        return _export_torchscript(model, tensors, names, opset, outputs), "torchscript"
    except Exception as exc:
        raise BundleError(
            f"Could not export the model to ONNX ({type(exc).__name__}: {exc}). "
            "Check that the model has no data-dependent control flow."
        ) from exc


def _export_dynamo(
    model: torch.nn.Module, tensors: tuple[Any, ...], names: list[str], opset: int, outputs: list[str]
) -> bytes:
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = tuple({0: batch} for _ in tensors)
    # The exporter reports its progress with print() and warns that torchvision's operators
    # are not registered (we use none); keep the caller's stdout and log clean.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(
                model,
                tensors,
                None,
                input_names=names,
                output_names=outputs,
                dynamic_shapes=shapes,
                opset_version=opset,
                dynamo=True,
                verbose=False,
                external_data=False,
            )
    finally:
        registration.setLevel(level)
    if program is None:  # only the legacy exporter returns None
        raise BundleError("The dynamo ONNX exporter returned no program.")
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model.onnx"
        program.save(str(target), external_data=False)
        return target.read_bytes()


def _export_torchscript(
    model: torch.nn.Module, tensors: tuple[Any, ...], names: list[str], opset: int, outputs: list[str]
) -> bytes:
    import warnings

    import torch

    axes = {name: {0: "batch"} for name in [*names, *outputs]}
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        # The tracer is deliberately chosen here; its deprecation notice is not news to the user.
        warnings.simplefilter("ignore", DeprecationWarning)
        target = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            tensors,
            str(target),
            input_names=names,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=min(opset, 17),
            dynamo=False,
        )
        return target.read_bytes()


def _with_metadata(data: bytes, metadata: dict[str, str]) -> bytes:
    import onnx

    proto = onnx.load_from_string(data)
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        full = key if key.startswith("medpredict.") else f"medpredict.{key}"
        if full in existing:
            existing[full].value = str(value)
        else:
            proto.metadata_props.add(key=full, value=str(value))
    return proto.SerializeToString()


def parity_max_abs_diff(
    model: torch.nn.Module, onnx_path: str | os.PathLike[str], inputs: Sequence[np.ndarray]
) -> float:
    """Largest absolute difference between PyTorch and ONNX Runtime logits on ``inputs``."""
    import torch

    from medpredict.inference.onnx import OnnxBackend

    arrays = [np.asarray(a, dtype=np.float32) for a in inputs]
    model.eval()
    with torch.no_grad():
        out = model(*(torch.from_numpy(a) for a in arrays))
        expected = (out[0] if isinstance(out, tuple) else out).detach().cpu().numpy()
    got = OnnxBackend(onnx_path).logits(*arrays)
    if got.shape != expected.shape:
        raise BundleError(
            f"The ONNX model {onnx_path} returns shape {got.shape}, PyTorch returns {expected.shape}."
        )
    return float(np.max(np.abs(got - expected))) if expected.size else 0.0


def quantize_int8(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    check_inputs: Sequence[np.ndarray],
    *,
    labels: np.ndarray | None = None,
    activation: str = "softmax",
    method: str = "static",
    calibration_inputs: Sequence[np.ndarray] | None = None,
) -> QuantizationReport:
    """Quantise a model to int8 with ONNX Runtime and report how its outputs changed.

    ``static`` (QDQ: per-channel int8 weights, uint8 activations whose ranges are measured
    on ``calibration_inputs``) runs convolutions on integer kernels and is what pays for
    CNNs; ``dynamic`` quantises weights only and computes activation ranges on the fly,
    which suits record MLPs but is slower than float for convolutions on this CPU.

    Args:
        fp32_path: the exported float model.
        int8_path: where to write the quantised model (written atomically).
        check_inputs: inputs (one array per graph input, batch first) on which the fp32 and
            int8 outputs are compared; real validation data gives a meaningful figure.
        labels: optional true class indices ``(N,)`` for ``check_inputs``, to report accuracy
            (and AUC for two classes).
        activation: ``softmax`` or ``sigmoid``, how logits become probabilities.
        method: ``static`` or ``dynamic``.
        calibration_inputs: inputs whose activation ranges fix the static scales, e.g. a few
            hundred training images; defaults to ``check_inputs``.

    Raises:
        ConfigError: unknown ``method``.
        DataError: ``labels`` does not match the number of check inputs.
    """
    require_extra("onnxruntime", "onnx")
    from medpredict.inference.onnx import OnnxBackend

    if method not in QUANT_METHODS:
        raise unknown_choice("quantisation method", method, QUANT_METHODS)
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    arrays = [np.asarray(a, dtype=np.float32) for a in check_inputs]
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != arrays[0].shape[0]:
            raise DataError(
                f"quantize_int8 got {labels.shape[0]} labels for {arrays[0].shape[0]} check inputs; "
                "give one label per input."
            )
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model.int8.onnx"
        # ORT logs a pre-processing hint on the root logger; it is advice, not a problem.
        root_level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            if method == "static":
                calibration = [np.asarray(a, dtype=np.float32) for a in (calibration_inputs or arrays)]
                _quantize_static(fp32_path, target, calibration, Path(tmp))
            else:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantize_dynamic(str(fp32_path), str(target), weight_type=QuantType.QInt8)
        finally:
            logging.getLogger().setLevel(root_level)
        write_bytes(int8_path, target.read_bytes())

    p32 = OnnxBackend(fp32_path, activation=activation).predict_proba(*arrays)
    p8 = OnnxBackend(int8_path, activation=activation).predict_proba(*arrays)
    agree = float(np.mean(p32.argmax(1) == p8.argmax(1))) if len(p32) else 1.0
    acc32 = acc8 = auc32 = auc8 = None
    if labels is not None:
        acc32 = float(np.mean(p32.argmax(1) == labels))
        acc8 = float(np.mean(p8.argmax(1) == labels))
        if p32.shape[1] == 2 and np.unique(labels).size == 2:
            from sklearn.metrics import roc_auc_score

            auc32, auc8 = float(roc_auc_score(labels, p32[:, 1])), float(roc_auc_score(labels, p8[:, 1]))
    report = QuantizationReport(
        path=str(int8_path),
        method=method,
        size_fp32_bytes=fp32_path.stat().st_size,
        size_int8_bytes=int8_path.stat().st_size,
        max_abs_prob_diff=float(np.max(np.abs(p32 - p8))) if p32.size else 0.0,
        label_agreement=agree,
        samples=int(p32.shape[0]),
        accuracy_fp32=acc32,
        accuracy_int8=acc8,
        auc_fp32=auc32,
        auc_int8=auc8,
        notes=[] if labels is not None else ["no labels given: accuracy not measured, agreement only"],
    )
    logger.info(
        "int8 (%s) model %s: %d -> %d bytes, max |dp| = %.3g, agreement %.3f",
        method,
        int8_path,
        report.size_fp32_bytes,
        report.size_int8_bytes,
        report.max_abs_prob_diff,
        agree,
    )
    return report


def _quantize_static(source: Path, target: Path, calibration: list[np.ndarray], workdir: Path) -> None:
    """QDQ static quantisation of ``source`` into ``target``, scales measured on ``calibration``."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    names = [i.name for i in onnxruntime.InferenceSession(str(source), providers=["CPUExecutionProvider"])
             .get_inputs()]
    if len(names) != len(calibration):
        raise DataError(f"The model takes {len(names)} inputs ({names}); got {len(calibration)} calibration arrays.")

    class _Batches(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            n = calibration[0].shape[0]
            self._batches = iter([{name: a[i : i + 32] for name, a in zip(names, calibration, strict=True)}
                                  for i in range(0, n, 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    prepared = workdir / "model.prepared.onnx"
    try:  # shape inference + graph fusions: recommended before static quantisation
        quant_pre_process(str(source), str(prepared))
    except Exception as exc:  # an optional optimisation; quantising the raw graph still works
        logger.warning("ONNX pre-processing before quantisation failed (%s: %s); quantising the raw graph.",
                       type(exc).__name__, exc)
        prepared = source
    quantize_static(str(prepared), str(target), _Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)


def export_run(
    run: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    quantize: bool = False,
    quant_method: str | None = None,
    check_inputs: Sequence[np.ndarray] | None = None,
    check_labels: np.ndarray | None = None,
    atol: float = 1e-4,
    exporter: str = "dynamo",
    seed: int = 0,
) -> ExportReport:
    """Export the model of a training run (or bundle folder) to ``RUN/onnx/``.

    Without ``check_inputs``, an image run whose training data is still readable is
    checked on its own validation images (parity, and the int8 accuracy/AUC change) and
    statically quantised with activation ranges from its training images; otherwise 16
    seeded random inputs of the model's shape are used.

    Args:
        run: a run folder holding ``model/``, or the bundle folder itself.
        out_dir: where to write; defaults to ``RUN/onnx``.
        quantize: also write ``model.int8.onnx`` and report its accuracy change.
        quant_method: ``static`` or ``dynamic``; ``None`` picks static for image models and
            dynamic for record and fused models.
        check_inputs: inputs for the parity and quantisation checks, already preprocessed
            as the model expects.
        check_labels: true class indices for ``check_inputs`` (accuracy change of int8).
        atol: parity bound, see :func:`export_onnx`.
        exporter: see :func:`export_onnx`.
        seed: seed of the generator for random check inputs and the image samples.

    Raises:
        BundleError: the run holds no loadable bundle, or the export fails parity.
    """
    from medpredict.bundle.store import resolve_bundle_dir
    from medpredict.inference.predictor import Predictor

    if not (np.isfinite(atol) and atol > 0):  # before the export's minutes of work
        raise ConfigError(f"--atol {atol}: give a positive parity bound such as 1e-4 (|ONNX - PyTorch| logits).")
    if exporter not in EXPORTERS:
        raise unknown_choice("ONNX exporter", exporter, EXPORTERS)
    if quant_method is not None and quant_method not in QUANT_METHODS:
        raise unknown_choice("quantisation method", quant_method, QUANT_METHODS)
    bundle_dir = resolve_bundle_dir(Path(run))
    if not (bundle_dir / WEIGHTS).is_file():
        raise ConfigError(f"{bundle_dir} holds no PyTorch weights ({WEIGHTS}): its model is an ONNX graph already.")
    predictor = Predictor.from_bundle(bundle_dir)
    info = predictor.bundle.info
    kind = info.entry
    rng = np.random.default_rng(seed)
    example = example_inputs(info, rng, rows=2)
    calibration = None
    if check_inputs is not None:
        checks = list(check_inputs)
    else:
        own = _run_images(info, seed=seed) if kind.name == "image" else None
        if own is not None:
            calibration, checks, check_labels = [own[0]], [own[1]], own[2]
        else:
            checks = example_inputs(info, rng, rows=16)
    out = Path(out_dir) if out_dir is not None else bundle_dir.parent / "onnx"
    _claim_export_dir(out)
    weights_sha256 = _sha256(bundle_dir / WEIGHTS)
    meta = {
        "medpredict.version": predictor.version,
        "medpredict.labels": ",".join(info.labels),
        "medpredict.task": info.task,
        "medpredict.input_kind": kind.stored,
        "medpredict.weights_sha256": weights_sha256,
    }
    exported, outputs = _with_features(predictor.model, kind.name)
    # The whole export (models, figures, checksums) is written into a temporary folder that
    # replaces ``out`` only when every check passed; a failed export leaves the previous one.
    with atomic_dir(out) as tmp:
        report = export_onnx(
            exported, tmp / ONNX_FILE, example, parity_inputs=checks, atol=atol, exporter=exporter,
            metadata=meta, input_names=kind.graph_inputs, output_names=outputs,
        )
        if quantize:
            activation = "sigmoid" if info.task == "multilabel" else "softmax"
            method = quant_method or ("static" if kind.name == "image" else "dynamic")
            if method == "static" and calibration is None and check_inputs is None:
                logger.warning("The run's images could not be read: static int8 scales come from random inputs "
                               "and may cost accuracy. Pass check_inputs (preprocessed images) for real scales.")
            q = quantize_int8(
                tmp / ONNX_FILE, tmp / INT8_FILE, checks, labels=check_labels, activation=activation,
                method=method, calibration_inputs=calibration,
            )
            report = dataclasses.replace(report, quantized=q)
        report = _located(report, tmp, out)
        summary = report.to_dict()
        if report.quantized is not None:
            summary["quantized"] = report.quantized.to_dict()
        write_json(tmp / "export.json", summary)
        write_checksums(tmp, bound_to={WEIGHTS: weights_sha256})
    return report


def _located(report: ExportReport, tmp: Path, out: Path) -> ExportReport:
    """The report with the paths the files have once the temporary folder became ``out``."""
    quantized = report.quantized
    if quantized is not None:
        quantized = dataclasses.replace(quantized, path=str(out / Path(quantized.path).relative_to(tmp)))
    return dataclasses.replace(report, path=str(out / Path(report.path).relative_to(tmp)), quantized=quantized)


def _claim_export_dir(out: Path) -> None:
    """Refuse an ``--out`` that is a file, unwritable, inside a bundle, or a folder of something else
    (the export replaces the folder whole); a previous export there is replaced."""
    from medpredict.rundirs import check_writable, sealed_folder

    check_writable(out)
    sealed = sealed_folder(out)
    if (out / "bundle.json").is_file() or (sealed is not None and sealed != out.absolute()):
        raise ConfigError(f"--out {out} is inside {sealed}, a model bundle or export; give a folder of its own.")
    if out.is_dir() and any(out.iterdir()) and not (out / "export.json").is_file() and not (out / CHECKSUMS).is_file():
        raise ConfigError(
            f"--out {out} already holds other files, and an export replaces its folder whole. Give an empty or "
            "new folder (the default is RUN/onnx)."
        )


def _with_features(model: torch.nn.Module, input_kind: str) -> tuple[torch.nn.Module, tuple[str, ...]]:
    """An image network that also returns its pooled features, so the ONNX backends can run the
    input check (the out-of-distribution score) exactly as PyTorch does; other models unchanged."""
    from torch import nn

    from medpredict.inference.onnx import FEATURES_OUTPUT

    net = getattr(model, "net", model)
    head = getattr(net, "head", None)
    if input_kind != "image" or not hasattr(model, "features") or not isinstance(head, nn.Module):
        return model, (OUTPUT_NAME,)

    class LogitsAndFeatures(nn.Module):
        def __init__(self, inner: nn.Module, classifier: nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.classifier = classifier

        def forward(self, x: Any) -> tuple[Any, Any]:
            features = self.inner.features(x)  # type: ignore[operator]
            return self.classifier(features), features

    return LogitsAndFeatures(model, head).eval(), (OUTPUT_NAME, FEATURES_OUTPUT)


def example_inputs(info: BundleMeta, rng: np.random.Generator, *, rows: int) -> list[np.ndarray]:
    """Seeded random inputs of the bundle's network, one array per graph input, ``rows`` deep.

    Images and records are uniform in [0, 1); the fused model's presence mask cycles
    through both modalities, image only and record only, so every masking path is checked.
    """
    arrays = []
    for name, shape in zip(info.entry.graph_inputs, info.input_shapes(), strict=True):
        if name == "present":
            patterns = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
            arrays.append(patterns[np.arange(rows) % len(patterns)])
        else:
            arrays.append(rng.random((rows, *shape), dtype=np.float32))
    return arrays


def _run_images(
    info: BundleMeta, *, seed: int, calibration_rows: int = 256, check_rows: int = 1000
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Training images (calibration) and validation images with labels (checks) of an image run.

    Returns ``(calibration (N, C, H, W), checks (M, C, H, W), labels (M,))`` float32 in
    [0, 1], or ``None`` when the bundle is not a classifier or its data is gone.
    """
    if info.task not in ("binary", "multiclass"):
        return None
    from medpredict.training.image import build_dataset, load_data

    config = info.config
    try:
        manifest = load_data(config)
    except (DataError, ConfigError, OSError) as exc:
        logger.warning("The run's data could not be read (%s); checking the export on random inputs.", exc)
        return None
    rng = np.random.default_rng(seed)
    parts = []
    for split, limit in (("train", calibration_rows), ("val", check_rows)):
        frame = manifest.split(split)
        if frame.empty:
            return None
        frame = frame.iloc[np.sort(rng.permutation(len(frame))[:limit])]
        dataset = build_dataset(frame, config, manifest.task, progress=False)
        parts.append((dataset.inputs[0].float().div(255).numpy(), dataset.target.numpy()))
    logger.info("Checking the export on %d validation images; int8 scales from %d training images.",
                len(parts[1][0]), len(parts[0][0]))
    return parts[0][0], parts[1][0], parts[1][1]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
