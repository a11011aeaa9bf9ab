"""The PyTorch predictor of a medpredict bundle: ``Predictor.from_bundle(path)``.

It turns inputs into the one prediction contract (:mod:`medpredict.inference.contract`):
read and preprocess, run the network once for logits and pooled features, calibrate
(prior correction + the calibrator chosen on validation), check the input (DICOM tags
against the intended use, the out-of-distribution score against its validation threshold),
then :func:`~medpredict.inference.contract.decide` — the decision at the locked threshold,
the class-conditional prediction set, the referral and its reasons. The ONNX predictors
(:mod:`medpredict.inference.onnx`) reuse everything here but the network call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpredict.bundle.identity import ModelIdentity
from medpredict.bundle.schema import ModelBundle, read_bundle
from medpredict.bundle.store import GUARD
from medpredict.calibration.conformal import SplitConformal
from medpredict.calibration.ood import MahalanobisDetector
from medpredict.calibration.posthoc import load_calibration
from medpredict.config import PreprocessConfig
from medpredict.data.datasets import quantise
from medpredict.data.intended_use import IntendedUse
from medpredict.data.transforms import preprocess
from medpredict.errors import BundleError, DataError
from medpredict.explain.maps import gradcam
from medpredict.inference.contract import (
    CasePrediction,
    DecisionRule,
    Explanation,
    InputCheck,
    InputRefused,
    decide,
    display_source,
)
from medpredict.models.fusion import fusion_inputs
from medpredict.readers.images import read_image_and_tags

log = logging.getLogger(__name__)

ImageInput = np.ndarray | str | os.PathLike[str]
#: Kept for callers that still say ``Prediction``.
Prediction = CasePrediction


def prediction_dict(prediction: Any, purpose: str) -> dict[str, Any]:
    """A :class:`CasePrediction` (or a mapping with its keys) as a dict, for writers such as FHIR or DICOM.

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

    #: how :meth:`explain` builds its maps
    explanation_method = "grad-cam"

    def __init__(
        self, bundle: ModelBundle, model: torch.nn.Module, device: torch.device, cleaner: Any = None
    ) -> None:
        self.bundle = bundle
        self.meta = bundle.meta
        self.model = model.eval()
        self.device = device
        self.cleaner = cleaner  # the fitted TableCleaner of a record model
        calibration = self.meta.get("calibration")
        self._calibrator = load_calibration(calibration) if calibration else None
        conformal = self.meta.get("conformal")
        self._conformal = SplitConformal.from_dict(conformal) if conformal else None
        guard = bundle.read_json(GUARD)
        self._guard = MahalanobisDetector.from_dict(guard) if guard else None

    @classmethod
    def from_bundle(cls, path: str | os.PathLike[str], *, device: str = "cpu") -> Predictor:
        """Load and verify the bundle at ``path`` (a run folder or its ``model/`` folder).

        Raises:
            BundleError: the bundle is missing, tampered with, or of an unknown kind.
        """
        from medpredict.inference.adopted import is_adopted  # here: adopted builds on this module

        if is_adopted(path):
            raise BundleError(
                f"{path} wraps an ONNX graph trained elsewhere (written by 'medpredict adopt'): load it with "
                "medpredict.inference.loader.load_predictor. It is ONNX already; there is nothing to export."
            )
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
    def positive_index(self) -> int | None:
        """Index of the class the threshold applies to (binary models), else None."""
        if self.task != "binary":
            return None
        stored = self.meta.get("positive_label")
        return self.labels.index(stored) if stored in self.labels else 1

    @property
    def positive_label(self) -> str | None:
        """The class a binary model's threshold and sensitivity refer to (None for other tasks)."""
        index = self.positive_index
        return None if index is None else self.labels[index]

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

    @cached_property
    def identity(self) -> ModelIdentity:
        """Name, version (weights hash) and architecture: the one way every output names this model."""
        sums = self.bundle.read_json("checksums.json") or {}
        return ModelIdentity.from_bundle_meta(self.meta, sums.get("files", {}).get("weights.safetensors", ""))

    @property
    def version(self) -> str:
        return self.identity.version

    @cached_property
    def intended_use(self) -> IntendedUse:
        """What the model was built for (empty when the bundle does not declare it)."""
        return IntendedUse.from_dict(self.meta.get("intended_use"))

    @cached_property
    def rule(self) -> DecisionRule:
        """The decision rule fitted on validation: labels, locked threshold, conformal sets."""
        return DecisionRule(
            labels=tuple(self.labels),
            task=self.task,
            threshold=self.threshold if self.task == "binary" else None,
            positive_index=self.positive_index,
            conformal=self._conformal,
            identity=self.identity,
        )

    @property
    def card(self) -> dict[str, Any]:
        """The model card if evaluation wrote one, else the essentials from the bundle."""
        card = self.bundle.read_json("model_card.json")
        if card:
            return card
        return {
            "name": self.meta.get("name"),
            "version": self.version,
            "identity": self.identity.text(),
            "task": self.task,
            "labels": self.labels,
            "positive_label": self.positive_label,
            "input": self.meta.get("preprocess"),
            "intended_use": self.intended_use.summary(),
            "threshold": self.meta.get("threshold"),
            "validation_metrics": self.meta.get("val_metrics"),
            "data": self.meta.get("data"),
            "use": "Research use. Not a medical device; predictions must be reviewed by a clinician.",
        }

    # Reading and preparing inputs.
    def read(self, image: ImageInput) -> tuple[np.ndarray, dict[str, str]]:
        """An image as out of the readers, and its descriptive DICOM tags (empty for arrays and non-DICOM)."""
        if isinstance(image, str | os.PathLike):
            return read_image_and_tags(image, channels=self.channels, spatial_dims=self.spatial_dims)
        return np.asarray(image, dtype=np.float32), {}

    def prepare(self, image: ImageInput) -> torch.Tensor:
        """Read (if a path) and preprocess one image to the model's input ``(C, *size)`` in [0, 1].

        After resizing, values are rounded to 8-bit steps, exactly as the training and
        evaluation images are stored (:func:`medpredict.data.datasets.load_images`), so an
        image predicted alone gets the very numbers it gets inside an evaluated split
        (``preprocess.quantised`` in the bundle; older bundles are read as they were).
        """
        array = self.read(image)[0] if isinstance(image, str | os.PathLike) else np.asarray(image, np.float32)
        if array.ndim == self.spatial_dims:
            array = array[None]
        if array.ndim != self.spatial_dims + 1:
            raise DataError(
                f"Expected a {self.spatial_dims}-D image (channels first), got an array of shape {array.shape}."
            )
        if array.size == 0:
            raise DataError(f"The image is empty (shape {array.shape}).")
        # min/max instead of isfinite/clip on the whole array: no full-size temporaries for a
        # large upload (NaN propagates through min, so it is still caught).
        low, high = float(array.min()), float(array.max())
        if not (np.isfinite(low) and np.isfinite(high)):
            raise DataError("The image holds NaN or infinite values.")
        if low < 0.0 or high > 1.0:
            array = np.clip(array, 0.0, 1.0)
        config = PreprocessConfig(image_size=self.image_size, spatial_dims=self.spatial_dims)
        tensor = preprocess(array, config, self.channels)
        if not self.meta["preprocess"].get("quantised", False):  # a bundle from before inputs were rounded
            return tensor
        return quantise(tensor).float().div_(255.0)

    def refuse_contradicting(self, tags: Mapping[str, Any], source: Any = None) -> None:
        """Raise :class:`InputRefused` when DICOM ``tags`` contradict the intended use.

        Raises:
            InputRefused: names the input (file name only), the tag, its value and what to do.
        """
        reasons = self.intended_use.contradictions(tags)
        if reasons:
            name = display_source(source) or "the input"
            raise InputRefused(
                f"{name} is not an input this model was built for: {'; '.join(reasons)}. "
                f"It was trained on {self.intended_use.summary()}. Send such an image, or override "
                "the check explicitly (--ignore-intended-use / ignore_intended_use=true) at your own risk."
            )

    # The network.
    @torch.no_grad()
    def outputs(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw logits ``(N, K)`` and pooled features ``(N, D)`` (None when the network has none).

        ``batch`` is prepared images ``(N, C, *size)`` in [0, 1], or cleaned records ``(N, F)``
        for a record model (whose features are the cleaned record itself).
        """
        x = batch.to(self.device)
        if self.input_kind == "table":
            return self.model(x).float().cpu().numpy(), batch.float().cpu().numpy()
        features_fn = getattr(self.model, "features", None)
        head = _head_of(self.model)
        if features_fn is None or head is None:
            return self.model(x).float().cpu().numpy(), None
        features = features_fn(x)
        return head(features).float().cpu().numpy(), features.float().cpu().numpy()

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> np.ndarray:
        """Raw network outputs ``(N, K)`` for a prepared batch ``(N, C, *size)`` in [0, 1]."""
        return self.outputs(batch)[0]

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """Logits → the probabilities the model reports (prior-corrected and calibrated when fitted)."""
        if self.task == "multilabel":
            return 1.0 / (1.0 + np.exp(-logits))
        if self.task == "regression":
            return logits
        if self._calibrator is not None:
            return np.asarray(self._calibrator.transform(logits))
        return torch.softmax(torch.from_numpy(np.asarray(logits, np.float32)), dim=1).numpy()

    def predict_proba(self, batch: torch.Tensor) -> np.ndarray:
        """Calibrated probabilities ``(N, K)`` for a prepared batch ``(N, C, *size)`` in [0, 1]."""
        return self.calibrate(self.logits(batch))

    def check_inputs(
        self, features: np.ndarray | None, tags: Sequence[Mapping[str, Any]] | None = None
    ) -> list[InputCheck]:
        """One :class:`InputCheck` per row of ``features`` (the network's pooled features)."""
        n = 0 if features is None else len(features)
        tags = list(tags) if tags is not None else [{}] * n
        checked = [tuple(k for k in ("Modality", "BodyPartExamined", "ViewPosition") if k in t) for t in tags]
        if self._guard is None or features is None:
            return [InputCheck(tags_checked=c) for c in checked]
        scores = self._guard.score(features)
        out = []
        for score, c in zip(scores, checked, strict=True):
            unusual = bool(score > self._guard.threshold_)
            reason = f"out-of-distribution score {score:.1f} > {self._guard.threshold_:.1f}"
            out.append(
                InputCheck(
                    status="unusual" if unusual else "ok",
                    reasons=(reason,) if unusual else (),
                    ood_score=float(score),
                    ood_threshold=float(self._guard.threshold_),
                    tags_checked=c,
                )
            )
        return out

    def cases(
        self,
        probs: np.ndarray,
        features: np.ndarray | None = None,
        *,
        sources: Sequence[Any] | None = None,
        tags: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[CasePrediction]:
        """The contract for already computed calibrated ``probs`` and ``features`` (evaluation uses this)."""
        checks = self.check_inputs(features, tags) if features is not None else None
        return decide(self.rule, probs, checks=checks, sources=sources)

    def predict(
        self,
        images: Sequence[ImageInput] | None = None,
        records: Sequence[dict[str, Any]] | None = None,
        *,
        tags: Sequence[Mapping[str, Any]] | None = None,
        explain: bool = False,
        ignore_intended_use: bool = False,
        batch_size: int = 64,
    ) -> list[CasePrediction]:
        """Predict for images (arrays from the readers, or paths) and/or clinical records.

        Args:
            images: image arrays ``(C, H, W)`` in [0, 1] or paths (DICOM tags are read from paths).
            records: clinical records (dicts) for record and fused models.
            tags: DICOM tags per image when ``images`` are arrays decoded elsewhere (the service).
            explain: attach a heat map of the decided class to each case.
            ignore_intended_use: do not refuse inputs whose tags contradict the intended use.

        Raises:
            InputRefused: an input's DICOM tags contradict the intended use (names it).
            DataError: an input is unreadable or of the wrong shape (names it).
        """
        if self.input_kind == "fusion":
            return self.predict_fused(images, records, batch_size=batch_size)
        if self.input_kind == "table":
            if images:
                raise DataError(f"This is a clinical-record model ({self.meta.get('name')}); it takes no images.")
            return self.predict_records(records or [])
        if records:
            raise DataError(f"This is an image model ({self.meta.get('name')}); it takes no clinical records.")
        items = list(images or [])
        given_tags = list(tags) if tags is not None else [None] * len(items)
        out: list[CasePrediction] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            arrays, chunk_tags = [], []
            for item, extra in zip(chunk, given_tags[start : start + batch_size], strict=True):
                array, read_tags = self.read(item)
                merged = {**read_tags, **(extra or {})}
                if not ignore_intended_use:
                    self.refuse_contradicting(merged, item)
                arrays.append(array)
                chunk_tags.append(merged)
            logits, features = self.outputs(torch.stack([self.prepare(a) for a in arrays]))
            cases = self.cases(self.calibrate(logits), features, sources=chunk, tags=chunk_tags)
            if explain:
                cases = [self._with_explanation(case, array) for case, array in zip(cases, arrays, strict=True)]
            out.extend(cases)
        return out

    def _with_explanation(self, case: CasePrediction, image: np.ndarray) -> CasePrediction:
        return replace(case, explanation=self.explanation(image, case.decision))

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

    def predict_records(self, records: Sequence[dict[str, Any]] | Any) -> list[CasePrediction]:
        """Predict for clinical records with a record model."""
        logits, features = self.outputs(self.prepare_records(records))
        return self.cases(self.calibrate(logits), features)

    def predict_fused(
        self,
        images: Sequence[ImageInput | None] | None = None,
        records: Sequence[dict[str, Any] | None] | None = None,
        *,
        batch_size: int = 64,
    ) -> list[CasePrediction]:
        """Predict for paired inputs; either list may be shorter or hold None where a modality is missing.

        Raises:
            DataError: a row has neither an image nor a record.
        """
        image_list: list[Any] = list(images or [])
        record_list: list[Any] = list(records or [])
        n = max(len(image_list), len(record_list))
        image_list += [None] * (n - len(image_list))
        record_list += [None] * (n - len(record_list))
        out: list[CasePrediction] = []
        for start in range(0, n, batch_size):
            chunk = slice(start, start + batch_size)
            inputs = fusion_inputs(
                image_list[chunk], record_list[chunk], prepare_image=self.prepare, cleaner=self.cleaner,
                image_shape=self.bundle.info.image.shape if self.bundle.info.image else None,
            )
            with torch.no_grad():
                logits = self.model(*(None if t is None else t.to(self.device) for t in inputs)).float().cpu().numpy()
            out.extend(self.cases(self.calibrate(logits), None, sources=image_list[chunk]))
        return out

    # Explanations.
    def explain(self, image: ImageInput, class_index: int | None = None) -> np.ndarray:
        """Grad-CAM heatmap ``(H, W)`` in [0, 1] at the model's input size.

        ``class_index`` defaults to the class decided at the locked threshold (what the
        clinician is told), so the map shows the evidence for the answer given.
        """
        prepared = self.prepare(image)
        if class_index is None:
            class_index = self.decided_index(prepared)
        return gradcam(self.model, prepared[None].to(self.device), class_index)

    def decided_index(self, prepared: torch.Tensor) -> int:
        """The class decided for one prepared image ``(C, *size)``."""
        probs = self.predict_proba(prepared[None])
        return int(self.rule.decisions(probs)[0])

    def explanation(self, image: ImageInput, class_label: str | None = None) -> Explanation:
        """:meth:`explain` with the class it explains and the method named."""
        index = None if class_label is None else self.labels.index(class_label)
        if index is None:
            index = self.decided_index(self.prepare(image))
        return Explanation(self.explain(image, index), self.labels[index], self.explanation_method)


def _head_of(model: torch.nn.Module) -> torch.nn.Module | None:
    """The classifier head that maps ``model.features(x)`` to logits (through a normalising wrapper)."""
    net = getattr(model, "net", model)
    head = getattr(net, "head", None)
    return head if isinstance(head, torch.nn.Module) else None
