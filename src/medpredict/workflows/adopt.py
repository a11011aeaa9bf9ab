"""``medpredict adopt``: a model trained elsewhere gets what a medpredict-trained bundle carries.

Given a bring-your-own-model descriptor (an ONNX graph and the YAML that says how to feed
it and read it, :mod:`medpredict.inference.onnx`) and labelled data with a validation
split, :func:`adopt` fits on that split only — with the same code as after training
(:func:`medpredict.training.postfit.post_fit`, no class weights to undo):

1. calibration: temperature or Platt, chosen by cross-validated log-loss;
2. the locked threshold on the positive class (Youden's J), or the descriptor's own
   threshold kept as given (``threshold_from="descriptor"``);
3. class-conditional conformal prediction sets (90% target coverage);
4. the input guard: a Mahalanobis detector on the graph's penultimate layer (or a generic
   representation when the graph has none; :mod:`medpredict.inference.adopted`), its class
   means and covariance from one half of the split, its flagging threshold from the other;
5. the intended use, from the caller (``--intended-use`` flags) or the descriptor's card.

Before any of this the whole split goes through the graph, and a declared
``output.activation`` that contradicts the outputs is refused (a graph that already ends in
softmax). The result is a verified bundle wrapping the ONNX file (``RUN/model``), loaded
back and checked against the fitted probabilities before ``adopt`` returns. Every setting's
origin is written into the bundle (``provenance``), so reports and model cards can say
where it came from — and that medpredict cannot know what data the model saw in training.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medpredict.errors import ConfigError, DataError
from medpredict.rundirs import claim_run_dir

log = logging.getLogger(__name__)

#: Where the locked threshold comes from: fitted on the validation split, or the descriptor's.
THRESHOLD_SOURCES = ("validation", "descriptor")
#: Rows per graph call.
BATCH = 256


@dataclass(frozen=True)
class AdoptResult:
    """The adopted run: where its bundle is and what was fitted."""

    run_dir: Path
    bundle_dir: Path
    report: dict[str, Any]
    exit_code = 0

    def summary(self) -> str:
        """Lines for the command line."""
        r = self.report
        lines = [
            f"Adopted {r['name']} (ONNX graph trained elsewhere) on {r['n']} images of the '{r['split']}' split "
            f"of {r['dataset']}",
        ]
        for key in ("calibration", "threshold", "conformal", "input_guard", "intended_use"):
            lines.append(f"  {key.replace('_', ' ')}: {r['provenance'][key]}")
        ece = r.get("val_ece")
        if ece:
            lines.append(
                f"  validation ECE: {ece['raw']:.4f} (the graph's own) -> {ece['calibrated']:.4f} (calibrated)"
            )
        lines.append(f"Bundle (verified, wraps the ONNX file): {self.bundle_dir}")
        return "\n".join(lines)


def _targets(frame: pd.DataFrame, labels: tuple[str, ...], source: str) -> np.ndarray:
    """The data's label names as class indices of the descriptor's labels (case-insensitive)."""
    index = {name.lower(): i for i, name in enumerate(labels)}
    names = frame["label_name"].astype(str)
    unknown = sorted({n for n in names if n.lower() not in index})
    if unknown:
        raise DataError(
            f"Labels {unknown} of {source} are not among the descriptor's labels {list(labels)}. "
            "Rename them in 'labels' of the descriptor, or give --target naming a column with these classes."
        )
    return names.str.lower().map(index).to_numpy(dtype=np.int64)


def _intended_use(
    flags: Mapping[str, Any] | None, card: Mapping[str, Any], paths: list[str], channels: int
) -> tuple[Any, str]:
    """The intended use and where it came from: flags, else the descriptor's card, else DICOM tags."""
    from medpredict.data.intended_use import declare

    stated = card.get("intended_use")
    if flags and any(flags.values()):
        configured, origin = dict(flags), "the --intended-use flags of medpredict adopt"
    elif isinstance(stated, Mapping):
        configured, origin = {k: v for k, v in stated.items() if k != "source"}, "the descriptor's card"
    elif stated:
        configured, origin = {"description": str(stated)}, "the descriptor's card"
    else:
        configured, origin = {}, ""
    declared = declare(configured, paths, channels=channels)
    if declared.source == "dicom":
        origin = "the DICOM tags of the validation images"
    elif origin and declared.source in ("user", "user+dicom", "none"):
        from dataclasses import replace

        declared = replace(declared, source="user" if "flags" in origin else "descriptor")
    text = declared.summary()
    return declared, (f"{text} (from {origin})" if origin else "not declared")


def adopt(
    descriptor: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    split: str = "val",
    target: str | None = None,
    intended_use: Mapping[str, Any] | None = None,
    threshold_from: str = "validation",
    alpha: float | None = None,
    seed: int = 0,
    progress: bool = True,
    force: bool = False,
) -> AdoptResult:
    """Fit calibration, threshold, prediction sets, input guard and intended use; write a verified bundle.

    Args:
        descriptor: the bring-your-own-model YAML (docs/BRING_YOUR_OWN_MODEL.md).
        data: a manifest, MedMNIST ``.npz`` or image folder with a ``split`` column.
        out: the run folder to write (the bundle goes to ``OUT/model``).
        split: the split to fit on (default ``val``); never the test split you evaluate on.
        target: the manifest's label column (default ``label``).
        intended_use: ``{description, modalities, body_parts, views}``; overrides the
            descriptor's ``card.intended_use``.
        threshold_from: ``validation`` (fit Youden's J) or ``descriptor`` (keep its threshold).
        alpha: conformal miss rate (default :data:`medpredict.training.postfit.ALPHA`).
        seed: seed of the calibrator's folds and the input guard's half split.
        force: move a run already in ``out`` aside (``NAME.old-<time>``) instead of refusing.

    Raises:
        ConfigError: the descriptor is invalid or contradicts the graph (e.g. ``output.activation``),
            or ``out`` already holds a run.
        DataError: the data has no such split, one class only, or labels the descriptor lacks.
    """
    from medpredict.bundle.store import GUARD, save_bundle
    from medpredict.config import PreprocessConfig
    from medpredict.data.datasets import load_images
    from medpredict.data.manifest import load_manifest
    from medpredict.inference.adopted import GraphNetwork, generic_features
    from medpredict.inference.graph_io import MAX_GRAPH_FEATURES, penultimate_tensor
    from medpredict.inference.onnx import OnnxPredictor, load_descriptor
    from medpredict.training.postfit import ALPHA, fit_input_guard, post_fit

    if threshold_from not in THRESHOLD_SOURCES:
        from medpredict.errors import unknown_choice

        raise unknown_choice("threshold source", threshold_from, THRESHOLD_SOURCES)
    claim_run_dir(out, force=force)  # a run already there is refused (or, with force, moved aside) first
    d = load_descriptor(descriptor)
    if d.task not in ("binary", "multiclass"):
        raise ConfigError(f"medpredict adopt covers binary and multiclass models; {d.path} declares task {d.task}.")
    OnnxPredictor(d)  # checks input shape, input.name and output.activation on probe images first
    manifest = load_manifest(Path(data), target=target or "label")
    frame = manifest.frame
    splits = sorted(str(s) for s in frame["split"].dropna().unique()) if "split" in frame.columns else []
    if split not in splits:
        raise DataError(
            f"{data} has no '{split}' split (splits: {splits or 'none'}). adopt fits on a validation split: "
            "give data with a 'split' column, or name the split with --split."
        )
    rows = frame[frame["split"] == split].reset_index(drop=True)
    y = _targets(rows, d.labels, str(data))
    if len(np.unique(y)) < 2:
        raise DataError(f"The '{split}' split of {data} holds one class only; adopt needs every class.")
    paths = rows["image_path"].astype(str).tolist()
    size = max(d.height, d.width)
    images = load_images(paths, PreprocessConfig(image_size=size, spatial_dims=2), d.channels, progress=progress)
    where = f"the '{split}' split of {Path(data).name}"

    tensor = penultimate_tensor(d.model)
    network = GraphNetwork(d, {"source": "graph", "tensor": tensor} if tensor else {"source": "generic"})
    log_probs, features = _outputs(network, images, where)
    features_spec: dict[str, Any]
    if tensor and features is not None and 2 <= features.shape[1] <= MAX_GRAPH_FEATURES:
        features_spec = {"source": "graph", "tensor": tensor, "dim": int(features.shape[1])}
    else:
        if tensor:
            width = None if features is None else features.shape[1]
            log.info("The graph's penultimate tensor %s has %s values; using generic features.", tensor, width)
        features = generic_features(images.float().div(255).numpy(), log_probs)
        features_spec = {"source": "generic", "dim": int(features.shape[1])}

    labels = tuple(d.labels)
    positive = network.positive_index
    fields, probs = post_fit(
        log_probs, y, d.task, labels, class_weights=None, positive_index=positive,
        alpha=ALPHA if alpha is None else alpha, seed=seed,
    )
    if d.task == "binary" and threshold_from == "descriptor":
        from medpredict.calibration.thresholds import ThresholdPicker

        outcome = (y == positive).astype(int)
        picker = ThresholdPicker(method="fixed", target=d.threshold).fit(outcome, probs[:, positive])
        fields["threshold"] = picker.to_dict()
    guard = _fit_guard(features, y, seed, fit_input_guard)
    declared, intended_text = _intended_use(intended_use, d.card, paths, d.channels)

    dataset = Path(data).name
    n = len(y)
    provenance = _provenance(d, fields, features_spec, guard, threshold_from, intended_text, dataset, split, n)
    val_ece = _val_ece(y, log_probs, probs, positive) if d.task == "binary" else None
    meta = _adopted_meta(
        d, descriptor, data, manifest, rows, y, split, size, positive, labels, fields, probs, declared,
        features_spec, provenance, threshold_from, val_ece,
    )
    run_dir = Path(out)
    bundle_dir = run_dir / "model"
    save_bundle(bundle_dir, state_dict=None, meta=meta, json_files={GUARD: guard} if guard else None,
                onnx_model=d.model)
    _verify(bundle_dir, images, probs)
    report = {"name": d.name, "n": n, "split": split, "dataset": dataset, "provenance": provenance,
              "val_ece": val_ece, "features": features_spec, "threshold": fields.get("threshold"),
              "calibration": (fields.get("calibration") or {}).get("method")}
    from medpredict.atomic import write_json

    write_json(run_dir / "adopt.json", {**report, "descriptor": str(descriptor), "data": str(data)})
    log.info("Adopted %s: bundle %s", d.name, bundle_dir)
    return AdoptResult(run_dir=run_dir, bundle_dir=bundle_dir, report=report)


def _adopted_meta(
    d: Any,
    descriptor: str | os.PathLike[str],
    data: str | os.PathLike[str],
    manifest: Any,
    rows: Any,
    y: np.ndarray,
    split: str,
    size: int,
    positive: int,
    labels: tuple[str, ...],
    fields: dict[str, Any],
    probs: np.ndarray,
    declared: Any,
    features_spec: dict[str, Any],
    provenance: Any,
    threshold_from: str,
    val_ece: Any,
) -> dict[str, Any]:
    """The adopted bundle's ``bundle.json`` content (moved out of :func:`adopt` unchanged)."""
    from medpredict.inference.adopted import descriptor_spec

    n = len(y)
    return {
        "name": d.name,
        "input_kind": "image",
        "task": d.task,
        "labels": list(labels),
        "model": descriptor_spec(d, features_spec),
        # images are fitted as load_images stores them (8-bit steps), so a case predicted alone matches
        "preprocess": {"image_size": size, "spatial_dims": 2, "channels": d.channels, "quantised": True},
        **fields,
        "positive_label": labels[positive] if d.task == "binary" else None,
        "intended_use": declared.to_dict(),
        "val_metrics": _val_metrics(y, probs, labels, fields, positive),
        "data": {
            "source": str(Path(data).resolve()),
            "units": manifest.units,
            "rows": {split: n},
            "patients": {split: int(rows["patient_id"].nunique())},
            "prevalence": {split: float(np.mean(y == positive))} if d.task == "binary" else {},
        },
        "adoption": {
            "descriptor": str(Path(descriptor).resolve()),
            "data": str(Path(data).resolve()),
            "split": split,
            "n": n,
            "threshold_from": threshold_from,
            "val_ece": val_ece,
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
        "trained_by": "elsewhere",
        "provenance": provenance,
        "card": d.card,
    }


def _outputs(network: Any, images: Any, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Log-probabilities and features of uint8 images ``(N, C, H, W)``, batch by batch."""
    log_probs, features = [], []
    for start in range(0, len(images), BATCH):
        batch = images[start : start + BATCH].float().div(255).numpy()
        lp, f = network.outputs(batch, where=where)
        log_probs.append(lp)
        if f is not None:
            features.append(f)
    return np.concatenate(log_probs), (np.concatenate(features) if features else None)


def _verify(bundle_dir: Path, images: Any, probs: np.ndarray, rows: int = 32) -> None:
    """Load the written bundle as every caller will and check it gives the fitted probabilities.

    Raises:
        BundleError: the bundle does not load or predicts otherwise (the difference is named).
    """
    from medpredict.errors import BundleError
    from medpredict.inference.adopted import AdoptedPredictor
    from medpredict.inference.loader import load_predictor

    predictor = load_predictor(bundle_dir)
    if not isinstance(predictor, AdoptedPredictor):
        raise BundleError(f"{bundle_dir} does not load as an adopted model but as a {type(predictor).__name__}.")
    got = predictor.predict_proba(images[:rows].float().div(255))
    gap = float(np.abs(np.asarray(got) - probs[:rows]).max())
    if gap > 1e-5:
        raise BundleError(f"The adopted bundle {bundle_dir} predicts up to {gap:.2g} away from what was fitted.")


def _fit_guard(features: np.ndarray, y: np.ndarray, seed: int, fit: Any) -> dict[str, Any] | None:
    """The detector's statistics from one half of the split (per class), its threshold from the other."""
    rng = np.random.default_rng(seed)
    first = np.zeros(len(y), bool)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        first[members[: len(members) // 2]] = True
    guard = fit(features[first], y[first], features[~first])
    if guard is not None:
        guard["fitted_on"] = "validation halves (medpredict adopt)"
    return guard


def _val_ece(y: np.ndarray, log_probs: np.ndarray, probs: np.ndarray, positive: int) -> dict[str, float]:
    from medpredict.calibration.scalers import calibration_summary

    outcome = (y == positive).astype(int)
    raw = np.exp(log_probs.astype(np.float64))[:, positive]
    return {
        "raw": float(calibration_summary(outcome, raw)["ece"]),
        "calibrated": float(calibration_summary(outcome, probs[:, positive])["ece"]),
    }


def _val_metrics(
    y: np.ndarray, probs: np.ndarray, labels: tuple[str, ...], fields: dict[str, Any], positive: int
) -> dict[str, Any]:
    from medpredict.evaluation.metrics import classification_metrics

    threshold = (fields.get("threshold") or {}).get("threshold")
    if len(labels) == 2 and positive == 0:  # the metrics take the positive class in column 1
        probs, y, labels = probs[:, ::-1], 1 - y, labels[::-1]
    return classification_metrics(y, probs, labels=list(labels), threshold=threshold, n_boot=0)


def _provenance(
    d: Any, fields: dict[str, Any], features: dict[str, Any], guard: dict[str, Any] | None, threshold_from: str,
    intended: str, dataset: str, split: str, n: int,
) -> dict[str, str]:
    """Where each setting of the adopted bundle came from, in words."""
    on = f"on {n} images of the '{split}' split of {dataset}"
    calibration = fields.get("calibration") or {}
    threshold = fields.get("threshold") or {}
    if not threshold:
        threshold_text = "none (multiclass: the most probable class is reported)"
    elif threshold_from == "descriptor":
        threshold_text = (
            f"{threshold['threshold']:.4f} given in the descriptor {Path(d.path).name}; kept by medpredict adopt, "
            "not fitted by medpredict"
        )
    else:
        threshold_text = f"{threshold['threshold']:.4f} fitted on validation by medpredict adopt (Youden's J) {on}"
        if d.threshold_given:
            threshold_text += f"; the descriptor's {d.threshold} is not used"
    if features["source"] == "graph":
        feature_text = f"the graph's penultimate layer '{features['tensor']}' ({features['dim']} values)"
    else:
        feature_text = f"log-probabilities and an 8x8 thumbnail of the image ({features['dim']} values)"
    return {
        "training": "trained elsewhere: medpredict cannot know which data the model saw during training",
        "calibration": (
            f"{calibration.get('method')} (chosen by cross-validated log-loss) fitted on validation by medpredict "
            f"adopt {on}" if calibration else "none"
        ),
        "threshold": threshold_text,
        "conformal": (
            f"class-conditional prediction sets ({100 * (1 - fields['conformal']['alpha']):.0f}% target coverage) "
            f"fitted on validation by medpredict adopt {on}" if fields.get("conformal") else "none"
        ),
        "input_guard": (
            f"Mahalanobis distance on {feature_text}, fitted on validation by medpredict adopt {on} "
            "(statistics from one half, flagging threshold from the other)" if guard else "none"
        ),
        "intended_use": intended,
    }
