"""Read clinical tables (CSV/TSV, ARFF, Parquet, header-less + names file) and infer their schema.

Readers return the cells *as written*: text files are read as strings with nothing
turned into NaN, so that the cleaner and the data check can see and count the raw
problems (``?``, ``N/A``, tab-corrupted tokens such as ``"\\t43"``). Parquet keeps its
own types. Column names are normalised to ``lower_snake_case``.

A :class:`TableSchema` says what each column is — ``numeric``, ``ordinal``, ``binary``,
``categorical``, ``date``, ``id`` or ``ignore`` — plus the target. It is inferred from
the values (:func:`infer_schema`) and can be overridden by a YAML file
(:func:`load_schema`), for example::

    target: num>0                 # a column, or a comparison that makes a binary target
    names: [age, sex, ...]        # header-less files without a names file
    columns: {cp: categorical, patient_no: id}
    zero_means_missing: [bp]
    ranges: {chol: [50, 700]}     # plausibility range, in the column's unit
    labels: {"2": benign, "4": malignant}
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medpredict.data.tokens import (  # noqa: F401  (re-exported: the table reader's vocabulary)
    MISSING_TOKENS,
    TARGET_MISSING_TOKENS,
    clean_target_token,
    clean_token,
    label_variants,
    written_as,
)
from medpredict.errors import ConfigError, DataError, did_you_mean, unknown_choice

logger = logging.getLogger(__name__)

KINDS = ("numeric", "ordinal", "binary", "categorical", "date", "id", "ignore")
FEATURE_KINDS = ("numeric", "ordinal", "binary", "categorical")
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".txt", ".data", ".arff", ".parquet", ".pq")
_TARGET_ALIASES = ("target", "label", "class", "outcome", "diagnosis", "num", "y")
_ID_NAME = re.compile(r"^(id|mrn|subject|patient|patient_no|hadm_id|stay_id)$|_id$|^id_|sample_code")
_TARGET_RULE = re.compile(r"^\s*(?P<col>[^<>=!]+?)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>.+?)\s*$")
_SCHEMA_KEYS = ("target", "names", "columns", "zero_means_missing", "ranges", "labels", "task")


@dataclass(frozen=True)
class TableSchema:
    """What each column of a table is, and which one is the target.

    Attributes:
        kinds: column name -> one of :data:`KINDS`.
        target: the target column (after any rule is applied, the column's own name).
        target_rule: optional comparison turning the target into a binary one, e.g.
            ``">0"`` for heart disease ``num > 0``.
        task: ``auto``, ``binary``, ``multiclass`` or ``regression``.
        categories: declared levels per column (from ARFF or YAML), in order.
        zero_means_missing: columns where a recorded 0 means "not measured".
        ranges: plausibility ranges ``(low, high)`` that override the defaults.
        labels: display names of target values (``{"2": "benign"}``).
    """

    kinds: Mapping[str, str]
    target: str | None = None
    target_rule: str | None = None
    task: str = "auto"
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    zero_means_missing: tuple[str, ...] = ()
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    def features(self) -> list[str]:
        """The columns a model uses, in table order (not the target, ids, dates or ignored)."""
        return [c for c, k in self.kinds.items() if k in FEATURE_KINDS and c != self.target]

    def columns_of(self, *kinds: str) -> list[str]:
        """Feature columns of the given kinds, in table order."""
        return [c for c in self.features() if self.kinds[c] in kinds]

    def id_column(self) -> str | None:
        """The first ``id`` column (used as the patient group), or ``None``."""
        return next((c for c, k in self.kinds.items() if k == "id"), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, inverse of :meth:`from_dict`."""
        return {
            "kinds": dict(self.kinds),
            "target": self.target,
            "target_rule": self.target_rule,
            "task": self.task,
            "categories": {k: list(v) for k, v in self.categories.items()},
            "zero_means_missing": list(self.zero_means_missing),
            "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in self.ranges.items()},
            "labels": dict(self.labels),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TableSchema:
        """Rebuild a schema saved by :meth:`to_dict`."""
        return cls(
            kinds=dict(values["kinds"]),
            target=values.get("target"),
            target_rule=values.get("target_rule"),
            task=values.get("task", "auto"),
            categories={k: tuple(map(str, v)) for k, v in values.get("categories", {}).items()},
            zero_means_missing=tuple(values.get("zero_means_missing", ())),
            ranges={k: (float(v[0]), float(v[1])) for k, v in values.get("ranges", {}).items()},
            labels={str(k): str(v) for k, v in values.get("labels", {}).items()},
        )


# --------------------------------------------------------------------------- readers


def normalise_name(name: object) -> str:
    """``"Clump Thickness"`` -> ``"clump_thickness"``; keeps names unique-able and CLI-friendly."""
    text = re.sub(r"[^0-9a-zA-Z]+", "_", str(name).strip().strip("'\"")).strip("_").lower()
    return text or "column"


def _unique_names(names: Sequence[object]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for raw in names:
        name = normalise_name(raw)
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        else:
            seen[name] = 0
        out.append(name)
    return out


def read_table(
    path: str | Path, *, names: Sequence[str] | None = None, sep: str | None = None
) -> tuple[pd.DataFrame, dict[str, tuple[str, ...] | str]]:
    """Read a clinical table with every text cell kept as written.

    Args:
        path: ``.csv``, ``.tsv``/``.tab``, ``.txt``/``.data`` (delimiter sniffed), ``.arff``
            or ``.parquet``.
        names: column names for a header-less file. When ``None`` and the file has no
            header, a ``.names`` file beside it is parsed (UCI style), else columns are
            called ``col_1 .. col_n``.
        sep: the delimiter; ``None`` picks it from the suffix or sniffs it.

    Returns:
        ``(frame, declared)``: ``frame`` has object/string columns for text files;
        ``declared`` maps a column to the type its file declares (ARFF: a tuple of
        nominal levels or ``"numeric"``/``"date"``/``"string"``), empty otherwise.

    Raises:
        DataError: the file is missing, empty, or not a table this reader knows.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Table not found: {path}. Give the path of a CSV, TSV, ARFF or Parquet file.")
    suffix = path.suffix.lower()
    if suffix == ".arff":
        return read_arff(path)
    if suffix in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several unrelated types
            raise DataError(f"Could not read Parquet file {path}: {exc}") from None
        frame.columns = _unique_names(list(frame.columns))
        return frame, {}
    if suffix not in TABLE_SUFFIXES:
        raise DataError(
            f"Unknown table format '{suffix}' for {path}. Use one of: {', '.join(TABLE_SUFFIXES)}."
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise DataError(f"Table {path} is empty.")
    if sep is None:
        sep = "\t" if suffix in (".tsv", ".tab") else _sniff_delimiter(text)
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=sep, skipinitialspace=False) if any(r)]
    if not rows:
        raise DataError(f"Table {path} has no data rows: every cell is empty. Check the file and its delimiter.")
    width = max(len(r) for r in rows)
    has_header = names is None and _looks_like_header(rows)
    if has_header:
        header, rows = rows[0], rows[1:]
    elif names is not None:
        header = list(names)
    else:
        header = _names_beside(path, width) or [f"col_{i + 1}" for i in range(width)]
    if len(header) != width:
        raise DataError(
            f"{path} has {width} columns but {len(header)} names were given ({', '.join(map(str, header))}). "
            "Give one name per column."
        )
    rows = [r + [""] * (width - len(r)) for r in rows]
    frame = pd.DataFrame(rows, columns=_unique_names(header), dtype=object)
    return frame, {}


def _sniff_delimiter(text: str) -> str:
    sample = "\n".join(text.splitlines()[:50])
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _looks_like_header(rows: list[list[str]]) -> bool:
    """A first row is a header when none of its cells is a number but later rows have numbers."""
    if len(rows) < 2:
        return True
    first = [c.strip() for c in rows[0]]
    if any(_is_number(c) for c in first if c):
        return False
    later = [c.strip() for r in rows[1:6] for c in r]
    return any(_is_number(c) for c in later) or len(set(first)) == len(first)


def read_arff(path: str | Path) -> tuple[pd.DataFrame, dict[str, tuple[str, ...] | str]]:
    """Read an ARFF file (Weka's format) keeping cells as written; see :func:`read_table`.

    A small parser rather than ``scipy.io.arff``: real ARFF files (the UCI kidney data)
    carry tabs and spaces inside values and extra fields that scipy refuses outright.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    names: list[str] = []
    declared: dict[str, tuple[str, ...] | str] = {}
    data_start = None
    for number, line in enumerate(lines):
        stripped = line.strip()
        low = stripped.lower()
        if not stripped or stripped.startswith("%"):
            continue
        if low.startswith("@attribute"):
            match = re.match(r"@attribute\s+('[^']*'|\"[^\"]*\"|\S+)\s+(.*)$", stripped, flags=re.IGNORECASE)
            if match is None:
                raise DataError(f"{path}:{number + 1}: cannot parse attribute line {stripped!r}.")
            name = match.group(1).strip("'\"")
            spec = match.group(2).strip()
            names.append(name)
            if spec.startswith("{"):
                levels = [v.strip().strip("'\"") for v in spec.strip("{} \t").split(",")]
                declared[name] = tuple(v for v in levels if v)
            else:
                declared[name] = spec.split()[0].lower()
        elif low.startswith("@data"):
            data_start = number + 1
            break
    if data_start is None or not names:
        raise DataError(f"{path} is not an ARFF file: no @attribute or @data section found.")
    body = "\n".join(ln for ln in lines[data_start:] if ln.strip() and not ln.lstrip().startswith("%"))
    rows = list(csv.reader(io.StringIO(body), quotechar="'"))
    width = len(names)
    fixed = []
    for row in rows:
        if len(row) > width and all(not c.strip() for c in row[width:]):
            row = row[:width]  # trailing comma(s)
        elif len(row) != width:
            logger.warning(
                "%s: a data row has %d fields, expected %d; padded/truncated.", path.name, len(row), width
            )
            row = (row + [""] * width)[:width]
        fixed.append(row)
    columns = _unique_names(names)
    frame = pd.DataFrame(fixed, columns=columns, dtype=object)
    declared = {new: declared[old] for old, new in zip(names, columns, strict=True)}
    return frame, declared


def read_names_file(path: str | Path, width: int | None = None) -> list[str] | None:
    """Column names from a UCI ``.names`` file, or ``None`` when none of the known layouts fits.

    Tried in order, keeping the first that gives ``width`` names (any count if ``width``
    is ``None``): the "-- 1. #3 (age)" list of the heart-disease file, a numbered
    attribute table ("1. Sample code number   id number"), C4.5 ``name: type.`` lines,
    then one name per line.
    """
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    candidates = [
        re.findall(r"--\s*\d+\.\s*#\d+\s*\((\w+)\)", text),
        _numbered_attributes(text),
        [
            m.group(1)
            for m in re.finditer(r"^\s*([^|:\s][^|:]*?)\s*:\s*[^:]+\.\s*$", text, flags=re.MULTILINE)
        ],
        [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("|", "#"))],
    ]
    for names in candidates:
        if names and (width is None or len(names) == width):
            return _unique_names(names)
    return None


def _numbered_attributes(text: str) -> list[str]:
    """Names from the first run of "1. Name    domain" lines numbered 1, 2, 3, ..."""
    start = text.lower().find("attribute information")
    section = text[start:] if start >= 0 else text
    names: list[str] = []
    for line in section.splitlines():
        match = re.match(r"^\s*(\d+)\.\s+([A-Za-z][A-Za-z0-9 ()/_-]*?)(?::|\s{2,}|$)", line)
        if match and int(match.group(1)) == len(names) + 1:
            names.append(match.group(2))
        elif names and match and int(match.group(1)) == 1:
            break
    return names


def _names_beside(path: Path, width: int) -> list[str] | None:
    candidates = [path.with_suffix(".names"), *sorted(path.parent.glob("*.names"))]
    for candidate in candidates:
        if candidate.is_file():
            names = read_names_file(candidate, width)
            if names:
                logger.info("Column names for %s taken from %s.", path.name, candidate.name)
                return names
    return None


# --------------------------------------------------------------------------- schema


def _tokens(series: pd.Series) -> pd.Series:
    return series.map(clean_token).dropna()


def _numeric(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce")


def infer_kind(name: str, series: pd.Series, declared: tuple[str, ...] | str | None = None) -> str:
    """Guess the kind of one column from its name, declared type and values.

    Rules, in order: an id-like name (``id``, ``*_id``, ``mrn``, ``sample_code``) -> ``id``;
    ARFF nominal levels -> binary (2), ordinal (numbers) or categorical; numbers with
    two values -> binary, whole numbers with 3-4 values -> categorical (codes such as
    chest-pain type), with 5-10 values -> ordinal, else numeric;
    dates -> date; text with two values -> binary; unique text -> id; other text ->
    categorical; a column with no values at all -> ignore.
    """
    if _ID_NAME.search(name):
        return "id"
    values = _tokens(series)
    if isinstance(declared, tuple):
        if len(declared) == 2:
            return "binary"
        return "ordinal" if all(_is_number(v) for v in declared) else "categorical"
    if values.empty:
        return "ignore"
    numbers = _numeric(values)
    if declared in ("numeric", "real", "integer"):
        return "binary" if numbers.nunique() <= 2 else "numeric"
    share_numeric = float(numbers.notna().mean())
    if share_numeric >= 0.95:
        distinct = numbers.dropna().unique()
        if len(distinct) <= 2:
            return "binary"
        whole = bool(np.all(np.asarray(distinct, dtype=float) == np.round(np.asarray(distinct, dtype=float))))
        if whole and len(distinct) <= 4:
            # 3-4 whole-number codes are usually nominal (chest-pain type, thal), not a scale
            return "categorical"
        return "ordinal" if whole and len(distinct) <= 10 else "numeric"
    if declared == "date" or _looks_like_dates(values):
        return "date"
    distinct_text = values.astype(str).unique()
    if len(distinct_text) <= 2:
        return "binary"
    if len(distinct_text) == len(values) and len(values) > 20:
        return "id"
    return "categorical"


def _looks_like_dates(values: pd.Series) -> bool:
    sample = values.astype(str).head(200)
    if not sample.str.contains(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}", regex=True).mean() > 0.9:
        return False
    parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
    return bool(parsed.notna().mean() > 0.9)


def pick_target(columns: Sequence[str], target: str | None) -> tuple[str, str | None]:
    """Resolve ``target`` (a column or ``"col>value"``) against the columns.

    With ``target=None`` a column named like a label (``target``, ``class``, ``outcome``,
    ``num`` ...) is used, else the last column.

    Returns:
        ``(column, rule)`` where ``rule`` is e.g. ``">0"`` or ``None``.

    Raises:
        DataError: the target column is not in the table (with a suggestion).
    """
    columns = list(columns)
    if target is None:
        column = next((a for a in _TARGET_ALIASES if a in columns), columns[-1])
        logger.info("No target given; using column '%s'.", column)
        return column, None
    rule = None
    match = _TARGET_RULE.match(target)
    column = target
    if match:
        column, rule = match.group("col"), match.group("op") + match.group("value")
    if column not in columns:
        normalised = normalise_name(column)
        if normalised in columns:
            column = normalised
        else:
            raise DataError(
                f"Target column '{column}' is not in the table.{did_you_mean(column, columns)} "
                f"Columns: {', '.join(columns)}."
            )
    return column, rule


def apply_target_rule(values: pd.Series, rule: str) -> pd.Series:
    """Turn a target column into 0/1 by a comparison such as ``">0"`` (missing stays missing)."""
    match = re.match(r"^(>=|<=|==|!=|>|<)(.+)$", rule.strip())
    if match is None:
        raise ConfigError(f"Target rule '{rule}' is not a comparison; write e.g. 'num>0' or 'class==4'.")
    op, raw = match.group(1), match.group(2).strip()
    tokens = values.map(clean_target_token)
    number = _numeric(pd.Series([raw])).iloc[0]
    if not pd.isna(number):
        left = _numeric(tokens)
        right: Any = float(number)
    else:
        left, right = tokens.astype("object"), raw
    result = {
        ">": lambda: left > right,
        "<": lambda: left < right,
        ">=": lambda: left >= right,
        "<=": lambda: left <= right,
        "==": lambda: left == right,
        "!=": lambda: left != right,
    }[op]()
    return result.astype(float).where(tokens.notna())


def infer_schema(
    frame: pd.DataFrame,
    *,
    target: str | None = None,
    declared: Mapping[str, tuple[str, ...] | str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TableSchema:
    """Infer a :class:`TableSchema` for ``frame``; ``overrides`` is a parsed YAML schema.

    Raises:
        DataError: the target column is missing.
        ConfigError: the overrides name unknown columns, kinds or keys.
    """
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(_SCHEMA_KEYS)
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(
            f"Unknown schema key '{key}'.{did_you_mean(key, _SCHEMA_KEYS)} "
            f"Known keys: {', '.join(_SCHEMA_KEYS)}."
        )
    declared = declared or {}
    target_column, rule = pick_target(frame.columns, overrides.get("target", target))
    kinds = {c: infer_kind(c, frame[c], declared.get(c)) for c in frame.columns}
    for column, kind in dict(overrides.get("columns") or {}).items():
        column = _known_column(column, frame.columns, "schema 'columns'")
        kind = kind.get("kind") if isinstance(kind, dict) else kind
        if kind not in KINDS:
            raise unknown_choice(f"column kind for '{column}'", str(kind), KINDS)
        kinds[column] = kind
    categories = {c: v for c, v in declared.items() if isinstance(v, tuple)}
    zero = tuple(
        _known_column(c, frame.columns, "zero_means_missing")
        for c in overrides.get("zero_means_missing") or ()
    )
    ranges: dict[str, tuple[float, float]] = {}
    for column, bounds in dict(overrides.get("ranges") or {}).items():
        column = _known_column(column, frame.columns, "schema 'ranges'")
        if not isinstance(bounds, list | tuple) or len(bounds) != 2:
            raise ConfigError(f"Range for '{column}' must be [low, high]; got {bounds!r}.")
        ranges[column] = (float(bounds[0]), float(bounds[1]))
    task = str(overrides.get("task", "binary" if rule else "auto"))
    return TableSchema(
        kinds=kinds,
        target=target_column,
        target_rule=rule,
        task=task,
        categories=categories,
        zero_means_missing=zero,
        ranges=ranges,
        labels={str(k): str(v) for k, v in dict(overrides.get("labels") or {}).items()},
    )


def _known_column(column: str, columns: Sequence[str], where: str) -> str:
    columns = list(columns)
    if column in columns:
        return column
    if normalise_name(column) in columns:
        return normalise_name(column)
    raise ConfigError(
        f"Column '{column}' named in {where} is not in the table.{did_you_mean(column, columns)} "
        f"Columns: {', '.join(columns)}."
    )


def load_schema_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML schema override file (data only) into a dict for :func:`infer_schema`."""
    from medpredict.config import read_yaml_mapping

    return read_yaml_mapping(path, "Schema file")


def load_table(
    path: str | Path,
    *,
    target: str | None = None,
    schema: str | Path | Mapping[str, Any] | None = None,
    names: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, TableSchema]:
    """Read a table and infer its schema in one call (the entry point most callers want).

    Args:
        path: the table file.
        target: target column or rule (``"num>0"``); a schema's ``target`` wins.
        schema: a YAML schema file or an already parsed mapping (see module docstring).
        names: column names for a header-less file (a schema's ``names`` also works).
    """
    overrides = load_schema_yaml(schema) if isinstance(schema, str | Path) else dict(schema or {})
    frame, declared = read_table(path, names=names or overrides.get("names"))
    result = infer_schema(frame, target=target, declared=declared, overrides=overrides)
    logger.info(
        "Read %s: %d rows, %d columns; target '%s'; kinds %s.",
        Path(path).name,
        len(frame),
        frame.shape[1],
        result.target,
        {k: sum(1 for v in result.kinds.values() if v == k) for k in KINDS if k in result.kinds.values()},
    )
    return frame, result


def with_kinds(schema: TableSchema, **kinds: str) -> TableSchema:
    """A copy of ``schema`` with some column kinds changed (handy in tests and notebooks)."""
    merged = dict(schema.kinds)
    merged.update(kinds)
    return replace(schema, kinds=merged)
