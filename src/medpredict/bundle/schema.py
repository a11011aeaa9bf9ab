"""``bundle.json``, typed: one schema, one writer (:func:`write_bundle`), one reader (:func:`read_bundle`).

The three trainers build a :class:`BundleMeta` and hand it to :func:`write_bundle`; every
reader gets one back from :func:`read_bundle`. The file's layout::

    format, format_version, medpredict_version     added by medpredict.bundle.store
    name            the run's name
    input_kind      image | table | fusion (see medpredict.bundle.kinds for the names in code)
    task            binary | multiclass | multilabel | regression
    labels          class names in output order
    config          the resolved RunConfig (medpredict.config), the same shape for every kind
    model           the network entry of the kind (ImageNet, RecordNet, FusedNet)
    preprocess      image input (image_size, spatial_dims, channels, normalisation) and/or
                    record input (cleaner, input_columns, features)
    calibration, threshold, conformal, intended_use, positive_label, input_guard,
    reference_stats, val_metrics, metrics, training, data
                    carried as written (typed by the post-fit code that fills them)

Keys this version does not know are kept in :attr:`BundleMeta.extra` and written back.

Bundles written before this schema (commit 49cafce and earlier) are read as well: their
record and fused ``config`` entries (three different shapes then) are converted into the
one :class:`~medpredict.config.RunConfig` shape, and configuration keys that were retired
since (:data:`RETIRED_CONFIG_KEYS`) are dropped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medpredict.bundle.kinds import (
    ImageInput,
    ModelKind,
    NetSpec,
    RecordInput,
    kind_of,
)
from medpredict.bundle.store import GUARD, Bundle, load_bundle, save_bundle
from medpredict.config import RunConfig, from_dict
from medpredict.errors import BundleError, ConfigError
from medpredict.records.cleaning import TableCleaner

#: Fields carried through unchanged (their owners give them types).
PASS_THROUGH = (
    "calibration",
    "threshold",
    "conformal",
    "intended_use",
    "positive_label",
    "input_guard",
    "reference_stats",
    "val_metrics",
    "metrics",
    "training",
    "data",
)
_FORMAT_KEYS = ("format", "format_version", "medpredict_version")
_TYPED_KEYS = ("name", "input_kind", "task", "labels", "config", "model", "preprocess")
#: Dotted config keys older bundles may hold that the current RunConfig no longer has.
RETIRED_CONFIG_KEYS = ("train.num_workers",)
#: Network hyper-parameters of a record model that come from the data, not the config.
_DATA_HPARAMS = ("name", "n_continuous", "cardinalities", "num_classes")


@dataclass(frozen=True)
class BundleMeta:
    """The content of ``bundle.json`` (see the module docstring).

    Attributes:
        name: the run's name.
        kind: ``image``, ``record`` or ``fused`` (a key of :data:`medpredict.bundle.kinds.KINDS`).
        task: ``binary``, ``multiclass``, ``multilabel`` or ``regression``.
        labels: class names in the network's output order.
        config: the resolved run configuration.
        model: the network entry, of the type the kind names.
        image / record: the input descriptions the kind needs (``None`` where it takes none).
        calibration ... data: carried as they are (:data:`PASS_THROUGH`).
        extra: keys this version does not know, kept so a rewrite loses nothing.
    """

    name: str
    kind: str
    task: str
    labels: tuple[str, ...]
    config: RunConfig
    model: NetSpec
    image: ImageInput | None = None
    record: RecordInput | None = None
    calibration: Any = None
    threshold: Any = None
    conformal: Any = None
    intended_use: Any = None
    positive_label: Any = None
    input_guard: Any = None
    reference_stats: Any = None
    val_metrics: Any = None
    metrics: Any = None
    training: Any = None
    data: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kind = self.entry
        if not isinstance(self.model, kind.net):
            raise BundleError(
                f"A {kind.title} bundle needs a {kind.net.__name__} model entry, got {type(self.model).__name__}."
            )
        kind.input_shapes(self.image, self.record)  # refuses a kind without its input description

    @property
    def entry(self) -> ModelKind:
        """This bundle's row of :data:`medpredict.bundle.kinds.KINDS`."""
        return kind_of(self.kind)

    def build_network(self) -> torch.nn.Module:
        """The untrained network of this bundle, ready for its weights."""
        return self.model.build()

    def input_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample shape of each network input (see :meth:`ModelKind.input_shapes`)."""
        return self.entry.input_shapes(self.image, self.record)

    def to_dict(self) -> dict[str, Any]:
        """The JSON content of ``bundle.json`` (without the format fields the store adds)."""
        preprocess: dict[str, Any] = {}
        if self.image is not None:
            preprocess.update(self.image.to_dict())
        if self.record is not None:
            preprocess.update(self.record.to_dict())
        values: dict[str, Any] = {
            "name": self.name,
            "input_kind": self.entry.stored,
            "task": self.task,
            "labels": list(self.labels),
            "config": self.config.to_dict(),
            "model": self.model.to_dict(),
            "preprocess": preprocess,
        }
        values.update({key: getattr(self, key) for key in PASS_THROUGH})
        values.update(self.extra)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BundleMeta:
        """Read ``bundle.json`` as written now or by earlier versions.

        Raises:
            BundleError: a required field is missing or malformed (names it).
        """
        try:
            kind = kind_of(str(values["input_kind"]))
            preprocess = values.get("preprocess") or {}
            model_entry = dict(values["model"])
            model = kind.net.from_dict(model_entry)
            return cls(
                name=str(values.get("name") or "model"),
                kind=kind.name,
                task=str(values["task"]),
                labels=tuple(str(label) for label in values["labels"]),
                config=_read_config(kind, values),
                model=model,
                image=ImageInput.from_dict(preprocess) if kind.takes_images else None,
                record=RecordInput.from_dict(preprocess) if kind.takes_records else None,
                **{key: values.get(key) for key in PASS_THROUGH},
                extra={k: v for k, v in values.items() if k not in (*_FORMAT_KEYS, *_TYPED_KEYS, *PASS_THROUGH)},
            )
        except KeyError as exc:
            raise BundleError(f"bundle.json lacks the field {exc}; the bundle is damaged or not a model.") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise BundleError(f"bundle.json holds a config this medpredict cannot read: {exc}") from None
            raise BundleError(f"bundle.json has a malformed field ({exc}).") from None


def _read_config(kind: ModelKind, values: Mapping[str, Any]) -> RunConfig:
    raw = dict(values.get("config") or {})
    if kind.name == "record" and "source" in raw:
        raw = _legacy_record_config(raw, values)
    elif kind.name == "fused" and "source" in raw:
        raw = _legacy_fused_config(raw, values)
    raw.setdefault("name", str(values.get("name") or "model"))
    raw.setdefault("kind", kind.name)
    for dotted in RETIRED_CONFIG_KEYS:
        section, _, key = dotted.partition(".")
        if isinstance(raw.get(section), dict):
            raw[section] = {k: v for k, v in raw[section].items() if k != key}
    return from_dict(raw)


def _user_hparams(hparams: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (hparams or {}).items() if k not in _DATA_HPARAMS}


def _legacy_record_config(old: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The flat ``config`` of record bundles before the schema, in the RunConfig shape."""
    settings = old.get("settings") or {}
    out = Path(str(values.get("name") or "model"))
    return {
        "name": out.name,
        "kind": "record",
        "data": {
            "source": old["source"],
            "target": str(old["target"]) + str(old.get("target_rule") or ""),
            "task": old.get("task", "auto"),
            "val_fraction": old.get("val_fraction", 0.15),
            "test_fraction": old.get("test_fraction", 0.2),
        },
        "record_model": {"name": old.get("model", "mlp"), "hparams": _user_hparams(old.get("hparams"))},
        "cleaning": old.get("cleaning") or {},
        "train": {**{k: v for k, v in settings.items()}, "seed": old.get("seed", 0)},
    }


def _legacy_fused_config(old: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The flat ``config`` of fused bundles before the schema, in the RunConfig shape."""
    return {
        "name": str(values.get("name") or "model"),
        "kind": "fused",
        "data": {
            "source": old["source"],
            "target": old.get("target", "label"),
            "image_column": old.get("image_column"),
            "channels": old.get("channels", 1),
            "clinical_columns": list(old.get("clinical_columns") or []),
            "val_fraction": old.get("val_fraction", 0.15),
            "test_fraction": old.get("test_fraction", 0.15),
        },
        "preprocess": {"image_size": old.get("image_size", 28)},
        "augment": old.get("augment") or {},
        "model": {"name": old.get("image_model", "tiny-resnet")},
        "record_model": {"name": old.get("table_model", "mlp"), "hparams": _user_hparams(old.get("table_hparams"))},
        "cleaning": old.get("cleaning") or {},
        "fusion": {
            key: old[key] for key in ("mode", "modalities", "modality_dropout", "fusion_dim", "dropout") if key in old
        },
        "train": old.get("train") or {},
    }


@dataclass(frozen=True)
class ModelBundle(Bundle):
    """A verified bundle with its typed ``bundle.json`` (``meta`` is the same content as a dict)."""

    info: BundleMeta

    def cleaner(self) -> TableCleaner | None:
        """The fitted :class:`~medpredict.records.cleaning.TableCleaner` of a record or fused model.

        Raises:
            BundleError: the kind needs a cleaner and the bundle has none.
        """
        if self.info.record is None:
            return None
        stored = self.read_json(self.info.record.cleaner)
        if stored is None:
            raise BundleError(
                f"The {self.info.entry.title} in {self.path} has no {self.info.record.cleaner}; "
                "the bundle is incomplete."
            )
        return TableCleaner.from_dict(stored)


def write_bundle(
    folder: str | os.PathLike[str],
    meta: BundleMeta,
    *,
    state_dict: Mapping[str, torch.Tensor],
    cleaner: Mapping[str, Any] | None = None,
    guard: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model bundle atomically (see :func:`medpredict.bundle.store.save_bundle`).

    Args:
        folder: the bundle folder, usually ``runs/<name>/model``.
        meta: the typed ``bundle.json``.
        state_dict: the network's weights.
        cleaner: ``TableCleaner.to_dict()`` for kinds that take records.
        guard: the fitted out-of-distribution detector (``MahalanobisDetector.to_dict()``),
            written as :data:`medpredict.bundle.store.GUARD`.

    Raises:
        BundleError: a record-taking kind without its cleaner, or a cleaner for an image model.
    """
    if meta.entry.takes_records != (cleaner is not None):
        raise BundleError(
            f"A {meta.entry.title} bundle {'needs' if meta.entry.takes_records else 'takes no'} fitted record cleaner."
        )
    files: dict[str, Any] = {}
    if meta.record is not None and cleaner is not None:
        files[meta.record.cleaner] = dict(cleaner)
    if guard is not None:
        files[GUARD] = dict(guard)
    return save_bundle(Path(folder), state_dict=dict(state_dict), meta=meta.to_dict(), json_files=files or None)


def read_bundle(path: str | os.PathLike[str]) -> ModelBundle:
    """Load, verify and type a model bundle (a run folder or its ``model/`` folder).

    ``.meta`` holds the current shape even for a bundle written by an older version.

    Raises:
        BundleError: missing, tampered, of another format version, or not a model bundle.
    """
    bundle = load_bundle(Path(path))
    info = BundleMeta.from_dict(bundle.meta)
    stored = {k: bundle.meta[k] for k in _FORMAT_KEYS if k in bundle.meta}
    return ModelBundle(path=bundle.path, meta={**stored, **info.to_dict()}, state_dict=bundle.state_dict, info=info)
