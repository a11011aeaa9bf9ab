"""Data-quality report for a clinical table: what a clinician should know before modelling.

:func:`check_table` reads a table exactly as a model would, and writes
``table_check.json`` (machine-readable) and ``table_check.html`` (plain language, with
``missingness.png`` and ``distributions.png``). It reports missing values (and which
tokens meant "missing"), values with stray whitespace or tabs, text in number
columns, values outside plausible ranges, outliers, duplicate rows and ids, rows
whose features repeat with a different outcome, constant or empty columns and the
target's balance.

The counts come from the same :class:`~medpredict.records.cleaning.TableCleaner` that training
uses (fitted here on the whole table), so the report and the model agree on what is
missing, implausible or an outlier. Values of ``id`` columns are never shown.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medpredict.records.cleaning import CleaningConfig, TableCleaner
from medpredict.records.proxies import Proxy, target_proxies
from medpredict.records.tables import (
    TableSchema,
    apply_target_rule,
    clean_target_token,
    clean_token,
    label_variants,
    load_table,
    normalise_name,
)

logger = logging.getLogger(__name__)

_MAX_PLOTTED = 30


def check_table(
    path: str | Path,
    *,
    target: str | None = None,
    schema: str | Path | Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    cleaning: CleaningConfig | None = None,
) -> dict[str, Any]:
    """Check one table and, with ``out``, write the HTML + JSON report there.

    Args:
        path: the table (CSV/TSV/ARFF/Parquet/header-less with a names file).
        target: target column or rule (``"num>0"``); ``None`` guesses.
        schema: YAML schema file or mapping overriding the inferred schema.
        out: report folder; ``None`` only returns the result.

    Returns:
        The JSON-safe report: ``source, rows, columns, target, duplicates, columns_detail,
        findings`` (plain-language lines, most important first).

    Raises:
        DataError: the table cannot be read or has no such target.
    """
    frame, table_schema = load_table(path, target=target, schema=schema)
    report = build_report(frame, table_schema, source=str(path), cleaning=cleaning)
    if out is not None:
        write_report(report, frame, table_schema, out)
    return report


def build_report(
    frame: pd.DataFrame, schema: TableSchema, *, source: str, cleaning: CleaningConfig | None = None
) -> dict[str, Any]:
    """The report as a dict (no files written); see :func:`check_table`."""
    cleaner = TableCleaner(schema, cleaning)
    counts: dict[str, dict[str, int]] = {}
    dropped: dict[str, str] = {}
    try:
        cleaner.fit(frame)
        counts, dropped = cleaner.report_.columns, cleaner.report_.dropped
    except Exception as exc:  # the report must still come out for a table too broken to clean
        logger.warning("Cleaning the whole table failed (%s); counts below come from the raw cells.", exc)
    tokens = frame.apply(lambda col: col.map(clean_token))
    columns = []
    for name in frame.columns:
        kind = schema.kinds.get(name, "ignore")
        role = "target" if name == schema.target else kind
        raw = frame[name].astype("object")
        col_tokens = tokens[name]
        missing_raw = raw[col_tokens.isna()].map(
            lambda v: "(empty)" if _blank(v) else str(v).strip() or "(blank)"
        )
        info: dict[str, Any] = {
            "column": name,
            "kind": role,
            "missing": int(col_tokens.isna().sum()),
            "missing_percent": round(100.0 * float(col_tokens.isna().mean()), 1),
            "missing_tokens": {str(k): int(v) for k, v in missing_raw.value_counts().items()},
            "distinct": int(col_tokens.dropna().nunique()),
            **{
                k: int(v)
                for k, v in counts.get(name, {}).items()
                if k not in ("missing", "imputed", "sentinel")
            },
        }
        if kind != "id":
            whitespace = raw[raw.map(lambda v: isinstance(v, str) and v != v.strip())]
            if len(whitespace):
                info["whitespace_examples"] = [repr(v) for v in whitespace.unique()[:3]]
        if name in dropped:
            info["dropped"] = dropped[name]
        if kind in ("numeric", "ordinal") or (name == schema.target and _mostly_numeric(col_tokens)):
            numbers = pd.to_numeric(col_tokens, errors="coerce").dropna()
            if len(numbers):
                q = numbers.quantile([0.0, 0.25, 0.5, 0.75, 1.0]).to_list()
                info["summary"] = dict(zip(("min", "q1", "median", "q3", "max"), map(float, q), strict=True))
                info["summary"]["mean"] = float(numbers.mean())
            state = getattr(cleaner, "columns_", {}).get(name, {})
            info["plausible_range"] = state.get("range")
            info["outlier_fences"] = state.get("fence")
        elif kind in ("binary", "categorical") or name == schema.target:
            top = col_tokens.dropna().astype(str).value_counts().head(8)
            info["top_values"] = {str(k): int(v) for k, v in top.items()}
        columns.append(info)
    report = {
        "source": source,
        "rows": len(frame),
        "columns": int(frame.shape[1]),
        "schema": schema.to_dict(),
        "target": _target_summary(frame, schema),
        "duplicates": _duplicates(frame, schema, tokens),
        "columns_detail": columns,
        "target_proxies": [p.to_dict() for p in _proxies(frame, schema)],
    }
    report["findings"] = _findings(report)
    return report


def _proxies(frame: pd.DataFrame, schema: TableSchema) -> list[Proxy]:
    """Feature columns that restate a class target (see :mod:`medpredict.records.proxies`)."""
    column = schema.target
    if column is None or column not in frame.columns:
        return []
    if schema.target_rule:
        target = apply_target_rule(frame[column], schema.target_rule)
    else:
        target = frame[column].map(clean_target_token)
        if _mostly_numeric(target) and target.nunique() > 10:
            return []  # a continuous target: no classes to restate
    keep = target.notna().to_numpy()
    return target_proxies(frame.loc[keep], target[keep].astype(str).to_numpy(), schema.features())


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""


def _mostly_numeric(tokens: pd.Series) -> bool:
    values = tokens.dropna()
    return bool(len(values)) and float(pd.to_numeric(values, errors="coerce").notna().mean()) > 0.95


def _target_summary(frame: pd.DataFrame, schema: TableSchema) -> dict[str, Any]:
    column = schema.target
    if column is None or column not in frame.columns:
        return {"column": column, "present": False}
    if schema.target_rule:
        values = apply_target_rule(frame[column], schema.target_rule)
        rule = f"{column}{schema.target_rule}"
        counts = {f"not {rule}": int((values == 0).sum()), rule: int((values == 1).sum())}
    else:
        tokens = frame[column].map(clean_target_token).dropna()
        if _mostly_numeric(tokens) and tokens.nunique() > 10:
            numbers = pd.to_numeric(tokens, errors="coerce")
            return {
                "column": column,
                "present": True,
                "kind": "continuous",
                "missing": int(len(frame) - len(tokens)),
                "mean": float(numbers.mean()),
                "median": float(numbers.median()),
            }
        counts = {str(k): int(v) for k, v in tokens.astype(str).value_counts().items()}
    total = sum(counts.values())
    smallest = min(counts.values()) if counts else 0
    return {
        "column": column,
        "present": True,
        "kind": "classes",
        "rule": schema.target_rule,
        "counts": counts,
        "missing": int(len(frame) - total),
        "minority_percent": round(100.0 * smallest / total, 1) if total else None,
    }


def _duplicates(frame: pd.DataFrame, schema: TableSchema, tokens: pd.DataFrame) -> dict[str, Any]:
    as_text = tokens.astype(str)
    exact = as_text.duplicated(keep="first")
    features = schema.features()
    result: dict[str, Any] = {"exact_rows": int(exact.sum())}
    id_column = schema.id_column()
    if id_column is not None:
        ids = as_text[id_column]
        repeated = ids[ids.duplicated(keep=False)]
        result["id_column"] = id_column
        result["ids_repeated"] = int(repeated.nunique())
        result["rows_with_repeated_id"] = int(len(repeated))
        distinct_rows = as_text[ids.duplicated(keep=False)].drop_duplicates().groupby(id_column).size()
        result["repeated_ids_with_different_rows"] = int((distinct_rows > 1).sum())
    if features and schema.target in frame.columns:
        unique_rows = as_text.loc[~exact]
        same_features = unique_rows.groupby(features, dropna=False)[schema.target].nunique()
        result["feature_rows_repeated"] = int(unique_rows.duplicated(subset=features).sum())
        result["feature_rows_with_conflicting_target"] = int((same_features > 1).sum())
    return result


def _findings(report: Mapping[str, Any]) -> list[str]:
    """Plain-language findings, the most consequential first."""
    lines: list[str] = []
    target = report["target"]
    if not target.get("present", True):
        lines.append(f"The target column '{target['column']}' is not in the table.")
    elif target.get("kind") == "classes":
        if target.get("missing"):
            lines.append(
                f"{target['missing']} row(s) have no target value; they cannot be used for training."
            )
        for group in label_variants(pd.Series(list(target.get("counts") or {}))).values():
            lines.append(
                "Target values that differ only in case or spaces would be separate classes: "
                + ", ".join(f"'{v}' ({target['counts'][v]} rows)" for v in group)
                + ". Make them one spelling before training."
            )
        if target.get("minority_percent") is not None and target["minority_percent"] < 20:
            lines.append(
                f"The target is imbalanced: the smallest class is {target['minority_percent']}% of rows "
                f"({target['counts']}). Report sensitivity and specificity, not only accuracy."
            )
    for proxy in report.get("target_proxies") or []:
        lines.append(
            f"Possible leakage: column '{proxy['column']}' predicts the target almost perfectly on its own "
            f"(balanced accuracy {proxy['balanced_accuracy']:.3f} in cross-validation). If it restates the outcome "
            "or is only known after it, leave it out of the model (mark it 'ignore' in a schema)."
        )
    dup = report["duplicates"]
    if dup["exact_rows"]:
        lines.append(
            f"{dup['exact_rows']} row(s) are exact duplicates of an earlier row; training removes them."
        )
    if dup.get("ids_repeated"):
        lines.append(
            f"{dup['ids_repeated']} id(s) in '{dup['id_column']}' appear more than once "
            f"({dup['rows_with_repeated_id']} rows; {dup['repeated_ids_with_different_rows']} of these ids "
            "carry differing values). Rows sharing an id are kept on one side of every split."
        )
    if dup.get("feature_rows_with_conflicting_target"):
        lines.append(
            f"{dup['feature_rows_with_conflicting_target']} combination(s) of feature values occur with "
            "different outcomes."
        )
    for col in report["columns_detail"]:
        name, parts = col["column"], []
        if col.get("dropped"):
            lines.append(f"{name}: no values at all; the column cannot be used.")
            continue
        if col["missing"]:
            tokens = ", ".join(f"'{k}' x{v}" for k, v in col["missing_tokens"].items())
            parts.append(f"{col['missing']} missing ({col['missing_percent']}%; written as {tokens})")
        if col.get("whitespace"):
            examples = ", ".join(col.get("whitespace_examples", []))
            parts.append(f"{col['whitespace']} value(s) with stray spaces or tabs (e.g. {examples})")
        if col.get("unparseable"):
            parts.append(f"{col['unparseable']} value(s) that are not numbers")
        if col.get("implausible"):
            low, high = col.get("plausible_range") or (None, None)
            parts.append(f"{col['implausible']} value(s) outside the plausible range [{low:g}, {high:g}]")
        if col.get("outliers"):
            parts.append(f"{col['outliers']} outlier(s) beyond the IQR fences")
        if col.get("unseen"):
            parts.append(f"{col['unseen']} value(s) outside the declared categories")
        if col["distinct"] == 1:
            parts.append("a single value (constant, carries no information)")
        if parts:
            lines.append(f"{name}: " + "; ".join(parts) + ".")
    if not lines:
        lines.append("No problems found.")
    return lines


# --------------------------------------------------------------------------- output


def _figure_png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def missingness_png(report: Mapping[str, Any]) -> bytes:
    """Horizontal bar chart: percentage missing per column."""
    from matplotlib.figure import Figure

    cols = report["columns_detail"]
    fig = Figure(figsize=(7, 0.28 * len(cols) + 1.2))
    ax = fig.add_subplot()
    names = [c["column"] for c in cols][::-1]
    values = [c["missing_percent"] for c in cols][::-1]
    ax.barh(names, values, color=["#c0392b" if v > 20 else "#2e86c1" for v in values])
    ax.set_xlabel("% of rows missing")
    ax.set_xlim(0, max(5.0, max(values, default=0) * 1.1))
    ax.set_title("Missing values per column")
    return _figure_png(fig)


def distributions_png(frame: pd.DataFrame, schema: TableSchema) -> bytes:
    """Small multiples: histograms of number columns, bar charts of category columns."""
    from matplotlib.figure import Figure

    columns = [c for c in frame.columns if schema.kinds.get(c) != "id"][:_MAX_PLOTTED]
    n_cols = 5
    n_rows = max(1, int(np.ceil(len(columns) / n_cols)))
    fig = Figure(figsize=(3.0 * n_cols, 2.2 * n_rows))
    for i, name in enumerate(columns):
        ax = fig.add_subplot(n_rows, n_cols, i + 1)
        tokens = frame[name].map(clean_token).dropna()
        numbers = pd.to_numeric(tokens, errors="coerce").dropna()
        if schema.kinds.get(name) in ("numeric", "ordinal") and len(numbers):
            ax.hist(numbers, bins=20, color="#2e86c1")
        else:
            top = tokens.astype(str).value_counts().head(8)
            ax.bar(range(len(top)), top.to_numpy(), color="#7d3c98")
            ax.set_xticks(range(len(top)), [t[:8] for t in top.index], rotation=45, fontsize=7)
        ax.set_title(name + (" (target)" if name == schema.target else ""), fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _figure_png(fig)


def write_report(
    report: Mapping[str, Any], frame: pd.DataFrame, schema: TableSchema, out: str | Path
) -> Path:
    """Write ``table_check.json``, ``table_check.html`` and the two PNGs into ``out``."""
    from medpredict.atomic import write_bytes, write_json, write_text

    out = Path(out)
    images = {
        "missingness.png": missingness_png(report),
        "distributions.png": distributions_png(frame, schema),
    }
    for name, data in images.items():
        write_bytes(out / name, data)
    write_json(out / "table_check.json", dict(report))
    write_text(out / "table_check.html", render_html(report, images))
    logger.info("Table check written to %s (%d findings).", out, len(report["findings"]))
    return out


def render_html(report: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    """A self-contained HTML page (images embedded) a clinician can read."""
    esc = html.escape
    findings = "".join(f"<li>{esc(line)}</li>" for line in report["findings"])
    rows = []
    for col in report["columns_detail"]:
        summary = col.get("summary")
        if summary:
            detail = (
                f"median {summary['median']:g} (IQR {summary['q1']:g}-{summary['q3']:g}), "
                f"range {summary['min']:g}-{summary['max']:g}"
            )
        else:
            detail = ", ".join(f"{k}: {v}" for k, v in col.get("top_values", {}).items())
        problems = sum(col.get(k, 0) for k in ("whitespace", "unparseable", "implausible", "outliers"))
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{esc(str(v))}</td>"
                for v in (
                    col["column"],
                    col["kind"],
                    f"{col['missing']} ({col['missing_percent']}%)",
                    col["distinct"],
                    problems,
                    detail,
                )
            )
            + "</tr>"
        )
    target = report["target"]
    target_text = ", ".join(f"{k}: {v}" for k, v in target.get("counts", {}).items()) or esc(str(target))
    dup = report["duplicates"]
    pictures = "".join(
        f'<h2>{esc(title)}</h2><img alt="{esc(title)}" src="data:image/png;base64,'
        f'{base64.b64encode(images[name]).decode()}">'
        for name, title in (("missingness.png", "Missing values"), ("distributions.png", "Distributions"))
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Data check: {esc(Path(report["source"]).name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;width:100%;font-size:14px}}td,th{{border:1px solid #ccc;padding:4px 6px}}
th{{background:#f0f3f6;text-align:left}}li{{margin:.3em 0}}img{{max-width:100%}}</style></head><body>
<h1>Data check: {esc(Path(report["source"]).name)}</h1>
<p>{report["rows"]} rows, {report["columns"]} columns. Target: <b>{esc(str(target.get("column")))}</b>
{esc(" (" + str(target.get("rule")) + ")") if target.get("rule") else ""} &mdash; {esc(target_text)}.
Exact duplicate rows: {dup["exact_rows"]}.</p>
<h2>What to look at</h2><ul>{findings}</ul>
<h2>Columns</h2><table><tr><th>column</th><th>kind</th><th>missing</th><th>distinct</th>
<th>problem values</th><th>distribution</th></tr>{"".join(rows)}</table>
{pictures}
<p><small>Missing tokens, stray whitespace, implausible values and outliers are counted exactly as the
model's cleaner treats them. Id values are never shown.</small></p>
</body></html>
"""


def looks_like_table(path: str | Path) -> bool:
    """True for a clinical table rather than an image manifest, for ``medpredict data check``.

    ``.tsv``, ``.tab``, ``.arff``, ``.parquet``, ``.data`` and ``.txt`` files are tables; a
    ``.csv`` is a table unless its header names an image-path column.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab", ".arff", ".parquet", ".pq", ".data", ".txt"):
        return True
    if suffix != ".csv" or not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as handle:
        header = [normalise_name(c) for c in handle.readline().split(",")]
    return not any(c in ("image_path", "image", "path", "file", "filename", "dicom_path") for c in header)
