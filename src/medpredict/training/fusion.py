"""Train an image + record fusion model from a manifest.

A manifest row with both ``image_path`` and clinical columns is one paired sample. A
row may lack either: an empty ``image_path`` cell means "no image", a row whose clinical
cells are all empty means "no record"; such rows train the model's missing-modality
paths (:class:`~medpredict.models.fusion.FusionNet` masks absent modalities).

:func:`train_fusion` splits by patient (the shared splitter), fits the table cleaner on
the training rows only, trains with the shared engine on
``ArrayDataset((images_uint8, records_float, present_mask), target)`` with image
augmentation and modality dropout on training batches, fits calibration, threshold and
conformal sets on validation (:func:`medpredict.training.image.post_fit`), evaluates the
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

from medpredict.errors import ConfigError, DataError, unknown_choice

log = logging.getLogger(__name__)

MODALITIES = ("image", "record")
# Manifest columns that are never clinical inputs (besides the target, image and patient columns).
RESERVED_COLUMNS = frozenset(
    {"image_path", "patient_id", "study_id", "target", "label_name", "split", "sha256", "site", "time"}
)


@dataclass
class FusionRun:
    """What :func:`train_fusion` produced."""

    run_dir: Path
    bundle_dir: Path
    metrics: dict[str, Any]
    model: torch.nn.Module
    splits: np.ndarray
    best_epoch: int


# --------------------------------------------------------------------------- training


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
    from medpredict.records.tables import clean_token

    return values.map(clean_token).isna().to_numpy()


def train_fusion(
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
    train: Any = None,
    augment: Any = None,
    cleaning: Any = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    image_column: str | None = None,
    patient_column: str | None = None,
    n_boot: int = 1000,
    progress: bool = True,
) -> FusionRun:
    """Train an image + record fusion classifier on a manifest and write a run folder.

    Args:
        manifest_path: CSV/TSV/Parquet with an image column, clinical columns, the target
            and (recommended) a patient column; an optional ``split`` column is respected.
        target: the target column (binary or multiclass).
        clinical_columns: record columns to use; ``None`` uses every column except the
            target, image, patient and :data:`RESERVED_COLUMNS`.
        image_model: a key of :data:`medpredict.models.MODELS`.
        image_size / channels: images are resized to ``image_size`` square, 1 or 3 channels.
        mode: ``intermediate`` or ``late`` fusion.
        modalities: ``("image", "record")``; one of them alone trains the same pipeline with
            the other modality hidden in every row (the single-modality ablation).
        modality_dropout: chance a training row with both modalities is shown only one.
        fusion_dim / dropout: width and dropout of the fusion head.
        table_model / table_hparams: the record encoder (``mlp`` or ``transformer``).
        epochs / seed: override ``train``'s values when given.
        train: a :class:`~medpredict.config.TrainConfig` (default: its defaults, batch 64).
        augment: an :class:`~medpredict.config.AugmentConfig` for training images.
        cleaning: a :class:`~medpredict.records.cleaning.CleaningConfig`.
        val_fraction / test_fraction: patient fractions held out when the manifest gives no split.
        n_boot: patient-bootstrap replicates for the metric intervals.

    Raises:
        DataError: unreadable manifest, missing columns, a regression target, too few patients.
        ConfigError: an unknown model, mode or modality.
    """
    from medpredict.atomic import write_json, write_text
    from medpredict.bundle.kinds import FusedNet, ImageInput, ImageNet, RecordInput, RecordNet
    from medpredict.bundle.schema import BundleMeta, write_bundle
    from medpredict.config import (
        AugmentConfig,
        DataConfig,
        FusionConfig,
        ModelConfig,
        PreprocessConfig,
        RecordModelConfig,
        RunConfig,
        TrainConfig,
    )
    from medpredict.data.datasets import ArrayDataset, load_images, target_tensor
    from medpredict.data.manifest import IMAGE_COLUMN_ALIASES, PATIENT_COLUMN_ALIASES, from_frame
    from medpredict.data.splits import assign_splits, require_no_leakage
    from medpredict.data.transforms import BatchAugment, Normalisation
    from medpredict.models import MODELS, build_model
    from medpredict.models.fusion import FUSION_MODES, FusionNet, drop_modalities
    from medpredict.models.normalised import InputNormalised
    from medpredict.models.tabular import build_tabular_model
    from medpredict.records.cleaning import TableCleaner
    from medpredict.records.tables import infer_schema
    from medpredict.training.engine import fit, predict_logits
    from medpredict.training.image import post_fit, training_summary

    started = time.monotonic()
    if image_model not in MODELS:
        raise unknown_choice("image model", image_model, MODELS)
    if mode not in FUSION_MODES:
        raise unknown_choice("fusion mode", mode, FUSION_MODES)
    modalities = tuple(modalities)
    for name in modalities:
        if name not in MODALITIES:
            raise unknown_choice("modality", name, MODALITIES)
    if not modalities:
        raise ConfigError(f"modalities is empty; give one or both of {MODALITIES}.")
    if image_size < MODELS[image_model].min_size:
        raise ConfigError(
            f"image_size {image_size} is below {image_model}'s smallest input ({MODELS[image_model].min_size} px)."
        )
    config = train or TrainConfig(batch_size=64)
    config = replace(
        config,
        epochs=config.epochs if epochs is None else epochs,
        seed=config.seed if seed is None else seed,
    )
    preprocess = PreprocessConfig(image_size=image_size, spatial_dims=2)
    path = Path(manifest_path).expanduser()
    if not path.is_file():
        raise DataError(f"Manifest not found: {path}. Give a CSV/TSV/Parquet with image_path and clinical columns.")

    # ---- manifest, modality presence, splits
    raw = _read_manifest(path).reset_index(drop=True)
    image_col = _pick_column(raw, image_column, IMAGE_COLUMN_ALIASES)
    if image_col is None:
        raise DataError(
            f"{path} has no image column (looked for {', '.join(IMAGE_COLUMN_ALIASES)}); a fusion model needs "
            "image paths and clinical columns. For records alone use 'medpredict tabular train'."
        )
    if image_col not in raw.columns:
        raise DataError(f"The image column '{image_col}' is not in {path}. Columns: {list(raw.columns)}.")
    patient_col = _pick_column(raw, patient_column, PATIENT_COLUMN_ALIASES)
    image_missing = _missing(raw[image_col])
    # from_frame resolves every cell as a path; an empty cell (NaN) would break it.
    paths = raw[image_col].astype(object).where(~image_missing, "")
    manifest = from_frame(
        raw.assign(**{image_col: paths}),
        source=str(path),
        root=path.parent,
        target=target,
        image_column=image_col,
        patient_column=patient_col,
        task="auto",
    )
    if manifest.task not in ("binary", "multiclass"):
        raise DataError(
            f"Fusion models are classifiers; the target '{target}' of {path} looks like a {manifest.task} target."
        )
    frame = manifest.frame
    reserved = set(RESERVED_COLUMNS) | {target, image_col, patient_col}
    if clinical_columns is None:
        columns = [str(c) for c in raw.columns if c not in reserved]
    else:
        columns = list(clinical_columns)
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise DataError(f"Clinical column(s) {absent} are not in {path}. Columns: {list(raw.columns)}.")
    if not columns:
        raise DataError(f"{path} has no clinical columns besides the reserved ones; name them with clinical_columns.")
    keys = frame["sha256"] if "sha256" in frame.columns else None
    frame = assign_splits(
        manifest, val_fraction=val_fraction, test_fraction=test_fraction, seed=config.seed, content_keys=keys
    ).frame
    require_no_leakage(frame, keys)
    split = frame["split"].to_numpy()
    part = {name: np.flatnonzero(split == name) for name in ("train", "val", "test")}
    for name in ("train", "val"):
        if len(part[name]) == 0:
            raise DataError(f"The {name} split of {path} is empty; give more patients or other fractions.")

    has_image = np.asarray(~image_missing, dtype=bool)
    has_record = np.asarray(~np.column_stack([_missing(frame[c]) for c in columns]).all(axis=1), dtype=bool)
    if "image" not in modalities:
        has_image = np.zeros(len(frame), dtype=bool)
    if "record" not in modalities:
        has_record = np.zeros(len(frame), dtype=bool)
    neither = np.flatnonzero(~has_image & ~has_record)
    if len(neither):
        log.warning(
            "%d rows have none of the modalities used (%s); they are left out.", len(neither), ", ".join(modalities)
        )
        keep = has_image | has_record
        part = {name: rows[keep[rows]] for name, rows in part.items()}

    # ---- records: schema and cleaner from training rows that have a record
    train_records = part["train"][has_record[part["train"]]] if has_record.any() else part["train"]
    record_frame = frame[columns].astype(object)
    if not len(train_records):
        train_records = part["train"]  # an image-only ablation: the cleaner is fitted but never used
    schema = infer_schema(
        pd.concat([record_frame.iloc[train_records], frame[["target"]].iloc[train_records]], axis=1),
        target="target",
    )
    unused = [c for c in columns if c not in schema.features()]
    if unused:
        log.warning("Clinical columns not used as features (id-like, dates or empty in training): %s.", unused)
    cleaner = TableCleaner(schema, cleaning).fit(record_frame.iloc[train_records])
    records = cleaner.transform(record_frame).astype(np.float32)
    records[~has_record] = 0.0

    # ---- images: read once, uint8; absent images are zeros
    images = torch.zeros((len(frame), channels, image_size, image_size), dtype=torch.uint8)
    rows_with_image = np.flatnonzero(has_image)
    if len(rows_with_image):
        images[rows_with_image] = load_images(
            frame["image_path"].iloc[rows_with_image].tolist(), preprocess, channels, progress=progress
        )
    train_images = rows_with_image[np.isin(rows_with_image, part["train"])]
    normalisation = (
        Normalisation.fit(images[train_images].float().div(255), preprocess.normalize)
        if len(train_images)
        else Normalisation()
    )

    present = torch.tensor(np.stack([has_image, has_record], axis=1), dtype=torch.float32)
    target_all = target_tensor(frame["target"].tolist(), manifest.task)
    records_t = torch.from_numpy(records)

    def dataset(rows: np.ndarray, mask: torch.Tensor | None = None) -> ArrayDataset:
        index = torch.as_tensor(rows, dtype=torch.long)
        shown = present[index] if mask is None else present[index] * mask
        return ArrayDataset((images[index], records_t[index], shown), target_all[index])

    # ---- the network
    num_classes = len(manifest.labels)
    image_spec = ImageNet(name=image_model, in_channels=channels, num_classes=num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # weight initialisation is part of the run's seeded randomness
        image_net = InputNormalised(
            build_model(image_model, in_channels=channels, num_classes=num_classes, spatial_dims=2),
            normalisation.mean,
            normalisation.std,
        )
        table_net = build_tabular_model(
            table_model,
            n_continuous=cleaner.n_continuous_,
            cardinalities=cleaner.cardinalities_,
            num_classes=num_classes,
            **dict(table_hparams or {}),
        )
        model = FusionNet(
            image_net,
            table_net.encoder,
            num_classes,
            mode=mode,
            modality_dropout=modality_dropout,
            fusion_dim=fusion_dim,
            dropout=dropout,
        )
    augmenter = BatchAugment(augment or AugmentConfig(), 2)
    hide = modality_dropout if len(modalities) == 2 else 0.0

    def train_transform(inputs: tuple[torch.Tensor, ...], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        image, record, shown = inputs
        return augmenter(image, generator), record, drop_modalities(shown, hide, generator)

    train_set, val_set = dataset(part["train"]), dataset(part["val"])
    counts = np.bincount(train_set.target.numpy(), minlength=num_classes)
    run_dir = Path(out)
    result = fit(
        model,
        train_set,
        val_set,
        task=manifest.task,
        config=config,
        run_dir=run_dir,
        class_counts=counts,
        progress=progress,
        train_transform=train_transform,
    )
    model.eval()
    labels = tuple(manifest.labels)
    val_logits = predict_logits(model, val_set)
    fields, val_probs = post_fit(val_logits, val_set.target.numpy(), manifest.task, labels)

    # ---- evaluation: with every modality the row has, and with each one alone
    from medpredict.calibration.scalers import calibrator_from_dict
    from medpredict.evaluation.metrics import classification_metrics

    calibrator = calibrator_from_dict(fields["calibration"]) if fields.get("calibration") else None
    threshold = (fields.get("threshold") or {}).get("threshold") if manifest.task == "binary" else None
    groups = frame["patient_id"].to_numpy()
    views = {"fused": torch.tensor([1.0, 1.0])}
    if len(modalities) == 2:
        views |= {"image_only": torch.tensor([1.0, 0.0]), "record_only": torch.tensor([0.0, 1.0])}
    evaluated = {"val": part["val"]} | ({"test": part["test"]} if len(part["test"]) else {})
    metrics: dict[str, Any] = {
        "task": manifest.task,
        "labels": list(labels),
        "mode": mode,
        "modalities": list(modalities),
        "views": {},
    }
    test_probs = None
    for view, mask in views.items():
        for split_name, rows in evaluated.items():
            rows = rows[(present[rows] * mask).sum(dim=1).numpy() > 0]  # rows this view can predict
            if not len(rows) or len(np.unique(target_all[rows].numpy())) < 2:
                continue
            logits = predict_logits(model, dataset(rows, mask))
            probs = calibrator.transform(logits.numpy()) if calibrator else torch.softmax(logits, 1).numpy()
            if view == "fused" and split_name == "test":
                test_probs = (rows, probs)
            metrics["views"].setdefault(view, {})[split_name] = classification_metrics(
                target_all[rows].numpy(),
                probs,
                labels=list(labels),
                threshold=threshold,
                groups=groups[rows],
                n_boot=n_boot,
                seed=config.seed,
            )

    # ---- run folder and bundle
    run_config = RunConfig(
        name=run_dir.name,
        out_dir=str(run_dir.parent),
        kind="fused",
        data=DataConfig(
            source=str(path),
            target=target,
            image_column=image_col,
            patient_column=patient_col,
            task=manifest.task,
            channels=channels,
            clinical_columns=tuple(columns),
            val_fraction=val_fraction,
            test_fraction=test_fraction,
        ),
        preprocess=preprocess,
        augment=augmenter.config,
        model=ModelConfig(name=image_model),
        record_model=RecordModelConfig(name=table_model, hparams=dict(table_hparams or {})),
        cleaning=cleaner.config,
        fusion=FusionConfig(
            mode=mode,
            modalities=modalities,
            modality_dropout=modality_dropout,
            fusion_dim=fusion_dim,
            dropout=dropout,
        ),
        train=config,
    )
    fused = metrics["views"].get("fused", {})
    meta = BundleMeta(
        name=run_dir.name,
        kind="fused",
        task=manifest.task,
        labels=labels,
        config=run_config,
        model=FusedNet(
            image=image_spec,
            record=RecordNet(dict(table_net.hparams)),
            num_classes=num_classes,
            mode=mode,
            fusion_dim=fusion_dim,
            dropout=dropout,
            modality_dropout=modality_dropout,
        ),
        image=ImageInput(
            image_size=image_size, spatial_dims=2, channels=channels, mean=normalisation.mean, std=normalisation.std
        ),
        record=RecordInput(input_columns=tuple(cleaner.columns_), features=tuple(cleaner.feature_names_)),
        **fields,
        val_metrics=fused.get("val"),
        metrics=fused.get("test"),
        data={
            "source": str(path),
            "rows": {k: int(len(v)) for k, v in part.items()},
            "patients": {k: int(len(np.unique(groups[v]))) for k, v in part.items()},
            "with_image": {k: int(has_image[v].sum()) for k, v in part.items()},
            "with_record": {k: int(has_record[v].sum()) for k, v in part.items()},
        },
        training=training_summary(result, started, model),
    )
    bundle_dir = run_dir / "model"
    write_bundle(bundle_dir, meta, state_dict=model.state_dict(), cleaner=cleaner.to_dict())
    write_text(run_dir / "config.yaml", run_config.to_yaml())
    write_json(run_dir / "metrics.json", metrics)
    write_text(run_dir / "splits.csv", pd.DataFrame({"row": frame.index, "split": split}).to_csv(index=False))
    if test_probs is not None:
        rows, probs = test_probs
        table = pd.DataFrame(probs, columns=[f"p_{name}" for name in labels])
        table.insert(0, "target", target_all[rows].numpy())
        table.insert(0, "row", rows)
        write_text(run_dir / "test_predictions.csv", table.to_csv(index=False, float_format="%.6f"))
    log.info("Fusion run written to %s: %s", run_dir, _headline(metrics))
    return FusionRun(
        run_dir=run_dir,
        bundle_dir=bundle_dir,
        metrics=metrics,
        model=model,
        splits=split,
        best_epoch=result.best_epoch,
    )


def _headline(metrics: Mapping[str, Any]) -> str:
    parts = []
    for view, splits in metrics["views"].items():
        result = splits.get("test") or splits.get("val") or {}
        if "auc" in result:
            parts.append(f"{view} auc {result['auc']:.3f}")
    return ", ".join(parts)
