"""Columns that restate the target: a leak, found by how well each column alone predicts it.

A column such as Kermany's ``subtype`` (normal / bacteria / virus) beside the label
(normal / pneumonia) gives the answer away: a model that reads it scores perfectly and
learns nothing usable. :func:`target_proxies` fits a small decision tree on each column
alone (scikit-learn; categories one-hot encoded, numbers as they are) and scores it by
balanced accuracy in stratified 5-fold cross-validation: held-out rows keep a column of
unique values (an identifier) from looking predictive, while a true restatement scores
about 1.0. ``data check`` reports these columns; record and fused training refuse them
unless told to keep them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medpredict.data.tokens import clean_token

log = logging.getLogger(__name__)

#: Balanced accuracy at or above which one column alone is taken to restate the target.
PROXY_THRESHOLD = 0.98
_MIN_ROWS_PER_CLASS = 2


@dataclass(frozen=True)
class Proxy:
    """A column that predicts the target almost perfectly on its own.

    Attributes:
        column: the column's name.
        balanced_accuracy: its cross-validated balanced accuracy alone (chance is 1/classes).
        rows: rows the figure was measured on (both values present).
    """

    column: str
    balanced_accuracy: float
    rows: int

    def describe(self, target: str) -> str:
        """One line for people: which column, how well, why it matters."""
        return (
            f"column '{self.column}' predicts '{target}' almost perfectly on its own (balanced accuracy "
            f"{self.balanced_accuracy:.3f} in cross-validation on {self.rows} rows): it restates the outcome"
        )

    def to_dict(self) -> dict[str, object]:
        return {"column": self.column, "balanced_accuracy": self.balanced_accuracy, "rows": self.rows}


def _features(values: pd.Series) -> np.ndarray | None:
    """The column as a model input: numbers as one feature, other values one-hot; ``None`` if unusable."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().mean() >= 0.95 and numbers.nunique() > 10:
        return numbers.fillna(numbers.median()).to_numpy(dtype=float).reshape(-1, 1)
    codes = pd.Series(pd.factorize(values.astype(str))[0])
    if codes.nunique() > max(50, len(values) // 2):  # free text or identifiers: no level repeats enough
        return None
    return np.eye(int(codes.max()) + 1, dtype=np.float32)[codes.to_numpy()]


def _cv_skill(x: np.ndarray, y: np.ndarray, seed: int) -> float | None:
    """Stratified-CV balanced accuracy of a depth-4 tree on ``x``; ``None`` when a class is too rare."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.tree import DecisionTreeClassifier

    counts = pd.Series(y).value_counts()
    if len(y) < 10 or len(counts) < 2 or counts.min() < _MIN_ROWS_PER_CLASS:
        return None
    folds = StratifiedKFold(n_splits=int(min(5, counts.min())), shuffle=True, random_state=seed)
    predicted = cross_val_predict(DecisionTreeClassifier(max_depth=4, random_state=seed), x, y, cv=folds)
    return float(balanced_accuracy_score(y, predicted))


def column_skill(values: pd.Series, target: np.ndarray, *, seed: int = 0) -> tuple[float, int] | None:
    """Cross-validated balanced accuracy of ``values`` alone predicting ``target`` (class labels).

    Measured twice, the higher kept: on the rows where the column has a value, and on every
    row with "missing" as a value of its own (a column empty for one class gives it away as
    surely, through the cleaner's missing indicator). Returns ``(score, rows)`` or ``None``
    when the column or the target gives too little to measure.
    """
    tokens = values.map(clean_token)
    y = pd.Series(np.asarray(target)).astype(str).to_numpy()
    present = tokens.notna().to_numpy()
    best: tuple[float, int] | None = None
    for rows, cells in ((present, tokens[present]), (np.ones(len(y), bool), tokens.astype(object).fillna("(missing)"))):
        x = _features(cells) if len(cells) else None
        skill = _cv_skill(x, y[rows], seed) if x is not None else None
        if skill is not None and (best is None or skill > best[0]):
            best = (skill, int(rows.sum()))
        if present.all():
            break  # nothing missing: the second measure is the first
    return best


def target_proxies(
    frame: pd.DataFrame,
    target: np.ndarray | pd.Series,
    columns: Sequence[str],
    *,
    threshold: float = PROXY_THRESHOLD,
    seed: int = 0,
) -> list[Proxy]:
    """The ``columns`` of ``frame`` that alone predict ``target`` with balanced accuracy >= ``threshold``.

    ``target`` holds one class label per row of ``frame`` (missing targets already removed).
    """
    target = np.asarray(target)
    found = []
    for column in columns:
        skill = column_skill(frame[column].astype(object), target, seed=seed)
        if skill is not None and skill[0] >= threshold:
            found.append(Proxy(column=str(column), balanced_accuracy=round(skill[0], 4), rows=skill[1]))
    return found
