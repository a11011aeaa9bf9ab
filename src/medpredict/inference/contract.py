"""The one prediction contract: what every caller gets for one case, built by one function.

``evaluate`` (a whole split), ``predict`` (files), ``serve`` (HTTP) and ``pacs`` (DICOMweb)
all turn a model's calibrated probabilities into a :class:`CasePrediction` with
:func:`decide`, row by row. Every step is a function of the case alone — the calibrated
probabilities, the locked threshold, the class-conditional conformal set, the input check —
so a case gets the same answer whether it arrives alone or in a batch of 600.

A case is **referred** to a clinician, with the reasons listed, when

* its prediction set is not exactly ``{decision}`` (two plausible classes, none, or a set
  that does not contain the decision taken at the locked threshold), or
* the input check flags it (unusual for the model: out-of-distribution score above the
  validation threshold).

An input whose DICOM tags contradict the model's intended use is *refused* before any of
this (:class:`InputRefused`), unless the caller explicitly overrides the check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from medpredict.bundle.identity import ModelIdentity
from medpredict.data.intended_use import IntendedUse
from medpredict.errors import DataError

#: Referral reasons, worded for the people who read them.
REASON_SET = "the prediction set is not exactly the decision"
REASON_EMPTY = "no class is plausible enough (empty prediction set)"
REASON_OOD = "the input is unusual for this model (out-of-distribution score above its validation threshold)"


class InputRefused(DataError):
    """The input's DICOM tags contradict the model's intended use (the message says which tag)."""


@dataclass(frozen=True)
class InputCheck:
    """The verdict of the input check for one case.

    Attributes:
        status: ``"ok"``, ``"unusual"`` (answered, but referred) or ``"not checked"`` (no
            detector in this bundle or backend).
        reasons: what was found, for people.
        ood_score: the detector's score (higher = more unusual), or None.
        ood_threshold: the score above which an input is unusual, or None.
        tags_checked: the DICOM keywords compared with the intended use (empty for non-DICOM).
    """

    status: str = "not checked"
    reasons: tuple[str, ...] = ()
    ood_score: float | None = None
    ood_threshold: float | None = None
    tags_checked: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reasons": list(self.reasons),
            "ood_score": self.ood_score,
            "ood_threshold": self.ood_threshold,
            "tags_checked": list(self.tags_checked),
        }


@dataclass(frozen=True)
class Explanation:
    """A heat map and what it explains.

    Attributes:
        heatmap: ``(H, W)`` float32 in [0, 1] at the model's input size.
        class_label: the class whose evidence the map shows.
        method: ``"grad-cam"`` or ``"occlusion"``.
    """

    heatmap: np.ndarray = field(repr=False)
    class_label: str
    method: str

    def caption(self) -> str:
        """E.g. ``"Grad-CAM: evidence for 'pneumonia'"``."""
        name = "Grad-CAM" if self.method == "grad-cam" else "Occlusion"
        return f"{name}: evidence for '{self.class_label}'"


@dataclass(frozen=True)
class CasePrediction:
    """Everything a clinician is shown for one case.

    Attributes:
        probabilities: calibrated probability per class.
        decision: the class decided at the locked threshold (binary) or the most probable.
        score: the positive class's probability (binary), else None.
        threshold: the locked threshold (binary), else None.
        positive_label: the class the threshold and sensitivity refer to (binary).
        prediction_set: the conformal set (empty tuple when the bundle has none).
        set_coverage: the set's target coverage, e.g. 0.9, or None.
        refer: True when the case should go to a clinician (see the module docstring).
        referral_reasons: why, in words.
        input_check: the input verdict.
        model: the model's identity.
        source: the file name or study description the case came from (never a full path,
            never a patient identifier).
        uncertainty: ``{"entropy": normalised entropy in [0, 1]}``.
        explanation: the heat map, when one was asked for.
    """

    probabilities: dict[str, float]
    decision: str
    score: float | None
    threshold: float | None
    positive_label: str | None
    prediction_set: tuple[str, ...]
    set_coverage: float | None
    refer: bool
    referral_reasons: tuple[str, ...]
    input_check: InputCheck
    model: ModelIdentity
    source: str | None = None
    uncertainty: dict[str, float] = field(default_factory=dict)
    explanation: Explanation | None = None

    @property
    def label(self) -> str:
        """The decision (the name older callers used)."""
        return self.decision

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the API's and ``predictions.json``'s), without the heat map array."""
        return {
            "source": self.source,
            "label": self.decision,
            "decision": self.decision,
            "score": self.score,
            "threshold": self.threshold,
            "positive_label": self.positive_label,
            "probabilities": self.probabilities,
            "prediction_set": list(self.prediction_set),
            "set_coverage": self.set_coverage,
            "refer": self.refer,
            "referral_reasons": list(self.referral_reasons),
            "input_check": self.input_check.to_dict(),
            "uncertainty": self.uncertainty,
            "explanation": None
            if self.explanation is None
            else {"class": self.explanation.class_label, "method": self.explanation.method},
            "model": self.model.to_dict(),
        }


@dataclass(frozen=True)
class DecisionRule:
    """What turns calibrated probabilities into decisions: everything fitted on validation.

    Attributes:
        labels: class names in output order.
        task: ``binary``, ``multiclass``, ``multilabel`` or ``regression``.
        threshold: the locked threshold on the positive class (binary).
        positive_index: index of the positive class (binary).
        conformal: a fitted :class:`~medpredict.calibration.conformal.SplitConformal`, or None.
        identity: the model's identity.
    """

    labels: tuple[str, ...]
    task: str
    threshold: float | None
    positive_index: int | None
    conformal: Any
    identity: ModelIdentity

    def decisions(self, probs: np.ndarray) -> np.ndarray:
        """``(N,)`` decided class index per row."""
        if self.task == "binary" and self.threshold is not None and self.positive_index is not None:
            positive = probs[:, self.positive_index] >= self.threshold
            return np.where(positive, self.positive_index, 1 - self.positive_index)
        return probs.argmax(axis=1)

    def sets(self, probs: np.ndarray) -> np.ndarray | None:
        """``(N, K)`` boolean conformal sets, or None without a fitted conformal predictor."""
        return None if self.conformal is None else self.conformal.predict_sets(probs)


@runtime_checkable
class PredictorLike(Protocol):
    """What every predictor offers — PyTorch bundles, their ONNX and int8 exports, outside models.

    Callers (``evaluate``, ``predict``, ``serve``, ``pacs``) use only this surface; which
    class stands behind it is the loader's business (:mod:`medpredict.inference.loader`).
    """

    @property
    def labels(self) -> list[str]: ...

    @property
    def task(self) -> str: ...

    @property
    def input_kind(self) -> str: ...

    @property
    def card(self) -> dict[str, Any]: ...

    @property
    def identity(self) -> ModelIdentity: ...

    @property
    def intended_use(self) -> IntendedUse: ...

    @property
    def positive_label(self) -> str | None: ...

    @property
    def threshold(self) -> float: ...

    @property
    def rule(self) -> DecisionRule: ...

    def predict(
        self,
        images: Sequence[Any] | None = None,
        records: Sequence[dict[str, Any]] | None = None,
        *,
        tags: Sequence[Mapping[str, Any]] | None = None,
        explain: bool = False,
        ignore_intended_use: bool = False,
    ) -> list[CasePrediction]:
        """The contract for each input (see :class:`CasePrediction`)."""
        ...

    def explain(self, image: Any, class_index: int | None = None) -> np.ndarray:
        """A heat map ``(H, W)`` in [0, 1]; by default of the class decided for the image."""
        ...

    def prepare(self, image: Any) -> Any:
        """One image at the model's input size ``(C, *size)`` in [0, 1] (array or tensor).

        Preparing is idempotent: predicting or explaining the result gives the same answer
        as the original image, so a caller may keep it instead of a large image.
        """
        ...


@runtime_checkable
class Scorer(PredictorLike, Protocol):
    """What evaluation needs beyond :class:`PredictorLike`: batches of prepared inputs in, the
    contract out (``outputs`` -> ``calibrate`` -> ``cases``), and the stored metadata."""

    @property
    def meta(self) -> dict[str, Any]: ...

    @property
    def positive_index(self) -> int | None: ...

    @property
    def image_size(self) -> int: ...

    @property
    def channels(self) -> int: ...

    @property
    def spatial_dims(self) -> int: ...

    def outputs(self, batch: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw logits ``(N, K)`` and pooled features ``(N, D)`` (or None) of a prepared batch."""
        ...

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """The probabilities the model reports for raw ``logits``."""
        ...

    def predict_proba(self, batch: Any) -> np.ndarray:
        """Calibrated probabilities of a prepared batch."""
        ...

    def cases(
        self,
        probs: np.ndarray,
        features: np.ndarray | None = None,
        *,
        sources: Sequence[Any] | None = None,
        tags: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[CasePrediction]:
        """The contract for already computed calibrated probabilities."""
        ...

    def explanation(self, image: Any, class_label: str | None = None) -> Explanation:
        """A heat map with the class it explains and its method."""
        ...


def display_source(source: Any) -> str | None:
    """The file name of a path (folders can carry patient names), or None for arrays."""
    if source is None or isinstance(source, np.ndarray):
        return None
    text = str(source)
    if "::" in text:  # an npz reference: keep FILE.npz::key/index
        path, _, ref = text.partition("::")
        return f"{Path(path).name}::{ref}"
    return Path(text).name


def decide(
    rule: DecisionRule,
    probs: np.ndarray,
    *,
    checks: Sequence[InputCheck] | None = None,
    sources: Sequence[Any] | None = None,
) -> list[CasePrediction]:
    """Build the contract for each row of calibrated ``probs`` ``(N, K)``.

    Args:
        rule: the bundle's decision rule.
        probs: calibrated probabilities (regression: ``(N, 1)`` predictions).
        checks: one input verdict per row (default "not checked").
        sources: one source per row (a path or an npz reference; shown as a file name).
    """
    p = np.asarray(probs, dtype=np.float64)
    n = p.shape[0]
    checks = list(checks) if checks is not None else [InputCheck()] * n
    names = [display_source(s) for s in sources] if sources is not None else [None] * n
    if len(checks) != n or len(names) != n:
        raise DataError(f"{n} predictions but {len(checks)} input checks and {len(names)} sources.")
    if rule.task in ("regression", "multilabel"):
        return [_other_task(rule, row, check, name) for row, check, name in zip(p, checks, names, strict=True)]
    decided = rule.decisions(p)
    sets = rule.sets(p)
    coverage = None if rule.conformal is None else round(1.0 - float(rule.conformal.alpha), 4)
    out = []
    for i in range(n):
        members = () if sets is None else tuple(lab for lab, keep in zip(rule.labels, sets[i], strict=True) if keep)
        reasons: list[str] = []
        if sets is not None:
            if not members:
                reasons.append(REASON_EMPTY)
            elif members != (rule.labels[decided[i]],):
                reasons.append(REASON_SET)
        if checks[i].status == "unusual":
            reasons.append(REASON_OOD)
        binary = rule.task == "binary" and rule.positive_index is not None
        out.append(
            CasePrediction(
                probabilities={lab: float(v) for lab, v in zip(rule.labels, p[i], strict=True)},
                decision=rule.labels[int(decided[i])],
                score=float(p[i, rule.positive_index]) if binary and rule.positive_index is not None else None,
                threshold=rule.threshold if binary else None,
                positive_label=rule.labels[rule.positive_index] if binary and rule.positive_index is not None else None,
                prediction_set=members,
                set_coverage=coverage,
                refer=bool(reasons),
                referral_reasons=tuple(reasons),
                input_check=checks[i],
                model=rule.identity,
                source=names[i],
                uncertainty={"entropy": round(_entropy(p[i]), 4)},
            )
        )
    return out


def _entropy(row: np.ndarray) -> float:
    clipped = np.clip(row, 1e-12, 1.0)
    return float(-(clipped * np.log(clipped)).sum() / np.log(len(row)))


def _other_task(rule: DecisionRule, row: np.ndarray, check: InputCheck, name: str | None) -> CasePrediction:
    if rule.task == "regression":
        value = float(row[0])
        return CasePrediction({}, f"{value:.4g}", value, None, None, (), None, check.status == "unusual",
                              (REASON_OOD,) if check.status == "unusual" else (), check, rule.identity, name)
    probabilities = {lab: float(v) for lab, v in zip(rule.labels, row, strict=True)}
    chosen = "|".join(lab for lab, v in probabilities.items() if v >= 0.5) or "none"
    return CasePrediction(probabilities, chosen, None, 0.5, None, (), None, check.status == "unusual",
                          (REASON_OOD,) if check.status == "unusual" else (), check, rule.identity, name)
