"""The kinds of model a bundle holds — image, record, fused — in one table.

Every place that treats the kinds differently (the loader, export, evaluation) looks the
kind up in :data:`KINDS` instead of branching on strings. A row says what the network
takes, in which order (``graph_inputs``, also the ONNX input names), and which typed entry
of ``bundle.json["model"]`` rebuilds it:

======  ================  ==================================  ==========================
name    stored as         network inputs                      ``model`` entry
======  ================  ==================================  ==========================
image   ``image``         image ``(N, C, *size)`` in [0, 1]   :class:`ImageNet`
record  ``table``         record ``(N, F)`` (cleaner output)  :class:`RecordNet`
fused   ``fusion``        image, record, present ``(N, 2)``   :class:`FusedNet`
======  ================  ==================================  ==========================

"stored as" is the value of ``bundle.json["input_kind"]`` and ``["model"]["kind"]``, kept
as bundles, the audit log, the REST API and the web page have always spelled it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from medpredict.errors import BundleError, unknown_choice
from medpredict.models import build_model
from medpredict.models.fusion import FusionNet
from medpredict.models.normalised import InputNormalised
from medpredict.models.records import build_record_model


@dataclass(frozen=True)
class ImageNet:
    """``bundle.json["model"]`` of an image model (and the image branch of a fused one).

    Attributes:
        name: a key of :data:`medpredict.models.MODELS` (or a former name, e.g. ``brief-cnn``).
        in_channels / num_classes / spatial_dims / dropout: the arguments of
            :func:`medpredict.models.build_model`.
        members: 1 for one network; k > 1 for an ensemble of k such networks averaging their
            logits (:class:`~medpredict.models.ensemble.EnsembleNet`, the fold models of
            small-data mode), weights under ``members.<i>.``. Written only when > 1.
    """

    name: str
    in_channels: int
    num_classes: int
    spatial_dims: int = 2
    dropout: float = 0.0
    members: int = 1

    def build(self) -> nn.Module:
        """The untrained network wrapped with its input normalisation (the weights hold mean/std)."""
        if self.members > 1:
            from medpredict.models.ensemble import EnsembleNet

            return EnsembleNet([self._one() for _ in range(self.members)])
        return self._one()

    def _one(self) -> nn.Module:
        return InputNormalised(
            build_model(
                self.name,
                in_channels=self.in_channels,
                num_classes=self.num_classes,
                spatial_dims=self.spatial_dims,
                dropout=self.dropout,
            )
        )

    def fields(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "name": self.name,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "spatial_dims": self.spatial_dims,
            "dropout": self.dropout,
        }
        if self.members > 1:
            values["members"] = self.members
        return values

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KINDS["image"].stored, **self.fields()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ImageNet:
        return cls(
            name=str(values["name"]),
            in_channels=int(values["in_channels"]),
            num_classes=int(values["num_classes"]),
            spatial_dims=int(values.get("spatial_dims", 2)),
            dropout=float(values.get("dropout", 0.0)),
            members=int(values.get("members", 1)),
        )


@dataclass(frozen=True)
class RecordNet:
    """``bundle.json["model"]`` of a record model (and the record branch of a fused one).

    Attributes:
        hparams: the network's ``hparams`` (``name``, ``n_continuous``, ``cardinalities``,
            ``num_classes`` and the architecture's own), so that
            ``build_record_model(**hparams)`` rebuilds it.
    """

    hparams: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.hparams.get("name", ""))

    def build(self) -> nn.Module:
        return build_record_model(**self.hparams)

    def fields(self) -> dict[str, Any]:
        return dict(self.hparams)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KINDS["record"].stored, **self.hparams}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RecordNet:
        return cls({k: v for k, v in values.items() if k != "kind"})


@dataclass(frozen=True)
class FusedNet:
    """``bundle.json["model"]`` of a fused model: the two branches and the fusion head."""

    image: ImageNet
    record: RecordNet
    num_classes: int
    mode: str = "intermediate"
    fusion_dim: int = 32
    dropout: float = 0.1
    modality_dropout: float = 0.0

    @property
    def name(self) -> str:
        return f"fusion({self.image.name}+{self.record.name})"

    def build(self) -> nn.Module:
        """The untrained :class:`~medpredict.models.fusion.FusionNet`; load the bundle's weights into it."""
        return FusionNet(
            self.image.build(),
            build_record_model(**self.record.hparams).encoder,
            self.num_classes,
            mode=self.mode,
            modality_dropout=self.modality_dropout,
            fusion_dim=self.fusion_dim,
            dropout=self.dropout,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KINDS["fused"].stored,
            "mode": self.mode,
            "num_classes": self.num_classes,
            "fusion_dim": self.fusion_dim,
            "dropout": self.dropout,
            "modality_dropout": self.modality_dropout,
            "image": self.image.fields(),
            "table": self.record.fields(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FusedNet:
        return cls(
            image=ImageNet.from_dict(values["image"]),
            record=RecordNet.from_dict(values["table"]),
            num_classes=int(values["num_classes"]),
            mode=str(values["mode"]),
            fusion_dim=int(values["fusion_dim"]),
            dropout=float(values["dropout"]),
            modality_dropout=float(values.get("modality_dropout", 0.0)),
        )


NetSpec = ImageNet | RecordNet | FusedNet


@dataclass(frozen=True)
class ImageInput:
    """What an image entering the network must look like (``bundle.json["preprocess"]``).

    Attributes:
        image_size: every spatial side, in pixels (voxels for 3-D).
        spatial_dims: 2 or 3.
        channels: 1 (grey) or 3 (colour).
        mean / std: the training images' normalisation (also inside the weights).
        quantised: the resized training images were stored in 8-bit steps, so an image to
            predict is rounded the same way (bundles from before this field: not rounded).
    """

    image_size: int
    spatial_dims: int = 2
    channels: int = 1
    mean: float = 0.0
    std: float = 1.0
    quantised: bool = True

    @property
    def shape(self) -> tuple[int, ...]:
        """One sample as the network takes it: ``(C, *size)``."""
        return (self.channels, *([self.image_size] * self.spatial_dims))

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "spatial_dims": self.spatial_dims,
            "channels": self.channels,
            "normalisation": {"mean": self.mean, "std": self.std},
            "quantised": self.quantised,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ImageInput:
        norm = values.get("normalisation") or {}
        return cls(
            image_size=int(values["image_size"]),
            spatial_dims=int(values.get("spatial_dims", 2)),
            channels=int(values.get("channels", 1)),
            mean=float(norm.get("mean", 0.0)),
            std=float(norm.get("std", 1.0)),
            quantised=bool(values.get("quantised", False)),  # absent: written before inputs were rounded
        )


@dataclass(frozen=True)
class RecordInput:
    """What a clinical record must hold, and what the cleaner makes of it.

    Attributes:
        input_columns: the record fields the model reads (a record may leave some empty).
        features: the cleaner's output columns, in the network's order.
        cleaner: the bundle file holding the fitted cleaner (with the table schema).
    """

    input_columns: tuple[str, ...]
    features: tuple[str, ...]
    cleaner: str = "cleaner.json"

    @property
    def width(self) -> int:
        """Features per row, the record input's width ``F``."""
        return len(self.features)

    def to_dict(self) -> dict[str, Any]:
        return {"cleaner": self.cleaner, "input_columns": list(self.input_columns), "features": list(self.features)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RecordInput:
        return cls(
            input_columns=tuple(str(c) for c in values.get("input_columns", ())),
            features=tuple(str(c) for c in values.get("features", ())),
            cleaner=str(values.get("cleaner", "cleaner.json")),
        )


@dataclass(frozen=True)
class ModelKind:
    """One row of :data:`KINDS`.

    Attributes:
        name: ``image``, ``record`` or ``fused`` — the word used in code, configs and docs.
        stored: the same kind as ``bundle.json`` spells it (``input_kind`` and ``model.kind``).
        title: how messages name a model of this kind.
        net: the ``bundle.json["model"]`` entry type, which rebuilds the network.
        graph_inputs: the network's positional inputs in order; also the ONNX input names.
    """

    name: str
    stored: str
    title: str
    net: type[ImageNet] | type[RecordNet] | type[FusedNet]
    graph_inputs: tuple[str, ...]

    @property
    def takes_images(self) -> bool:
        return "image" in self.graph_inputs

    @property
    def takes_records(self) -> bool:
        """Whether the bundle carries a fitted record cleaner (``cleaner.json``)."""
        return "record" in self.graph_inputs

    def input_shapes(self, image: ImageInput | None, record: RecordInput | None) -> list[tuple[int, ...]]:
        """Per-sample shape of each graph input, e.g. ``[(1, 28, 28)]`` or ``[(1, 28, 28), (9,), (2,)]``.

        Raises:
            BundleError: the bundle lacks the input description this kind needs.
        """
        shapes: list[tuple[int, ...]] = []
        for name in self.graph_inputs:
            if name == "image":
                if image is None:
                    raise BundleError(f"An {self.title} bundle must describe its image input (preprocess.image_size).")
                shapes.append(image.shape)
            elif name == "record":
                if record is None or not record.width:
                    raise BundleError(f"A {self.title} bundle must list its record features (preprocess.features).")
                shapes.append((record.width,))
            else:  # "present": which modalities a row has
                shapes.append((2,))
        return shapes


KINDS: dict[str, ModelKind] = {
    "image": ModelKind("image", "image", "image model", ImageNet, ("image",)),
    "record": ModelKind("record", "table", "clinical-record model", RecordNet, ("record",)),
    "fused": ModelKind("fused", "fusion", "image + record fusion model", FusedNet, ("image", "record", "present")),
}


def kind_of(name: str) -> ModelKind:
    """The row for a kind, given its name (``record``) or its stored spelling (``table``).

    Raises:
        BundleError: an unknown kind, e.g. a bundle from a newer medpredict.
    """
    for kind in KINDS.values():
        if name in (kind.name, kind.stored):
            return kind
    raise BundleError(
        f"{unknown_choice('model kind', str(name), KINDS)} Is the bundle from a newer medpredict?"
    )
