"""The single inference path: ``Predictor.from_bundle(path)``.

The CLI's ``predict`` and ``evaluate``, the REST service and the PACS node all call this
class, so they cannot disagree. A prediction carries calibrated probabilities, the label
at the locked threshold, and its uncertainty (normalised entropy and the conformal
prediction set; a set that is not exactly one class means "refer to a clinician").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpredict.bundle.identity import ModelIdentity
from medpredict.bundle.schema import ModelBundle, read_bundle
from medpredict.data.intended_use import IntendedUse
from medpredict.errors import BundleError, DataError

log = logging.getLogger(__name__)

ImageInput = np.ndarray | str | os.PathLike[str]


@dataclass
class Prediction:
    """One prediction. ``score`` is the positive-class probability of a binary model."""

    probabilities: dict[str, float]
    label: str
    score: float | None
    threshold: float | None
    uncertainty: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "label": self.label,
            "score": self.score,
            "threshold": self.threshold,
            "probabilities": self.probabilities,
            "uncertainty": self.uncertainty,
        }


def prediction_dict(prediction: Any, purpose: str) -> dict[str, Any]:
    """A :class:`Prediction` (or a mapping with its keys) as a dict, for writers such as FHIR or DICOM.

    Raises:
        DataError: it lacks ``probabilities`` or ``label``; ``purpose`` says what needed them.
    """
    values = prediction.to_dict() if hasattr(prediction, "to_dict") else prediction
    if not isinstance(values, Mapping) or "probabilities" not in values or "label" not in values:
        raise DataError(
            f"A prediction for {purpose} needs 'probabilities' (label -> probability) and 'label'; "
            f"got {type(prediction).__name__}."
        )
    return dict(values)


class Predictor:
    """A loaded bundle ready to predict. Build it with :meth:`from_bundle`."""

    def __init__(
        self, bundle: ModelBundle, model: torch.nn.Module, device: torch.device, cleaner: Any = None
    ) -> None:
        self.bundle = bundle
        self.meta = bundle.meta
        self.model = model.eval()
        self.device = device
        self.cleaner = cleaner  # the fitted TableCleaner of a record model
        self._calibrator = None
        self._conformal = None
        if self.meta.get("calibration"):
            from medpredict.calibration.scalers import calibrator_from_dict

            self._calibrator = calibrator_from_dict(self.meta["calibration"])
        if self.meta.get("conformal"):
            from medpredict.calibration.conformal import SplitConformal

            self._conformal = SplitConformal.from_dict(self.meta["conformal"])

    @classmethod
    def from_bundle(cls, path: str | os.PathLike[str], *, device: str = "cpu") -> Predictor:
        """Load and verify the bundle at ``path`` (a run folder or its ``model/`` folder).

        Raises:
            BundleError: the bundle is missing, tampered with, or of an unknown kind.
        """
        bundle = read_bundle(Path(path))
        model = bundle.info.build_network()
        cleaner = bundle.cleaner()
        try:
            model.load_state_dict(bundle.state_dict)
        except RuntimeError as exc:
            raise BundleError(
                f"The weights in {bundle.path} do not fit model '{bundle.info.model.name}': {exc}"
            ) from exc
        torch_device = torch.device(device)
        return cls(bundle, model.to(torch_device), torch_device, cleaner)

    # What a deployed model needs to say about itself.
    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def task(self) -> str:
        return str(self.meta["task"])

    @property
    def input_kind(self) -> str:
        return str(self.meta["input_kind"])

    @property
    def threshold(self) -> float:
        stored = self.meta.get("threshold")
        return float(stored["threshold"]) if stored else 0.5

    @property
    def input_columns(self) -> list[str]:
        """The record fields a record model reads (empty for image models)."""
        return list(self.meta.get("preprocess", {}).get("input_columns", []))

    @property
    def image_size(self) -> int:
        return int(self.meta["preprocess"]["image_size"])

    @property
    def channels(self) -> int:
        return int(self.meta["preprocess"]["channels"])

    @property
    def spatial_dims(self) -> int:
        return int(self.meta["preprocess"]["spatial_dims"])

    @property
    def identity(self) -> ModelIdentity:
        """Name, version (weights hash) and architecture: the one way every output names this model."""
        sums = self.bundle.read_json("checksums.json") or {}
        return ModelIdentity.from_bundle_meta(self.meta, sums.get("files", {}).get("weights.safetensors", ""))

    @property
    def version(self) -> str:
        return self.identity.version

    @property
    def intended_use(self) -> IntendedUse:
        """What the model was built for (empty when the bundle does not declare it)."""
        return IntendedUse.from_dict(self.meta.get("intended_use"))

    @property
    def positive_label(self) -> str | None:
        """The class a binary model's threshold and sensitivity refer to (None for other tasks)."""
        if self.task != "binary":
            return None
        stored = self.meta.get("positive_label")
        return str(stored) if stored in self.labels else self.labels[1]

    @property
    def card(self) -> dict[str, Any]:
        """The model card if evaluation wrote one, else the essentials from the bundle."""
        card = self.bundle.read_json("model_card.json")
        if card:
            return card
        return {
            "name": self.meta.get("name"),
            "version": self.version,
            "task": self.task,
            "labels": self.labels,
            "input": self.meta.get("preprocess"),
            "threshold": self.meta.get("threshold"),
            "validation_metrics": self.meta.get("val_metrics"),
            "data": self.meta.get("data"),
            "intended_use": "Research use. Not a medical device; predictions must be reviewed by a clinician.",
        }

    def prepare(self, image: ImageInput) -> torch.Tensor:
        """Read (if a path) and preprocess one image to the model's input ``(C, *size)`` in [0, 1]."""
        from medpredict.data.transforms import preprocess

        if isinstance(image, str | os.PathLike):
            from medpredict.readers import read_image

            image = read_image(image, channels=self.channels, spatial_dims=self.spatial_dims)
        array = np.asarray(image, dtype=np.float32)
        if array.ndim == self.spatial_dims:
            array = array[None]
        if array.ndim != self.spatial_dims + 1:
            raise DataError(
                f"Expected a {self.spatial_dims}-D image (channels first), got an array of shape {array.shape}."
            )
        if not np.isfinite(array).all():
            raise DataError("The image holds NaN or infinite values.")
        from medpredict.config import PreprocessConfig

        config = PreprocessConfig(image_size=self.image_size, spatial_dims=self.spatial_dims)
        return preprocess(np.clip(array, 0.0, 1.0), config, self.channels)

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> np.ndarray:
        """Raw network outputs ``(N, K)`` for a prepared batch ``(N, C, *size)`` in [0, 1]."""
        return self.model(batch.to(self.device)).float().cpu().numpy()

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """Logits → the probabilities the model reports (temperature-scaled when fitted)."""
        if self.task == "multilabel":
            return 1.0 / (1.0 + np.exp(-logits))
        if self.task == "regression":
            return logits
        if self._calibrator is not None:
            return np.asarray(self._calibrator.transform(logits))
        return torch.softmax(torch.from_numpy(logits), dim=1).numpy()

    def predict_proba(self, batch: torch.Tensor) -> np.ndarray:
        """Calibrated probabilities ``(N, K)`` for a prepared batch ``(N, C, *size)`` in [0, 1]."""
        return self.calibrate(self.logits(batch))

    def predict(
        self,
        images: Sequence[ImageInput] | None = None,
        records: Sequence[dict[str, Any]] | None = None,
        *,
        batch_size: int = 64,
    ) -> list[Prediction]:
        """Predict for a list of images (arrays from the readers, or paths).

        Raises:
            DataError: an input is unreadable or of the wrong shape (names it).
        """
        if self.input_kind == "fusion":
            return self.predict_fused(images, records, batch_size=batch_size)
        if self.input_kind == "table":
            if images:
                raise DataError(
                    f"This is a clinical-record model ({self.meta.get('name')}); it takes no images."
                )
            return self.predict_records(records or [])
        if records:
            raise DataError(
                f"This is an image model ({self.meta.get('name')}); it takes no clinical records."
            )
        images = list(images or [])
        out: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch = torch.stack([self.prepare(item) for item in chunk])
            probs = self.predict_proba(batch)
            for item, row in zip(chunk, probs, strict=True):
                source = str(item) if isinstance(item, str | os.PathLike) else None
                out.append(self._to_prediction(row, source))
        return out

    def prepare_records(self, records: Sequence[dict[str, Any]] | Any) -> torch.Tensor:
        """Clean clinical records (dicts, or a DataFrame) with the fitted cleaner → ``(N, F)`` float32.

        Raises:
            DataError: a required column is missing or a value cannot be read (names it).
        """
        import pandas as pd

        frame = records if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
        if frame.empty:
            raise DataError("No records given: send at least one record (a JSON object of clinical values).")
        return torch.as_tensor(self.cleaner.transform(frame.astype(object)), dtype=torch.float32)

    def predict_records(self, records: Sequence[dict[str, Any]] | Any) -> list[Prediction]:
        """Predict for clinical records with a record model."""
        probs = self.predict_proba(self.prepare_records(records))
        return [self._to_prediction(row, None) for row in probs]

    def predict_fused(
        self,
        images: Sequence[ImageInput | None] | None = None,
        records: Sequence[dict[str, Any] | None] | None = None,
        *,
        batch_size: int = 64,
    ) -> list[Prediction]:
        """Predict for paired inputs; either list may be shorter or hold None where a modality is missing.

        Raises:
            DataError: a row has neither an image nor a record.
        """
        from medpredict.models.fusion import fusion_inputs

        image_list: list[Any] = list(images or [])
        record_list: list[Any] = list(records or [])
        n = max(len(image_list), len(record_list))
        image_list += [None] * (n - len(image_list))
        record_list += [None] * (n - len(record_list))
        out: list[Prediction] = []
        for start in range(0, n, batch_size):
            chunk = slice(start, start + batch_size)
            inputs = fusion_inputs(
                image_list[chunk], record_list[chunk], prepare_image=self.prepare, cleaner=self.cleaner,
                image_shape=self.bundle.info.image.shape if self.bundle.info.image else None,
            )
            with torch.no_grad():
                logits = self.model(*(None if t is None else t.to(self.device) for t in inputs)).float().cpu().numpy()
            for item, row in zip(image_list[chunk], self.calibrate(logits), strict=True):
                source = str(item) if isinstance(item, str | os.PathLike) else None
                out.append(self._to_prediction(row, source))
        return out

    def _to_prediction(self, row: np.ndarray, source: str | None) -> Prediction:
        labels = self.labels
        if self.task == "regression":
            return Prediction({}, f"{float(row[0]):.4g}", float(row[0]), None, {}, source)
        probabilities = {name: float(p) for name, p in zip(labels, row, strict=True)}
        if self.task == "multilabel":
            chosen = [n for n, p in probabilities.items() if p >= 0.5]
            return Prediction(probabilities, "|".join(chosen) or "none", None, 0.5, {}, source)
        score = float(row[1]) if self.task == "binary" else None
        index = int(score >= self.threshold) if score is not None else int(np.argmax(row))
        uncertainty = self._uncertainty(row)
        return Prediction(
            probabilities,
            labels[index],
            score,
            self.threshold if score is not None else None,
            uncertainty,
            source,
        )

    def _uncertainty(self, row: np.ndarray) -> dict[str, Any]:
        clipped = np.clip(row, 1e-12, 1.0)
        entropy = float(-(clipped * np.log(clipped)).sum() / np.log(len(row)))
        result: dict[str, Any] = {"entropy": round(entropy, 4)}
        if self._conformal is not None:
            members = self._conformal.predict_sets(row[None])[0]
            result["conformal_set"] = [name for name, keep in zip(self.labels, members, strict=True) if keep]
            result["conformal_coverage"] = round(1 - float(self._conformal.alpha), 3)
            result["refer_to_clinician"] = int(members.sum()) != 1
        return result

    def explain(self, image: ImageInput, class_index: int | None = None) -> np.ndarray:
        """Grad-CAM heatmap ``(H, W)`` in [0, 1] at the model's input size.

        ``class_index`` defaults to the positive class of a binary model, else the predicted class.
        """
        from medpredict.explain.maps import gradcam

        prepared = self.prepare(image)
        if class_index is None:
            probs = self.predict_proba(prepared[None])[0]
            class_index = 1 if self.task == "binary" else int(np.argmax(probs))
        return gradcam(self.model, prepared[None].to(self.device), class_index)

