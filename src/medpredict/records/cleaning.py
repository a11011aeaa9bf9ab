"""The fitted table cleaner: raw clinical cells in, a float32 model matrix out.

:class:`TableCleaner` follows the estimator contract. ``fit`` learns everything from the
training split only — plausibility ranges, outlier fences, medians, categories,
scaling statistics — and ``transform`` applies them unchanged to any later rows, so
validation, test and deployed records are cleaned exactly as training rows were. The
learned state is plain JSON (:meth:`TableCleaner.to_dict`), saved as ``cleaner.json``
in the model bundle; nothing is pickled.

Per value, in this order: strip whitespace (tabs included) -> sentinel tokens (``?``,
``N/A``, empty ...) become missing -> text to number (unparseable -> missing) ->
"zero means missing" columns -> outside the plausibility range -> missing ->
outliers (IQR or robust z fences) clipped or set missing -> missing-indicator column
-> median / most-frequent imputation -> scaling. Categories map to codes ``1..K``;
``0`` means missing or unseen at training.

Output columns, in this order (``feature_names_``): continuous columns (``numeric``
and ``ordinal``, scaled), ``binary`` columns (0/1), missing indicators
(``<col>__missing``), then categorical codes (``cardinalities_`` gives ``K + 1`` per
column). The first ``n_continuous_`` columns are floats a network feeds to a linear
layer; the rest of the trailing ``len(cardinalities_)`` columns are integer codes
for embeddings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medpredict.config import CleaningConfig
from medpredict.errors import DataError, did_you_mean, unknown_choice
from medpredict.records.tables import TableSchema, clean_token

logger = logging.getLogger(__name__)

FORMAT = "medpredict.table_cleaner/1"
MISSING_COLUMNS = ("error", "impute")

# Physiologically plausible ranges, in the units these columns are usually recorded in.
# A value outside is a recording error (a unit mix-up, a misplaced decimal), not an
# extreme patient: it is set missing and reported. Matched by exact column name.
DEFAULT_RANGES: dict[tuple[str, ...], tuple[float, float]] = {
    ("age", "anchor_age", "age_years"): (0.0, 120.0),
    ("sbp", "systolic_bp", "trestbps", "systolic"): (40.0, 300.0),
    ("dbp", "diastolic_bp", "diastolic"): (20.0, 200.0),
    ("bp", "blood_pressure"): (20.0, 300.0),
    ("hr", "heart_rate", "pulse", "thalach"): (20.0, 260.0),
    ("resp_rate", "respiratory_rate", "rr"): (2.0, 80.0),
    ("temp", "temperature", "temp_c"): (25.0, 45.0),
    ("spo2", "o2sat", "oxygen_saturation"): (40.0, 100.0),
    ("chol", "cholesterol", "total_cholesterol"): (40.0, 1000.0),  # mg/dL
    ("glucose", "bgr", "blood_glucose"): (10.0, 2000.0),  # mg/dL
    ("sodium", "sod", "na"): (90.0, 200.0),  # mmol/L
    ("potassium", "pot", "k"): (1.0, 12.0),  # mmol/L
    ("chloride", "cl"): (50.0, 160.0),  # mmol/L
    ("bicarbonate", "hco3"): (2.0, 60.0),  # mmol/L
    ("creatinine", "sc", "serum_creatinine"): (0.1, 80.0),  # mg/dL
    ("bun", "bu", "urea", "blood_urea"): (1.0, 400.0),  # mg/dL
    ("hemoglobin", "hemo", "hgb", "hb"): (2.0, 25.0),  # g/dL
    ("hematocrit", "pcv", "hct"): (5.0, 75.0),  # %
    ("wbc", "wbcc", "white_blood_cells"): (100.0, 200_000.0),  # cells/uL
    ("rbcc", "rbc_count"): (0.5, 10.0),  # millions/uL
    ("platelets", "plt", "platelet_count"): (1.0, 2000.0),  # K/uL
    ("lactate",): (0.1, 40.0),  # mmol/L
    ("bmi",): (8.0, 100.0),
    ("weight", "weight_kg"): (0.3, 400.0),
    ("height", "height_cm"): (20.0, 250.0),
}


def default_range(column: str) -> tuple[float, float] | None:
    """The built-in plausibility range for a column name, or ``None``."""
    return next((bounds for names, bounds in DEFAULT_RANGES.items() if column in names), None)


@dataclass
class CleaningReport:
    """What cleaning did to a table, per column; JSON-safe via :meth:`to_dict`.

    ``columns[col]`` counts, where non-zero: ``whitespace`` (values with stray spaces or
    tabs), ``sentinel`` (``?``-style tokens), ``unparseable`` (text where a number was
    expected), ``zero_as_missing``, ``implausible`` (outside the range), ``outliers``,
    ``unseen`` (categories not seen in training), ``missing`` (after all of the above)
    and ``imputed``.
    """

    rows: int = 0
    columns: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    unknown_columns: list[str] = field(default_factory=list)
    all_missing: list[str] = field(default_factory=list)
    outlier_action: str = "clip"

    def add(self, column: str, what: str, count: int) -> None:
        if count:
            self.columns.setdefault(column, {})
            self.columns[column][what] = self.columns[column].get(what, 0) + int(count)

    def total(self, what: str) -> int:
        """Sum of one count over all columns."""
        return sum(c.get(what, 0) for c in self.columns.values())

    def summary(self) -> list[str]:
        """Plain-language lines, one per column with something to say."""
        words = {
            "whitespace": "values had stray spaces or tabs (stripped)",
            "sentinel": "values were missing-value tokens such as '?'",
            "unparseable": "values were not numbers (set missing)",
            "zero_as_missing": "zeros mean 'not measured' (set missing)",
            "implausible": "values were outside the plausible range (set missing)",
            "outliers": f"outliers ({'clipped' if self.outlier_action == 'clip' else 'set missing'})",
            "unseen": "categories not seen in training (treated as unknown)",
            "imputed": "missing values imputed",
        }
        lines = []
        for column, counts in self.columns.items():
            parts = [f"{counts[k]} {text}" for k, text in words.items() if counts.get(k)]
            if parts:
                lines.append(f"{column}: " + "; ".join(parts) + ".")
        lines += [f"{c}: dropped ({why})." for c, why in self.dropped.items()]
        if self.unknown_columns:
            lines.append(f"Ignored columns the model does not use: {', '.join(self.unknown_columns)}.")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _canon(token: object) -> str:
    """One spelling per value: ``"1.0"``, ``"1"`` and ``1`` all become ``"1"``."""
    text = str(token)
    try:
        number = float(text)
    except ValueError:
        return text
    return f"{number:g}" if np.isfinite(number) else text


def canonical_level(value: object) -> str | None:
    """The spelling a binary or categorical value is matched with (``None`` for a missing token).

    The same as cleaning does: whitespace and quotes stripped, missing-value tokens such as
    ``"?"`` become ``None``, numbers written one way (``"1.0"``, ``"1"`` and ``1`` are ``"1"``).
    """
    token = clean_token(value)
    return None if token is None else _canon(token)


def _tokenise(series: pd.Series, column: str, report: CleaningReport) -> pd.Series:
    """Strip whitespace and turn sentinel tokens into None, counting both."""
    raw = series.astype("object")
    text = raw.map(lambda v: v if isinstance(v, str) else None)
    is_text = text.notna()
    report.add(column, "whitespace", int((is_text & (text.str.strip() != text)).sum()))
    tokens = raw.map(clean_token)
    report.add(column, "sentinel", int((is_text & tokens.isna()).sum()))
    return tokens


def _to_numbers(tokens: pd.Series, column: str, report: CleaningReport) -> np.ndarray:
    numbers = pd.to_numeric(tokens, errors="coerce")
    report.add(column, "unparseable", int((tokens.notna() & numbers.isna()).sum()))
    return np.array(numbers.to_numpy(dtype=np.float64, na_value=np.nan), copy=True)


class TableCleaner:
    """Clean and encode a clinical table, fitted on the training split only.

    Args:
        schema: the table's :class:`~medpredict.records.tables.TableSchema`.
        config: cleaning options; ``None`` uses the defaults.

    Attributes (after ``fit``):
        feature_names_: output column names, ``(F,)``.
        n_continuous_: number of leading float columns.
        categorical_: categorical input columns, in output order.
        cardinalities_: ``K + 1`` per categorical column (code 0 = missing/unseen).
        columns_: learned state per input column.
        report_: the :class:`CleaningReport` of the training rows.
    """

    def __init__(self, schema: TableSchema, config: CleaningConfig | None = None) -> None:
        self.schema = schema
        self.config = config or CleaningConfig()

    # ------------------------------------------------------------------ fit

    def fit(self, frame: pd.DataFrame) -> TableCleaner:
        """Learn ranges, fences, medians, categories and scaling from training rows.

        Raises:
            DataError: a feature column is missing, or no usable column remains.
        """
        from sklearn.impute import SimpleImputer
        from sklearn.preprocessing import RobustScaler, StandardScaler

        features = self.schema.features()
        _require_columns(frame, features, "training table")
        if len(frame) == 0:
            raise DataError("Cannot fit the table cleaner on zero rows; check the training split.")
        report = CleaningReport(rows=len(frame), outlier_action=self.config.outlier_action)
        columns: dict[str, dict[str, Any]] = {}
        for column in features:
            kind = self.schema.kinds[column]
            tokens = _tokenise(frame[column], column, CleaningReport())  # counted once, below
            if tokens.isna().all():
                report.dropped[column] = "no values in the training rows"
                logger.warning("Column '%s' has no values in the training rows; it is not used.", column)
                continue
            if kind in ("numeric", "ordinal"):
                state = self._fit_numeric(column, kind, tokens)
            elif kind == "binary":
                state = self._fit_levels(column, tokens, binary=True)
            else:
                state = self._fit_levels(column, tokens, binary=False)
            columns[column] = state
        continuous = [c for c, s in columns.items() if s["kind"] in ("numeric", "ordinal")]
        if continuous:
            matrix = np.column_stack(
                [self._numeric_values(columns[c], c, frame[c], CleaningReport())[0] for c in continuous]
            )
            medians = SimpleImputer(strategy="median", keep_empty_features=True).fit(matrix).statistics_
            filled = np.where(np.isnan(matrix), medians, matrix)
            if self.config.scaling == "standard":
                scaler = StandardScaler().fit(filled)
                centre, scale = scaler.mean_, scaler.scale_
            elif self.config.scaling == "robust":
                scaler = RobustScaler().fit(filled)
                centre, scale = scaler.center_, scaler.scale_
            else:
                centre, scale = np.zeros(len(continuous)), np.ones(len(continuous))
            for i, column in enumerate(continuous):
                columns[column].update(
                    median=float(medians[i]), centre=float(centre[i]), scale=float(scale[i]) or 1.0
                )
        if not columns:
            raise DataError(
                "No usable feature columns: every feature is empty in the training rows. "
                "Check the target and the schema."
            )
        self.columns_ = columns
        self._layout()
        _, self.report_ = self._transform(frame, report=report, fitting=True)
        return self

    def _fit_numeric(self, column: str, kind: str, tokens: pd.Series) -> dict[str, Any]:
        state: dict[str, Any] = {
            "kind": kind,
            "range": None,
            "zero_missing": column in self.schema.zero_means_missing,
        }
        bounds = self.schema.ranges.get(column) or (
            default_range(column) if self.config.default_ranges else None
        )
        if bounds is not None:
            state["range"] = [float(bounds[0]), float(bounds[1])]
        values = np.array(pd.to_numeric(tokens, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan))
        if state["zero_missing"]:
            values[values == 0] = np.nan
        if state["range"] is not None:
            values[(values < state["range"][0]) | (values > state["range"][1])] = np.nan
        finite = values[np.isfinite(values)]
        state["fence"] = None
        if kind == "numeric" and finite.size >= 10 and self.config.outliers != "none":
            if self.config.outliers == "iqr":
                q1, q3 = np.percentile(finite, [25, 75])
                k = self.config.iqr_k * (q3 - q1)
                low, high = q1 - k, q3 + k
            else:
                median = float(np.median(finite))
                mad = 1.4826 * float(np.median(np.abs(finite - median)))
                low, high = median - self.config.robust_z * mad, median + self.config.robust_z * mad
            if high > low:  # a column with one dominant value has no spread to fence with
                state["fence"] = [float(low), float(high)]
        state["indicator"] = bool(self.config.missing_indicators and np.isnan(values).any())
        return state

    def _fit_levels(self, column: str, tokens: pd.Series, *, binary: bool) -> dict[str, Any]:
        canon = tokens.dropna().map(_canon)
        counts = canon.value_counts()
        declared = [_canon(v) for v in self.schema.categories.get(column, ())]
        if binary:
            levels = [v for v in declared if v in set(counts.index)] or sorted(counts.index)[:2]
            if len(counts) > 2:
                levels = sorted(counts.index[:2])
                logger.warning(
                    "Binary column '%s' has %d values; keeping the 2 most frequent.", column, len(counts)
                )
            mode = float(levels.index(counts.index[0]))
            return {
                "kind": "binary",
                "levels": levels,
                "mode": mode,
                "indicator": bool(self.config.missing_indicators and tokens.isna().any()),
            }
        levels = list(counts.index[: self.config.max_categories])
        if len(counts) > len(levels):
            logger.warning(
                "Column '%s' has %d categories; keeping the %d most frequent.",
                column,
                len(counts),
                len(levels),
            )
        return {"kind": "categorical", "levels": levels, "indicator": False}

    def _layout(self) -> None:
        kinds = {c: s["kind"] for c, s in self.columns_.items()}
        continuous = [c for c, k in kinds.items() if k in ("numeric", "ordinal")]
        binary = [c for c, k in kinds.items() if k == "binary"]
        indicators = [c for c, s in self.columns_.items() if s.get("indicator")]
        self.categorical_ = [c for c, k in kinds.items() if k == "categorical"]
        self.feature_names_ = continuous + binary + [f"{c}__missing" for c in indicators] + self.categorical_
        self.n_continuous_ = len(continuous) + len(binary) + len(indicators)
        self.cardinalities_ = [len(self.columns_[c]["levels"]) + 1 for c in self.categorical_]
        self._order = (continuous, binary, indicators)

    # ------------------------------------------------------------------ transform

    def _check_fitted(self) -> None:
        if not hasattr(self, "columns_"):
            raise DataError("This TableCleaner is not fitted yet; call fit(training_frame) first.")

    def transform(self, frame: pd.DataFrame, *, missing_columns: str = "error") -> np.ndarray:
        """Clean and encode rows with the fitted state; returns ``(N, F)`` float32.

        Args:
            frame: rows to transform; extra columns are ignored (and reported).
            missing_columns: ``error`` refuses a frame lacking a feature column;
                ``impute`` treats the column as all-missing (filled with training medians).

        Raises:
            DataError: unfitted, or a feature column is absent with ``missing_columns="error"``.
        """
        return self.transform_with_report(frame, missing_columns=missing_columns)[0]

    def transform_with_report(
        self, frame: pd.DataFrame, *, missing_columns: str = "error"
    ) -> tuple[np.ndarray, CleaningReport]:
        """Like :meth:`transform`, also returning the :class:`CleaningReport` of these rows."""
        self._check_fitted()
        if missing_columns not in MISSING_COLUMNS:
            raise unknown_choice("missing_columns option", missing_columns, MISSING_COLUMNS)
        absent = [c for c in self.columns_ if c not in frame.columns]
        if absent and missing_columns == "error":
            _require_columns(frame, list(self.columns_), "table to transform")
        if absent:
            logger.warning("Columns absent from the input, treated as missing: %s.", ", ".join(absent))
            frame = frame.assign(**{c: None for c in absent})
        report = CleaningReport(rows=len(frame), outlier_action=self.config.outlier_action)
        used = set(self.columns_) | {self.schema.target}
        report.unknown_columns = [
            str(c) for c in frame.columns if c not in used and c not in self.schema.kinds
        ]
        if report.unknown_columns:
            logger.info("Ignoring columns the model does not use: %s.", ", ".join(report.unknown_columns))
        return self._transform(frame, report=report, fitting=False)

    def _numeric_values(
        self, state: Mapping[str, Any], column: str, series: pd.Series, report: CleaningReport
    ) -> tuple[np.ndarray, np.ndarray]:
        """Numbers after tokens, zero-missing, range and outlier handling; and the missing mask."""
        values = _to_numbers(_tokenise(series, column, report), column, report)
        if state["zero_missing"]:
            zero = values == 0
            report.add(column, "zero_as_missing", int(zero.sum()))
            values[zero] = np.nan
        if state["range"] is not None:
            low, high = state["range"]
            bad = (values < low) | (values > high)
            report.add(column, "implausible", int(bad.sum()))
            values[bad] = np.nan
        if state["fence"] is not None:
            low, high = state["fence"]
            out = (values < low) | (values > high)
            report.add(column, "outliers", int(out.sum()))
            values = (
                np.clip(values, low, high)
                if self.config.outlier_action == "clip"
                else np.where(out, np.nan, values)
            )
        return values, np.isnan(values)

    def _transform(
        self, frame: pd.DataFrame, *, report: CleaningReport, fitting: bool
    ) -> tuple[np.ndarray, CleaningReport]:
        continuous, binary, indicators = self._order
        n = len(frame)
        blocks: list[np.ndarray] = []
        masks: dict[str, np.ndarray] = {}
        for column in continuous:
            state = self.columns_[column]
            values, missing = self._numeric_values(state, column, frame[column], report)
            masks[column] = missing
            values = np.where(missing, state["median"], values)
            blocks.append((values - state["centre"]) / state["scale"])
        for column in binary:
            state = self.columns_[column]
            tokens = _tokenise(frame[column], column, report)
            canon = tokens.map(lambda v: None if pd.isna(v) else _canon(v))
            codes = canon.map({lvl: float(i) for i, lvl in enumerate(state["levels"])})
            report.add(column, "unseen", int((canon.notna() & codes.isna()).sum()))
            missing = codes.isna().to_numpy()
            masks[column] = missing
            blocks.append(np.where(missing, state["mode"], codes.to_numpy(dtype=np.float64, na_value=np.nan)))
        for column in indicators:
            blocks.append(masks[column].astype(np.float64))
        for column in self.categorical_:
            state = self.columns_[column]
            tokens = _tokenise(frame[column], column, report)
            canon = tokens.map(lambda v: None if pd.isna(v) else _canon(v))
            codes = canon.map({lvl: float(i + 1) for i, lvl in enumerate(state["levels"])})
            unseen = int((canon.notna() & codes.isna()).sum())
            report.add(column, "unseen", unseen)
            if unseen and not fitting:
                logger.warning(
                    "Column '%s': %d value(s) not seen in training, encoded as unknown.", column, unseen
                )
            masks[column] = codes.isna().to_numpy()
            blocks.append(codes.fillna(0.0).to_numpy(dtype=np.float64))
        for column, missing in masks.items():
            count = int(missing.sum())
            report.add(column, "missing", count)
            if self.columns_[column]["kind"] != "categorical":
                report.add(column, "imputed", count)
            if n > 1 and count == n and not fitting:
                report.all_missing.append(column)
        if report.all_missing:
            logger.warning(
                "Columns with no value in any of the %d rows, filled from training statistics: %s.",
                n,
                ", ".join(report.all_missing),
            )
        matrix = np.column_stack(blocks) if blocks else np.zeros((n, 0))
        return matrix.astype(np.float32), report

    def fit_transform(self, frame: pd.DataFrame) -> np.ndarray:
        """``fit(frame).transform(frame)``."""
        return self.fit(frame).transform(frame)

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as JSON-safe data (saved as ``cleaner.json`` in the bundle)."""
        self._check_fitted()
        return {
            "format": FORMAT,
            "schema": self.schema.to_dict(),
            "config": asdict(self.config),
            "columns": self.columns_,
            "feature_names": list(self.feature_names_),
            "dropped": dict(self.report_.dropped),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TableCleaner:
        """Rebuild a fitted cleaner from :meth:`to_dict` output.

        Raises:
            DataError: the data is not a saved cleaner of this format.
        """
        if values.get("format") != FORMAT:
            raise DataError(
                f"Not a saved table cleaner of format '{FORMAT}' (got {values.get('format')!r}); "
                "re-train the model with this version of medpredict."
            )
        cleaner = cls(TableSchema.from_dict(values["schema"]), CleaningConfig(**values["config"]))
        cleaner.columns_ = {c: dict(s) for c, s in values["columns"].items()}
        cleaner._layout()
        if list(values["feature_names"]) != cleaner.feature_names_:
            raise DataError("Saved cleaner is inconsistent: its feature names do not match its columns.")
        cleaner.report_ = CleaningReport(dropped=dict(values.get("dropped", {})))
        return cleaner


def _require_columns(frame: pd.DataFrame, needed: list[str], what: str) -> None:
    absent = [c for c in needed if c not in frame.columns]
    if absent:
        present = [str(c) for c in frame.columns]
        hints = "".join(did_you_mean(c, present) for c in absent[:3])
        raise DataError(
            f"The {what} lacks column(s) the model needs: {', '.join(absent)}.{hints} "
            f"Columns present: {', '.join(present)}. Rename the columns, or pass "
            "missing_columns='impute' to treat them as not measured."
        )


def drop_duplicate_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Remove rows identical in every cell (after stripping whitespace); returns ``(frame, n_removed)``.

    Rows that share an id but differ are kept: they may be repeat visits, and the
    patient-level split keeps them on one side.
    """
    key = frame.astype("object").map(lambda v: clean_token(v) if isinstance(v, str) else v)
    duplicated = key.astype(str).duplicated(keep="first").to_numpy()
    if duplicated.any():
        logger.info("Removed %d duplicated row(s) (identical in every column).", int(duplicated.sum()))
    return frame.loc[~duplicated].reset_index(drop=True), int(duplicated.sum())
