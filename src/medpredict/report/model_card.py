"""Model card (Markdown + JSON) from an evaluation dict, with TRIPOD+AI items marked.

The card follows the spirit of Mitchell et al. (2019) "Model Cards for Model
Reporting" and lists which items of the TRIPOD+AI checklist (Collins et al., BMJ
2024;385:e078378) the generated documents cover. Only items the evaluation really
documents are marked; ``partial`` means the item needs the authors' own text too
(eligibility criteria, dates, ethics and open-science statements are never
generated). Limitations are derived from the numbers (:func:`limitations`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from medpredict.report.i18n import translator

# (item, topic, section of the report/card that covers it, "covered" | "partial",
#  the evaluation key that must be present for the item to count, or "key=value" it must equal)
TRIPOD_AI_ITEMS: tuple[tuple[str, str, str, str, str], ...] = (
    ("3b", "Target population, place in the care pathway, intended users", "sec_summary", "partial", ""),
    ("5a", "Sources of data", "sec_data", "partial", ""),
    ("8a", "Outcome predicted", "sec_data", "partial", ""),
    ("10", "Sample size: participants and outcome events", "sec_data", "partial", ""),
    ("12a", "How data were used (patient-level development / validation / test split)", "sec_data",
     "covered", ""),
    ("12c", "Model type and building steps", "sec_summary", "partial", ""),
    ("12d", "Heterogeneity of performance across clusters (sites, subgroups)", "sec_subgroups", "covered",
     "subgroups"),
    ("12e", "Performance measures and plots: discrimination, calibration, clinical utility",
     "sec_performance", "covered", ""),
    ("12f", "Model updating from the evaluation (recalibration on validation data)", "sec_calibration",
     "covered", "calibration.calibrator"),
    ("13", "Class imbalance: prevalence reported per split", "sec_data", "partial", ""),
    ("14", "Fairness: performance per sociodemographic subgroup", "sec_subgroups", "partial", "subgroups"),
    ("15", "Model output and how the classification threshold was chosen", "sec_threshold", "covered",
     "threshold.chosen_on=validation"),
    ("16", "Differences between development and evaluation data", "sec_shift", "partial", "shift"),
    ("20a", "Participants with and without the outcome in each split", "sec_data", "covered", ""),
    ("20c", "Development vs evaluation data: predictors and outcome", "sec_shift", "partial", "shift"),
    ("21", "Number of participants and outcome events in each analysis", "sec_data", "covered", ""),
    ("23a", "Performance with confidence intervals, including key subgroups", "sec_performance", "covered",
     ""),
    ("23b", "Heterogeneity of performance across clusters", "sec_subgroups", "covered", "subgroups"),
    ("26", "Limitations", "sec_limitations", "partial", ""),
    ("27a", "Handling of poor-quality or uncertain inputs (abstention, referral, shortcut flags)",
     "sec_uncertainty", "partial", "referral"),
)


#: Items about how the model was developed: medpredict cannot document them for a model trained elsewhere.
DEVELOPMENT_ITEMS = frozenset({"5a", "10", "12a", "12c", "13", "20a"})


def _has(evaluation: dict[str, Any], dotted: str) -> bool:
    dotted, _, wanted = dotted.partition("=")
    value: Any = evaluation
    for part in dotted.split("."):
        if not isinstance(value, dict) or value.get(part) in (None, [], {}):
            return False
        value = value[part]
    return not wanted or str(value) == wanted


def tripod_items(evaluation: dict[str, Any], lang: str = "en") -> list[dict[str, str]]:
    """TRIPOD+AI items this evaluation documents: ``[{item, topic, status, section}]``.

    For a model trained elsewhere (``run.trained_by == "elsewhere"``) the development items
    (:data:`DEVELOPMENT_ITEMS`) are not claimed.
    """
    t = translator(lang)
    elsewhere = (evaluation.get("run") or {}).get("trained_by") == "elsewhere"
    return [
        {"item": item, "topic": topic, "status": status, "section": t(section)}
        for item, topic, section, status, needs in TRIPOD_AI_ITEMS
        if (not needs or _has(evaluation, needs)) and not (elsewhere and item in DEVELOPMENT_ITEMS)
    ]


def limitations(evaluation: dict[str, Any], t: Callable[..., str]) -> list[str]:
    """Plain-language limitations derived from the numbers in ``evaluation``."""
    out: list[str] = []
    metrics = evaluation["metrics"]
    if metrics.get("n_patients", 0) < 100:
        out.append(t("lim_small", n=metrics.get("n_patients", 0)))
    if metrics.get("bootstrap_unit") == "image":
        out.append(t("lim_images_per_patient"))
    if not evaluation.get("shift"):
        out.append(t("lim_single_site"))
    if (evaluation.get("agreement") or {}).get("flags"):
        out.append(t("lim_agreement"))
    slope = (evaluation.get("calibration") or {}).get("test", {}).get("slope")
    if slope is not None and np.isfinite(slope) and not 0.8 <= slope <= 1.25:
        out.append(t("lim_calibration", slope=slope, kind=t("lim_over") if slope < 1 else t("lim_under")))
    overall = metrics.get("auc")
    for row in evaluation.get("subgroups") or []:
        auc = row.get("auc")
        hi = (row.get("auc_ci") or [None, None])[1]
        if row.get("status") == "ok" and auc is not None and overall is not None and hi is not None \
                and np.isfinite(hi) and hi < overall:
            out.append(t("lim_subgroup", col=row["column"], level=row["level"], auc=auc))
    explanations = evaluation.get("explanations") or {}
    checks = explanations.get("checks")
    if checks and checks.get("shortcut_flags"):
        out.append(t("lim_shortcut"))
    if checks and not checks.get("passed", True):
        out.append(t("lim_checks"))
    out.append(t("lim_generic"))
    return out


def _fmt(value: Any, ci: Any = None, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    text = f"{value:.1%}" if pct else f"{value:.3f}"
    if ci and ci[0] is not None and np.all(np.isfinite(ci)):
        text += f" ({ci[0]:.1%}-{ci[1]:.1%})" if pct else f" ({ci[0]:.3f}-{ci[1]:.3f})"
    return text


def headline_rows(evaluation: dict[str, Any]) -> list[tuple[str, Any, Any, bool]]:
    """``(metric key, value, ci, as_percent)`` for the headline table."""
    m = evaluation["metrics"]
    keys: tuple[tuple[str, bool], ...] = (
        ("auc", False), ("sensitivity", True), ("specificity", True), ("ppv", True), ("npv", True),
        ("accuracy", True), ("f1", False), ("brier", False),
    )
    if evaluation["task"] != "binary":
        keys = (("auc", False), ("accuracy", True), ("f1", False), ("brier", False))
    return [(k, m.get(k), m.get(f"{k}_ci"), pct) for k, pct in keys if k in m]


def _threshold_text(threshold: dict[str, Any], t: Callable[..., str]) -> str:
    """Where the threshold came from: validation (never tuned on test), given with the model, or the default."""
    return {"given": t("threshold_given"), "default": t("threshold_default")}.get(
        str(threshold.get("chosen_on")), t("threshold_never_test"))


def build_model_card(evaluation: dict[str, Any], *, lang: str = "en") -> tuple[str, dict[str, Any]]:
    """Render the model card as Markdown and as a JSON-safe dict.

    Raises:
        ConfigError: unknown ``lang``.
    """
    t = translator(lang)
    run = evaluation.get("run") or {}
    m = evaluation["metrics"]
    threshold = evaluation.get("threshold")
    calibration = evaluation.get("calibration") or {}
    items = tripod_items(evaluation, lang)
    lims = limitations(evaluation, t)
    explanations = evaluation.get("explanations") or {}
    checks = explanations.get("checks")

    card: dict[str, Any] = {
        "model": {k: run.get(k) for k in ("model_name", "model_version", "created", "seed")},
        "intended_use": run.get("intended_use") or t("intended_use_default"),
        "trained_by": run.get("trained_by"),
        "provenance": run.get("provenance"),
        "task": evaluation["task"],
        "labels": evaluation["labels"],
        "data": {"dataset": run.get("dataset"), "source": run.get("data_source"),
                 "citation": run.get("citation"), "splits": run.get("splits")},
        "performance": {k: {"value": v, "ci95": ci} for k, v, ci, _ in headline_rows(evaluation)},
        "bootstrap": {"unit": m.get("bootstrap_unit"), "n_boot": m.get("n_boot")},
        "threshold": threshold,
        "calibration": {
            "method": calibration.get("method"),
            "calibrator": calibration.get("calibrator"),
            "test": {k: (calibration.get("test") or {}).get(k) for k in
                     ("ece", "slope", "intercept", "calibration_in_the_large", "brier")},
        },
        "conformal": evaluation.get("conformal"),
        "subgroups": evaluation.get("subgroups"),
        "explanation_checks": None if not checks else {
            "randomisation_similarity": checks["randomisation"]["similarity"],
            "randomisation_passed": checks["randomisation"]["passed"],
            "faithfulness": checks.get("faithfulness_mean"),
            "shortcut_flags": len(checks.get("shortcut_flags") or []),
            "passed": checks.get("passed"),
        },
        "limitations": lims,
        "tripod_ai": items,
        "tripod_ai_reference": "Collins GS et al. TRIPOD+AI statement. BMJ 2024;385:e078378",
    }

    lines = [f"# {t('title')}: {run.get('model_name') or 'model'}", ""]
    lines += [f"## {t('intended_use')}", "", card["intended_use"], ""]
    if card["provenance"]:
        lines += [f"## {t('provenance')}", ""]
        lines += [f"- {t('prov_' + key)}: {text}" for key, text in card["provenance"].items()] + [""]
    lines += [f"## {t('sec_data')}", ""]
    if run.get("dataset"):
        lines += [f"{t('dataset')}: {run['dataset']}", ""]
    lines += [f"| {t('split')} | {t('rows')} | {t('patients')} | {t('prevalence')} |", "|---|---|---|---|"]
    splits = run.get("splits") or {}
    for name in sorted(splits, key=lambda s: ("train", "val", "test", s).index(s) if s in
                       ("train", "val", "test") else 3):
        info = splits[name]
        prev = info.get("prevalence")
        lines.append(f"| {name} | {info.get('n', 'n/a')} | {info.get('n_patients', 'n/a')} | "
                     f"{_fmt(prev, pct=True) if prev is not None else 'n/a'} |")
    lines += ["", f"## {t('sec_performance')}", "", f"| {t('metric')} | {t('value')} ({t('ci')}) |",
              "|---|---|"]
    for key, value, ci, pct in headline_rows(evaluation):
        lines.append(f"| {t(key)} | {_fmt(value, ci, pct)} |")
    unit = t("unit_patient") if m.get("bootstrap_unit") == "patient" else t("unit_image")
    lines += ["", t("ci_note", n_boot=m.get("n_boot"), unit=unit, skipped=m.get("n_boot_skipped", 0)), ""]
    if threshold:
        lines += [f"## {t('sec_threshold')}", "",
                  f"{t('threshold_value')}: {threshold['value']:.4f} ({threshold['method']}, "
                  f"{threshold['chosen_on']}). {_threshold_text(threshold, t)}", ""]
    test_cal = calibration.get("test") or {}
    lines += [f"## {t('sec_calibration')}", "",
              f"{t('calibrator')}: {calibration.get('method') or t('none')}; "
              f"{t('ece')} {_fmt(test_cal.get('ece'))}; {t('slope')} {_fmt(test_cal.get('slope'))}; "
              f"{t('citl')} {_fmt(test_cal.get('calibration_in_the_large'))}", ""]
    subgroups = evaluation.get("subgroups")
    if subgroups:
        lines += [f"## {t('sec_subgroups')}", "", f"| | {t('level')} | n | AUC ({t('ci')}) | {t('status')} |",
                  "|---|---|---|---|---|"]
        for row in subgroups:
            lines.append(f"| {row['column']} | {row['level']} | {row['n']} | "
                         f"{_fmt(row.get('auc'), row.get('auc_ci'))} | {row['status']} |")
        lines.append("")
    if card["explanation_checks"]:
        ec = card["explanation_checks"]
        lines += [f"## {t('checks')}", "",
                  f"- {t('randomisation')}: {ec['randomisation_similarity']:.2f} "
                  f"({t('passed') if ec['randomisation_passed'] else t('failed')})",
                  f"- {t('faithfulness')}: {_fmt(ec['faithfulness'])}",
                  f"- {t('shortcut')}: {ec['shortcut_flags']}", ""]
    lines += [f"## {t('sec_limitations')}", ""] + [f"- {text}" for text in lims] + [""]
    lines += [f"## {t('sec_tripod')}", "", t("tripod_note"), "",
              f"| {t('item')} | {t('topic')} | {t('status')} | {t('where')} |", "|---|---|---|---|"]
    for it in items:
        lines.append(f"| {it['item']} | {it['topic']} | {t(it['status'])} | {it['section']} |")
    lines += ["", card["tripod_ai_reference"], ""]
    return "\n".join(lines), card
