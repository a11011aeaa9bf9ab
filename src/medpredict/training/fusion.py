"""Train an image + record fusion model from a manifest.

A manifest row with both ``image_path`` and clinical columns is one paired sample. A
row may lack either: an empty ``image_path`` cell means "no image", a row whose clinical
cells are all empty means "no record"; such rows train the model's missing-modality
paths (:class:`~medpredict.models.fusion.FusionNet` masks absent modalities).

:func:`train_fusion` splits by patient (the shared splitter), fits the table cleaner on
the training rows only, trains with the shared engine on
``ArrayDataset((images_uint8, records_float, present_mask), target)`` with image
augmentation and modality dropout on training batches, fits calibration, threshold and
conformal sets on validation (:func:`medpredict.training.postfit.post_fit`), evaluates the
model with both modalities and with each one alone, and writes a run folder::

    config.yaml            the resolved config (medpredict.config.RunConfig, kind "fused")
    metrics.json           val/test metrics: fused, image only, record only
    splits.csv             row -> split (no patient ids)
    test_predictions.csv   calibrated test probabilities (row numbers, never ids)
    metrics.jsonl, curves.png, checkpoint.safetensors   from the engine
    model/                 the bundle: weights, bundle.json (input_kind "fusion"), cleaner.json

The bundle's network entry (:class:`medpredict.bundle.kinds.FusedNet`) rebuilds the network
for prediction; :func:`medpredict.models.fusion.fusion_inputs` turns raw images and records
into its three inputs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medpredict.atomic import write_json, write_text
from medpredict.bundle.kinds import FusedNet, ImageInput, ImageNet, RecordInput, RecordNet
from medpredict.bundle.schema import BundleMeta, write_bundle
from medpredict.calibration.posthoc import load_calibration
from medpredict.config import (
    MODALITIES,
    AugmentConfig,
    CleaningConfig,
    DataConfig,
    FusionConfig,
    ModelConfig,
    PreprocessConfig,
    RecordModelConfig,
    RunConfig,
    TrainConfig,
    run_location,
)
from medpredict.data.datasets import ArrayDataset, load_images, target_tensor
from medpredict.data.manifest import IMAGE_COLUMN_ALIASES, PATIENT_COLUMN_ALIASES, from_frame
from medpredict.data.proxies import target_proxies
from medpredict.data.splits import assign_splits, require_no_leakage
from medpredict.data.transforms import BatchAugment, Normalisation
from medpredict.errors import DataError, unknown_choice
from medpredict.evaluation.metrics import classification_metrics
from medpredict.models import build_model, check_input_size
from medpredict.models.fusion import FusionNet, drop_modalities
from medpredict.models.normalised import InputNormalised
from medpredict.models.records import RECORD_MODELS, build_record_model
from medpredict.records.cleaning import TableCleaner
from medpredict.records.tables import clean_token, infer_schema
from medpredict.rundirs import claim_run_dir, removed_on_failure
from medpredict.training import policy
from medpredict.training.engine import FitResult, fit, learning_problem, predict_logits
from medpredict.training.image import training_summary
from medpredict.training.postfit import post_fit

log = logging.getLogger(__name__)

# Manifest columns that are never clinical inputs (besides the target, image and patient columns).
RESERVED_COLUMNS = frozenset(
    {"image_path", "patient_id", "study_id", "target", "label_name", "split", "sha256", "site", "time"}
)


@dataclass
class FusionRun:
    """What :func:`train_fused` produced."""

    run_dir: Path
    bundle_dir: Path
    metrics: dict[str, Any]
    model: torch.nn.Module
    splits: np.ndarray
    best_epoch: int
    exit_code = 0

    def summary(self) -> str:
        """Each view's AUC with its interval, and where the run went."""
        lines = []
        for view, splits in self.metrics["views"].items():
            result = splits.get("test") or splits.get("val") or {}
            low, high = result.get("auc_ci") or [float("nan"), float("nan")]
            lines.append(f"{view:12s} auc {result.get('auc', float('nan')):.3f} [{low:.3f}, {high:.3f}]")
        return "\n".join([*lines, f"Run folder: {self.run_dir} (bundle in {self.bundle_dir})"])


@dataclass
class FusedData:
    """A fused manifest read and split by patient, with each row's modalities known.

    Attributes:
        frame: the manifest rows (``image_path`` is ``""`` where a row has no image), with ``split``.
        labels / task: the target's classes and task.
        columns: the clinical columns the model reads.
        split: ``train``/``val``/``test`` per row.
        part: row numbers per split (rows with no modality in use left out).
        has_image / has_record: per row, whether that modality is present and in use.
        image_column / patient_column: the manifest's columns, as resolved.
    """

    frame: pd.DataFrame
    labels: tuple[str, ...]
    task: str
    columns: list[str]
    split: np.ndarray
    part: dict[str, np.ndarray]
    has_image: np.ndarray
    has_record: np.ndarray
    image_column: str
    patient_column: str | None

    def images(self, rows: np.ndarray) -> list[str | None]:
        """The rows' image paths, ``None`` where a row has no image (as the predictor takes them)."""
        paths = self.frame["image_path"].to_numpy()
        return [str(paths[i]) if self.has_image[i] else None for i in rows]

    def records(self, rows: np.ndarray) -> list[dict[str, Any] | None]:
        """The rows' clinical values as dicts, ``None`` where a row has no record."""
        values = self.frame[self.columns].astype(object)

        def record(i: int) -> dict[str, Any]:
            return {c: (None if clean_token(v) is None else v) for c, v in values.iloc[i].items()}

        return [record(i) if self.has_record[i] else None for i in rows]


def _read_manifest(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot parse the manifest {path}: {exc}") from exc
    raise DataError(f"A fusion manifest must be .csv, .tsv or .parquet; got {path.name}.")


def _pick_column(frame: pd.DataFrame, given: str | None, aliases: Sequence[str]) -> str | None:
    """The column ``given``, else the first alias present (case-insensitive), as the manifest reader picks."""
    if given is not None:
        return given
    lowered = {str(c).lower(): str(c) for c in frame.columns}
    return next((lowered[a] for a in aliases if a in lowered), None)


def _missing(values: pd.Series) -> np.ndarray:
    return values.map(clean_token).isna().to_numpy()


def fused_config(
    manifest_path: str | Path,
    *,
    target: str = "label",
    clinical_columns: Sequence[str] | None = None,
    out: str | Path = "runs/fusion",
    image_model: str = "tiny-resnet",
    image_size: int = 28,
    channels: int = 1,
    mode: str = "intermediate",
    modalities: Sequence[str] = MODALITIES,
    modality_dropout: float = 0.2,
    fusion_dim: int = 32,
    dropout: float = 0.1,
    table_model: str = "mlp",
    table_hparams: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    train: TrainConfig | None = None,
    augment: AugmentConfig | None = None,
    cleaning: CleaningConfig | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    image_column: str | None = None,
    patient_column: str | None = None,
) -> RunConfig:
    """The :class:`~medpredict.config.RunConfig` (kind ``fused``) for :func:`train_fusion`'s arguments.

    Raises:
        ConfigError: an unknown model, mode or modality, or an image size below the model's minimum.
    """
    train = train or TrainConfig(batch_size=64)
    train = replace(train, epochs=train.epochs if epochs is None else epochs, seed=train.seed if seed is None else seed)
    out_dir, name = run_location(out)
    return RunConfig(
        name=name,
        out_dir=out_dir,
        kind="fused",
        data=DataConfig(
            source=str(Path(manifest_path).expanduser()),
            target=target,
            image_column=image_column,
            patient_column=patient_column,
            channels=channels,
            clinical_columns=tuple(clinical_columns or ()),
            val_fraction=val_fraction,
            test_fraction=test_fraction,
        ),
        preprocess=PreprocessConfig(image_size=image_size, spatial_dims=2),
        augment=augment or AugmentConfig(),
        model=ModelConfig(name=image_model),
        record_model=RecordModelConfig(name=table_model, hparams=dict(table_hparams or {})),
        cleaning=cleaning or CleaningConfig(),
        fusion=FusionConfig(
            mode=mode,
            modalities=tuple(modalities),
            modality_dropout=modality_dropout,
            fusion_dim=fusion_dim,
            dropout=dropout,
        ),
        train=train,
    )


def load_fused_data(config: RunConfig) -> FusedData:
    """Read a fused run's manifest and split it by patient exactly as training does.

    ``config.data.clinical_columns`` empty uses every column but the target, image, patient
    and :data:`RESERVED_COLUMNS`.

    Raises:
        DataError: unreadable manifest, missing columns, a regression target, an empty split.
    """
    data = config.data
    path = Path(data.source).expanduser()
    if not path.is_file():
        raise DataError(f"Manifest not found: {path}. Give a CSV/TSV/Parquet with image_path and clinical columns.")
    raw = _read_manifest(path).reset_index(drop=True)
    image_col = _pick_column(raw, data.image_column, IMAGE_COLUMN_ALIASES)
    if image_col is None:
        raise DataError(
            f"{path} has no image column (looked for {', '.join(IMAGE_COLUMN_ALIASES)}); a fusion model needs "
            "image paths and clinical columns. For records alone use 'medpredict records train'."
        )
    if image_col not in raw.columns:
        raise DataError(f"The image column '{image_col}' is not in {path}. Columns: {list(raw.columns)}.")
    patient_col = _pick_column(raw, data.patient_column, PATIENT_COLUMN_ALIASES)
    image_missing = _missing(raw[image_col])
    # from_frame resolves every cell as a path; an empty cell (NaN) would break it.
    paths = raw[image_col].astype(object).where(~image_missing, "")
    manifest = from_frame(
        raw.assign(**{image_col: paths}), source=str(path), root=path.parent, target=data.target,
        image_column=image_col, patient_column=patient_col, task="auto",
    )
    if manifest.task not in ("binary", "multiclass"):
        raise DataError(
            f"Fusion models are classifiers; the target '{data.target}' of {path} looks like a {manifest.task} target."
        )
    columns = _clinical_columns(raw, manifest.frame, config, {data.target, image_col, patient_col}, path)
    keys = manifest.frame["sha256"] if "sha256" in manifest.frame.columns else None
    frame = assign_splits(
        manifest, val_fraction=data.val_fraction, test_fraction=data.test_fraction, seed=config.train.seed,
        content_keys=keys,
    ).frame
    require_no_leakage(frame, keys)
    split = frame["split"].to_numpy()
    part = {name: np.flatnonzero(split == name) for name in ("train", "val", "test")}
    for name in ("train", "val"):
        if len(part[name]) == 0:
            raise DataError(f"The {name} split of {path} is empty; give more patients or other fractions.")
    modalities = config.fusion.modalities
    has_image = np.asarray(~image_missing, dtype=bool) & ("image" in modalities)
    has_record = np.asarray(~np.column_stack([_missing(frame[c]) for c in columns]).all(axis=1), dtype=bool)
    has_record &= "record" in modalities
    neither = ~has_image & ~has_record
    if neither.any():
        log.warning("%d rows have none of the modalities used (%s); they are left out.", int(neither.sum()),
                    ", ".join(modalities))
        part = {name: rows[~neither[rows]] for name, rows in part.items()}
    return FusedData(
        frame, tuple(manifest.labels), manifest.task, columns, split, part, has_image, has_record,
        image_column=image_col, patient_column=patient_col,
    )


def _clinical_columns(
    raw: pd.DataFrame, frame: pd.DataFrame, config: RunConfig, used: set[str | None], path: Path
) -> list[str]:
    if not config.data.clinical_columns:
        reserved = set(RESERVED_COLUMNS) | used
        columns = [str(c) for c in raw.columns if c not in reserved]
    else:
        columns = list(config.data.clinical_columns)
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise DataError(f"Clinical column(s) {absent} are not in {path}. Columns: {list(raw.columns)}.")
    if not columns:
        raise DataError(f"{path} has no clinical columns besides the reserved ones; name them with clinical_columns.")
    return columns


def _fit_cleaner(data: FusedData, config: RunConfig) -> TableCleaner:
    """Schema and cleaner from the training rows that have a record."""
    train = data.part["train"]
    train_records = train[data.has_record[train]] if data.has_record.any() else train
    if not len(train_records):
        train_records = train  # an image-only ablation: the cleaner is fitted but never used
    record_frame = data.frame[data.columns].astype(object)
    schema = infer_schema(
        pd.concat([record_frame.iloc[train_records], data.frame[["target"]].iloc[train_records]], axis=1),
        target="target",
    )
    unused = [c for c in data.columns if c not in schema.features()]
    if unused:
        log.warning("Clinical columns not used as features (id-like, dates or empty in training): %s.", unused)
    return TableCleaner(schema, config.cleaning).fit(record_frame.iloc[train_records])


def _read_images(data: FusedData, config: RunConfig, progress: bool) -> torch.Tensor:
    """Every row's image, read once as uint8 ``(N, C, S, S)``; absent images are zeros."""
    size, channels = config.preprocess.image_size, config.data.channels
    images = torch.zeros((len(data.frame), channels, size, size), dtype=torch.uint8)
    rows = np.flatnonzero(data.has_image)
    if len(rows):
        images[rows] = load_images(
            data.frame["image_path"].iloc[rows].tolist(), config.preprocess, channels, progress=progress
        )
    return images


def _network(
    config: RunConfig, cleaner: TableCleaner, normalisation: Normalisation, num_classes: int
) -> tuple[FusionNet, dict[str, Any]]:
    """The untrained fusion network, its weights drawn from the run's seed, and the record branch's hparams."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)  # weight initialisation is part of the run's seeded randomness
        image_net = InputNormalised(
            build_model(config.model.name, in_channels=config.data.channels, num_classes=num_classes,
                        spatial_dims=2, dropout=config.model.dropout),
            normalisation.mean,
            normalisation.std,
        )
        table_net = build_record_model(
            config.record_model.name,
            n_continuous=cleaner.n_continuous_,
            cardinalities=cleaner.cardinalities_,
            num_classes=num_classes,
            **config.record_model.hparams,
        )
        fusion = config.fusion
        model = FusionNet(
            image_net, table_net.encoder, num_classes, mode=fusion.mode, modality_dropout=fusion.modality_dropout,
            fusion_dim=fusion.fusion_dim, dropout=fusion.dropout,
        )
    return model, dict(table_net.hparams)


@dataclass
class _Arrays:
    """A fused run's inputs in memory: uint8 images, cleaned records, presence mask, targets."""

    images: torch.Tensor
    records: torch.Tensor
    present: torch.Tensor
    target: torch.Tensor

    def dataset(self, rows: np.ndarray, mask: torch.Tensor | None = None) -> ArrayDataset:
        """The rows as the network's training input; ``mask`` hides a modality in every row."""
        index = torch.as_tensor(rows, dtype=torch.long)
        shown = self.present[index] if mask is None else self.present[index] * mask
        return ArrayDataset((self.images[index], self.records[index], shown), self.target[index])


def train_fused(
    config: RunConfig,
    *,
    n_boot: int = 1000,
    progress: bool = True,
    force: bool = False,
    allow_target_proxy: bool = False,
) -> FusionRun:
    """Train an image + record fusion classifier as configured and write its run folder.

    Args:
        config: a :class:`~medpredict.config.RunConfig` of kind ``fused`` (see
            :func:`fused_config` for the keyword form).
        n_boot: patient-bootstrap replicates for the metric intervals.
        force: move a run already in the run folder aside instead of refusing.
        allow_target_proxy: train even with a clinical column that restates the target.

    Raises:
        DataError: unreadable manifest, missing columns, a regression target, too few patients,
            a clinical column that restates the target, a model that did not learn.
        ConfigError: an unknown model or record model, an image size below the model's minimum,
            or a run folder that already holds a run.
    """
    started = time.monotonic()
    check_input_size(config.model.name, config.preprocess.image_size)  # before any data is read
    if config.record_model.name not in RECORD_MODELS:
        raise unknown_choice("record model", config.record_model.name, RECORD_MODELS)
    claim_run_dir(config.run_dir, force=force)
    with removed_on_failure(config.run_dir, keep=()):
        return _train_fused(config, n_boot=n_boot, progress=progress, allow_target_proxy=allow_target_proxy,
                            started=started)


def _refuse_proxies(data: FusedData, target: str, *, allowed: bool) -> None:
    """Log the clinical columns the model reads; refuse one that restates the target (unless ``allowed``)."""
    log.info("Clinical columns the model reads (%d): %s", len(data.columns), ", ".join(data.columns))
    rows = data.part["train"][data.has_record[data.part["train"]]]
    proxies = target_proxies(data.frame.iloc[rows], data.frame["label_name"].to_numpy()[rows], data.columns)
    if not proxies:
        return
    found = "; ".join(p.describe(target) for p in proxies)
    if allowed:
        log.warning("Training with a possible leak, as asked: %s.", found)
        return
    kept = [c for c in data.columns if c not in {p.column for p in proxies}]
    raise DataError(
        f"Refusing to train: {found}. A model reading it learns nothing usable before the outcome is known. "
        + (f"Leave it out with --clinical-columns {','.join(kept)}, " if kept else "Leave it out, ")
        + "or pass --allow-target-proxy if it is truly known before the outcome."
    )


def _train_fused(
    config: RunConfig, *, n_boot: int, progress: bool, allow_target_proxy: bool, started: float
) -> FusionRun:
    data = load_fused_data(config)
    _refuse_proxies(data, config.data.target, allowed=allow_target_proxy)
    cleaner = _fit_cleaner(data, config)
    records = cleaner.transform(data.frame[data.columns].astype(object)).astype(np.float32)
    records[~data.has_record] = 0.0
    images = _read_images(data, config, progress)
    train_images = np.flatnonzero(data.has_image)[np.isin(np.flatnonzero(data.has_image), data.part["train"])]
    normalisation = (
        Normalisation.fit(images[train_images].float().div(255), config.preprocess.normalize)
        if len(train_images)
        else Normalisation()
    )
    arrays = _Arrays(
        images,
        torch.from_numpy(records),
        torch.tensor(np.stack([data.has_image, data.has_record], axis=1), dtype=torch.float32),
        target_tensor(data.frame["target"].tolist(), data.task),
    )
    config = replace(config, data=replace(
        config.data, task=data.task, clinical_columns=tuple(data.columns), image_column=data.image_column,
        patient_column=data.patient_column,
    ))  # resolved: what evaluation reads back to find the same rows
    model, record_hparams = _network(config, cleaner, normalisation, len(data.labels))
    result = _fit(model, arrays, data, config, progress)
    problem = learning_problem(result, data.task)
    if problem is not None:
        raise DataError(f"No model was saved from {config.data.source}: {problem}. Check that every class has "
                        "training and validation rows.")
    val_set = arrays.dataset(data.part["val"])
    counts = np.bincount(arrays.dataset(data.part["train"]).target.numpy(), minlength=len(data.labels))
    fields, _ = post_fit(
        predict_logits(model, val_set),
        val_set.target.numpy(),
        data.task,
        tuple(data.labels),
        class_weights=policy.class_weights(counts, config.train.class_weighting) if data.task != "regression" else None,
        seed=config.train.seed,
    )
    metrics, test_probs = _evaluate_views(model, arrays, data, fields, config, n_boot)
    meta = _bundle_meta(config, data, RecordNet(record_hparams), cleaner, normalisation, fields, metrics)
    meta = replace(meta, training=training_summary(result, started, model))
    run_dir = config.run_dir
    write_bundle(run_dir / "model", meta, state_dict=model.state_dict(), cleaner=cleaner.to_dict())
    _write_run_files(run_dir, config, data, metrics, test_probs, arrays.target)
    log.info("Fusion run written to %s: %s", run_dir, _headline(metrics))
    return FusionRun(run_dir, run_dir / "model", metrics, model, data.split, result.best_epoch)


def _fit(model: FusionNet, arrays: _Arrays, data: FusedData, config: RunConfig, progress: bool) -> FitResult:
    """The shared engine, with image augmentation and modality dropout on training batches."""
    augmenter = BatchAugment(config.augment, 2)
    hide = config.fusion.modality_dropout if len(config.fusion.modalities) == 2 else 0.0

    def train_transform(inputs: tuple[torch.Tensor, ...], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        image, record, shown = inputs
        return augmenter(image, generator), record, drop_modalities(shown, hide, generator)

    train_set = arrays.dataset(data.part["train"])
    result = fit(
        model,
        train_set,
        arrays.dataset(data.part["val"]),
        task=data.task,
        config=config.train,
        run_dir=config.run_dir,
        class_counts=policy.class_counts(train_set.target, data.task, len(data.labels)),
        progress=progress,
        train_transform=train_transform,
    )
    model.eval()
    return result


def _evaluate_views(
    model: FusionNet, arrays: _Arrays, data: FusedData, fields: dict[str, Any], config: RunConfig, n_boot: int
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    """Validation and test metrics with every modality a row has, and with each one alone."""
    calibrator = load_calibration(fields["calibration"]) if fields.get("calibration") else None
    threshold = (fields.get("threshold") or {}).get("threshold") if data.task == "binary" else None
    groups = data.frame["patient_id"].to_numpy()
    views = {"fused": torch.tensor([1.0, 1.0])}
    if len(config.fusion.modalities) == 2:
        views |= {"image_only": torch.tensor([1.0, 0.0]), "record_only": torch.tensor([0.0, 1.0])}
    evaluated = {"val": data.part["val"]} | ({"test": data.part["test"]} if len(data.part["test"]) else {})
    metrics: dict[str, Any] = {
        "task": data.task,
        "labels": list(data.labels),
        "mode": config.fusion.mode,
        "modalities": list(config.fusion.modalities),
        "views": {},
    }
    test_probs = None
    for view, mask in views.items():
        for split_name, rows in evaluated.items():
            rows = rows[(arrays.present[rows] * mask).sum(dim=1).numpy() > 0]  # rows this view can predict
            if not len(rows) or len(np.unique(arrays.target[rows].numpy())) < 2:
                continue
            logits = predict_logits(model, arrays.dataset(rows, mask))
            probs = calibrator.transform(logits.numpy()) if calibrator else torch.softmax(logits, 1).numpy()
            if view == "fused" and split_name == "test":
                test_probs = (rows, probs)
            metrics["views"].setdefault(view, {})[split_name] = classification_metrics(
                arrays.target[rows].numpy(), probs, labels=list(data.labels), threshold=threshold,
                groups=groups[rows], n_boot=n_boot, seed=config.train.seed,
            )
    return metrics, test_probs


def _bundle_meta(
    config: RunConfig,
    data: FusedData,
    record_net: RecordNet,
    cleaner: TableCleaner,
    normalisation: Normalisation,
    fields: dict[str, Any],
    metrics: dict[str, Any],
) -> BundleMeta:
    """What the bundle says about a fused model (``training`` is added by the caller)."""
    num_classes = len(data.labels)
    fusion = config.fusion
    fused = metrics["views"].get("fused", {})
    groups = data.frame["patient_id"].to_numpy()
    part = data.part
    return BundleMeta(
        name=config.name,
        kind="fused",
        task=data.task,
        labels=data.labels,
        config=config,
        model=FusedNet(
            image=ImageNet(config.model.name, config.data.channels, num_classes, dropout=config.model.dropout),
            record=record_net,
            num_classes=num_classes,
            mode=fusion.mode,
            fusion_dim=fusion.fusion_dim,
            dropout=fusion.dropout,
            modality_dropout=fusion.modality_dropout,
        ),
        image=ImageInput(
            config.preprocess.image_size, 2, config.data.channels, normalisation.mean, normalisation.std
        ),
        record=RecordInput(input_columns=tuple(cleaner.columns_), features=tuple(cleaner.feature_names_)),
        **fields,
        val_metrics=fused.get("val"),
        metrics=fused.get("test"),
        data={
            "source": config.data.source,
            "rows": {k: int(len(v)) for k, v in part.items()},
            "patients": {k: int(len(np.unique(groups[v]))) for k, v in part.items()},
            "with_image": {k: int(data.has_image[v].sum()) for k, v in part.items()},
            "with_record": {k: int(data.has_record[v].sum()) for k, v in part.items()},
        },
    )


def _write_run_files(
    run_dir: Path,
    config: RunConfig,
    data: FusedData,
    metrics: dict[str, Any],
    test_probs: tuple[np.ndarray, np.ndarray] | None,
    target: torch.Tensor,
) -> None:
    write_text(run_dir / "config.yaml", config.to_yaml())
    write_json(run_dir / "metrics.json", metrics)
    write_text(run_dir / "splits.csv", pd.DataFrame({"row": data.frame.index, "split": data.split}).to_csv(index=False))
    if test_probs is not None:
        rows, probs = test_probs
        table = pd.DataFrame(probs, columns=[f"p_{name}" for name in data.labels])
        table.insert(0, "target", target[rows].numpy())
        table.insert(0, "row", rows)
        write_text(run_dir / "test_predictions.csv", table.to_csv(index=False, float_format="%.6f"))


def train_fusion(manifest_path: str | Path, *, n_boot: int = 1000, progress: bool = True, **settings: Any) -> FusionRun:
    """Train a fusion model from keyword settings: :func:`fused_config` then :func:`train_fused`.

    Args:
        manifest_path: CSV/TSV/Parquet with an image column, clinical columns, the target
            and (recommended) a patient column; an optional ``split`` column is respected.
        n_boot: patient-bootstrap replicates for the metric intervals.
        settings: the keywords of :func:`fused_config` (``target``, ``clinical_columns``,
            ``out``, ``image_model``, ``image_size``, ``mode``, ``modalities``, ``epochs``, ...),
            and ``force`` / ``allow_target_proxy`` of :func:`train_fused`.
    """
    flags = {key: bool(settings.pop(key)) for key in ("force", "allow_target_proxy") if key in settings}
    return train_fused(fused_config(manifest_path, **settings), n_boot=n_boot, progress=progress, **flags)


def _headline(metrics: Mapping[str, Any]) -> str:
    parts = []
    for view, splits in metrics["views"].items():
        result = splits.get("test") or splits.get("val") or {}
        if "auc" in result:
            parts.append(f"{view} auc {result['auc']:.3f}")
    return ", ".join(parts)
