"""Run configuration: frozen dataclasses loaded from YAML (data only) and overridden by flags.

A config is validated when it is built: unknown keys are refused with a suggestion, and
values of the wrong type or out of range are refused with the key and value named.
``RunConfig.to_dict()`` is what is saved beside every run (``config.yaml``) and inside every
bundle (``bundle.json["config"]``), for every kind of model: ``kind`` says which sections a
run reads —

========  ==================================================================================
kind      sections it reads
========  ==================================================================================
image     data, preprocess, augment, model, train
record    data (source, target or rule such as ``num>0``, task, fractions), record_model,
          cleaning, train
fused     all of the above plus fusion (``model`` is the image branch, ``record_model`` the
          record branch, ``data.clinical_columns`` the record inputs)
========  ==================================================================================
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medpredict.errors import ConfigError, did_you_mean

#: Every task a run can have; ``auto`` infers binary/multiclass/regression from the target.
TASKS = ("auto", "binary", "multiclass", "multilabel", "regression")
#: The tasks a clinical table can have (multi-label targets come from image manifests only).
RECORD_TASKS = tuple(task for task in TASKS if task != "multilabel")
#: The kinds of model a run trains (see :mod:`medpredict.bundle.kinds`).
RUN_KINDS = ("image", "record", "fused")
#: The modalities of a fused model.
MODALITIES = ("image", "record")
OUTLIER_METHODS = ("iqr", "robust_z", "none")
OUTLIER_ACTIONS = ("clip", "missing")
SCALINGS = ("standard", "robust", "none")


@dataclass(frozen=True)
class DataConfig:
    """Where the samples are and which columns mean what.

    Attributes:
        source: a manifest (CSV/Parquet), a MedMNIST ``.npz``, an image folder with one
            sub-folder per class, or a clinical table.
        target: the column holding the label.
        image_column / patient_column: column names; ``None`` detects common spellings.
        task: ``auto`` infers binary/multiclass from the target's distinct values.
        val_fraction / test_fraction: patient fractions for splits the data does not give.
        channels: 1 for grey, 3 for colour; images are converted on reading.
        clinical_columns: the record columns a fused model reads; empty uses every column
            that is not the target, image, patient or another reserved column.
        max_per_split: keep at most this many rows per split (quick checks); ``None`` keeps all.
        positive: the class a binary model's threshold, sensitivity and PPV refer to (a label
            name); ``None`` takes the second class (label 1).
        label_map: target values renamed before the classes are formed, e.g.
            ``{"normal ": "normal", "Normal": "normal"}`` to merge spellings of one class
            (training refuses labels that differ only in case or spaces until they are mapped).
    """

    source: str = ""
    target: str = "label"
    image_column: str | None = None
    patient_column: str | None = None
    task: str = "auto"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    channels: int = 1
    clinical_columns: tuple[str, ...] = ()
    max_per_split: int | None = None
    positive: str | None = None
    label_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _choice("data.task", self.task, TASKS)
        for raw, name in self.label_map.items():
            if not isinstance(name, str) or not str(name).strip():
                raise ConfigError(f"data.label_map maps {raw!r} to {name!r}; map each value to a class name (text).")
        _range("data.val_fraction", self.val_fraction, 0.0, 0.9)
        _range("data.test_fraction", self.test_fraction, 0.0, 0.9)
        _choice("data.channels", self.channels, (1, 3))
        _range("data.max_per_split", self.max_per_split, 1, 10**9)


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation applied to training images only (MONAI transforms).

    ``strength`` scales every magnitude at once (0 turns augmentation off), which is
    what the tuner searches over. ``corruptions`` names MedMNIST-C corruptions (the
    ``medmnistc`` package, see ``medpredict.evaluation.robustness``) of which one, at a random
    severity, is applied to a training image with ``corruption_probability``.
    """

    strength: float = 1.0
    rotate_deg: float = 10.0
    scale: float = 0.10
    translate: float = 0.06
    contrast: float = 0.25
    noise_std: float = 0.02
    hflip: bool = False
    probability: float = 0.8
    corruptions: tuple[str, ...] = ()
    corruption_probability: float = 0.5

    def __post_init__(self) -> None:
        _range("augment.strength", self.strength, 0.0, 4.0)
        _range("augment.probability", self.probability, 0.0, 1.0)
        _range("augment.corruption_probability", self.corruption_probability, 0.0, 1.0)


@dataclass(frozen=True)
class PreprocessConfig:
    """Deterministic preprocessing, identical at training and inference, stored in the bundle.

    Attributes:
        image_size: side in pixels images are resized to (square); for 3-D, every side.
        spatial_dims: 2 for images, 3 for volumes.
        normalize: ``zscore`` uses the training set's mean/std (stored in the bundle);
            ``unit`` keeps [0, 1].
    """

    image_size: int = 28
    spatial_dims: int = 2
    normalize: str = "zscore"

    def __post_init__(self) -> None:
        _range("preprocess.image_size", self.image_size, 8, 1024)
        _choice("preprocess.spatial_dims", self.spatial_dims, (2, 3))
        _choice("preprocess.normalize", self.normalize, ("zscore", "unit"))


@dataclass(frozen=True)
class ModelConfig:
    """Which network, from the table in ``medpredict.models``.

    Attributes:
        name: a key of ``medpredict.models.MODELS``.
        weights: optional path to user-supplied starting weights (safetensors).
        dropout: dropout before the classifier head.
    """

    name: str = "tiny-resnet"
    weights: str | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _range("model.dropout", self.dropout, 0.0, 0.9)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop.

    Attributes:
        schedule: ``onecycle`` or ``cosine`` learning-rate schedule over all epochs.
        class_weighting: ``balanced`` weights the loss by inverse class frequency.
        patience: epochs without a better validation AUC before stopping early.
        monitor: what picks the best epoch and stops early: ``score`` (validation AUC, or
            -MSE for regression; images) or ``loss`` (validation loss; small record tables,
            where a fold's AUC is too coarse to steer by).
        deterministic: ask PyTorch for deterministic kernels (slower on GPU).
        device: ``auto`` picks CUDA when present, else CPU.
        amp: bf16 autocast where the hardware runs it natively: a GPU, or a CPU with the
            avx512_bf16 / AMX flags (detected; see ``medpredict.training.precision``); fp32 elsewhere.
        channels_last: train 2-D networks in channels-last memory layout (1.57x the fp32
            training rate of tiny-resnet on this 2-core CPU in bench/run.py).
        max_minutes: stop after this wall time (checkpoint kept); ``None`` for no limit.
        threads: CPU threads for PyTorch; ``None`` leaves PyTorch's default.
        small_data: ``auto`` switches to k-fold cross-fitting (an ensemble of the fold models,
            calibration on out-of-fold predictions; ``medpredict.training.crossfit``) when the
            validation split is small (under 300 cases or 50 of a class); ``on`` / ``off`` force it.
        folds: the number of folds of small-data mode.
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    schedule: str = "onecycle"
    class_weighting: str = "balanced"
    label_smoothing: float = 0.0
    patience: int = 6
    monitor: str = "score"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    max_minutes: float | None = None
    threads: int | None = None
    small_data: str = "auto"
    folds: int = 5

    def __post_init__(self) -> None:
        _range("train.epochs", self.epochs, 1, 10_000)
        if str(self.small_data).lower() in ("true", "false"):  # YAML reads a bare on/off as a boolean
            object.__setattr__(self, "small_data", "on" if str(self.small_data).lower() == "true" else "off")
        _choice("train.small_data", self.small_data, ("auto", "on", "off"))
        _range("train.folds", self.folds, 2, 20)
        _range("train.batch_size", self.batch_size, 1, 65_536)
        _range("train.lr", self.lr, 1e-7, 10.0)
        _range("train.weight_decay", self.weight_decay, 0.0, 10.0)
        _choice("train.schedule", self.schedule, ("onecycle", "cosine", "constant"))
        _choice("train.class_weighting", self.class_weighting, ("balanced", "none"))
        _range("train.label_smoothing", self.label_smoothing, 0.0, 0.5)
        _range("train.patience", self.patience, 1, 10_000)
        _choice("train.monitor", self.monitor, ("score", "loss"))
        _choice("train.device", self.device.split(":")[0], ("auto", "cpu", "cuda"))
        _range("train.seed", self.seed, 0, 2**31 - 1)
        _range("train.threads", self.threads, 1, 1024)
        _range("train.max_minutes", self.max_minutes, 0.01, 10**6)


@dataclass(frozen=True)
class IntendedUseConfig:
    """What the model is for, stored in its bundle and checked on every DICOM input.

    Left empty, a run on DICOM data declares the modalities, body parts and views of its
    training images; other data declares nothing unless set here. Values are DICOM terms
    (Modality ``CR``/``DX``, Body Part Examined ``CHEST``, View Position ``PA``/``AP``).

    Attributes:
        description: one line for people, e.g. "frontal chest radiographs of children".
        modalities / body_parts / views: the accepted DICOM values.
    """

    description: str = ""
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    views: tuple[str, ...] = ()


@dataclass(frozen=True)
class CleaningConfig:
    """How the record cleaner treats values; saved with the cleaner.

    Attributes:
        outliers: ``iqr`` (fences at Q1 - k·IQR, Q3 + k·IQR), ``robust_z`` (|x - median| /
            (1.4826·MAD) > z) or ``none``. Only ``numeric`` columns, never ordinal codes.
        outlier_action: ``clip`` to the fence or set ``missing`` (then imputed).
        iqr_k: the IQR multiple; 3 flags only far-out values ("extreme" in Tukey's terms).
        robust_z: the robust z threshold.
        default_ranges: apply the cleaner's plausibility ranges to columns with matching names.
        missing_indicators: add ``<col>__missing`` for columns with missing training values.
        scaling: ``standard`` (z-score), ``robust`` (median/IQR) or ``none``.
        max_categories: keep the most frequent levels; rarer ones share code 0.
    """

    outliers: str = "iqr"
    outlier_action: str = "clip"
    iqr_k: float = 3.0
    robust_z: float = 5.0
    default_ranges: bool = True
    missing_indicators: bool = True
    scaling: str = "standard"
    max_categories: int = 50

    def __post_init__(self) -> None:
        _choice("cleaning.outliers", self.outliers, OUTLIER_METHODS)
        _choice("cleaning.outlier_action", self.outlier_action, OUTLIER_ACTIONS)
        _choice("cleaning.scaling", self.scaling, SCALINGS)
        if self.iqr_k <= 0 or self.robust_z <= 0 or self.max_categories < 1:
            raise ConfigError(
                f"iqr_k ({self.iqr_k}), robust_z ({self.robust_z}) and max_categories "
                f"({self.max_categories}) must be positive."
            )


@dataclass(frozen=True)
class RecordModelConfig:
    """The record network of a record or fused run, from ``medpredict.models.records``.

    Attributes:
        name: ``mlp`` or ``transformer``.
        hparams: keyword arguments of the network beyond its input widths, e.g.
            ``{"hidden": [64, 32], "dropout": 0.2}``; empty keeps the network's defaults.
    """

    name: str = "mlp"
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FusionConfig:
    """How a fused model joins its image and record branches.

    Attributes:
        mode: ``intermediate`` (learned projections, a joint head) or ``late`` (averaged heads).
        modalities: ``("image", "record")``; one alone trains the same pipeline with the other
            modality hidden in every row (the single-modality ablation).
        modality_dropout: chance a training row with both modalities is shown only one.
        fusion_dim / dropout: width and dropout of the fusion head.
    """

    mode: str = "intermediate"
    modalities: tuple[str, ...] = MODALITIES
    modality_dropout: float = 0.2
    fusion_dim: int = 32
    dropout: float = 0.1

    def __post_init__(self) -> None:
        _choice("fusion.mode", self.mode, ("intermediate", "late"))
        if not self.modalities:
            raise ConfigError(f"fusion.modalities is empty; give one or both of {list(MODALITIES)}.")
        for modality in self.modalities:
            _choice("fusion.modalities", modality, MODALITIES)
        _range("fusion.modality_dropout", self.modality_dropout, 0.0, 1.0)
        _range("fusion.fusion_dim", self.fusion_dim, 1, 4096)
        _range("fusion.dropout", self.dropout, 0.0, 0.99)


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; saved as ``config.yaml`` in the run folder.

    ``kind`` picks the trainer and the sections it reads (see the module docstring).
    """

    name: str = "run"
    out_dir: str = "runs"
    kind: str = "image"
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    record_model: RecordModelConfig = field(default_factory=RecordModelConfig)
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    intended_use: IntendedUseConfig = field(default_factory=IntendedUseConfig)

    def __post_init__(self) -> None:
        _choice("kind", self.kind, RUN_KINDS)
        _folder_name("name", self.name)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, overrides: dict[str, Any]) -> RunConfig:
        """Return a copy with dotted-key overrides applied, e.g. ``{"train.epochs": 3}``."""
        return from_dict(merge_overrides(self.to_dict(), overrides))


def run_location(out: str | Path) -> tuple[str, str]:
    """``(out_dir, name)`` of a run folder given as a path (``--out``); ``.`` and ``..`` are resolved first."""
    path = Path(out).expanduser()
    if path.name in ("", ".", ".."):
        path = path.resolve()
    return str(path.parent), path.name


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_plain(v) for v in obj]
    return obj


def _range(key: str, value: Any, low: float, high: float) -> None:
    if value is None:
        return
    if not low <= value <= high:
        raise ConfigError(f"{key} = {value!r} is out of range; expected a value in [{low}, {high}].")


def _folder_name(key: str, value: str) -> None:
    """Refuse a run name that is not one plain folder name (``../x`` would write outside ``out_dir``)."""
    if not value or value in (".", "..") or any(sep in value for sep in ("/", "\\", "\0")):
        raise ConfigError(
            f"{key} = {value!r} is not a plain folder name: a run's name may not be empty, '.' or '..', "
            "nor contain '/' or '\\'. Give a name such as 'pneumonia-v2' (or --out DIR for another place)."
        )


def _choice(key: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"{key} = {value!r} is not allowed.{did_you_mean(str(value), map(str, choices))} "
            f"Choose one of: {', '.join(map(str, choices))}."
        )


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply dotted-key overrides (``"train.lr": 0.01``) onto a nested dict copy."""
    merged = _to_plain(base)
    for dotted, value in overrides.items():
        node = merged
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})  # unknown sections are refused when the config is built
            if not isinstance(node, dict):
                raise ConfigError(f"'{dotted}' sets a key inside '{part}', which is not a section.")
        node[parts[-1]] = value
    return merged


def _build(cls: type, values: Any, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"Config section '{prefix or 'top level'}' must be a mapping, got {values!r}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(
                f"Unknown config key '{full}'.{did_you_mean(key, names)} Known keys: {sorted(names)}."
            )
        kwargs[key] = _coerce(hints[key], value, full)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}.")
        return dict(value)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}.")
        return tuple(value)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}.")
        return value
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}.")
        try:
            number = hint(value) if hint is float else _as_int(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{key} must be {'an integer' if hint is int else 'a number'}, got {value!r}."
            ) from None
        return number
    if hint is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{key} must be text, got {value!r}.")
        return str(value)
    return value


def _as_int(value: Any) -> int:
    as_float = float(value)
    if not as_float.is_integer():
        raise ValueError(value)
    return int(as_float)


def from_dict(values: dict[str, Any]) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a nested dict."""
    return _build(RunConfig, values, "")


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """Read a YAML file of data (``yaml.safe_load``: no tags that run code) holding a mapping.

    ``what`` names the file in errors ("Config file", "Schema file", ...).

    Raises:
        ConfigError: the file is missing, not valid YAML, or not a mapping at the top level.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}. Give the path of a YAML file.")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level.")
    return values


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a YAML config (data only, ``yaml.safe_load``) and apply dotted overrides."""
    values = read_yaml_mapping(path, "Config file") if path is not None else {}
    return from_dict(merge_overrides(values, overrides or {}))
