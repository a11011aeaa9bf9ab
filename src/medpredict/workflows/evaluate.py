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
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from medpredict.atomic import write_text
from medpredict.bundle.kinds import kind_of
from medpredict.bundle.store import add_files
from medpredict.calibration.scalers import calibration_summary
from medpredict.config import PreprocessConfig, RunConfig, from_dict
from medpredict.data.datasets import load_images
from medpredict.data.manifest import load_manifest
from medpredict.errors import ConfigError, DataError
from medpredict.evaluation.subgroups import shift_diagnostics
from medpredict.explain.checks import (
    explanation_sanity,
    local_attribution,
    permutation_importance_table,
    shortcut_flag,
)
from medpredict.explain.maps import gradcam
from medpredict.inference.contract import CasePrediction, Scorer
from medpredict.inference.loader import load_predictor
from medpredict.inference.predictor import Predictor
from medpredict.models.fusion import fusion_inputs
from medpredict.report import assemble_evaluation, build_report
from medpredict.report.card_info import load_card_info
from medpredict.report.evaluation import evaluation_to_json
from medpredict.report.i18n import translator
from medpredict.rundirs import check_writable, contents, refuse_sealed, set_aside, set_aside_stale_results
from medpredict.training.fusion import FusedData, load_fused_data
from medpredict.training.image import load_data
from medpredict.training.records import load_table_data, split_rows
from medpredict.workflows.overlap import training_overlap

log = logging.getLogger(__name__)

EXAMPLES = 4  # heat-map examples in the report
SANITY_IMAGES = 6  # images used for the randomisation and faithfulness checks
SHORTCUT_SAMPLE = 50  # random test cases whose maps are checked for shortcuts, beside the shown ones
SHORTCUT_LIMIT = 0.10  # the check passes when at most this share of checked maps is flagged
CASES_FILE = "evaluation_cases.csv"  # what the deployed contract said for every evaluated case


@dataclass(frozen=True)
class EvaluationResult:
    """The metrics and where the report went."""

    metrics: dict[str, Any]
    out_dir: Path
    report_path: Path
    metrics_path: Path
    #: where the threshold came from, in words (e.g. "locked on validation", "given with the model")
    threshold_source: str = "locked on validation"

    exit_code = 0

    def summary(self) -> str:
        m = self.metrics
        parts = []
        for name in ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv"):
            value, ci = m.get(name), m.get(f"{name}_ci")
            if isinstance(value, float):
                parts.append(f"{name} {value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
        if m.get("bootstrap_unit") == "image":  # no patient ids: each image is its own unit
            head = f"n={m.get('n')} images (image-level: no patient ids)"
        else:
            head = f"n={m.get('n')} ({m.get('n_patients')} patients)"
        if m.get("threshold") is not None:
            head += f", threshold {m['threshold']:.3f} {self.threshold_source}"
        return "\n".join(
            [head, "  " + "\n  ".join(parts), f"Report: {self.report_path}", f"Metrics: {self.metrics_path}"]
        )


def _rows(
    predictor: Scorer, data: str | None, target: str | None, split: str
) -> tuple[pd.DataFrame, pd.DataFrame | None, bool]:
    """The rows to evaluate, the validation rows (own data only), and whether the data is external."""
    config = _run_config(predictor)
    if data is None and config is not None:
        manifest = load_data(config)
        # a small-data model was post-fitted on out-of-fold predictions of train + validation
        validation = ("train", "val") if _small_data(predictor) else ("val",)
        return manifest.split(split), manifest.frame[manifest.frame["split"].isin(validation)], False
    if data is None:
        raise DataError("Give --data: this model has no training data of its own to evaluate on.")
    manifest = load_manifest(data, target=target or (config.data.target if config else "label"))
    frame = full = manifest.frame
    if "split" in frame.columns and split in set(frame["split"].dropna()):
        frame = frame[frame["split"] == split]
    else:
        log.info("%s has no '%s' split; evaluating all %d rows.", data, split, len(frame))
    val_frame = _adoption_rows(predictor, data, full, split)
    val = None if val_frame is None else _align_labels(val_frame, manifest.source, predictor)
    return _align_labels(frame, manifest.source, predictor), val, True


def _adoption_rows(predictor: Scorer, data: str, frame: pd.DataFrame, split: str) -> pd.DataFrame | None:
    """An adopted model's fitting split, when evaluating on other rows of the data it was adopted on.

    The report then compares validation with test as it does for a model medpredict trained.
    """
    adoption = predictor.meta.get("adoption") or {}
    fitted_on = adoption.get("split")
    if not adoption.get("data") or Path(adoption["data"]).resolve() != Path(data).resolve():
        return None
    if "split" not in frame.columns or fitted_on == split or fitted_on not in set(frame["split"].dropna()):
        return None
    return frame[frame["split"] == fitted_on]


def _align_labels(frame: pd.DataFrame, source: str, predictor: Scorer) -> pd.DataFrame:
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


def _predict_frame(predictor: Scorer, frame: pd.DataFrame, progress: bool) -> _Scored:
    """The contract for every row: calibrated and uncalibrated probabilities, features, cases."""
    config = PreprocessConfig(image_size=predictor.image_size, spatial_dims=predictor.spatial_dims)
    paths = frame["image_path"].astype(str).tolist()
    images = load_images(paths, config, predictor.channels, progress=progress)
    logits, features = [], []
    for i in range(0, len(images), 256):
        out, feats = predictor.outputs(images[i : i + 256].float().div(255))
        logits.append(out)
        if feats is not None:
            features.append(feats)
    all_logits = np.concatenate(logits)
    feature_array = np.concatenate(features) if features else None
    probs = predictor.calibrate(all_logits)
    cases = predictor.cases(probs, feature_array, sources=paths)
    raw = torch.softmax(torch.from_numpy(all_logits), dim=1).numpy()
    return _Scored(probs=probs, raw=raw, images=images, cases=cases)


@dataclass
class _Scored:
    probs: np.ndarray
    raw: np.ndarray
    images: torch.Tensor
    cases: list[CasePrediction]


def _explanations(
    predictor: Scorer, images: torch.Tensor, y: np.ndarray, cases: list[CasePrediction], seed: int = 0
) -> dict[str, Any]:
    """Heat maps of a few correct and wrong cases, the shortcut check on those and on a fixed
    random sample of at least :data:`SHORTCUT_SAMPLE` cases, and the sanity/faithfulness checks.

    Every map explains the class decided for its case (what the clinician is told).
    """
    labels = predictor.labels
    decided = np.array([labels.index(c.decision) for c in cases])
    positive = predictor.positive_index if predictor.task == "binary" else None
    picks: list[tuple[str, int]] = []
    if positive is not None:
        is_pos, says_pos = y == positive, decided == positive
        for title, mask in (
            ("true positive", says_pos & is_pos),
            ("true negative", ~says_pos & ~is_pos),
            ("false positive", says_pos & ~is_pos),
            ("false negative", ~says_pos & is_pos),
        ):
            hits = np.flatnonzero(mask)
            if len(hits):
                picks.append((title, int(hits[0])))
    else:
        right, wrong = np.flatnonzero(decided == y), np.flatnonzero(decided != y)
        picks += [("correct", int(i)) for i in right[:2]] + [("wrong", int(i)) for i in wrong[:2]]
    picks = picks[:EXAMPLES]
    shown = [i for _, i in picks]
    rest = np.setdiff1d(np.arange(len(images)), shown)
    sample = np.random.default_rng(seed).choice(rest, size=min(SHORTCUT_SAMPLE, len(rest)), replace=False)
    maps = {i: _heatmap(predictor, images[i], cases[i].decision) for i in [*shown, *sorted(int(j) for j in sample)]}
    examples = []
    for title, i in picks:
        image, (heatmap, method) = images[i].float().div(255)[0].numpy(), maps[i]
        examples.append(
            {
                "title": title,
                "caption": _case_caption(cases[i]),
                "image": image,
                "heatmap": heatmap,
                "explained_class": cases[i].decision,
                "method": method,
                "shortcut": _shortcut(heatmap, image),
            }
        )
    shortcut = _shortcut_summary(images, maps, shown)
    differentiable = isinstance(getattr(predictor, "model", None), torch.nn.Module)
    chosen = np.linspace(0, len(images) - 1, num=min(SANITY_IMAGES, len(images))).astype(int)
    batch = [images[i].float().div(255).numpy() for i in chosen]

    def explain_fn(model: torch.nn.Module, image: np.ndarray, class_index: int) -> np.ndarray:
        return gradcam(model, torch.as_tensor(image)[None], class_index)

    def predict_fn(batch_np: np.ndarray) -> np.ndarray:
        return predictor.predict_proba(torch.as_tensor(batch_np, dtype=torch.float32))

    model = getattr(predictor, "model", None)
    checks = (
        explanation_sanity(model, batch, explain_fn, predict_fn)
        if len(labels) == 2 and differentiable and isinstance(model, torch.nn.Module)
        else None
    )
    return {"examples": examples, "checks": checks, "shortcut": shortcut}


def _heatmap(predictor: Scorer, image: torch.Tensor, class_label: str) -> tuple[np.ndarray, str]:
    """The predictor's own explanation of ``class_label`` for a prepared uint8 image."""
    explanation = predictor.explanation(image.float().div(255).numpy(), class_label)
    return explanation.heatmap, explanation.method


def _shortcut(heatmap: np.ndarray, image: np.ndarray) -> dict[str, Any]:
    return shortcut_flag(heatmap, image)


def _shortcut_summary(
    images: torch.Tensor, maps: dict[int, tuple[np.ndarray, str]], shown: list[int]
) -> dict[str, Any]:
    """How many checked maps put their weight on the border or burned-in text, and which."""
    flagged = []
    for i, (heatmap, _) in maps.items():
        image = images[i].float().div(255)[0].numpy()
        result = _shortcut(heatmap, image)
        if result["flagged"]:
            flagged.append(
                {
                    "index": int(i),
                    "shown_in_report": i in shown,
                    "border_fraction": result["border_fraction"],
                    "reasons": result["reasons"],
                    "image": image,
                    "heatmap": heatmap,
                }
            )
    share = len(flagged) / max(1, len(maps))
    return {
        "checked": len(maps),
        "flagged": len(flagged),
        "share": share,
        "limit": SHORTCUT_LIMIT,
        "passed": share <= SHORTCUT_LIMIT,
        "flagged_cases": flagged,
    }


def _case_caption(case: CasePrediction) -> str:
    if case.score is not None:
        return f"decision {case.decision}; p({case.positive_label}) = {case.score:.2f}"
    return f"decision {case.decision}; p = {case.probabilities[case.decision]:.2f}"


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
    cases: list[CasePrediction] | None = None
    images: torch.Tensor | None = None  # (N, C, *size) uint8 as the model saw them (image models)


def _run_config(predictor: Scorer) -> RunConfig | None:
    """The run's resolved config, or ``None`` for a model trained elsewhere (an ONNX descriptor)."""
    return from_dict(predictor.meta["config"]) if "config" in predictor.meta else None


def _collect_images(
    predictor: Scorer, data: str | None, target: str | None, split: str, progress: bool
) -> _Collected:
    frame, val_frame, external = _rows(predictor, data, target, split)
    scored = _predict_frame(predictor, frame, progress)
    probs, raw, images = scored.probs, scored.raw, scored.images
    y = frame["target"].to_numpy().astype(int)
    val: dict[str, Any] = {}
    if val_frame is not None and len(val_frame):
        oof = _out_of_fold(predictor, val_frame)
        val = {
            "y_val": val_frame["target"].to_numpy().astype(int),
            "probs_val": oof if oof is not None else _predict_frame(predictor, val_frame, progress).probs,
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
        explanations=_explanations(predictor, images, y, scored.cases),
        val=val,
        cases=scored.cases,
        shift=shift,
        dataset=Path(data or (config.data.source if config else "")).name,  # data is given when there is no config
        external=external,
        images=images,
    )


def _small_data(predictor: Scorer) -> bool:
    """Whether the model is a small-data ensemble (``medpredict.training.crossfit``)."""
    return bool((predictor.meta.get("training") or {}).get("small_data"))


def _out_of_fold(predictor: Scorer, frame: pd.DataFrame) -> np.ndarray | None:
    """A small-data model's out-of-fold validation probabilities (``val_predictions.csv``) for ``frame``'s rows."""
    bundle = getattr(predictor, "bundle", None)
    path = bundle.path.parent / "val_predictions.csv" if bundle is not None else None
    if not _small_data(predictor) or path is None or not path.is_file():
        return None
    table = pd.read_csv(path).set_index("row")
    columns = [f"p_{name}" for name in predictor.labels]
    if not set(columns) <= set(table.columns) or not set(frame.index) <= set(table.index):
        log.warning("%s does not cover this model's validation rows; scoring them again.", path)
        return None
    return table.loc[frame.index, columns].to_numpy(dtype=np.float64)


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
    logits, features = predictor.outputs(predictor.prepare_records(frame))
    probs = predictor.calibrate(logits)
    cases = predictor.cases(probs, features)
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
        cases=cases,
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
    cases = predictor.cases(probs)
    explanations: dict[str, Any] = {}
    with_image = np.flatnonzero(fused.has_image[rows])
    if len(with_image) and isinstance(predictor.model, torch.nn.Module):  # Grad-CAM of the image branch
        images = torch.stack([predictor.prepare(p) for p in fused.images(rows[with_image]) if p is not None])
        explanations = _explanations(predictor, (images * 255).round().to(torch.uint8), y[with_image],
                                     [cases[i] for i in with_image])
    return _Collected(
        y=y, probs=probs, raw=raw, groups=frame["patient_id"].to_numpy(), frame=frame, explanations=explanations,
        val=val, shift=None, dataset=Path(config.data.source).name, external=data is not None, cases=cases,
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
    card: str | os.PathLike[str] | dict[str, Any] | None = None,
    force: bool = False,
    allow_training_overlap: bool = False,
    robustness: bool = False,
) -> EvaluationResult:
    """Evaluate a run's bundle (image, record or fused model) and write the report (see the module docstring).

    ``card`` is the model owner's card file (YAML) or mapping: owner, contact, licence ...
    (:mod:`medpredict.report.card_info`); it is checked before any prediction is made.

    Results never replace other results silently: without ``out`` they go to the run folder
    when it holds none or holds this same evaluation (same data and split), else to a new
    ``RUN/evaluation-<data>-<split>/`` sub-folder (a record run's model comparison stays);
    an ``out`` holding other results is refused unless ``force`` moves them aside.
    Rows of ``data`` whose content was in the model's training or validation data are
    reported and, unless ``allow_training_overlap``, refused.

    ``robustness`` also scores an image model under the MedMNIST-C corruptions at five
    severities (:mod:`medpredict.evaluation.robustness`): ``metrics.json["robustness"]``.

    Raises:
        ConfigError: an unknown language or card key, a bad ``n_boot`` or output folder.
        DataError: the split is empty, labels do not match the model, a subgroup column is
            missing, ``data`` holds training rows (without ``allow_training_overlap``), or
            ``robustness`` for a model that does not take images.
    """
    translator(lang)  # a bad language or card file is refused before minutes of prediction
    card_info = load_card_info(card)
    if n_boot < 0:
        raise ConfigError(f"--n-boot {n_boot}: give 0 (no intervals) or a positive number of bootstrap resamples.")
    loaded = load_predictor(run, backend=backend)
    if not callable(getattr(type(loaded), "cases", None)):  # the class, not the instance: no property runs
        raise DataError(f"{run} loads as a {type(loaded).__name__}, which cannot be evaluated in batches.")
    predictor = cast(Scorer, loaded)
    if data is None and (predictor.meta.get("adoption") or {}).get("data"):
        data = str(predictor.meta["adoption"]["data"])  # an adopted model: the data it was adopted on
    if data is None and "config" not in predictor.meta:
        raise DataError("This model brings no training data of its own: give --data (a manifest, npz or image folder).")
    if predictor.task not in ("binary", "multiclass"):
        raise DataError(
            f"Evaluation reports cover classification models; this model's task is '{predictor.task}'."
        )
    kind = kind_of(predictor.input_kind).name
    if kind != "image" and not isinstance(predictor, Predictor):
        raise DataError(f"{run} is a {kind} model outside a medpredict bundle; only bundles of that kind evaluate.")
    if robustness and kind != "image":
        raise DataError(f"--robustness corrupts images; {run} is a {kind} model.")
    bundle = getattr(predictor, "bundle", None)  # None for a bring-your-own ONNX model
    signature = {"data": str(Path(data).expanduser().resolve()) if data else None, "split": split}
    out_dir = _output_dir(bundle.path.parent if bundle is not None else None, out, signature, force=force)
    got = COLLECTORS[kind](predictor, data, target, split, progress)  # type: ignore[arg-type]
    overlap = check_training_overlap(predictor, got, allowed=allow_training_overlap) if got.external else None
    robust = _robustness(predictor, got, progress) if robustness else None  # before columns are reordered
    missing = [c for c in subgroups if c not in got.frame.columns]
    if missing:
        raise DataError(
            f"Subgroup columns {missing} are not in the data; columns are {list(got.frame.columns)}."
        )
    labels = _positive_last(got, predictor)
    evaluation = _assemble(predictor, got, labels, split=split, subgroups=subgroups, n_boot=n_boot)
    evaluation["run"]["evaluated"] = signature
    if overlap is not None:
        evaluation["training_overlap"] = overlap
        if overlap["rows"]:
            evaluation["warnings"].append(
                f"{overlap['rows']} of {overlap['of']} evaluated rows were in the model's training data "
                "(evaluated anyway, as asked): these figures overstate performance on new patients."
            )
    _add_point_of_care(evaluation, predictor, got)
    if robust is not None:
        evaluation["robustness"] = robust
    report_path = build_report(out_dir, evaluation, lang=lang, card=card_info)
    if got.cases:
        _write_cases(out_dir / CASES_FILE, got.cases, got.y if labels == list(predictor.labels) else 1 - got.y)
    if bundle is not None and not got.external and split == "test" and out is None:  # the card travels with the model
        add_files(
            bundle.path,
            json_files={"model_card.json": _read_json(out_dir / "model_card.json")},
            text_files={"model_card.md": (out_dir / "model_card.md").read_text(encoding="utf-8")},
        )
    metrics = evaluation_to_json(evaluation)["metrics"]
    return EvaluationResult(
        metrics=metrics, out_dir=out_dir, report_path=report_path, metrics_path=out_dir / "metrics.json",
        threshold_source=_threshold_words(evaluation.get("threshold"), evaluation["run"]["provenance"]),
    )


def check_training_overlap(predictor: Scorer, got: _Collected, *, allowed: bool) -> dict[str, Any] | None:
    """Rows of an external set that were in the model's training data (:mod:`.overlap`); refused unless allowed.

    Raises:
        DataError: some rows were, and ``allowed`` is false.
    """
    config = _run_config(predictor)
    if config is None:  # a model trained elsewhere: its training data is unknown here
        return None
    overlap = training_overlap(config, got.frame, getattr(predictor, "input_columns", None) or ())
    if overlap["rows"]:
        log.warning("%d of %d evaluated rows were in the model's training data (%s).", overlap["rows"],
                    overlap["of"], overlap["by"])
        if not allowed:
            raise DataError(
                f"{overlap['rows']} of {overlap['of']} rows of {got.dataset} were in the model's training data "
                f"({overlap['checked_against']}; same {overlap['by'].removeprefix('SHA-256 of ')}), e.g. rows "
                f"{overlap['examples'][:5]}. Scored as external data they would overstate the model. Remove them, "
                "or pass --allow-training-overlap to evaluate anyway (the overlap is then reported)."
            )
    return overlap


def _same_evaluation(folder: Path, signature: dict[str, Any]) -> bool | None:
    """Whether ``folder`` holds this evaluation's results (``None``: it holds no results at all)."""
    if not any((folder / name).exists() for name in ("metrics.json", "report.html")):
        return None
    try:
        stored = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    run = stored.get("run") if isinstance(stored, dict) else None
    if not isinstance(run, dict):
        return False  # results of another kind, e.g. a record run's model comparison
    if "evaluated" in run:
        return bool(run["evaluated"] == signature)
    # written before the signature was stored: the same split of the run's own data
    return signature["data"] is None and run.get("evaluated_split") == signature["split"] and not run.get("external")


def _output_dir(run_dir: Path | None, out: str | os.PathLike[str] | None, signature: dict[str, Any], *,
                force: bool) -> Path:
    """Where this evaluation's files go, decided before any work (see :func:`evaluate`)."""
    if out is not None:
        folder = check_writable(out)
        refuse_sealed(folder)
        own_run = run_dir is not None and folder.resolve() == run_dir.resolve()
        if not own_run and (folder / "model" / "bundle.json").is_file():
            raise ConfigError(f"--out {folder} holds another run ({contents(folder)}); give a folder of its own.")
        if _same_evaluation(folder, signature) is False:
            if not force:
                raise ConfigError(
                    f"--out {folder} already holds other results ({contents(folder)}). Use --force to move them "
                    "aside, or give another --out."
                )
            if own_run:
                set_aside_stale_results(folder)
            else:
                set_aside(folder)
        return folder
    if run_dir is None:
        raise ConfigError("Give --out: a bring-your-own model has no run folder to write the report into.")
    stem = Path(signature["data"]).stem if signature["data"] else "own"
    name = f"evaluation-{stem}-{signature['split']}"
    candidates = [run_dir, *(run_dir / (name + (f"-{i}" if i > 1 else "")) for i in range(1, 100))]
    for folder in candidates:
        if _same_evaluation(folder, signature) is not False:
            if folder != run_dir:
                log.warning("%s holds other results (%s); this evaluation goes to %s.", run_dir, contents(run_dir),
                            folder)
            return Path(folder)
    raise ConfigError(f"{run_dir} holds 100 evaluations of {stem}; give --out.")


def _assemble(
    predictor: Scorer,
    got: _Collected,
    labels: list[str],
    *,
    split: str,
    subgroups: tuple[str, ...],
    n_boot: int,
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
        labels=labels,
        groups=got.groups,
        threshold=_stored_threshold(meta.get("threshold")),
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
            "model_version": predictor.identity.version,
            "dataset": got.dataset,
            "evaluated_split": split,
            "external": got.external,
            "intended_use": _intended_use_text(predictor),
            "trained_by": "medpredict" if "config" in meta else "elsewhere",
            "provenance": _provenance(predictor),
            "splits": {k: _split_info(meta.get("data", {}), k) for k in meta.get("data", {}).get("rows", {})},
            **_card_facts(predictor, meta),
        },
        n_boot=n_boot,
        **got.val,
    )


#: What evaluation says a model is for when it declares nothing.
DEFAULT_USE = "Research and decision support only: flags cases for a clinician's review; not a diagnosis."


def _intended_use_text(predictor: Scorer) -> str:
    """The model's declared intended use (bundle or descriptor card), followed by the default caveat."""
    declared = getattr(predictor, "intended_use", None)
    if declared is not None and (declared.description or declared.declared):
        return f"{declared.summary()}. {DEFAULT_USE}"
    stated = (getattr(predictor, "card", None) or {}).get("intended_use")
    if isinstance(stated, str) and stated.strip() and stated != "not declared":
        return f"{stated.strip().rstrip('.')}. {DEFAULT_USE}"
    return DEFAULT_USE


def _stored_threshold(stored: Any) -> Any:
    """A bundle's threshold for the report: a fitted picker as is, a fixed one (kept as given) as its number.

    The report then says "given" for a threshold nobody chose on validation data.
    """
    if isinstance(stored, dict) and stored.get("method") == "fixed":
        return float(stored["threshold"])
    return stored


def _provenance(predictor: Scorer) -> dict[str, str]:
    """Where each setting came from, in words: stored by ``adopt``/the descriptor, or derived for a trained bundle."""
    stored = predictor.meta.get("provenance")
    if isinstance(stored, dict):
        return {str(k): str(v) for k, v in stored.items()}
    meta = predictor.meta
    data = Path(str((meta.get("data") or {}).get("source") or "its data")).name
    threshold = meta.get("threshold") or {}
    calibration = meta.get("calibration") or {}
    bundle = getattr(predictor, "bundle", None)
    guard = bundle.read_json("input_guard.json") if bundle is not None else None
    if _small_data(predictor):  # cross-fitted: post-fit on out-of-fold predictions, not one split
        folds = (meta.get("training") or {}).get("small_data", {}).get("folds")
        where = f"the out-of-fold predictions of train + validation ({folds} folds, small-data mode)"
        return {
            "training": f"trained by medpredict as {folds} fold models of the train and validation splits of {data}",
            "calibration": f"{calibration.get('method') or calibration.get('kind')} fitted on {where}"
            if calibration else "none",
            "threshold": f"{threshold['threshold']:.4f} fitted on {where} ({threshold.get('method')})"
            if isinstance(threshold, dict) and threshold else "none (0.5 by default)",
            "conformal": f"class-conditional prediction sets fitted on {where}" if meta.get("conformal") else "none",
            "input_guard": "Mahalanobis distance on the fold models' pooled features (fitted outside one fold, "
            "threshold on that fold)" if guard else "none",
            "intended_use": predictor.intended_use.summary() if hasattr(predictor, "intended_use") else "not declared",
        }
    return {
        "training": f"trained by medpredict on the train split of {data}",
        "calibration": f"{calibration.get('method') or calibration.get('kind')} fitted on the validation split by "
        "medpredict train" if calibration else "none",
        "threshold": f"{threshold['threshold']:.4f} fitted on the validation split by medpredict train "
        f"({threshold.get('method')})" if isinstance(threshold, dict) and threshold else "none (0.5 by default)",
        "conformal": "class-conditional prediction sets fitted on the validation split by medpredict train"
        if meta.get("conformal") else "none",
        "input_guard": "Mahalanobis distance on the network's pooled features (training statistics, validation "
        "threshold) fitted by medpredict train" if guard else "none",
        "intended_use": predictor.intended_use.summary() if hasattr(predictor, "intended_use") else "not declared",
    }


def _threshold_words(threshold: dict[str, Any] | None, provenance: dict[str, str]) -> str:
    """How the command line names the threshold's origin."""
    chosen_on = (threshold or {}).get("chosen_on")
    if chosen_on == "validation":
        by = "medpredict adopt" if "medpredict adopt" in provenance.get("threshold", "") else None
        return "locked on validation" + (f" (fitted by {by})" if by else "")
    if chosen_on == "given":
        return "given with the model, not fitted by medpredict"
    return "by default (no threshold was locked on validation)"


def _card_facts(predictor: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """What the model card reads from the bundle: seed, input, identity, declared intended use."""
    config = meta.get("config") or {}
    seed = (config.get("train") or {}).get("seed", config.get("seed"))  # image runs nest it, table runs do not
    identity = getattr(predictor, "identity", None)
    return {
        "seed": seed,
        "input_kind": getattr(predictor, "input_kind", None),
        "input": meta.get("preprocess"),
        "training": meta.get("training"),
        "medpredict_version": meta.get("medpredict_version"),
        "identity": identity.to_dict() if identity is not None else None,
        "intended_use_spec": meta.get("intended_use"),
    }


def _robustness(predictor: Scorer, got: _Collected, progress: bool) -> dict[str, Any]:
    """AUC and accuracy (at the locked threshold) under every MedMNIST-C corruption and severity."""
    from sklearn.metrics import roc_auc_score

    from medpredict.evaluation.robustness import robustness_table

    if got.images is None:
        raise DataError("--robustness needs the evaluated images; this model's collector keeps none.")

    def score(batch: torch.Tensor) -> np.ndarray:
        return np.concatenate([
            predictor.calibrate(predictor.outputs(batch[i : i + 256])[0]) for i in range(0, len(batch), 256)
        ])

    def metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        decided = predictor.rule.decisions(probs)
        positive = predictor.positive_index
        try:
            if positive is not None:
                auc = float(roc_auc_score(y == positive, probs[:, positive]))
            else:
                auc = float(roc_auc_score(y, probs, multi_class="ovr", labels=range(probs.shape[1])))
        except ValueError:  # one class only
            auc = float("nan")
        return {"auc": auc, "accuracy": float(np.mean(decided == y))}

    return robustness_table(score, got.images, got.y, metrics=metrics, progress=progress)


def _write_cases(path: Path, cases: list[CasePrediction], y: np.ndarray) -> None:
    """One row per evaluated case: what ``predict``/``serve``/``pacs`` would have said, and the truth.

    Sources are file names (or npz references) only; the true class index is the model's.
    """
    rows = []
    for case, truth in zip(cases, y, strict=True):
        row: dict[str, Any] = {"source": case.source, "true_class": int(truth), "decision": case.decision}
        row.update({f"p_{k}": v for k, v in case.probabilities.items()})
        row["prediction_set"] = "|".join(case.prediction_set)
        row["refer"] = case.refer
        row["referral_reasons"] = "; ".join(case.referral_reasons)
        row["input_check"] = case.input_check.status
        row["ood_score"] = case.input_check.ood_score
        rows.append(row)
    write_text(path, pd.DataFrame(rows).to_csv(index=False, float_format="%.8f"))


def _positive_last(got: _Collected, predictor: Scorer) -> list[str]:
    """Put a binary model's positive class in column 1, where the metrics expect it.

    A model trained with ``--positive`` naming its first class is evaluated for that class:
    columns and labels are swapped, targets flipped. Returns the labels in evaluation order.
    """
    labels = list(predictor.labels)
    if predictor.task != "binary" or predictor.positive_index != 0:
        return labels
    got.probs, got.raw, got.y = got.probs[:, ::-1].copy(), got.raw[:, ::-1].copy(), 1 - got.y
    if got.val:
        got.val["probs_val"] = got.val["probs_val"][:, ::-1].copy()
        got.val["y_val"] = 1 - got.val["y_val"]
    return labels[::-1]


def _add_point_of_care(evaluation: dict[str, Any], predictor: Scorer, got: _Collected) -> None:
    """What the deployed contract says per case, summarised: units, positive class, calibration
    choice, input guard, referral reasons (the same cases ``predict``/``serve``/``pacs`` give)."""
    data = predictor.meta.get("data") or {}
    evaluation["units"] = data.get("units", "patient") if not got.external else _units_of(got.groups)
    if evaluation["units"] == "image":  # every image stood for its own "patient" in the bootstrap
        evaluation["metrics"]["bootstrap_unit"] = "image"
    evaluation["positive_label"] = predictor.positive_label
    stored = predictor.meta.get("calibration") or {}
    calibration = evaluation.setdefault("calibration", {})
    if stored.get("kind") == "posthoc":
        calibration["method"] = stored["method"]
        calibration["prior_correction"] = bool(stored.get("prior_correction"))
        calibration["cv_log_loss"] = stored.get("cv_log_loss")
    if got.val.get("probs_val") is not None and predictor.task == "binary":
        positive = predictor.positive_index or 1
        summary = calibration_summary((got.val["y_val"] == positive).astype(int), got.val["probs_val"][:, positive])
        calibration["validation"] = {
            k: summary[k] for k in ("ece", "intercept", "slope", "calibration_in_the_large", "brier", "n")
        }
    cases = got.cases or []
    if cases:
        checked = [c for c in cases if c.input_check.status != "not checked"]
        if checked:
            evaluation["input_guard"] = {
                "method": "mahalanobis",
                "threshold": checked[0].input_check.ood_threshold,
                "ood_flagged_share": float(np.mean([c.input_check.status == "unusual" for c in checked])),
                "n": len(checked),
            }
        reasons: dict[str, int] = {}
        for case in cases:
            for reason in case.referral_reasons:
                reasons[reason] = reasons.get(reason, 0) + 1
        referral = evaluation.setdefault("referral", {})
        referral["share_referred"] = float(np.mean([c.refer for c in cases]))
        referral["reasons"] = reasons
        referral["accuracy_kept"] = _accuracy_kept(got.y, cases, predictor.labels)


def _units_of(groups: Any) -> str:
    values = pd.Series(np.asarray(groups).astype(str))
    return "image" if values.str.match(r"^(row|train|val|test)-\d+$").all() else "patient"


def _accuracy_kept(y: np.ndarray, cases: list[CasePrediction], labels: list[str]) -> float | None:
    """Accuracy of the decisions on the cases not referred."""
    kept = [(labels.index(c.decision), t) for c, t in zip(cases, y, strict=True) if not c.refer]
    return float(np.mean([d == t for d, t in kept])) if kept else None


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
