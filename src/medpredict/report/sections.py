"""The evaluation report's sections as page blocks (:mod:`medpredict.report.render`).

One function per section turns the evaluation dict into blocks: what the reader sees, in
which words (through the translation table) and with which figure, caption and alt text.
:func:`report_sections` returns them in :data:`SECTIONS` order; :mod:`medpredict.report.html`
renders them. Fields newer evaluations carry (``units``, ``positive_label``,
``input_guard``, ``explanations.shortcut``, ``calibration.validation`` ...) are shown when
present and skipped when absent.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import numpy as np

from medpredict.report import plots
from medpredict.report.evaluation import with_bin_intervals
from medpredict.report.i18n import Translator
from medpredict.report.model_card import headline_rows, limitations, tripod_items
from medpredict.report.render import (
    bullets,
    ci_text,
    data,
    estimate,
    fig,
    figs,
    h3,
    na,
    num,
    p,
    pct,
    rich,
    table,
)

logger = logging.getLogger(__name__)

SECTIONS = ("summary", "data", "performance", "calibration", "threshold", "decision", "uncertainty",
            "subgroups", "shift", "explanations", "training", "limitations", "tripod")

#: Referral shares the report quotes (the curve runs to 50%, a share no service would refer).
REFERRAL_QUOTED = (0.1, 0.2)
#: |calibration-in-the-large| above this is called a systematic over- or under-estimate.
CITL_LIMIT = 0.05
#: A calibration slope outside this range is called too extreme / too moderate.
SLOPE_RANGE = (0.8, 1.25)

Block = dict[str, Any]


# ------------------------------------------------------------------ fields


def field(ev: dict[str, Any], name: str) -> Any:
    """A field at the top of the evaluation, or inside its ``metrics`` (either place is read)."""
    if ev.get(name) is not None:
        return ev[name]
    return (ev.get("metrics") or {}).get(name)


def units(ev: dict[str, Any]) -> str | None:
    """``"patient"`` or ``"image"`` when the evaluation says which unit its counts and CIs use."""
    value = field(ev, "units")
    return str(value) if value in ("patient", "image") else None


def positive_label(ev: dict[str, Any]) -> str | None:
    """The positive class of a binary task (given, else the second label by convention)."""
    if ev.get("task") != "binary":
        return None
    given = field(ev, "positive_label")
    return str(given) if given is not None else str(ev["labels"][1])


def negative_label(ev: dict[str, Any]) -> str | None:
    positive = positive_label(ev)
    if positive is None:
        return None
    others = [str(label) for label in ev["labels"] if str(label) != positive]
    return others[0] if others else None


def _resampled(ev: dict[str, Any], t: Translator) -> str:
    """How the intervals were made: "patients resampled" or "images resampled"."""
    unit = units(ev) or ev["metrics"].get("bootstrap_unit") or "patient"
    return t("ci_resampled_image") if unit == "image" else t("ci_resampled_patient")


# ------------------------------------------------------------------ sections


def _summary(ev: dict[str, Any], t: Translator, look: plots.Look) -> list[Block | None]:
    run = ev.get("run") or {}
    m = ev["metrics"]
    split = "external" if run.get("external") else (run.get("evaluated_split") or "test")
    split_name = t.term("headline_split", split)
    n, n_patients = m.get("n"), m.get("n_patients")
    positive = positive_label(ev)
    if units(ev) == "image":
        head = t("headline_images", split=split_name, n=n)
    else:
        head = t("headline_patients", split=split_name, n=n, patients=n_patients)
    if positive is not None and m.get("prevalence") is not None:
        cm = m.get("confusion_matrix") or [[0, 0], [0, 0]]
        head_rich = rich(t, "headline_positive", data_fields={"label": positive}, head=head,
                         positives=int(sum(cm[1])), prevalence=pct(m["prevalence"]))
    else:
        head_rich = rich(t, "headline_classes", head=head, k=len(ev["labels"]))
    blocks: list[Block | None] = [p(head_rich, "lead"), {"kind": "cards", "cards": _cards(ev, t)}]
    blocks.append(p(t("cards_note", resampled=_resampled(ev, t), n_boot=m.get("n_boot")), "note"))
    facts = _facts(ev, t)
    blocks.append(table([t("item_col"), t("value")], facts, cls="facts"))
    notes = _summary_warnings(ev, t)
    if notes:
        blocks.append(h3(t("warnings_title")))
        blocks.append(bullets(notes, "flags"))
    return blocks


def _cards(ev: dict[str, Any], t: Translator) -> list[dict[str, Any]]:
    m = ev["metrics"]
    positive, negative = positive_label(ev), negative_label(ev)
    keys: tuple[tuple[str, bool], ...] = (("auc", False), ("sensitivity", True), ("specificity", True),
                                          ("ppv", True), ("npv", True))
    if ev["task"] != "binary":
        keys = (("auc", False), ("accuracy", True), ("f1", False))
    cards = []
    for key, percent in keys:
        if key not in m:
            continue
        value = m.get(key)
        label: Any = t(f"card.{key}")
        meaning: Any = t(f"card.{key}_means")
        if positive is not None:
            fields = {"pos": positive, "neg": negative}
            label = rich(t, f"card.{key}", data_fields=fields)
            meaning = rich(t, f"card.{key}_means", data_fields=fields,
                           prevalence=pct(m.get("prevalence"), 0))
        bounds = ci_text(m.get(f"{key}_ci"), percent)
        cards.append({
            "label": label,
            "value": pct(value) if percent else num(value),
            "ci": t("card_ci", bounds=bounds) if bounds else "",
            "note": meaning,
        })
    return cards


def _facts(ev: dict[str, Any], t: Translator) -> list[list[Any]]:
    run = ev.get("run") or {}
    identity = run.get("identity") or {}
    model = identity.get("text") or " ".join(str(run[k]) for k in ("model_name", "model_version") if run.get(k))
    rows: list[list[Any]] = [[t("model"), data(model or "n/a")], [t("dataset"), data(run.get("dataset") or "n/a")]]
    positive = positive_label(ev)
    if positive is not None:
        rows.append([t("task"), rich(t, "task_binary", data_fields={"pos": positive,
                                                                    "neg": negative_label(ev) or ""})])
    else:
        rows.append([t("task"), rich(t, "task_multiclass", data_fields={"labels": ", ".join(map(str, ev["labels"]))},
                                     k=len(ev["labels"]))])
    rows.append([t("intended_use"), intended_use_text(run, t)])
    threshold = ev.get("threshold")
    if threshold:
        rows.append([t("threshold_value"), t("threshold_fact", value=threshold["value"],
                                             method=t.term("threshold_method", threshold["method"]))])
    # a model trained elsewhere: where each setting came from, as adopt recorded it
    for key, text in (run.get("provenance") or {}).items():
        rows.append([t("provenance_row", setting=t.term("provenance", key)), data(text)])
    return rows


def intended_use_text(run: dict[str, Any], t: Translator) -> Any:
    """The intended use: the owner's words (card file) as given, else the run's sentence, translated."""
    card = run.get("card") or {}
    if card.get("intended_use"):
        return data(card["intended_use"])
    given = run.get("intended_use")
    return t.message(str(given)) if given else t("intended_use_default")


def _summary_warnings(ev: dict[str, Any], t: Translator) -> list[Any]:
    notes: list[Any] = []
    if units(ev) == "image":
        notes.append(t("units_image_warning"))
    guard = field(ev, "input_guard")
    if guard:
        notes.append(t("input_guard_line", share=pct(guard.get("ood_flagged_share")),
                       threshold=num(guard.get("threshold")),
                       method=t.term("guard_method", guard.get("method", ""))))
    notes.extend(t.message(str(w)) for w in ev.get("warnings") or [])
    return notes


def _data(ev: dict[str, Any], t: Translator, look: plots.Look) -> list[Block | None]:
    run = ev.get("run") or {}
    splits = run.get("splits") or {}
    order = [s for s in ("train", "val", "test") if s in splits] + [s for s in splits if s not in
                                                                       ("train", "val", "test")]
    image_units = units(ev) == "image"
    header = [t("split"), t("rows")] + ([] if image_units else [t("patients")]) + [t("events"), t("prevalence")]
    rows = []
    for name in order:
        info = splits[name]
        prev = info.get("prevalence")
        row: list[Any] = [t.term("split", name), info.get("n", "n/a")]
        if not image_units:
            row.append(info.get("n_patients", "n/a") if info.get("n_patients") is not None else "n/a")
        positives = info.get("n_positive")
        if positives is None and info.get("class_counts") is not None:
            positives = data(" / ".join(map(str, info["class_counts"])))
        row += [positives if positives is not None else "n/a", pct(prev) if prev is not None else "n/a"]
        rows.append(row)
    blocks: list[Block | None] = [table(header, rows)]
    if image_units:
        blocks.append(p(t("data_units_image"), "warn"))
    positive = positive_label(ev)
    if positive is not None:
        blocks.append(p(rich(t, "data_events_note", data_fields={"pos": positive}), "note"))
    if run.get("data_source") or run.get("citation"):
        blocks.append(p(data(" ".join(str(run.get(k) or "") for k in ("data_source", "citation")).strip()), "note"))
    return blocks


def _performance(ev: dict[str, Any], t: Translator, look: plots.Look) -> list[Block | None]:
    m = ev["metrics"]
    positive = positive_label(ev)
    rows = []
    for key, value, ci, percent in headline_rows(ev):
        label: Any = t(key)
        if key == "sensitivity" and positive is not None:
            label = rich(t, "sensitivity_for", data_fields={"pos": positive})
        rows.append([label, pct(value) if percent else num(value), ci_text(ci, percent) or "n/a"])
    blocks: list[Block | None] = [table([t("metric"), t("value"), t("ci")], rows)]
    if ev["task"] != "binary":
        blocks.append(table([t("class_col"), "n", t("auc"), t("sensitivity"), t("specificity")], [
            [data(lab), pc["n"], estimate(pc["auc"], pc.get("auc_ci")),
             estimate(pc["sensitivity"], pc.get("sensitivity_ci"), True),
             estimate(pc["specificity"], pc.get("specificity_ci"), True)] for lab, pc in m["per_class"].items()]))
    blocks.append(p(t("ci_note", n_boot=m.get("n_boot"), resampled=_resampled(ev, t),
                      skipped=m.get("n_boot_skipped", 0)), "note"))
    figures = []
    curves = ev.get("curves")
    if curves:
        operating = None
        if ev.get("threshold") and m.get("specificity") is not None and np.isfinite(m["specificity"]):
            operating = (1.0 - m["specificity"], m["sensitivity"])
        auc_alt = t("alt.roc", auc=num(m["auc"]), ci=ci_text(m.get("auc_ci")) or "n/a",
                    sens=pct(m.get("sensitivity")), spec=pct(m.get("specificity")))
        figures.append(fig(plots.roc_plot(curves["roc"], curves.get("roc_band"), m["auc"], m.get("auc_ci"),
                                          operating, look=look), auc_alt, t("cap_roc")))
        pr = curves["pr"]
        figures.append(fig(plots.pr_plot(pr, look=look),
                           t("alt.pr", ap=num(pr["average_precision"]), prevalence=pct(pr["prevalence"])),
                           t("cap_pr", prevalence=pct(pr["prevalence"], 0))))
    figures.append(fig(plots.confusion_plot(m["confusion_matrix"], [str(x) for x in ev["labels"]], look=look),
                       _confusion_alt(ev, t), t("cap_cm")))
    blocks.append(figs(*figures))
    return blocks


def _confusion_alt(ev: dict[str, Any], t: Translator) -> str:
    cm = np.asarray(ev["metrics"]["confusion_matrix"], dtype=int)
    if ev["task"] == "binary" and cm.shape == (2, 2):
        return t("alt.cm_binary", tp=int(cm[1, 1]), pos=int(cm[1].sum()), tn=int(cm[0, 0]), neg=int(cm[0].sum()),
                 pos_label=positive_label(ev), neg_label=negative_label(ev))
    return t("alt.cm", correct=int(np.trace(cm)), n=int(cm.sum()), k=cm.shape[0])


def _calibration(ev: dict[str, Any], t: Translator, look: plots.Look) -> list[Block | None]:
    cal = ev.get("calibration") or {}
    if not cal.get("test"):
        return [na(t)]
    test = cal["test"] if cal["test"]["bins"] and "observed_ci" in cal["test"]["bins"][0] \
        else with_bin_intervals(cal["test"])
    method = cal.get("method") or "none"
    line = t("calibrator_line", method=t.term("calibrator", method), scope=t.term("scope", cal.get("scope") or ""))
    if cal.get("prior_correction"):
        line += " " + t("prior_correction")
    blocks: list[Block | None] = [p(line), _verdict(test, t)]
    columns: list[tuple[str, dict[str, Any]]] = [(t("cal_test_after") if cal.get("test_uncalibrated")
                                                  else t("cal_test"), test)]
    if cal.get("test_uncalibrated"):
        columns.append((t("cal_test_before"), cal["test_uncalibrated"]))
    validation = cal.get("validation") or cal.get("val")
    if validation:
        columns.append((t("cal_validation"), validation))
    rows = []
    for key, name in (("ece", t("ece")), ("slope", t("slope")), ("intercept", t("intercept")),
                      ("calibration_in_the_large", t("citl")), ("brier", t("brier"))):
        if any(summary.get(key) is not None for _, summary in columns):
            rows.append([name] + [num(summary.get(key)) for _, summary in columns])
    blocks.append(table([t("metric")] + [name for name, _ in columns], rows, cls="compact"))
    if cal.get("test_uncalibrated"):
        plot_curves = {look.t("plot.before_calibration"): with_bin_intervals(cal["test_uncalibrated"]),
                       look.t("plot.after_calibration"): test}
    else:
        plot_curves = {look.t("plot.test"): test}
    filled = [b for b in test["bins"] if b["n"]]
    outside = _bins_outside(test)
    blocks.append(figs(fig(plots.reliability_plot(plot_curves, look=look),
                           t("alt.reliability", ece=num(test.get("ece")), outside=outside, bins=len(filled)),
                           t("cap_reliability"))))
    blocks.append(h3(t("bins_title")))
    bin_rows = [[f"{b['lo']:.1f}–{b['hi']:.1f}", b["n"], pct(b["mean_predicted"]),
                 estimate(b["observed"], b.get("observed_ci"), True)] for b in filled]
    blocks.append(table([t("bin"), "n", t("mean_predicted"), t("observed_ci")], bin_rows, cls="compact"))
    return blocks


def _bins_outside(summary: dict[str, Any]) -> int:
    """Bins whose 95% Wilson interval of the observed frequency excludes the mean predicted risk."""
    count = 0
    for b in summary.get("bins") or []:
        ci = b.get("observed_ci")
        if b.get("n") and ci and not ci[0] <= b["mean_predicted"] <= ci[1]:
            count += 1
    return count


def _verdict(summary: dict[str, Any], t: Translator) -> Block:
    """The calibration verdict in words, from slope, calibration-in-the-large and the bin intervals."""
    slope, citl, ece = summary.get("slope"), summary.get("calibration_in_the_large"), summary.get("ece")
    filled = sum(1 for b in summary.get("bins") or [] if b.get("n"))
    outside = _bins_outside(summary)
    problems = []
    if slope is not None and np.isfinite(slope) and slope < SLOPE_RANGE[0]:
        problems.append(t("verdict_over_confident", slope=num(slope, 2)))
    if slope is not None and np.isfinite(slope) and slope > SLOPE_RANGE[1]:
        problems.append(t("verdict_under_confident", slope=num(slope, 2)))
    if citl is not None and np.isfinite(citl) and citl > CITL_LIMIT:
        problems.append(t("verdict_under_estimates", amount=pct(abs(citl))))
    if citl is not None and np.isfinite(citl) and citl < -CITL_LIMIT:
        problems.append(t("verdict_over_estimates", amount=pct(abs(citl))))
    if outside > max(1, filled // 5):
        problems.append(t("verdict_bins_outside", outside=outside, bins=filled))
    if not problems:
        return p(t("verdict_good", ece=num(ece), slope=num(slope, 2), inside=filled - outside, bins=filled), "ok")
    return p(t("verdict_poor", problems=t("punct.semicolon").join(problems), ece=num(ece)), "bad")


def _threshold(ev: dict[str, Any], t: Translator, look: plots.Look) -> list[Block | None]:
    info = ev.get("threshold")
    if not info:
        return [na(t, "na_multiclass_threshold")]
    m = ev["metrics"]
    value = info["value"]
    positive, negative = positive_label(ev) or "", negative_label(ev) or ""
    how_key = {"youden": "threshold_how_youden", "sensitivity": "threshold_how_sensitivity",
               "specificity": "threshold_how_specificity"}.get(info["method"], "threshold_how_fixed")
    if info["chosen_on"] in ("default", "given"):
        how_key = f"threshold_{info['chosen_on']}"
    how = t(how_key, value=value, target=pct(info.get("target"), 0))
    where = t("threshold_where_validation") if info["chosen_on"] == "validation" else ""
    blocks: list[Block | None] = [p(f"{how} {where}".strip())]
    cm = np.asarray(m.get("confusion_matrix") or [[0, 0], [0, 0]], dtype=int)
    if cm.shape == (2, 2):
        blocks.append(p(rich(t, "threshold_trades", data_fields={"pos": positive, "neg": negative},
                             value=f"{value:.3f}", tp=int(cm[1, 1]), pos_n=int(cm[1].sum()), fp=int(cm[0, 1]),
                             neg_n=int(cm[0].sum()), fn=int(cm[1, 0]), sens=pct(m.get("sensitivity")),
                             spec=pct(m.get("specificity")))))
    rows = [[t("threshold_value"), f"{value:.4f}"],
            [t("threshold_method"), t.term("threshold_method", info["method"])],
            [t("threshold_source"), t.term("chosen_on", info["chosen_on"])],
            [t("val_sens"), pct(info.get("val_sensitivity"))],
            [t("val_spec"), pct(info.get("val_specificity"))]]
    blocks.append(table([t("item_col"), t("value")], rows))
    if ev.get("curves"):
        blocks.append(figs(fig(plots.threshold_plot(ev["curves"]["threshold_sweep"], value, look=look),
                               t("alt.threshold", value=f"{value:.3f}", sens=pct(m.get("sensitivity")),
                                 spec=pct(m.get("specificity"))), t("cap_threshold"))))
    return blocks


def _decision(ev: dict[str, Any], t: Translator, look: plots.Look) -> list[Block | None]:
    curve = ev.get("decision_curve")
    if not curve:
        return [na(t, "na_decision")]
    rng = curve.get("useful_range")
    text = t("useful_range", lo=rng[0], hi=rng[1]) if rng else t("useful_none")
    alt = t("alt.decision_range", lo=pct(rng[0], 0), hi=pct(rng[1], 0)) if rng else t("alt.decision_none")
    return [p(text), figs(fig(plots.decision_plot(curve, look=look), alt, t("cap_decision")))]


def _uncertainty(ev: dict[str, Any], t: Translator, look: plots.Look) -> list[Block | None]:
    blocks: list[Block | None] = []
    conf = ev.get("conformal")
    if conf:
        blocks.append(p(t("conformal_line", target=conf["target_coverage"], coverage=conf["coverage"],
                          size=conf["mean_size"], single=conf["singleton_rate"], empty=conf["empty_rate"])))
    referral = ev.get("referral") or {}
    rows = referral.get("rows") or []
    if rows:
        first = rows[0]
        quoted = [r for rate in REFERRAL_QUOTED for r in rows if abs(r["referral_rate"] - rate) < 1e-9]
        parts = [t("referral_none", acc=pct(first["accuracy_kept"]), n=first["n_kept"])]
        parts += [t("referral_at", rate=pct(r["referral_rate"], 0), acc=pct(r["accuracy_kept"]), kept=r["n_kept"])
                  for r in quoted]
        blocks.append(p(t("referral_lead", source=t.term("uncertainty_source", referral.get("source", "")))))
        blocks.append(bullets(parts))
        alt = t("alt.referral", acc0=pct(first["accuracy_kept"]),
                quoted=t("punct.semicolon").join(t("alt.referral_at", rate=pct(r["referral_rate"], 0),
                                                   acc=pct(r["accuracy_kept"])) for r in quoted) or "n/a")
        blocks.append(figs(fig(plots.referral_plot(rows, look=look), alt, t("cap_referral"))))
    if referral.get("share_referred") is not None:
        reasons = referral.get("reasons") or {}
        blocks.append(h3(t("referral_in_use_title")))
        line = t("referral_in_use", share=pct(referral["share_referred"]))
        if referral.get("accuracy_kept") is not None:
            line += " " + t("referral_in_use_kept", acc=pct(referral["accuracy_kept"]))
        blocks.append(p(line))
        if reasons:
            blocks.append(p(t("referral_reasons_intro")))
            blocks.append(bullets([t("referral_reason", reason=t.term("referral_reason", k), n=v)
                                   for k, v in reasons.items()]))
    guard = field(ev, "input_guard")
    if guard:
        blocks.append(p(t("input_guard_line", share=pct(guard.get("ood_flagged_share")),
                          threshold=num(guard.get("threshold")),
                          method=t.term("guard_method", guard.get("method", "")))))
    return blocks or [na(t)]


def _subgroups(ev: dict[str, Any], t: Translator, look: plots.Look) -> list[Block | None]:
    rows = ev.get("subgroups")
    if not rows:
        return [na(t, "na_subgroups")]
    binary = ev["task"] == "binary"
    header = [t("subgroup_col"), t("level"), "n", t("patients"), t("auc")] + (
        [t("sensitivity"), t("specificity")] if binary else [t("accuracy")]) + [t("status")]
    body = []
    for r in rows:
        line = [data(r["column"]), data(r["level"]), r["n"], r["n_patients"], estimate(r.get("auc"), r.get("auc_ci"))]
        if binary:
            line += [estimate(r.get("sensitivity"), r.get("sensitivity_ci"), True),
                     estimate(r.get("specificity"), r.get("specificity_ci"), True)]
        else:
            line += [estimate(r.get("accuracy"), r.get("accuracy_ci"), True)]
        body.append(line + [t.term("status", r["status"])])
    usable = [r for r in rows if r.get("auc") is not None and np.isfinite(r["auc"]) and r.get("status") == "ok"]
    alt = t("alt.forest", k=len(usable), overall=num(ev["metrics"].get("auc")),
            lo=num(min((r["auc"] for r in usable), default=float("nan"))),
            hi=num(max((r["auc"] for r in usable), default=float("nan"))))
    return [table(header, body, cls="wide"),
            figs(fig(plots.forest_plot(rows, ev["metrics"]["auc"], look=look), alt, t("cap_forest")))]


def _agreement(ev: dict[str, Any], t: Translator) -> list[Block | None]:
    agreement = ev.get("agreement")
    if not agreement or not agreement.get("rows"):
        return []
    rows = []
    for row in agreement["rows"]:
        percent = row["metric"] != "auc"
        key = "coverage" if row["metric"] == "conformal coverage" else row["metric"]
        promised = (t("coverage_target", value=row["validation"]) if row["validation_ci"] is None
                    else estimate(row["validation"], row["validation_ci"], percent))
        rows.append([t(key), promised, estimate(row["test"], row["test_ci"], percent),
                     t("agrees") if row["agrees"] else t("differs")])
    flags = agreement.get("flags") or []
    items = [t.message(f) for f in flags] if flags else [t("agreement_ok")]
    return [h3(t("agreement_title")), p(t("agreement_lead")),
            table([t("metric"), t("validation"), t("test"), t("verdict_col")], rows),
            bullets(items, "flags")]


def _shift(ev: dict[str, Any], t: Translator, look: plots.Look) -> list[Block | None]:
    """External validation and data shift, then the corruption table of ``evaluate --robustness``."""
    return [*_shift_only(ev, t, look), *_robustness(ev, t)]


def _robustness(ev: dict[str, Any], t: Translator) -> list[Block | None]:
    """AUC and accuracy under MedMNIST-C corruptions (nothing when ``--robustness`` was not asked)."""
    robust = ev.get("robustness")
    if not robust or not robust.get("corruptions"):
        return []
    rows = [[data(r["name"]), r["severity"], num(r["auc"]), pct(r["accuracy"])] for r in robust["corruptions"]]
    rows += [[data(u["name"]), "-", t("not_available"), data(u["reason"])] for u in robust.get("unavailable") or []]
    lead = t("robustness_lead", clean=robust["clean"]["auc"], drop=robust["mean_auc_drop"])
    return [h3(t("robustness_title")), p(lead),
            table([t("robustness_corruption"), t("robustness_severity"), t("auc"), t("accuracy")], rows)]


def _shift_only(ev: dict[str, Any], t: Translator, look: plots.Look) -> list[Block | None]:
    blocks = _agreement(ev, t)
    shift = ev.get("shift")
    if not shift:
        return [*blocks, p(t("shift_none"), "na")]
    rows = [[t("prevalence"), f"{pct(shift.get('prevalence_reference'))} → {pct(shift.get('prevalence'))}"],
            [t("citl"), num(shift.get("calibration_in_the_large"))]]
    if shift.get("image_smd") is not None:
        rows.append([t("brightness_smd"), num(shift["image_smd"])])
    for col, smd in (shift.get("table_smd") or {}).items():
        rows.append([rich(t, "column_smd", data_fields={"column": col}), num(smd)])
    flags = shift.get("flags") or []
    items = [t.message(f) for f in flags] if flags else [t("shift_ok")]
    return [*blocks, h3(t("shift_title")), table([t("metric"), t("value")], rows), bullets(items, "flags")]


def _explanations(ev: dict[str, Any], t: Translator, look: plots.Look) -> list[Block | None]:
    ex = ev.get("explanations")
    if not ex:
        return [na(t, "na_explanations")]
    blocks: list[Block | None] = []
    checks = ex.get("checks")
    shortcut = ex.get("shortcut")
    if checks or shortcut:
        rows = []
        if checks:
            rnd = checks["randomisation"]
            rows.append([t("randomisation"), f"{rnd['similarity']:.2f} (< {rnd['max_similarity']:.2f})",
                         _badge(rnd["passed"], t)])
            faithful = checks["faithfulness_mean"] >= checks.get("min_faithfulness", 0.0)
            rows.append([t("faithfulness"), f"{checks['faithfulness_mean']:.3f}", _badge(faithful, t)])
            if not shortcut:
                flags = checks.get("shortcut_flags") or []
                rows.append([t("shortcut"), str(len(flags)), _badge(not flags, t)])
        if shortcut:
            rows.append([t("shortcut"), t("shortcut_share", flagged=shortcut.get("flagged"),
                                          checked=shortcut.get("checked"), share=pct(shortcut.get("share")),
                                          limit=pct(shortcut.get("limit"), 0)),
                         _badge(bool(shortcut.get("passed")), t)])
        blocks += [h3(t("checks")), table([t("check_col"), t("value"), t("result_col")], rows)]
    if shortcut and shortcut.get("flagged_cases"):
        blocks.append(h3(t("flagged_title")))
        blocks.append(_flagged_cases(shortcut["flagged_cases"], t, look))
    blocks += _examples(ex.get("examples") or [], ev, t, look)
    importance = ex.get("feature_importance")
    if importance:
        top = importance[0]
        blocks.append(figs(fig(plots.importance_plot(importance, look=look),
                               t("alt.importance", feature=top["feature"], loss=num(top["importance_mean"])),
                               t("cap_importance"))))
    for local in ex.get("local") or []:
        rows = [[data(r["feature"]), data(r["value"]), f"{r['attribution']:+.3f}"] for r in local.get("rows", [])[:10]]
        title = t.term("local_title", local.get("title", ""))
        blocks.append(h3(t("local_heading", title=title, prediction=pct(local.get("prediction")))))
        blocks.append(table([t("feature_col"), t("value"), t("attribution_col")], rows))
    return [b for b in blocks if b] or [na(t)]


def _badge(passed: bool, t: Translator) -> dict[str, Any]:
    return {"text": t("passed") if passed else t("failed"), "cls": "ok" if passed else "bad"}


def _flagged_cases(cases: list[dict[str, Any]], t: Translator, look: plots.Look) -> Block:
    """The cases whose heat maps put their weight on the border: the image with its map, or the image."""
    figures = []
    for case in cases[:6]:
        image = case.get("image")
        alt = t("alt.flagged_case", index=case.get("index"), border=pct(case.get("border_fraction"), 0))
        caption = t("flagged_case_caption", index=case.get("index"), border=pct(case.get("border_fraction"), 0))
        if isinstance(image, str):
            png = image.split("base64,", 1)[1] if "base64," in image else None
        elif image is not None and case.get("heatmap") is not None:
            png = plots.overlay_pair(image, case["heatmap"], look.t("heat_map"), look=look)
        elif image is not None:
            png = plots.thumbnail_strip([image], look=look)
        else:
            png = None
        figures.append(fig(png, alt, caption))
    block = figs(*figures)
    return block if block else p(t("shortcut_cases_missing"), "note")


def _examples(examples: list[dict[str, Any]], ev: dict[str, Any], t: Translator,
              look: plots.Look) -> list[Block | None]:
    figures = []
    for example in examples:
        caption = t.message(str(example["caption"])) if example.get("caption") else ""
        case = t.term("case", example.get("title", "")) if example.get("title") else ""
        text = t("example_caption", case=case, caption=caption) if case and caption else (case or caption)
        text = text[:1].upper() + text[1:]
        explained = example.get("explained_class")
        method = example.get("method") or "grad-cam"
        heat_title = (t("heat_for_class", label=explained, method=t.term("explain_method", method))
                      if explained is not None else t("heat_map"))
        caption_text = t("example_with_map", text=text, title=heat_title) if text and explained is not None \
            else (text or heat_title)
        image = example.get("image")
        if isinstance(image, str):
            path = Path(image)
            if path.is_file():
                b64 = base64.b64encode(path.read_bytes()).decode("ascii")
                figures.append(fig(b64, t("alt.heatmap_file", caption=text or heat_title), caption_text))
            else:
                # the file name may carry a patient identifier, so it is not logged
                logger.warning("An explanation image file was not found; it is left out of the report.")
        elif image is not None and example.get("heatmap") is not None:
            plot_title = (look.t("heat_for_class", label=explained, method=look.t.term("explain_method", method))
                          if explained is not None else look.t("heat_map"))
            png = plots.overlay_pair(image, example["heatmap"], plot_title, look=look)
            figures.append(fig(png, t("alt.heatmap", case=text or heat_title, title=heat_title), caption_text))
    if not figures:
        return []
    return [h3(t("examples_title")), p(t("cap_heatmaps"), "note"), figs(*figures)]


def _training(ev: dict[str, Any], t: Translator, look: plots.Look) -> list[Block | None]:
    curves = ev.get("training_curves")
    png = plots.training_plot(curves, look=look) if curves else None
    if not png or not curves:
        return [na(t, "na_training")]
    epochs = curves.get("epoch") or []
    score = [v for v in curves.get("val_score") or [] if v is not None and np.isfinite(v)]
    best = int(np.argmax(score)) if score else None
    alt = t("alt.training", epochs=len(epochs) or len(score),
            best=(epochs[best] if best is not None and epochs else (best + 1 if best is not None else "n/a")),
            auc=num(score[best]) if best is not None else "n/a")
    return [figs(fig(png, alt, t("cap_training")))]


def _limitations(ev: dict[str, Any], t: Translator, look: plots.Look) -> list[Block | None]:
    return [p(t("limitations_auto")), bullets(limitations(ev, t))]


def _tripod(ev: dict[str, Any], t: Translator, look: plots.Look) -> list[Block | None]:
    rows = [[i["item"], i["topic"], {"text": t(i["status"]), "cls": "ok" if i["status"] == "covered" else ""},
             i["section"]] for i in tripod_items(ev, t.lang)]
    return [p(t("tripod_note"), "note"), table([t("item"), t("topic"), t("status"), t("where")], rows),
            p(data("Collins GS et al. TRIPOD+AI statement. BMJ 2024;385:e078378."), "note")]


_BUILDERS = {
    "summary": _summary, "data": _data, "performance": _performance, "calibration": _calibration,
    "threshold": _threshold, "decision": _decision, "uncertainty": _uncertainty, "subgroups": _subgroups,
    "shift": _shift, "explanations": _explanations, "training": _training, "limitations": _limitations,
    "tripod": _tripod,
}


def report_sections(evaluation: dict[str, Any], t: Translator, look: plots.Look) -> list[dict[str, Any]]:
    """``[{key, title, blocks}]`` of the report, in :data:`SECTIONS` order."""
    return [{"key": key, "title": t("sec_" + key),
             "blocks": [b for b in _BUILDERS[key](evaluation, t, look) if b]} for key in SECTIONS]


