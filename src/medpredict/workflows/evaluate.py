"""``medpredict evaluate``: a saved model on a split, or on another dataset, as a clinical study.

Predictions come from the same :class:`~medpredict.inference.predictor.Predictor` that serves the
model. Metrics use the threshold locked on validation at training time (never tuned
here), confidence intervals resample patients, and the report adds calibration before
and after temperature scaling, decision curves, conformal coverage, referral, subgroups,
checked Grad-CAM examples and — for another dataset — shift diagnostics. Writes
``report.html``, ``metrics.json`` and the model card into the output folder; evaluating
a run on its own test split also stores the model card in the bundle.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medpredict.bundle.kinds import kind_of
from medpredict.bundle.store import add_files
from medpredict.config import PreprocessConfig, RunConfig, from_dict
from medpredict.data.datasets import load_images
from medpredict.data.manifest import load_manifest
from medpredict.errors import DataError
from medpredict.evaluation.subgroups import shift_diagnostics
from medpredict.explain.checks import (
    explanation_sanity,
    local_attribution,
    permutation_importance_table,
    shortcut_flag,
)
from medpredict.explain.maps import gradcam
from medpredict.inference.onnx import load_predictor
from medpredict.inference.predictor import Predictor
from medpredict.models.fusion import fusion_inputs
from medpredict.report import assemble_evaluation, build_report
from medpredict.report.evaluation import evaluation_to_json
from medpredict.training.fusion import FusedData, load_fused_data
from medpredict.training.image import load_data
from medpredict.training.records import load_table_data, split_rows

log = logging.getLogger(__name__)

EXAMPLES = 4  # Grad-CAM examples in the report
SANITY_IMAGES = 6  # images used for the explanation checks


@dataclass(frozen=True)
class EvaluationResult:
    """The metrics and where the report went."""

    metrics: dict[str, Any]
    out_dir: Path
    report_path: Path
    metrics_path: Path

    def summary(self) -> str:
        m = self.metrics
        parts = []
        for name in ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv"):
            value, ci = m.get(name), m.get(f"{name}_ci")
            if isinstance(value, float):
                parts.append(f"{name} {value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
        head = f"n={m.get('n')} ({m.get('n_patients')} patients)"
        if m.get("threshold") is not None:
            head += f", threshold {m['threshold']:.3f} locked on validation"
        return "\n".join(
            [head, "  " + "\n  ".join(parts), f"Report: {self.report_path}", f"Metrics: {self.metrics_path}"]
        )


def _rows(
    predictor: Predictor, data: str | None, target: str | None, split: str
) -> tuple[pd.DataFrame, pd.DataFrame | None, bool]:
    """The rows to evaluate, the validation rows (own data only), and whether the data is external."""
    config = _run_config(predictor)
    if data is None and config is not None:
        manifest = load_data(config)
        return manifest.split(split), manifest.split("val"), False
    if data is None:
        raise DataError("Give --data: this model has no training data of its own to evaluate on.")
    manifest = load_manifest(data, target=target or (config.data.target if config else "label"))
    frame = manifest.frame
    if "split" in frame.columns and split in set(frame["split"].dropna()):
        frame = frame[frame["split"] == split]
    else:
        log.info("%s has no '%s' split; evaluating all %d rows.", data, split, len(frame))
    return _align_labels(frame, manifest.source, predictor), None, True


def _align_labels(frame: pd.DataFrame, source: str, predictor: Predictor) -> pd.DataFrame:
    """Map the external data's label names onto the model's class order."""
    index = {name.lower(): i for i, name in enumerate(predictor.labels)}
    unknown = sorted({n for n in frame["label_name"].astype(str) if n.lower() not in index})
    if unknown:
        raise DataError(
            f"Labels {unknown} of {source} are not classes of this model {predictor.labels}. "
            "Give --target naming a column with the same classes."
        )
    frame = frame.copy()
    frame["target"] = frame["label_name"].astype(str).str.lower().map(index).astype(int)
    return frame


def _predict_frame(
    predictor: Predictor, frame: pd.DataFrame, progress: bool
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Calibrated and uncalibrated probabilities, and the preprocessed images (uint8)."""
    config = PreprocessConfig(image_size=predictor.image_size, spatial_dims=predictor.spatial_dims)
    images = load_images(
        frame["image_path"].astype(str).tolist(), config, predictor.channels, progress=progress
    )
    logits = np.concatenate(
        [predictor.logits(images[i : i + 256].float().div(255)) for i in range(0, len(images), 256)]
    )
    raw = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    return predictor.calibrate(logits), raw, images


def _explanations(
    predictor: Predictor, images: torch.Tensor, y: np.ndarray, probs: np.ndarray
) -> dict[str, Any]:
    """Grad-CAM on a few correct and wrong test cases, plus the sanity and faithfulness checks."""
    pred = probs[:, 1] >= predictor.threshold if probs.shape[1] == 2 else probs.argmax(1)
    differentiable = isinstance(getattr(predictor, "model", None), torch.nn.Module)
    cases = [
        ("true positive", (pred == 1) & (y == 1)),
        ("true negative", (pred == 0) & (y == 0)),
        ("false positive", (pred == 1) & (y == 0)),
        ("false negative", (pred == 0) & (y == 1)),
    ]
    examples: list[dict[str, Any]] = []
    for title, mask in cases:
        hits = np.flatnonzero(mask)
        if len(hits) and len(examples) < EXAMPLES:
            i = int(hits[0])
            image = images[i].float().div(255)
            class_index = int(1 if probs.shape[1] == 2 else pred[i])
            heatmap = (  # occlusion where gradients cannot flow (ONNX)
                gradcam(predictor.model, image[None], class_index)
                if differentiable
                else predictor.explain(image.numpy())
            )
            examples.append(
                {
                    "title": title,
                    "caption": f"predicted probability {probs[i].max() if probs.shape[1] > 2 else probs[i, 1]:.2f}",
                    "image": image[0].numpy(),
                    "heatmap": heatmap,
                    "shortcut": shortcut_flag(heatmap, image[0].numpy()),
                }
            )
    chosen = np.linspace(0, len(images) - 1, num=min(SANITY_IMAGES, len(images))).astype(int)
    batch = [images[i].float().div(255).numpy() for i in chosen]

    def explain_fn(model: torch.nn.Module, image: np.ndarray, class_index: int) -> np.ndarray:
        return gradcam(model, torch.as_tensor(image)[None], class_index)

    def predict_fn(batch_np: np.ndarray) -> np.ndarray:
        return predictor.predict_proba(torch.as_tensor(batch_np, dtype=torch.float32))

    checks = (
        explanation_sanity(predictor.model, batch, explain_fn, predict_fn)
        if probs.shape[1] == 2 and differentiable
        else None
    )
    return {"examples": examples, "checks": checks}


@dataclass
class _Collected:
    """Everything evaluation needs from one model on one dataset."""

    y: np.ndarray
    probs: np.ndarray
    raw: np.ndarray
    groups: np.ndarray
    frame: pd.DataFrame
    explanations: dict[str, Any]
    val: dict[str, Any]
    shift: dict[str, Any] | None
    dataset: str
    external: bool


def _run_config(predictor: Predictor) -> RunConfig | None:
    """The run's resolved config, or ``None`` for a model trained elsewhere (an ONNX descriptor)."""
    return from_dict(predictor.meta["config"]) if "config" in predictor.meta else None


def _collect_images(
    predictor: Predictor, data: str | None, target: str | None, split: str, progress: bool
) -> _Collected:
    frame, val_frame, external = _rows(predictor, data, target, split)
    probs, raw, images = _predict_frame(predictor, frame, progress)
    y = frame["target"].to_numpy().astype(int)
    val: dict[str, Any] = {}
    if val_frame is not None and len(val_frame):
        val_probs, _, _ = _predict_frame(predictor, val_frame, progress)
        val = {
            "y_val": val_frame["target"].to_numpy().astype(int),
            "probs_val": val_probs,
            "groups_val": val_frame["patient_id"].to_numpy(),
        }
    shift = None
    if external and predictor.meta.get("reference_stats"):
        shift = shift_diagnostics(
            predictor.meta["reference_stats"],
            y,
            probs[:, 1] if probs.shape[1] == 2 else probs,
            images=images[:5000].float().div(255).numpy(),
        )
    config = _run_config(predictor)
    return _Collected(
        y=y,
        probs=probs,
        raw=raw,
        groups=frame["patient_id"].to_numpy(),
        frame=frame,
        explanations=_explanations(predictor, images, y, probs),
        val=val,
        shift=shift,
        dataset=Path(data or (config.data.source if config else "")).name,  # data is given when there is no config
        external=external,
    )


def _collect_records(
    predictor: Predictor, data: str | None, target: str | None, split: str, progress: bool
) -> _Collected:
    """The same split the record model was trained with (or all rows of another table)."""
    config = from_dict(predictor.meta["config"])
    source = data or config.data.source
    table = load_table_data(source, target=target or config.data.target, task=config.data.task)  # target: "num>0"
    if data is None:
        splits = split_rows(
            table,
            val_fraction=config.data.val_fraction,
            test_fraction=config.data.test_fraction,
            seed=config.train.seed,
        )
        rows, val_rows = np.flatnonzero(splits == split), np.flatnonzero(splits == "val")
    else:
        rows, val_rows = np.arange(len(table.y)), np.array([], dtype=int)
    if len(rows) == 0:
        raise DataError(f"The '{split}' split of {source} is empty; choose another --split.")
    frame = table.frame.iloc[rows].reset_index(drop=True)
    logits = predictor.logits(predictor.prepare_records(frame))
    probs = predictor.calibrate(logits)
    y = table.y[rows].astype(int)
    val: dict[str, Any] = {}
    if len(val_rows):
        val_frame = table.frame.iloc[val_rows].reset_index(drop=True)
        val = {
            "y_val": table.y[val_rows].astype(int),
            "probs_val": predictor.predict_proba(predictor.prepare_records(val_frame)),
            "groups_val": table.groups[val_rows],
        }
    return _Collected(
        y=y,
        probs=probs,
        raw=torch.softmax(torch.from_numpy(logits), dim=1).numpy(),
        groups=table.groups[rows],
        frame=frame,
        explanations=_record_explanations(predictor, frame, y, probs),
        val=val,
        shift=None,
        dataset=Path(source).name,
        external=data is not None,
    )


def _record_explanations(predictor: Predictor, frame: pd.DataFrame, y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Permutation importance of the record fields and local attributions of two extreme cases."""
    columns = [c for c in predictor.input_columns if c in frame.columns]
    if probs.shape[1] != 2 or len(set(y)) != 2:
        return {}

    def predict_fn(records: pd.DataFrame) -> np.ndarray:
        return predictor.predict_proba(predictor.prepare_records(records))

    importance = permutation_importance_table(predict_fn, frame[columns], y, n_repeats=10)
    local = []
    for title, index in (
        ("highest predicted risk", int(np.argmax(probs[:, 1]))),
        ("lowest predicted risk", int(np.argmin(probs[:, 1]))),
    ):
        attribution = local_attribution(predict_fn, frame[columns].iloc[[index]], frame[columns])
        local.append(
            {
                "title": title,
                "prediction": attribution.attrs.get("prediction"),
                "expected": attribution.attrs.get("expected"),
                "rows": attribution.head(8).to_dict(orient="records"),
            }
        )
    return {"feature_importance": importance.to_dict(orient="records"), "local": local}


def _fused_outputs(predictor: Predictor, data: FusedData, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated and uncalibrated probabilities of a fused model for ``rows`` (each with what it has)."""
    images, records = data.images(rows), data.records(rows)
    shape = predictor.bundle.info.image.shape if predictor.bundle.info.image else None
    chunks = []
    for start in range(0, len(rows), 256):
        part = slice(start, start + 256)
        inputs = fusion_inputs(
            images[part], records[part], prepare_image=predictor.prepare, cleaner=predictor.cleaner, image_shape=shape
        )
        with torch.no_grad():
            out = predictor.model(*inputs)
        chunks.append(torch.as_tensor(out).float().cpu().numpy())
    logits = np.concatenate(chunks)
    return predictor.calibrate(logits), torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def _collect_fused(
    predictor: Predictor, data: str | None, target: str | None, split: str, progress: bool
) -> _Collected:
    """A fused model on its own split (or on every row of another paired manifest)."""
    config = from_dict(predictor.meta["config"])
    if data is not None:
        config = replace(config, data=replace(config.data, source=data, target=target or config.data.target))
    fused = load_fused_data(config)
    usable = np.flatnonzero(fused.has_image | fused.has_record)
    rows = usable if data is not None else fused.part[split]
    if len(rows) == 0:
        raise DataError(f"The '{split}' split of {config.data.source} is empty; choose another --split.")
    frame = fused.frame.iloc[rows].reset_index(drop=True)
    if data is not None:
        frame = _align_labels(frame, config.data.source, predictor)
    probs, raw = _fused_outputs(predictor, fused, rows)
    y = frame["target"].to_numpy().astype(int)
    val: dict[str, Any] = {}
    if data is None and len(fused.part["val"]):
        val_rows = fused.part["val"]
        val = {
            "y_val": fused.frame["target"].to_numpy()[val_rows].astype(int),
            "probs_val": _fused_outputs(predictor, fused, val_rows)[0],
            "groups_val": fused.frame["patient_id"].to_numpy()[val_rows],
        }
    explanations: dict[str, Any] = {}
    with_image = np.flatnonzero(fused.has_image[rows])
    if len(with_image) and isinstance(predictor.model, torch.nn.Module):  # Grad-CAM of the image branch
        images = torch.stack([predictor.prepare(p) for p in fused.images(rows[with_image]) if p is not None])
        explanations = _explanations(predictor, (images * 255).round().to(torch.uint8), y[with_image],
                                     probs[with_image])
    return _Collected(
        y=y, probs=probs, raw=raw, groups=frame["patient_id"].to_numpy(), frame=frame, explanations=explanations,
        val=val, shift=None, dataset=Path(config.data.source).name, external=data is not None,
    )


Collector = Callable[[Predictor, str | None, str | None, str, bool], _Collected]
#: How each kind of model (medpredict.bundle.kinds.KINDS) is evaluated.
COLLECTORS: dict[str, Collector] = {"image": _collect_images, "record": _collect_records, "fused": _collect_fused}


def evaluate(
    run: str | os.PathLike[str],
    *,
    data: str | None = None,
    target: str | None = None,
    split: str = "test",
    out: str | os.PathLike[str] | None = None,
    lang: str = "en",
    n_boot: int = 1000,
    subgroups: tuple[str, ...] = (),
    progress: bool = True,
    backend: str = "torch",
) -> EvaluationResult:
    """Evaluate a run's bundle (image, record or fused model) and write the report (see the module docstring).

    Raises:
        DataError: the split is empty, labels do not match the model, or a subgroup column is missing.
    """
    predictor = load_predictor(run, backend=backend)
    if data is None and "config" not in predictor.meta:
        raise DataError("This model brings no training data of its own: give --data (a manifest, npz or image folder).")
    if predictor.task not in ("binary", "multiclass"):
        raise DataError(
            f"Evaluation reports cover classification models; this model's task is '{predictor.task}'."
        )
    got = COLLECTORS[kind_of(predictor.input_kind).name](predictor, data, target, split, progress)
    missing = [c for c in subgroups if c not in got.frame.columns]
    if missing:
        raise DataError(
            f"Subgroup columns {missing} are not in the data; columns are {list(got.frame.columns)}."
        )
    evaluation = _assemble(predictor, got, split=split, subgroups=subgroups, n_boot=n_boot)
    bundle = getattr(predictor, "bundle", None)  # None for a bring-your-own ONNX model
    if out is not None:
        out_dir = Path(out)
    elif bundle is not None:
        out_dir = bundle.path.parent
    else:
        raise DataError("Give --out: a bring-your-own model has no run folder to write the report into.")
    report_path = build_report(out_dir, evaluation, lang=lang)
    if bundle is not None and not got.external and split == "test" and out is None:
        add_files(
            bundle.path,
            json_files={"model_card.json": _read_json(out_dir / "model_card.json")},
            text_files={"model_card.md": (out_dir / "model_card.md").read_text(encoding="utf-8")},
        )
    metrics = evaluation_to_json(evaluation)["metrics"]
    return EvaluationResult(
        metrics=metrics, out_dir=out_dir, report_path=report_path, metrics_path=out_dir / "metrics.json"
    )


def _assemble(
    predictor: Predictor, got: _Collected, *, split: str, subgroups: tuple[str, ...], n_boot: int
) -> dict[str, Any]:
    """Everything the report shows, from the collected predictions and the bundle."""
    meta = predictor.meta
    bundle = getattr(predictor, "bundle", None)
    history_path = bundle.path.parent / "metrics.jsonl" if bundle is not None else None
    curves = (
        _training_curves(history_path)
        if history_path is not None and history_path.exists() and not got.external
        else None
    )
    return assemble_evaluation(
        got.y,
        got.probs,
        labels=predictor.labels,
        groups=got.groups,
        threshold=meta.get("threshold"),
        calibration=meta.get("calibration"),
        probs_uncalibrated=got.raw,
        conformal=meta.get("conformal"),
        subgroup_frame=got.frame[list(subgroups)] if subgroups else None,
        subgroup_columns=list(subgroups) or None,
        shift=got.shift,
        explanations=got.explanations,
        training_curves=curves,
        run_info={
            "model_name": meta.get("model", {}).get("name") or meta.get("name"),
            "model_version": predictor.version,
            "dataset": got.dataset,
            "evaluated_split": split,
            "external": got.external,
            "intended_use": (
                "Research and decision support only: flags cases for a clinician's review; not a diagnosis."
            ),
            "splits": {k: _split_info(meta.get("data", {}), k) for k in meta.get("data", {}).get("rows", {})},
        },
        n_boot=n_boot,
        **got.val,
    )


def _split_info(data: dict[str, Any], split: str) -> dict[str, Any]:
    """Rows, patients and (binary) positives and prevalence of one training-time split, from the bundle."""
    n = data["rows"][split]
    info: dict[str, Any] = {"n": n, "n_patients": data.get("patients", {}).get(split)}
    prevalence = data.get("prevalence", {}).get(split)
    if isinstance(prevalence, float):
        info.update(prevalence=prevalence, n_positive=int(round(prevalence * n)))
    return info


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _training_curves(path: Path) -> dict[str, list[float]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {key: [r[key] for r in rows] for key in ("epoch", "train_loss", "val_loss", "val_score")}
