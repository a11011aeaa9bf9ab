"""Turn every supported data source into the one manifest the rest of medpredict uses.

A manifest is a :class:`pandas.DataFrame` with one row per sample and the columns
``image_path`` (absolute path, or an ``FILE.npz::KEY/INDEX`` reference), ``patient_id``,
``target`` (class index; float for regression; list of 0/1 for multi-label),
``label_name`` and, when the source gives one, ``split`` (``train``/``val``/``test``).
Every other column of a CSV manifest (clinical values, subgroups, site) is kept as is.

Sources: a CSV/Parquet manifest, a MedMNIST ``.npz``, or an image folder with one
sub-folder per class (optionally below ``train``/``val``/``test`` folders).
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medpredict.data.tokens import clean_target_token, written_as
from medpredict.errors import DataError, did_you_mean

log = logging.getLogger(__name__)

IMAGE_COLUMN_ALIASES = ("image_path", "path", "image", "file", "filename", "filepath", "file_path")
PATIENT_COLUMN_ALIASES = (
    "patient_id",
    "patient",
    "subject_id",
    "subject",
    "patientid",
    "patient_key_within_split",
    "pid",
)
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "tr": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
    "holdout": "test",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz")

# Label names of MedMNIST files, keyed by the file stem without the size suffix. MedMNIST's
# .npz files carry no label names; these come from MedMNIST v2's INFO table.
MEDMNIST_LABELS: dict[str, tuple[str, ...]] = {
    "pneumoniamnist": ("normal", "pneumonia"),
    "breastmnist": ("malignant", "normal, benign"),
    "chestmnist": (
        "atelectasis",
        "cardiomegaly",
        "effusion",
        "infiltration",
        "mass",
        "nodule",
        "pneumonia",
        "pneumothorax",
        "consolidation",
        "edema",
        "emphysema",
        "fibrosis",
        "pleural",
        "hernia",
    ),
}
MEDMNIST_MULTILABEL = ("chestmnist",)


@dataclass(frozen=True)
class Manifest:
    """A manifest frame plus what was learned about its target.

    Attributes:
        frame: the rows (see the module docstring for the columns).
        labels: class names in class-index order (empty for regression).
        task: ``binary``, ``multiclass``, ``multilabel`` or ``regression``.
        source: where it was read from.
        has_patients: False when the data names no patients (MedMNIST, image folders,
            manifests without a patient column): each image then counts as its own
            "patient", so splits, counts and confidence intervals are image-level, and
            one real patient's images may fall on both sides of a split.
        dropped: rows left out of ``frame`` and why, e.g. ``{"missing_target": 6}`` (a target
            cell empty or written as 'Unknown', 'N/A', '?' ...).
        target_column: the source's column the target came from (``None`` for npz and folders).
    """

    frame: pd.DataFrame
    labels: tuple[str, ...]
    task: str
    source: str
    has_patients: bool = True
    dropped: dict[str, int] = field(default_factory=dict)
    target_column: str | None = None

    def other_columns(self) -> list[str]:
        """The source's own columns besides image, patient, target and split (clinical values, subgroups ...)."""
        reserved = {"image_path", "patient_id", "target", "label_name", "split", "sha256", self.target_column}
        aliases = {a.lower() for a in (*IMAGE_COLUMN_ALIASES, *PATIENT_COLUMN_ALIASES)}
        return [str(c) for c in self.frame.columns if c not in reserved and str(c).lower() not in aliases]

    @property
    def units(self) -> str:
        """``"patient"`` or ``"image"``: what splits and confidence intervals resample."""
        return "patient" if self.has_patients else "image"

    @property
    def has_images(self) -> bool:
        return "image_path" in self.frame.columns

    def split(self, name: str) -> pd.DataFrame:
        """Rows of one split; raises :class:`DataError` if there are none."""
        if "split" not in self.frame.columns:
            raise DataError(f"{self.source} has no 'split' column; assign splits first.")
        rows = self.frame[self.frame["split"] == name]
        if rows.empty:
            present = sorted(self.frame["split"].dropna().unique())
            raise DataError(
                f"Split '{name}' has no rows in {self.source}.{did_you_mean(name, present)} "
                f"Splits present: {present}."
            )
        return rows


def load_manifest(
    source: str | Path,
    *,
    target: str = "label",
    image_column: str | None = None,
    patient_column: str | None = None,
    task: str = "auto",
    label_map: dict[str, str] | None = None,
) -> Manifest:
    """Read any supported source into a :class:`Manifest`.

    ``label_map`` renames target values before the classes are formed (manifests only).

    Raises:
        DataError: the source does not exist, is of an unknown kind, or lacks a column.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"Data source not found: {path}. Give a manifest CSV, a MedMNIST .npz or an image folder."
        )
    if path.is_dir():
        return _from_folder(path, task)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _from_medmnist(path)
    if suffix in (".csv", ".tsv", ".parquet", ".pq"):
        frame = _read_frame(path)
        return from_frame(
            frame,
            source=str(path),
            root=path.parent,
            target=target,
            image_column=image_column,
            patient_column=patient_column,
            task=task,
            label_map=label_map,
        )
    raise DataError(
        f"Cannot read {path}: unknown data source type '{suffix}'. "
        "Use a manifest (.csv, .tsv, .parquet), a MedMNIST .npz, or a folder of images."
    )


def _read_frame(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"Cannot parse the manifest {path}: {exc}") from exc


def _pick_column(
    frame: pd.DataFrame, given: str | None, aliases: tuple[str, ...], what: str, source: str
) -> str | None:
    if given is not None:
        if given not in frame.columns:
            raise DataError(
                f"The {what} column '{given}' is not in {source}.{did_you_mean(given, frame.columns)} "
                f"Columns: {list(frame.columns)}."
            )
        return given
    lowered = {str(c).lower(): c for c in frame.columns}
    for alias in aliases:
        if alias in lowered:
            return str(lowered[alias])
    return None


def from_frame(
    frame: pd.DataFrame,
    *,
    source: str,
    root: Path | None = None,
    target: str = "label",
    image_column: str | None = None,
    patient_column: str | None = None,
    task: str = "auto",
    label_map: dict[str, str] | None = None,
) -> Manifest:
    """Normalise a user frame into a manifest: resolve columns, paths, splits and the target.

    A patient column whose name ends in ``_within_split`` (as in the Kermany manifest,
    where numbering restarts in every split) is made unique by prefixing the split.
    Rows whose target is empty or a no-value word ('Unknown', 'N/A', '?', 'unk' ...) are
    dropped and counted in :attr:`Manifest.dropped`; ``label_map`` renames target values first.
    """
    frame = frame.copy()
    if target not in frame.columns:
        raise DataError(
            f"The target column '{target}' is not in {source}.{did_you_mean(target, frame.columns)} "
            f"Columns: {list(frame.columns)}. Name it with --target."
        )
    if label_map:
        mapping = {str(k): str(v) for k, v in label_map.items()}
        frame[target] = frame[target].map(lambda v: mapping.get(str(v), v) if not pd.isna(v) else v)
    no_target = frame[target].map(clean_target_token).isna()
    dropped = {"missing_target": int(no_target.sum())} if no_target.any() else {}
    if no_target.any():
        log.warning(
            "%s: %d row(s) have no value in the target column '%s' (written as %s); they are left out.",
            source, int(no_target.sum()), target, written_as(frame.loc[no_target, target]),
        )
        frame = frame.loc[~no_target]
        if frame.empty:
            raise DataError(f"No row of {source} has a value in the target column '{target}'. Name it with --target.")
    image_col = _pick_column(frame, image_column, IMAGE_COLUMN_ALIASES, "image", source)
    if image_col is not None:
        paths = frame[image_col]
        if root is not None:  # an empty cell (a row without an image) stays empty
            paths = paths.map(lambda p: p if pd.isna(p) or p == "" else _resolve(str(p), root))
        frame["image_path"] = paths
    if "split" in frame.columns:
        frame["split"] = frame["split"].map(_normalise_split)
    patient_col = _pick_column(frame, patient_column, PATIENT_COLUMN_ALIASES, "patient", source)
    if patient_col is None:
        log.warning("%s has no patient column; each row is treated as its own patient.", source)
        frame["patient_id"] = [f"row-{i}" for i in range(len(frame))]
    else:
        ids = frame[patient_col].astype(str)
        if patient_col.endswith("_within_split") and "split" in frame.columns:
            ids = frame["split"].astype(str) + "/" + ids
        frame["patient_id"] = ids
    if target in (image_col, patient_col, "image_path", "patient_id"):
        what = "images" if target in (image_col, "image_path") else "patients"
        raise DataError(
            f"The target column '{target}' of {source} identifies {what}; it is not an outcome. "
            "Name the outcome column with --target (e.g. --target label)."
        )
    labels, resolved_task = _encode_target(frame, target, task, source)
    return Manifest(
        frame=frame, labels=labels, task=resolved_task, source=source, has_patients=patient_col is not None,
        dropped=dropped, target_column=target,
    )


def _resolve(path: str, root: Path) -> str:
    """A manifest path made absolute against the manifest's folder (npz references too)."""
    file, sep, ref = path.partition("::")
    absolute = file if Path(file).is_absolute() else str((root / file).resolve())
    return f"{absolute}{sep}{ref}"


def _normalise_split(value: object) -> object:
    if pd.isna(value):
        return value
    key = str(value).strip().lower()
    if key not in SPLIT_ALIASES:
        raise DataError(
            f"Unknown split value '{value}'.{did_you_mean(key, SPLIT_ALIASES)} Use train, val or test."
        )
    return SPLIT_ALIASES[key]


def _encode_target(frame: pd.DataFrame, target: str, task: str, source: str) -> tuple[tuple[str, ...], str]:
    values = frame[target]
    if task == "regression" or (task == "auto" and _looks_continuous(values)):
        frame["target"] = pd.to_numeric(values, errors="raise").astype(float)
        frame["label_name"] = values.astype(str)
        return (), "regression"
    names = sorted(values.astype(str).unique(), key=_natural_key)
    if len(names) < 2:
        raise DataError(
            f"The target column '{target}' of {source} has a single class {names}; need at least two."
        )
    index = {name: i for i, name in enumerate(names)}
    frame["label_name"] = values.astype(str)
    frame["target"] = frame["label_name"].map(index).astype(int)
    resolved = "binary" if len(names) == 2 else "multiclass"
    if task not in ("auto", resolved):
        raise DataError(
            f"data.task is '{task}' but the target '{target}' of {source} has {len(names)} classes."
        )
    return tuple(names), resolved


def _natural_key(name: str) -> tuple[int, float | str]:
    try:
        return (0, float(name))
    except ValueError:
        return (1, name.lower())


def _looks_continuous(values: pd.Series) -> bool:
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.isna().any():
        return False
    return bool(values.nunique() > 20 and not np.allclose(numeric, numeric.round()))


def _from_folder(root: Path, task: str) -> Manifest:
    rows = []
    split_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name.lower() in SPLIT_ALIASES]
    tops = [(d, SPLIT_ALIASES[d.name.lower()]) for d in split_dirs] if split_dirs else [(root, None)]
    for top, split in tops:
        for class_dir in sorted(d for d in top.iterdir() if d.is_dir()):
            for file in sorted(class_dir.rglob("*")):
                if file.is_file() and file.name.lower().endswith(IMAGE_SUFFIXES):
                    row = {"image_path": str(file.resolve()), "label": class_dir.name}
                    if split:
                        row["split"] = split
                    rows.append(row)
    if not rows:
        raise DataError(
            f"No images found in {root}. Expected one sub-folder per class (optionally inside train/val/test "
            f"folders) holding files with suffixes {', '.join(IMAGE_SUFFIXES)}."
        )
    frame = pd.DataFrame(rows)
    log.warning("Image folder %s has no patient ids; each image is treated as its own patient.", root)
    return from_frame(frame, source=str(root), target="label", task=task)


def _medmnist_labels(
    path: Path, image_key: str, shape: tuple[int, ...], label_key: str, labels: np.ndarray
) -> np.ndarray:
    """One split's labels as ``(N, K)`` non-negative int64, checked against its images ``(N, H, W[, C])``.

    Raises:
        DataError: images that are not a stack of images, or labels that are not class numbers
            for each of them.
    """
    if len(shape) < 3:
        raise DataError(f"{path}: '{image_key}' has shape {shape}; MedMNIST images are stacked (N, H, W) arrays.")
    if labels.ndim not in (1, 2) or len(labels) != shape[0]:
        count = f"{len(labels)} labels (shape {labels.shape})" if labels.ndim else f"shape {labels.shape}"
        raise DataError(
            f"{path}: {image_key} has {shape[0]} images but {label_key} has {count}; "
            "give one label (or one row of labels) per image."
        )
    table = labels.reshape(len(labels), -1)
    if table.shape[1] == 0:
        raise DataError(f"{path}: {label_key} has shape {labels.shape}: no label for its images.")
    if table.dtype.kind not in "biuf" or (table.dtype.kind == "f" and not np.all(np.isfinite(table))):
        raise DataError(f"{path}: {label_key} holds {table.dtype} values; labels are class numbers 0, 1, 2 ...")
    if table.size and (table.min() < 0 or not np.all(table == np.round(table)) or table.max() > 10_000):
        raise DataError(f"{path}: {label_key} holds values that are not class numbers 0, 1, 2 ...")
    return table.astype(np.int64)


def _from_medmnist(path: Path) -> Manifest:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.keys())
            label_arrays = {k: npz[k] for k in keys if k.endswith("_labels")}
            image_shapes = {k: npz[k].shape for k in keys if k.endswith("_images")}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(
            f"Cannot read {path} as a MedMNIST .npz file: it is empty, truncated or not an npz (zip) archive of "
            f"arrays ({type(exc).__name__}: {str(exc).split('. ')[0]}). Download it again (medpredict data fetch)."
        ) from None
    if not image_shapes:
        raise DataError(
            f"{path} holds no '<split>_images' arrays (found keys {keys}); it is not a MedMNIST file."
        )
    stem = path.stem.split("_")[0].lower()
    multilabel = stem in MEDMNIST_MULTILABEL or any(
        a.ndim == 2 and a.shape[1] > 1 for a in label_arrays.values()
    )
    frames = []
    for image_key, shape in image_shapes.items():
        split = image_key[: -len("_images")]
        label_key = f"{split}_labels"
        if label_key not in label_arrays:
            raise DataError(f"{path} has '{image_key}' but no '{label_key}'.")
        labels = _medmnist_labels(path, image_key, shape, label_key, label_arrays[label_key])
        part = pd.DataFrame(
            {
                "image_path": [f"{path.resolve()}::{image_key}/{i}" for i in range(shape[0])],
                # MedMNIST gives no patient ids: every image counts as its own patient.
                "patient_id": [f"{split}-{i}" for i in range(shape[0])],
                "split": SPLIT_ALIASES.get(split, split),
            }
        )
        if multilabel:
            part["target"] = [list(map(int, row)) for row in labels]
        else:
            part["target"] = labels[:, 0]
        frames.append(part)
    frame = pd.concat(frames, ignore_index=True)
    widths = {a.reshape(len(a), -1).shape[1] for a in label_arrays.values() if a.ndim in (1, 2) and len(a)}
    if frame.empty or (multilabel and len({len(t) for t in frame["target"]}) > 1) or len(widths) > 1:
        raise DataError(f"{path} holds no images, or label arrays of different widths {sorted(widths)}.")
    if multilabel:
        width = len(frame["target"].iloc[0])
        names = MEDMNIST_LABELS.get(stem, tuple(f"label_{i}" for i in range(width)))
        frame["label_name"] = [
            "|".join(n for n, v in zip(names, t, strict=True) if v) or "none" for t in frame["target"]
        ]
        return Manifest(
            frame=frame, labels=tuple(names), task="multilabel", source=str(path), has_patients=False
        )
    n_classes = int(frame["target"].max()) + 1
    if frame["target"].nunique() < 2:
        raise DataError(f"{path} holds a single class ({n_classes - 1}); a classifier needs at least two.")
    names = MEDMNIST_LABELS.get(stem, tuple(str(i) for i in range(n_classes)))
    if len(names) != n_classes:
        names = tuple(str(i) for i in range(n_classes))
    frame["label_name"] = [names[t] for t in frame["target"]]
    return Manifest(
        frame=frame,
        labels=names,
        task="binary" if n_classes == 2 else "multiclass",
        source=str(path),
        has_patients=False,
    )
