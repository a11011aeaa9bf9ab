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
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import Markup, escape

from medpredict.data.proxies import Proxy, target_proxies
from medpredict.records.cleaning import CleaningConfig, TableCleaner
from medpredict.records.tables import (
    TableSchema,
    apply_target_rule,
    clean_target_token,
    clean_token,
    label_variants,
    load_table,
    normalise_name,
)
from medpredict.report.i18n import Translator, translator
from medpredict.report.plots import Look, look_for, to_base64
from medpredict.report.render import bullets, data, fig, figs, h3, p, render_page, rich, table

logger = logging.getLogger(__name__)

_MAX_PLOTTED = 30


def check_table(
    path: str | Path,
    *,
    target: str | None = None,
    schema: str | Path | Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    cleaning: CleaningConfig | None = None,
    lang: str = "en",
) -> dict[str, Any]:
    """Check one table and, with ``out``, write the HTML + JSON report there.

    Args:
        path: the table (CSV/TSV/ARFF/Parquet/header-less with a names file).
        target: target column or rule (``"num>0"``); ``None`` guesses.
        schema: YAML schema file or mapping overriding the inferred schema.
        out: report folder; ``None`` only returns the result.
        lang: the language of the HTML page (``"en"`` or ``"zh"``); the JSON is English.

    Returns:
        The JSON-safe report: ``source, rows, columns, target, duplicates, columns_detail,
        findings`` (plain-language lines, most important first).

    Raises:
        DataError: the table cannot be read or has no such target.
        ConfigError: unknown ``lang``.
    """
    translator(lang)
    frame, table_schema = load_table(path, target=target, schema=schema)
    report = build_report(frame, table_schema, source=str(path), cleaning=cleaning)
    if out is not None:
        write_report(report, frame, table_schema, out, lang=lang)
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
    report["problems"] = _problems(report)
    report["ok"] = not report["problems"]
    return report


def _problems(report: Mapping[str, Any]) -> list[str]:
    """What stops a model being trained on the table at all (the findings are advice)."""
    problems = []
    target = report["target"]
    if not target.get("present", True):
        problems.append(f"the target column '{target['column']}' is not in the table")
    elif target.get("kind") == "classes" and len(target.get("counts") or {}) < 2:
        problems.append(f"the target '{target['column']}' has fewer than two classes")
    counts = target.get("counts") or {}
    for group in label_variants(pd.Series(list(counts), dtype=object)).values():
        problems.append("target values that differ only in case or spaces would train as separate classes: "
                        + ", ".join(f"'{v}' ({counts[v]} rows)" for v in group))
    usable = [
        c for c in report["columns_detail"]
        if c["kind"] not in ("target", "id", "ignore") and not c.get("dropped") and c["distinct"] > 1
    ]
    if not usable:
        problems.append("no column besides the target and ids carries information")
    return problems


@dataclass(frozen=True)
class TableCheckResult:
    """A table check's report and where it was written."""

    report: dict[str, Any]
    out: Path

    @property
    def ok(self) -> bool:
        return bool(self.report["ok"])

    @property
    def exit_code(self) -> int:
        """0 when the table can train a model, 1 when a problem stops it (as for images)."""
        return 0 if self.ok else 1

    def summary(self) -> str:
        report = self.report
        lines = [f"{report['rows']} rows, {report['columns']} columns; target {report['target'].get('column')}"]
        lines += [f"PROBLEM: {line}" for line in report["problems"]]
        lines += [f"- {line}" for line in report["findings"]]
        lines.append(f"Report: {self.out / 'table_check.html'} and {self.out / 'table_check.json'}")
        return "\n".join(lines)


def _proxies(frame: pd.DataFrame, schema: TableSchema) -> list[Proxy]:
    """Feature columns that restate a class target (see :mod:`medpredict.data.proxies`)."""
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


Finding = tuple[str, dict[str, Any], dict[str, Any]]  # (translation key, fields, fields from the data)


def _findings(report: Mapping[str, Any]) -> list[str]:
    """Plain-language findings in English (the JSON's wording), the most consequential first."""
    english = translator("en")
    return [_say(english, item, html=False) for item in _finding_items(report)]


def _finding_items(report: Mapping[str, Any]) -> list[Finding]:
    """The findings as (translation key, fields, data fields), the most consequential first.

    Data fields (column names, the tokens that meant "missing") are shown as they are in
    every language.
    """
    items: list[Finding] = []
    target = report["target"]
    if not target.get("present", True):
        items.append(("table.no_target", {}, {"column": target["column"]}))
    elif target.get("kind") == "classes":
        if target.get("missing"):
            items.append(("table.target_missing", {"n": target["missing"]}, {}))
        counts = target.get("counts") or {}
        for group in label_variants(pd.Series(list(counts))).values():
            values = ", ".join(f"'{v}' ({counts[v]} rows)" for v in group)
            items.append(("table.label_variants", {}, {"values": values}))
        if target.get("minority_percent") is not None and target["minority_percent"] < 20:
            items.append(("table.imbalanced", {"percent": target["minority_percent"]},
                          {"counts": str(target["counts"])}))
    for proxy in report.get("target_proxies") or []:
        items.append(("table.proxy", {"score": f"{proxy['balanced_accuracy']:.3f}"}, {"column": proxy["column"]}))
    dup = report["duplicates"]
    if dup["exact_rows"]:
        items.append(("table.exact_rows", {"n": dup["exact_rows"]}, {}))
    if dup.get("ids_repeated"):
        items.append(("table.ids_repeated", {"n": dup["ids_repeated"], "rows": dup["rows_with_repeated_id"],
                                             "differing": dup["repeated_ids_with_different_rows"]},
                      {"column": dup["id_column"]}))
    if dup.get("feature_rows_with_conflicting_target"):
        items.append(("table.conflicting", {"n": dup["feature_rows_with_conflicting_target"]}, {}))
    for col in report["columns_detail"]:
        name = col["column"]
        if col.get("dropped"):
            items.append(("table.column_empty", {}, {"column": name}))
            continue
        parts: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        if col["missing"]:
            tokens = ", ".join(f"'{k}' x{v}" for k, v in col["missing_tokens"].items())
            parts.append(("table.part_missing", {"n": col["missing"], "percent": col["missing_percent"]},
                          {"tokens": tokens}))
        if col.get("whitespace"):
            parts.append(("table.part_whitespace", {"n": col["whitespace"]},
                          {"examples": ", ".join(col.get("whitespace_examples", []))}))
        if col.get("unparseable"):
            parts.append(("table.part_unparseable", {"n": col["unparseable"]}, {}))
        if col.get("implausible"):
            low, high = col.get("plausible_range") or (None, None)
            parts.append(("table.part_implausible", {"n": col["implausible"], "low": f"{low:g}", "high": f"{high:g}"},
                          {}))
        if col.get("outliers"):
            parts.append(("table.part_outliers", {"n": col["outliers"]}, {}))
        if col.get("unseen"):
            parts.append(("table.part_unseen", {"n": col["unseen"]}, {}))
        if col["distinct"] == 1:
            parts.append(("table.part_constant", {}, {}))
        if parts:
            items.append(("table.column_line", {"parts": parts}, {"column": name}))
    if not items:
        items.append(("table.no_problems", {}, {}))
    return items


def _say(t: Translator, item: Finding, *, html: bool) -> Any:
    """One finding in ``t``'s language: plain text, or Markup with the data fields marked ``translate="no"``."""
    key, fields, data_fields = item
    if key == "table.column_line":
        joiner = t("punct.semicolon")
        parts = [_say(t, part, html=html) for part in fields["parts"]]
        if html:
            body = Markup(escape(joiner)).join(parts)
            return rich(t, key, data_fields=data_fields, parts=body)
        return t(key, parts=joiner.join(parts), **data_fields)
    if html:
        return rich(t, key, data_fields=data_fields, **fields)
    return t(key, **fields, **data_fields)


# --------------------------------------------------------------------------- output


def _figure_png(fig: Any, look: Look) -> bytes:
    return base64.b64decode(to_base64(fig, look))


def missingness_png(report: Mapping[str, Any], look: Look | None = None) -> bytes:
    """Horizontal bar chart: percentage missing per column."""
    from matplotlib.figure import Figure

    look = look or Look()
    cols = report["columns_detail"]
    fig = Figure(figsize=(7, 0.28 * len(cols) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    names = [c["column"] for c in cols][::-1]
    values = [c["missing_percent"] for c in cols][::-1]
    ax.barh(names, values, color=["#c0392b" if v > 20 else "#2e86c1" for v in values])
    ax.set_xlabel(look.t("table.plot_missing_axis"))
    ax.set_ylabel(look.t("table.plot_column_axis"))
    ax.set_xlim(0, max(5.0, max(values, default=0) * 1.1))
    ax.set_title(look.t("table.plot_missing_title"))
    return _figure_png(fig, look)


def distributions_png(frame: pd.DataFrame, schema: TableSchema, look: Look | None = None) -> bytes:
    """Small multiples: histograms of number columns, bar charts of category columns."""
    from matplotlib.figure import Figure

    look = look or Look()
    columns = [c for c in frame.columns if schema.kinds.get(c) != "id"][:_MAX_PLOTTED]
    n_cols = 5
    n_rows = max(1, int(np.ceil(len(columns) / n_cols)))
    fig = Figure(figsize=(3.0 * n_cols, 2.3 * n_rows), layout="constrained")
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
        title = look.t("table.plot_target_title", column=name) if name == schema.target else str(name)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(look.t("table.plot_rows_axis"), fontsize=7)
        ax.tick_params(labelsize=7)
    return _figure_png(fig, look)


def write_report(
    report: Mapping[str, Any], frame: pd.DataFrame, schema: TableSchema, out: str | Path, *, lang: str = "en"
) -> Path:
    """Write ``table_check.json``, ``table_check.html`` (in ``lang``) and the two PNGs into ``out``."""
    from medpredict.atomic import write_bytes, write_json, write_text

    translator(lang)  # an unknown language is refused before anything is written
    out = Path(out)
    look = look_for(lang)
    images = {
        "missingness.png": missingness_png(report, look),
        "distributions.png": distributions_png(frame, schema, look),
    }
    for name, png in images.items():
        write_bytes(out / name, png)
    write_json(out / "table_check.json", dict(report))
    write_text(out / "table_check.html", render_html(report, images, lang=lang))
    logger.info("Table check written to %s (%d findings).", out, len(report["findings"]))
    return out


def _token(value: str, t: Translator) -> str:
    return {"(empty)": t("table.token_empty"), "(blank)": t("table.token_blank")}.get(value, value)


def _target_counts(target: Mapping[str, Any], t: Translator) -> str:
    """The target's class counts, with the rule's "not ..." class worded in ``t``'s language."""
    rule = f"{target.get('column')}{target.get('rule')}" if target.get("rule") else None
    parts = []
    for key, count in (target.get("counts") or {}).items():
        name = t("table.not_rule", rule=rule) if rule and key == f"not {rule}" else key
        parts.append(f"{name}: {count}")
    return ", ".join(parts)


def render_html(report: Mapping[str, Any], images: Mapping[str, bytes], *, lang: str = "en") -> str:
    """A self-contained HTML page (images embedded) a clinician can read, in ``lang``."""
    t = translator(lang)
    rows = []
    for col in report["columns_detail"]:
        summary = col.get("summary")
        if summary:
            detail: Any = t("table.detail_numeric", median=f"{summary['median']:g}", q1=f"{summary['q1']:g}",
                            q3=f"{summary['q3']:g}", low=f"{summary['min']:g}", high=f"{summary['max']:g}")
        else:
            detail = data(", ".join(f"{_token(k, t)}: {v}" for k, v in col.get("top_values", {}).items()))
        problems = sum(col.get(k, 0) for k in ("whitespace", "unparseable", "implausible", "outliers"))
        rows.append([data(col["column"]), t.term("kind", col["kind"]),
                     f"{col['missing']} ({col['missing_percent']}%)", col["distinct"], problems, detail])
    target = report["target"]
    dup = report["duplicates"]
    name = Path(str(report["source"])).name
    if target.get("present", True) and target.get("kind") == "classes":
        target_line = rich(t, "table.target_line", data_fields={"column": target.get("column"),
                                                                "counts": _target_counts(target, t)})
    elif target.get("present", True):
        target_line = rich(t, "table.target_continuous", data_fields={"column": target.get("column")},
                           mean=f"{target.get('mean', float('nan')):.3g}",
                           median=f"{target.get('median', float('nan')):.3g}")
    else:
        target_line = rich(t, "table.no_target", data_fields={"column": target.get("column")})
    pictures = []
    for key, title_key in (("missingness.png", "table.plot_missing_title"),
                           ("distributions.png", "table.sec_distributions")):
        png = base64.b64encode(images[key]).decode()
        worst = max(report["columns_detail"], key=lambda c: c["missing_percent"], default=None)
        alt = (t("table.alt_missing", column=worst["column"], percent=worst["missing_percent"])
               if key == "missingness.png" and worst else t("table.alt_distributions", k=len(report["columns_detail"])))
        pictures.append(figs(fig(png, alt, t(title_key))))
    sections: list[dict[str, Any]] = [
        {"key": "summary", "title": t("table.sec_summary"), "blocks": [
            p(t("table.counts", rows=report["rows"], columns=report["columns"], exact=dup["exact_rows"])),
            p(target_line),
            h3(t("table.findings_title")),
            bullets([_say(t, item, html=True) for item in _finding_items(report)]),
        ]},
        {"key": "columns", "title": t("table.sec_columns"), "blocks": [
            table([t("table.col_column"), t("table.col_kind"), t("table.col_missing"), t("table.col_distinct"),
                   t("table.col_problems"), t("table.col_distribution")], rows, cls="wide"),
            p(t("table.note"), "note"),
        ]},
        {"key": "missing", "title": t("table.sec_missing"), "blocks": [pictures[0]]},
        {"key": "distributions", "title": t("table.sec_distributions"), "blocks": [pictures[1]]},
    ]
    return render_page("data_check.html.j2", lang=lang, title=t("table.title"), subtitle=name,
                       sections=[{**s, "blocks": [b for b in s["blocks"] if b]} for s in sections])


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
