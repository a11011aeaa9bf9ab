"""The self-contained ``report.html`` (plus ``metrics.json`` and the model card).

Everything is inline: CSS in a ``<style>`` block and every figure as a base64 PNG, so
the file opens offline and can be archived or e-mailed as it is. Every section is
always present; a section without data says why, so a reader never wonders whether
something was forgotten. Each figure has a one-line plain-language caption.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medpredict.atomic import write_json, write_text
from medpredict.report import plots
from medpredict.report.evaluation import evaluation_to_json
from medpredict.report.i18n import translator
from medpredict.report.model_card import _fmt, build_model_card, headline_rows, limitations, tripod_items

logger = logging.getLogger(__name__)

SECTIONS = ("summary", "data", "performance", "calibration", "threshold", "decision", "uncertainty",
            "subgroups", "shift", "explanations", "training", "limitations", "tripod")

_CSS = """
:root { --ink:#1b1f24; --muted:#5b6470; --line:#dfe3e8; --accent:#1f5fa8; --bg:#f6f8fa; --ok:#2e8b57;
        --bad:#c0392b; }
* { box-sizing: border-box; }
body { margin:0; font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       "Noto Sans CJK SC", "Microsoft YaHei", sans-serif; color:var(--ink); background:var(--bg);
       line-height:1.45; font-size:15px; }
header { background:#163e6b; color:white; padding:22px 32px; }
header h1 { margin:0 0 4px; font-size:24px; font-weight:600; }
header p { margin:0; color:#cfdced; font-size:14px; }
nav { background:white; border-bottom:1px solid var(--line); padding:8px 32px; font-size:13px; }
nav a { color:var(--accent); text-decoration:none; margin-right:14px; white-space:nowrap; }
main { max-width:1100px; margin:0 auto; padding:8px 24px 40px; }
section { background:white; border:1px solid var(--line); border-radius:8px; padding:18px 22px;
          margin:18px 0; }
h2 { margin:0 0 10px; font-size:19px; color:#163e6b; }
p.lead { color:var(--muted); margin-top:0; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin:10px 0; }
.card { flex:1 1 150px; border:1px solid var(--line); border-radius:8px; padding:10px 14px;
        background:#fbfcfd; }
.card .k { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.03em; }
.card .v { font-size:24px; font-weight:600; }
.card .c { font-size:12px; color:var(--muted); }
table { border-collapse:collapse; width:100%; font-size:14px; margin:8px 0; }
th, td { border-bottom:1px solid var(--line); padding:6px 8px; text-align:left; vertical-align:top; }
th { background:#f0f3f6; font-weight:600; }
td.num { font-variant-numeric: tabular-nums; }
.figs { display:flex; flex-wrap:wrap; gap:16px; }
figure { margin:0; flex:1 1 440px; max-width:100%; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:6px; background:white; }
figcaption { font-size:13px; color:var(--muted); margin-top:4px; }
.ok { color:var(--ok); font-weight:600; } .bad { color:var(--bad); font-weight:600; }
.na { color:var(--muted); font-style:italic; }
.note { font-size:13px; color:var(--muted); }
ul.flags li { margin:3px 0; }
footer { text-align:center; color:var(--muted); font-size:12px; padding:20px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _img(b64: str | None, caption: str, alt: str) -> str:
    if not b64:
        return ""
    return (f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _na(t: Callable[..., str], reason: str = "") -> str:
    return f'<p class="na">{_e(t("not_available"))}{": " + _e(reason) if reason else ""}</p>'


def _ci_text(ci: Any, pct: bool) -> str:
    return f"{_fmt(ci[0], None, pct)} - {_fmt(ci[1], None, pct)}" if ci else "n/a"


def _badge(passed: bool, t: Callable[..., str]) -> str:
    return f'<span class="{"ok" if passed else "bad"}">{_e(t("passed") if passed else t("failed"))}</span>'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{_e(title)}</h2>{body}</section>'


# ---------------------------------------------------------------- sections


def _summary(ev: dict[str, Any], t: Callable[..., str]) -> str:
    run = ev.get("run") or {}
    cards = []
    for key, value, ci, pct in headline_rows(ev)[:4]:
        v = _fmt(value, None, pct)
        c = f"{t('ci')}: {_fmt(ci[0], None, pct)} - {_fmt(ci[1], None, pct)}" if ci else ""
        cards.append(f'<div class="card"><div class="k">{_e(t(key))}</div><div class="v">{_e(v)}</div>'
                     f'<div class="c">{_e(c)}</div></div>')
    facts = [[t("model"), run.get("model_name") or "n/a"], [t("dataset"), run.get("dataset") or "n/a"],
             [t("task"), f"{ev['task']}: {', '.join(ev['labels'])}"],
             [t("intended_use"), run.get("intended_use") or t("intended_use_default")]]
    if ev.get("threshold"):
        facts.append([t("threshold_value"), f"{ev['threshold']['value']:.4f}"])
    facts += [[f"{t('provenance')}: {t('prov_' + key)}", text] for key, text in (run.get("provenance") or {}).items()]
    warnings = "".join(f"<li>{_e(w)}</li>" for w in ev.get("warnings") or [])
    lead = t("summary_lead_elsewhere") if run.get("trained_by") == "elsewhere" else t("summary_lead")
    return (f'<p class="lead">{_e(lead)}</p><div class="cards">{"".join(cards)}</div>'
            + _table([t("metric"), t("value")], facts)
            + (f'<ul class="flags note">{warnings}</ul>' if warnings else ""))


def _data(ev: dict[str, Any], t: Callable[..., str]) -> str:
    run = ev.get("run") or {}
    rows = []
    splits = run.get("splits") or {}
    order = [s for s in ("train", "val", "test") if s in splits] + [s for s in splits if s not in
                                                                       ("train", "val", "test")]
    for name in order:
        info = splits[name]
        prev = info.get("prevalence")
        rows.append([name, info.get("n", "n/a"), info.get("n_patients", "n/a"),
                     info.get("n_positive", info.get("class_counts", "n/a")),
                     _fmt(prev, pct=True) if prev is not None else "n/a"])
    extra = ""
    if run.get("data_source") or run.get("citation"):
        extra = f'<p class="note">{_e(run.get("data_source") or "")} {_e(run.get("citation") or "")}</p>'
    return _table([t("split"), t("rows"), t("patients"), t("events"), t("prevalence")], rows) + extra


def _performance(ev: dict[str, Any], t: Callable[..., str]) -> str:
    m = ev["metrics"]
    rows = [[t(k), _fmt(v, None, pct), _ci_text(ci, pct)] for k, v, ci, pct in headline_rows(ev)]
    unit = t("unit_patient") if m.get("bootstrap_unit") == "patient" else t("unit_image")
    note = t("ci_note", n_boot=m.get("n_boot"), unit=unit, skipped=m.get("n_boot_skipped", 0))
    figs = []
    curves = ev.get("curves")
    if curves:
        threshold = ev.get("threshold") or {}
        operating = None
        if threshold and m.get("specificity") is not None and np.isfinite(m["specificity"]):
            operating = (1.0 - m["specificity"], m["sensitivity"])
        figs.append(_img(plots.roc_plot(curves["roc"], curves.get("roc_band"), m["auc"], m.get("auc_ci"),
                                        operating), t("cap_roc"), "ROC curve"))
        figs.append(_img(plots.pr_plot(curves["pr"]), t("cap_pr"), "Precision-recall curve"))
    cm_png = plots.confusion_plot(m["confusion_matrix"], ev["labels"])
    figs.append(_img(cm_png, t("cap_cm"), "Confusion matrix"))
    per_class = ""
    if ev["task"] != "binary":
        per_class = _table([t("level"), "n", t("auc"), t("sensitivity"), t("specificity")], [
            [lab, pc["n"], _fmt(pc["auc"], pc.get("auc_ci")),
             _fmt(pc["sensitivity"], pc.get("sensitivity_ci"), True),
             _fmt(pc["specificity"], pc.get("specificity_ci"), True)] for lab, pc in m["per_class"].items()])
    return (_table([t("metric"), t("value"), t("ci")], rows) + per_class + f'<p class="note">{_e(note)}</p>'
            + f'<div class="figs">{"".join(figs)}</div>')


def _calibration(ev: dict[str, Any], t: Callable[..., str]) -> str:
    cal = ev.get("calibration") or {}
    if not cal.get("test"):
        return _na(t)
    # plot legends stay English (the PNG must render without CJK fonts); the table is translated
    if cal.get("test_uncalibrated"):
        curves = {"before calibration": cal["test_uncalibrated"], "after calibration": cal["test"]}
        names = [t("before"), t("after")]
    else:
        curves, names = {"test": cal["test"]}, ["test"]
    rows = []
    for name, summary in zip(names, curves.values(), strict=True):
        rows.append([name, _fmt(summary["ece"]), _fmt(summary["slope"]), _fmt(summary["intercept"]),
                     _fmt(summary["calibration_in_the_large"]), _fmt(summary["brier"])])
    table = _table(["", t("ece"), t("slope"), t("intercept"), t("citl"), "Brier"], rows)
    method = (f'<p>{_e(t("calibrator"))}: <b>{_e(cal.get("method") or t("none"))}</b> '
              f'({_e(cal.get("scope"))})</p>')
    fig = _img(plots.reliability_plot(curves), t("cap_reliability"), "Reliability diagram")
    return method + table + f'<div class="figs">{fig}</div>'


def _threshold(ev: dict[str, Any], t: Callable[..., str]) -> str:
    info = ev.get("threshold")
    if not info:
        return _na(t, "multiclass: the most probable class is reported")
    rows = [[t("threshold_value"), f"{info['value']:.4f}"], [t("threshold_method"), info["method"]],
            [t("threshold_source"), info["chosen_on"]],
            [t("val_sens"), _fmt(info.get("val_sensitivity"), pct=True)],
            [t("val_spec"), _fmt(info.get("val_specificity"), pct=True)]]
    text = {"default": t("threshold_default"), "given": t("threshold_given")}.get(
        info["chosen_on"], t("threshold_never_test"))
    fig = ""
    if ev.get("curves"):
        fig = _img(plots.threshold_plot(ev["curves"]["threshold_sweep"], info["value"]), t("cap_threshold"),
                   "Threshold plot")
    return f"<p>{_e(text)}</p>" + _table([t("metric"), t("value")], rows) + f'<div class="figs">{fig}</div>'


def _decision(ev: dict[str, Any], t: Callable[..., str]) -> str:
    curve = ev.get("decision_curve")
    if not curve:
        return _na(t, "binary tasks with both classes in the test set only")
    rng = curve.get("useful_range")
    text = t("useful_range", lo=rng[0], hi=rng[1]) if rng else t("useful_none")
    fig = _img(plots.decision_plot(curve), t("cap_decision"), "Decision curve")
    return f'<p>{_e(text)}</p><div class="figs">{fig}</div>'


def _uncertainty(ev: dict[str, Any], t: Callable[..., str]) -> str:
    parts = []
    conf = ev.get("conformal")
    if conf:
        parts.append("<p>" + _e(t("conformal_line", target=conf["target_coverage"], coverage=conf["coverage"],
                                   size=conf["mean_size"], single=conf["singleton_rate"],
                                   empty=conf["empty_rate"])) + "</p>")
    referral = ev.get("referral")
    if referral and referral.get("rows"):
        rows = referral["rows"]
        last = rows[-1]
        parts.append("<p>" + _e(t("referral_line", rate=last["referral_rate"], acc0=rows[0]["accuracy_kept"],
                                   acc1=last["accuracy_kept"])) + "</p>")
        fig = _img(plots.referral_plot(rows), t("cap_referral"), "Referral curve")
        parts.append(f'<div class="figs">{fig}</div>')
    return "".join(parts) or _na(t)


def _subgroups(ev: dict[str, Any], t: Callable[..., str]) -> str:
    rows = ev.get("subgroups")
    if not rows:
        return _na(t, "no subgroup columns given")
    status = {"too_few": t("status_too_few"), "one_class": t("status_one_class"), "ok": "ok"}
    binary = ev["task"] == "binary"
    header = ["", t("level"), "n", t("patients"), t("auc")] + ([t("sensitivity"), t("specificity")] if binary
                                                               else [t("accuracy")]) + [t("status")]
    body = []
    for r in rows:
        line = [r["column"], r["level"], r["n"], r["n_patients"], _fmt(r.get("auc"), r.get("auc_ci"))]
        if binary:
            line += [_fmt(r.get("sensitivity"), r.get("sensitivity_ci"), True),
                     _fmt(r.get("specificity"), r.get("specificity_ci"), True)]
        else:
            line += [_fmt(r.get("accuracy"), r.get("accuracy_ci"), True)]
        body.append(line + [status.get(r["status"], r["status"])])
    fig = _img(plots.forest_plot(rows, ev["metrics"]["auc"]), t("cap_forest"), "Subgroup forest plot")
    return _table(header, body) + f'<div class="figs">{fig}</div>'


def _agreement(ev: dict[str, Any], t: Callable[..., str]) -> str:
    agreement = ev.get("agreement")
    if not agreement or not agreement.get("rows"):
        return ""
    rows = []
    for row in agreement["rows"]:
        pct = row["metric"] != "auc"
        key = "coverage" if row["metric"] == "conformal coverage" else row["metric"]
        promised = (t("coverage_target", value=row["validation"]) if row["validation_ci"] is None
                    else _fmt(row["validation"], row["validation_ci"], pct))
        rows.append([t(key), promised, _fmt(row["test"], row["test_ci"], pct),
                     t("agrees") if row["agrees"] else t("differs")])
    flags = agreement.get("flags") or []
    text = "".join(f"<li>{_e(f)}</li>" for f in flags) if flags else f"<li>{_e(t('agreement_ok'))}</li>"
    return (f"<h3>{_e(t('agreement_title'))}</h3><p>{_e(t('agreement_lead'))}</p>"
            + _table(["", t("validation"), t("test"), ""], rows) + f'<ul class="flags">{text}</ul>')


def _shift(ev: dict[str, Any], t: Callable[..., str]) -> str:
    agreement = _agreement(ev, t)
    shift = ev.get("shift")
    if not shift:
        return agreement + f'<p class="na">{_e(t("shift_none"))}</p>'
    rows = [[t("prevalence"), f"{_fmt(shift.get('prevalence_reference'), pct=True)} -> "
                              f"{_fmt(shift.get('prevalence'), pct=True)}"],
            [t("citl"), _fmt(shift.get("calibration_in_the_large"))]]
    if shift.get("image_smd") is not None:
        rows.append(["image brightness SMD", _fmt(shift["image_smd"])])
    for col, smd in (shift.get("table_smd") or {}).items():
        rows.append([f"{col} SMD", _fmt(smd)])
    flags = shift.get("flags") or []
    text = "".join(f"<li>{_e(f)}</li>" for f in flags) if flags else f"<li>{_e(t('shift_ok'))}</li>"
    return agreement + _table([t("metric"), t("value")], rows) + f'<ul class="flags">{text}</ul>'


def _robustness(ev: dict[str, Any], t: Callable[..., str]) -> str:
    """The corruption table of ``evaluate --robustness`` (nothing when it was not run)."""
    robust = ev.get("robustness")
    if not robust or not robust.get("corruptions"):
        return ""
    rows = [[r["name"], r["severity"], _fmt(r["auc"]), _fmt(r["accuracy"], pct=True)] for r in robust["corruptions"]]
    rows += [[u["name"], "-", "n/a", u["reason"]] for u in robust.get("unavailable") or []]
    lead = t("robustness_lead", clean=robust["clean"]["auc"], drop=robust["mean_auc_drop"])
    return (f"<h3>{_e(t('robustness_title'))}</h3><p>{_e(lead)}</p>"
            + _table(["corruption", "severity", "AUC", t("accuracy")], rows))


def _example_images(examples: list[dict[str, Any]], t: Callable[..., str]) -> str:
    figs = []
    grid = plots.heatmap_grid(examples)
    if grid:
        figs.append(_img(grid, t("cap_heatmaps"), "Heat map examples"))
    for example in examples:
        if isinstance(example.get("image"), str):
            path = Path(example["image"])
            if path.is_file():
                b64 = base64.b64encode(path.read_bytes()).decode("ascii")
                figs.append(_img(b64, str(example.get("caption") or t("cap_heatmaps")), "Heat map example"))
            else:
                # the file name may carry a patient identifier, so it is not logged
                logger.warning("An explanation image file was not found; it is left out of the report.")
    return f'<div class="figs">{"".join(figs)}</div>' if figs else ""


def _explanations(ev: dict[str, Any], t: Callable[..., str]) -> str:
    ex = ev.get("explanations")
    if not ex:
        return _na(t, "no explanation examples given")
    parts = []
    checks = ex.get("checks")
    if checks:
        rnd = checks["randomisation"]
        def ok(passed: bool) -> str:
            return _badge(passed, t)

        flags = checks.get("shortcut_flags") or []
        parts.append(f"<h3>{_e(t('checks'))}</h3><table><tbody>"
                     f"<tr><td>{_e(t('randomisation'))}</td><td>{rnd['similarity']:.2f} "
                     f"(&lt; {rnd['max_similarity']:.2f}) {ok(rnd['passed'])}</td></tr>"
                     f"<tr><td>{_e(t('faithfulness'))}</td><td>{checks['faithfulness_mean']:.3f} "
                     f"{ok(checks['faithfulness_mean'] >= checks.get('min_faithfulness', 0.0))}</td></tr>"
                     f"<tr><td>{_e(t('shortcut'))}</td><td>{len(flags) or _e(t('none'))} "
                     f"{ok(not flags)}</td></tr>"
                     "</tbody></table>")
    parts.append(_example_images(ex.get("examples") or [], t))
    importance = ex.get("feature_importance")
    if importance:
        parts.append('<div class="figs">' + _img(plots.importance_plot(importance), t("cap_importance"),
                                                 "Feature importance") + "</div>")
    for local in ex.get("local") or []:
        rows = [[r["feature"], r["value"], f"{r['attribution']:+.3f}"] for r in local.get("rows", [])[:10]]
        parts.append(f"<h3>{_e(local.get('title', 'patient'))}: {local.get('prediction', 0):.1%}</h3>"
                     + _table(["feature", "value", "attribution"], rows))
    return "".join(parts) or _na(t)


def _training(ev: dict[str, Any], t: Callable[..., str]) -> str:
    curves = ev.get("training_curves")
    fig = plots.training_plot(curves) if curves else None
    return f'<div class="figs">{_img(fig, t("cap_training"), "Training curves")}</div>' if fig else _na(t)


def _limitations(ev: dict[str, Any], t: Callable[..., str]) -> str:
    items = "".join(f"<li>{_e(text)}</li>" for text in limitations(ev, t))
    return f"<p>{_e(t('limitations_auto'))}:</p><ul>{items}</ul>"


def _tripod(ev: dict[str, Any], t: Callable[..., str], lang: str) -> str:
    rows = [[i["item"], i["topic"], t(i["status"]), i["section"]] for i in tripod_items(ev, lang)]
    return (f'<p class="note">{_e(t("tripod_note"))}</p>'
            + _table([t("item"), t("topic"), t("status"), t("where")], rows)
            + '<p class="note">Collins GS et al. TRIPOD+AI statement. BMJ 2024;385:e078378.</p>')


def render_html(evaluation: dict[str, Any], *, lang: str = "en") -> str:
    """The report as one HTML string (see the module docstring).

    Raises:
        ConfigError: unknown ``lang``.
    """
    t = translator(lang)
    run = evaluation.get("run") or {}
    bodies = {
        "summary": _summary(evaluation, t), "data": _data(evaluation, t),
        "performance": _performance(evaluation, t), "calibration": _calibration(evaluation, t),
        "threshold": _threshold(evaluation, t), "decision": _decision(evaluation, t),
        "uncertainty": _uncertainty(evaluation, t), "subgroups": _subgroups(evaluation, t),
        "shift": _shift(evaluation, t) + _robustness(evaluation, t), "explanations": _explanations(evaluation, t),
        "training": _training(evaluation, t), "limitations": _limitations(evaluation, t),
        "tripod": _tripod(evaluation, t, lang),
    }
    nav = " ".join(f'<a href="#{key}">{_e(t("sec_" + key))}</a>' for key in SECTIONS)
    sections = "".join(_section(key, t("sec_" + key), bodies[key]) for key in SECTIONS)
    subtitle = " · ".join(str(run[k]) for k in ("model_name", "dataset", "created") if run.get(k))
    return (f'<!DOCTYPE html><html lang="{_e(lang)}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(t('title'))}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{_e(t('title'))}</h1><p>{_e(subtitle)}</p></header>"
            f'<nav aria-label="{_e(t("toc"))}">{nav}</nav><main>{sections}</main>'
            f"<footer>{_e(t('footer'))} medpredict</footer></body></html>")


def build_report(out_dir: str | Path, evaluation: dict[str, Any], *, lang: str = "en") -> Path:
    """Write ``report.html``, ``metrics.json``, ``model_card.md`` and ``model_card.json``.

    All four are written atomically into ``out_dir`` (created if needed).

    Returns:
        The path of ``report.html``.

    Raises:
        ConfigError: unknown ``lang``.
    """
    translator(lang)  # refuse an unknown language before writing anything
    out = Path(out_dir)
    page = render_html(evaluation, lang=lang)
    markdown, card = build_model_card(evaluation, lang=lang)
    write_json(out / "metrics.json", evaluation_to_json(evaluation))
    write_text(out / "model_card.md", markdown)
    write_json(out / "model_card.json", evaluation_to_json(card))
    path = write_text(out / "report.html", page)
    logger.info("Report written to %s (%d kB)", path, len(page) // 1024)
    return path
