"""One training run, from a config to a run folder with a verified model bundle.

``train(config)`` reads the data into a manifest, splits it by patient (refusing
leakage), caches the preprocessed images, trains with the shared engine, then fits on the
validation split only — temperature scaling, the operating threshold and the conformal
quantile — and writes ``runs/<name>/``::

    config.yaml            the resolved config
    train.log              the run's log
    metrics.jsonl          one line per epoch
    curves.png             loss and validation AUC per epoch
    checkpoint.safetensors state for --resume
    splits.csv             row → split assignment (no patient ids)
    val_predictions.csv    calibrated validation probabilities
    model/                 the bundle (see medpredict.bundle.store)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medpredict.atomic import write_text
from medpredict.bundle.kinds import ImageInput, ImageNet
from medpredict.bundle.schema import BundleMeta, write_bundle
from medpredict.config import RunConfig
from medpredict.data.datasets import ArrayDataset, load_images, target_tensor
from medpredict.data.intended_use import declare
from medpredict.data.manifest import Manifest, load_manifest
from medpredict.data.splits import assign_splits, require_no_leakage
from medpredict.data.tokens import label_variants
from medpredict.data.transforms import BatchAugment, Normalisation
from medpredict.errors import ConfigError, DataError
from medpredict.evaluation.metrics import classification_metrics
from medpredict.evaluation.subgroups import reference_statistics
from medpredict.rundirs import claim_run_dir, removed_on_failure, set_aside_stale_results
from medpredict.training import policy
from medpredict.training.crossfit import (
    FoldCallback,
    cross_fit,
    fold_assignment,
    pool,
    small_data_config,
    small_data_reason,
)
from medpredict.training.engine import (
    BatchTransform,
    Distributed,
    EpochCallback,
    FitResult,
    fit,
    learning_problem,
    predict_logits,
    resolve_device,
    validation_score,
)
from medpredict.training.postfit import fit_input_guard, pooled_features, post_fit, resolve_positive

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """Where the run went and its validation figures."""

    run_dir: Path
    bundle_dir: Path
    val_metrics: dict[str, Any]
    fit: FitResult
    model_name: str = ""
    exit_code = 0

    def summary(self) -> str:
        """Best epoch, the validation headline and where the run went."""
        metrics = self.val_metrics
        shown = [k for k in ("auc", "sensitivity", "specificity") if isinstance(metrics.get(k), float)]
        headline = ", ".join(f"{k} {metrics[k]:.3f}" for k in shown) or str(metrics)
        return (
            f"Trained {self.model_name}: best epoch {self.fit.best_epoch}, validation {headline}\n"
            f"Run folder: {self.run_dir}  (bundle in {self.bundle_dir})"
        )


def load_data(config: RunConfig) -> Manifest:
    """Read the configured source and assign patient-level splits (respecting a given split)."""
    data = config.data
    if not data.source:
        raise ConfigError(
            "No data source given. Pass --data PATH (a manifest CSV, a MedMNIST .npz or an image folder)."
        )
    manifest = load_manifest(
        data.source,
        target=data.target,
        image_column=data.image_column,
        patient_column=data.patient_column,
        task=data.task,
        label_map=data.label_map,
    )
    if not manifest.has_images:
        raise DataError(
            f"{data.source} has no image column. For a clinical table use 'medpredict records train'; "
            "for images give a manifest with an image_path column."
        )
    keys = manifest.frame["sha256"] if "sha256" in manifest.frame.columns else None
    manifest = assign_splits(
        manifest,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=config.train.seed,
        content_keys=keys,
    )
    require_no_leakage(manifest.frame, keys)
    if data.max_per_split:
        frame = manifest.frame
        parts = [
            rows.sample(n=min(len(rows), data.max_per_split), random_state=config.train.seed)
            for _, rows in frame.groupby("split", sort=False)
        ]
        manifest = dataclasses.replace(manifest, frame=pd.concat(parts).sort_index())
    return manifest


def build_dataset(
    frame: pd.DataFrame, config: RunConfig, task: str, *, progress: bool = True
) -> ArrayDataset:
    """Read and preprocess the images of ``frame`` into an in-memory dataset."""
    images = load_images(
        frame["image_path"].tolist(), config.preprocess, config.data.channels, progress=progress
    )
    return ArrayDataset((images,), target_tensor(frame["target"].tolist(), task))


def build_network(config: RunConfig, num_outputs: int, normalisation: Normalisation) -> torch.nn.Module:
    """The configured network wrapped with its input normalisation, with user weights if given."""
    from medpredict.models import build_model, load_weights
    from medpredict.models.normalised import InputNormalised

    net = build_model(
        config.model.name,
        in_channels=config.data.channels,
        num_classes=num_outputs,
        spatial_dims=config.preprocess.spatial_dims,
        dropout=config.model.dropout,
    )
    if config.model.weights:
        report = load_weights(net, config.model.weights, skip_head=True)
        log.info("Loaded starting weights from %s: %s", config.model.weights, report)
    return InputNormalised(net, normalisation.mean, normalisation.std)


def image_net(config: RunConfig, num_outputs: int, *, members: int = 1) -> ImageNet:
    """The bundle's network entry: what rebuilds the network before its weights are loaded."""
    return ImageNet(
        name=config.model.name,
        in_channels=config.data.channels,
        num_classes=num_outputs,
        spatial_dims=config.preprocess.spatial_dims,
        dropout=config.model.dropout,
        members=members,
    )


def image_input(config: RunConfig, normalisation: Normalisation) -> ImageInput:
    """The bundle's image input description (size, channels, normalisation)."""
    return ImageInput(
        image_size=config.preprocess.image_size,
        spatial_dims=config.preprocess.spatial_dims,
        channels=config.data.channels,
        mean=normalisation.mean,
        std=normalisation.std,
    )


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("medpredict")
    root.addHandler(handler)
    previous = root.level
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


def train(
    config: RunConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
    on_fold: FoldCallback | None = None,
    force: bool = False,
) -> TrainResult:
    """Train one model as configured and write its run folder (see the module docstring).

    ``on_epoch`` is passed to :func:`medpredict.training.engine.fit` (called after every epoch);
    in small-data mode (:mod:`medpredict.training.crossfit`) ``on_fold`` is called after every fold.
    A run folder that already holds a run is refused (:func:`medpredict.rundirs.claim_run_dir`)
    unless ``resume`` continues its checkpoint or ``force`` moves it aside; a run that fails
    before its first checkpoint leaves no folder behind.

    Raises:
        ConfigError: the folder holds a run, or ``resume`` finds no checkpoint or another run's.
        DataError: unusable data, or a model that did not learn (no bundle is written).
    """
    from medpredict.models import check_input_size

    if config.kind != "image":
        command = {"record": "medpredict records train", "fused": "medpredict fusion train"}[config.kind]
        raise ConfigError(f"This config is for a {config.kind} run, not an image run; train it with '{command}'.")
    check_input_size(config.model.name, config.preprocess.image_size)  # before any data is read or file written
    training_augment(config)  # unknown corruption names fail here, before any data is read
    dist = Distributed.from_env()
    resolve_device(config.train.device, dist)  # a GPU asked for where there is none: refused now
    run_dir = config.run_dir
    if dist.is_main:
        claim_run_dir(run_dir, force=force, resume=resume, can_resume=True)
    with removed_on_failure(run_dir) if dist.is_main else contextlib.nullcontext():
        run_dir.mkdir(parents=True, exist_ok=True)
        with _log_to(run_dir / "train.log") if dist.is_main else contextlib.nullcontext():
            return _train(
                config, run_dir, resume=resume, progress=progress, dist=dist, on_epoch=on_epoch, on_fold=on_fold
            )


def training_augment(config: RunConfig) -> BatchTransform:
    """The training batch augmentation: MONAI geometry and intensity, then MedMNIST-C corruptions if asked.

    Raises:
        ConfigError: an unknown corruption name (with the known ones).
    """
    augment = BatchAugment(config.augment, config.preprocess.spatial_dims)
    if not config.augment.corruptions:
        return lambda inputs, g: (augment(inputs[0], g),)
    from medpredict.evaluation.robustness import CorruptionAugment

    corrupt = CorruptionAugment(config.augment.corruptions, config.augment.corruption_probability)
    return lambda inputs, g: (corrupt(augment(inputs[0], g), g),)


@dataclass
class _Fitted:
    """A trained network and what post-fit needs: the logits and classes it is fitted on."""

    model: torch.nn.Module
    result: FitResult
    logits: torch.Tensor
    y: np.ndarray
    frame: pd.DataFrame  # the rows of ``logits``
    counts: np.ndarray | None
    normalisation: Normalisation
    guard: dict[str, Any] | None
    small_data: dict[str, Any] | None = None


def _train(
    config: RunConfig, run_dir: Path, *, resume: bool, progress: bool, dist: Distributed,
    on_epoch: EpochCallback | None, on_fold: FoldCallback | None,
) -> TrainResult:
    started = time.monotonic()
    if dist.is_main:
        write_text(run_dir / "config.yaml", config.to_yaml())
    manifest = load_data(config)
    refuse_label_variants(manifest)
    frame, task = manifest.frame, manifest.task
    parts = {name: frame[frame["split"] == name] for name in ("train", "val", "test")}
    for name in ("train", "val"):
        if parts[name].empty:
            raise DataError(
                f"The {name} split of {config.data.source} is empty; check the split column or fractions."
            )
    log.info(
        "Data: %s, task %s, classes %s; rows train/val/test = %d/%d/%d",
        config.data.source,
        task,
        list(manifest.labels),
        len(parts["train"]),
        len(parts["val"]),
        len(parts["test"]),
    )
    positive = resolve_positive(config.data.positive, manifest.labels, task)  # before the long part
    if dist.is_main:
        split_table = pd.DataFrame({"row": frame.index, "split": frame["split"]})
        write_text(run_dir / "splits.csv", split_table.to_csv(index=False))
    train_set = build_dataset(parts["train"], config, task, progress=progress)
    val_set = build_dataset(parts["val"], config, task, progress=progress)
    num_outputs = 1 if task == "regression" else len(manifest.labels)
    reason = _small_data(config, val_set, task, dist)
    if reason is not None:
        config, changed = small_data_config(config)
        log.info(
            "Small-data mode (%s): %d-fold cross-fitting on training + validation cases%s.",
            reason, config.train.folds,
            "; " + ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items()) if changed else "",
        )
        if dist.is_main:
            write_text(run_dir / "config.yaml", config.to_yaml())  # the settings actually used
        fitted = _fit_small(
            config, parts, train_set, val_set, task, num_outputs, run_dir,
            progress=progress, resume=resume, on_epoch=on_epoch, on_fold=on_fold, reason=reason,
        )
    else:
        fitted = _fit_one(
            config, parts, train_set, val_set, task, num_outputs, run_dir,
            progress=progress, resume=resume, on_epoch=on_epoch,
            fingerprint=run_fingerprint(frame, config, manifest.labels),
        )
    model, result, counts, normalisation = fitted.model, fitted.result, fitted.counts, fitted.normalisation
    problem = learning_problem(result, task)
    if problem is not None:
        raise DataError(f"No model was saved from {config.data.source}: {problem}. {class_coverage(parts, manifest)}")
    single_label = task in ("binary", "multiclass")
    fields, val_probs = post_fit(
        fitted.logits,
        fitted.y,
        task,
        manifest.labels,
        class_weights=policy.class_weights(counts, config.train.class_weighting) if single_label else None,
        positive_index=positive,
        seed=config.train.seed,
    )
    guard = fitted.guard
    intended = declare(
        dataclasses.asdict(config.intended_use), parts["train"]["image_path"].tolist(), channels=config.data.channels
    )
    val_metrics = _val_metrics(fitted.y, val_probs, task, manifest.labels, fields)
    meta = BundleMeta(
        name=config.name,
        kind="image",
        task=task,
        labels=tuple(manifest.labels),
        config=config,
        model=image_net(config, num_outputs, members=config.train.folds if fitted.small_data else 1),
        image=image_input(config, normalisation),
        **fields,
        positive_label=manifest.labels[positive] if task == "binary" else None,
        intended_use=intended.to_dict(),
        val_metrics=val_metrics,
        reference_stats=reference_statistics(
            train_set.target.numpy(), images=train_set.inputs[0][:5000].float().div(255).numpy()
        )
        if task in ("binary", "multiclass")
        else None,
        data={
            "source": str(config.data.source),
            "units": manifest.units,
            "rows": {k: len(v) for k, v in parts.items()},
            "patients": {k: int(v["patient_id"].nunique()) for k, v in parts.items()},
            "prevalence": {k: _prevalence(v, task) for k, v in parts.items() if len(v)},
        },
        training={
            **training_summary(result, started, model),
            **({"small_data": fitted.small_data} if fitted.small_data else {}),
        },
    )
    bundle_dir = run_dir / "model"
    if dist.is_main:
        if resume:
            set_aside_stale_results(run_dir)
        write_bundle(bundle_dir, meta, state_dict=model.state_dict(), guard=guard)
        _write_val_predictions(run_dir, fitted.frame, val_probs, manifest.labels, task)
        log.info(
            "Bundle written to %s (validation score %.4f at epoch %d).",
            bundle_dir,
            result.best_score,
            result.best_epoch,
        )
    return TrainResult(
        run_dir=run_dir, bundle_dir=bundle_dir, val_metrics=val_metrics, fit=result, model_name=config.model.name
    )


def _small_data(config: RunConfig, val_set: ArrayDataset, task: str, dist: Distributed) -> str | None:
    """Why this run trains in small-data mode, or None (never under torchrun)."""
    reason = small_data_reason(config, val_set.target.numpy(), task)
    if reason is not None and dist.enabled:
        if config.train.small_data == "on":
            raise ConfigError(
                "Small-data mode trains its fold models one after another in one process; run it without "
                "torchrun, or set train.small_data=off."
            )
        log.info("The validation split is small (%s), but under torchrun the run trains as usual.", reason)
        return None
    return reason


def _fit_one(
    config: RunConfig, parts: dict[str, pd.DataFrame], train_set: ArrayDataset, val_set: ArrayDataset, task: str,
    num_outputs: int, run_dir: Path, *, progress: bool, resume: bool, on_epoch: EpochCallback | None,
    fingerprint: dict[str, Any],
) -> _Fitted:
    """One network, early-stopped on the validation split, post-fitted on it."""
    normalisation = Normalisation.fit(train_set.inputs[0].float().div(255), config.preprocess.normalize)
    torch.manual_seed(config.train.seed)  # weight initialisation is part of the run's seeded randomness
    model = build_network(config, num_outputs, normalisation)
    counts = policy.class_counts(train_set.target, task, num_outputs)
    result = fit(
        model,
        train_set,
        val_set,
        task=task,
        config=config.train,
        run_dir=run_dir,
        class_counts=counts,
        progress=progress,
        resume=resume,
        train_transform=training_augment(config),
        on_epoch=on_epoch,
        fingerprint=fingerprint,
    )
    return _Fitted(
        model=model, result=result, logits=predict_logits(model, val_set), y=val_set.target.numpy(),
        frame=parts["val"], counts=counts, normalisation=normalisation,
        guard=_input_guard(model, train_set, val_set, config.train.seed),
    )


def _fit_small(
    config: RunConfig, parts: dict[str, pd.DataFrame], train_set: ArrayDataset,
    val_set: ArrayDataset, task: str, num_outputs: int, run_dir: Path, *, progress: bool, resume: bool,
    on_epoch: EpochCallback | None, on_fold: FoldCallback | None, reason: str,
) -> _Fitted:
    """Small-data mode: the fold models of train + validation as one ensemble, post-fitted out of fold."""
    pooled = pool(train_set, val_set)
    frame = pd.concat([parts["train"], parts["val"]])
    keys = frame["sha256"] if "sha256" in frame.columns else None
    folds = fold_assignment(frame, pooled.target.numpy(), config.train.folds, config.train.seed, keys)
    normalisation = Normalisation.fit(pooled.inputs[0].float().div(255), config.preprocess.normalize)

    def build(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_network(config, num_outputs, normalisation)

    fitted = cross_fit(
        config, pooled, folds, task=task, build=build, run_dir=run_dir, progress=progress, resume=resume,
        train_transform=training_augment(config), on_epoch=on_epoch, on_fold=on_fold,
    )
    return _Fitted(
        model=fitted.model, result=fitted.result, logits=fitted.oof_logits, y=fitted.y, frame=frame,
        counts=policy.class_counts(pooled.target, task, num_outputs), normalisation=normalisation, guard=fitted.guard,
        small_data=fitted.summary(reason),
    )


def refuse_label_variants(manifest: Manifest) -> None:
    """Refuse labels that differ only in case or spaces: each would be trained as a class of its own.

    Raises:
        DataError: names the spellings, their row counts and the ``data.label_map`` that merges them.
    """
    variants = label_variants(manifest.frame["label_name"])
    if not variants:
        return
    counts = manifest.frame["label_name"].astype(str).value_counts()
    shown = "; ".join(" / ".join(f"{v!r} ({int(counts.get(v, 0))} rows)" for v in group) for group in variants.values())
    mapping = {v: max(group, key=lambda g: int(counts.get(g, 0))) for group in variants.values() for v in group}
    mapping = {k: v for k, v in mapping.items() if k != v}
    flow = "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in mapping.items()) + "}"
    raise DataError(
        f"Labels of {manifest.source} differ only in case or spaces: {shown}. Each would become a class of its "
        f"own. Merge them with --set 'data.label_map={flow}' (or data.label_map in the config), or correct the "
        "manifest."
    )


def run_fingerprint(frame: pd.DataFrame, config: RunConfig, labels: tuple[str, ...]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the rows and their splits and targets, the network,
    and the preprocessing (see :func:`medpredict.training.checkpoint.check_fingerprint`).

    Rows are identified by their image file name (or npz reference) and hashed patient id, so a
    moved data folder still matches; patient ids never appear in the checkpoint.
    """
    names = frame["image_path"].astype(str).map(lambda p: Path(p.split("::")[0]).name + "::" + p.partition("::")[2])
    table = pd.DataFrame({
        "image": names.to_numpy(), "patient": frame["patient_id"].astype(str).to_numpy(),
        "split": frame["split"].astype(str).to_numpy(), "target": frame["target"].astype(str).to_numpy(),
    })
    digest = hashlib.sha256(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes()).hexdigest()
    rows = {name: int((table["split"] == name).sum()) for name in ("train", "val", "test")}
    return {
        "data": {"rows": rows, "content_of_rows_splits_and_targets": digest, "labels": list(labels)},
        "model": {"name": config.model.name, "dropout": config.model.dropout, "weights": config.model.weights},
        "preprocess": {
            "image_size": config.preprocess.image_size, "spatial_dims": config.preprocess.spatial_dims,
            "channels": config.data.channels, "normalize": config.preprocess.normalize,
        },
    }


def class_coverage(parts: dict[str, pd.DataFrame], manifest: Manifest) -> str:
    """The data problem behind a model that did not learn, in words: classes a split lacks, or none found."""
    if manifest.task not in ("binary", "multiclass"):
        return "Check the target values and the split."
    lacking = []
    for label in manifest.labels:
        counts = {name: int((part["label_name"].astype(str) == label).sum()) for name, part in parts.items()}
        if counts["train"] == 0 or counts["val"] == 0:
            lacking.append(f"class {label!r} has {counts['train']} training and {counts['val']} validation rows")
    if lacking:
        return (
            "The data is why: " + "; ".join(lacking) + ". Every class needs rows in both splits (check the labels "
            "for misspellings and the split column), then train again."
        )
    return "Every class has training and validation rows; check the labels, the learning rate and the images."


def _input_guard(
    model: torch.nn.Module, train_set: ArrayDataset, val_set: ArrayDataset, seed: int, max_rows: int = 5000
) -> dict[str, Any] | None:
    """The out-of-distribution detector on pooled features (training fit, validation threshold)."""
    images = train_set.inputs[0]
    index = None
    if len(images) > max_rows:
        index = np.sort(np.random.default_rng(seed).choice(len(images), max_rows, replace=False))
    y_train = train_set.target.numpy() if index is None else train_set.target.numpy()[index]
    return fit_input_guard(
        pooled_features(model, images, index=index), y_train, pooled_features(model, val_set.inputs[0])
    )


def training_summary(result: FitResult, started: float, model: torch.nn.Module) -> dict[str, Any]:
    """The ``training`` section of ``bundle.json``: best epoch, epochs run, why it stopped, time, device."""
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped": result.stopped,
        "seconds": round(time.monotonic() - started, 1),
        "device": str(next(model.parameters()).device),
    }


def _prevalence(frame: pd.DataFrame, task: str) -> Any:
    if task == "binary":
        return float((frame["target"] == 1).mean())
    if task == "multiclass":
        return frame["target"].value_counts(normalize=True).sort_index().round(4).to_dict()
    return None


def _val_metrics(
    y: np.ndarray, probs: np.ndarray, task: str, labels: tuple[str, ...], fields: dict[str, Any]
) -> dict[str, Any]:
    if task not in ("binary", "multiclass"):
        return {"score": validation_score(y, probs, task)}
    threshold = fields["threshold"]["threshold"] if fields.get("threshold") else None
    return classification_metrics(y, probs, labels=list(labels), threshold=threshold, n_boot=0)


def _write_val_predictions(
    run_dir: Path, frame: pd.DataFrame, probs: np.ndarray, labels: tuple[str, ...], task: str
) -> None:
    if probs.ndim != 2:
        return
    columns = (
        [f"p_{name}" for name in labels]
        if labels and probs.shape[1] == len(labels)
        else [f"p_{i}" for i in range(probs.shape[1])]
    )
    table = pd.DataFrame(probs, columns=columns)
    table.insert(0, "target", frame["target"].astype(str).to_numpy())
    table.insert(0, "row", frame.index.to_numpy())
    write_text(run_dir / "val_predictions.csv", table.to_csv(index=False, float_format="%.6f"))
