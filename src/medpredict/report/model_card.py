"""The model card: Markdown, JSON and HTML, filled from the evaluation and the owner's card file.

Sections follow Mitchell et al. (2019) *Model Cards for Model Reporting* — model details,
intended use, factors, metrics, evaluation and training data, quantitative analyses,
ethical considerations, caveats and recommendations — with the input specification,
known failure modes and a monitoring plan a hospital's governance board asks for, and
the TRIPOD+AI items (Collins et al., BMJ 2024;385:e078378) the generated documents
cover. Only items the evaluation really documents are marked; ``partial`` means the item
needs the authors' own text too (eligibility criteria, dates, ethics and open-science
statements are never generated). Fields the run cannot know come from the owner's card
file (:mod:`medpredict.report.card_info`) and are otherwise marked "to be supplied by
the model owner". Limitations are derived from the numbers (:func:`limitations`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from medpredict.report.card_info import CardInfo
from medpredict.report.i18n import Translator, translator

CARD_FORMAT = "medpredict-model-card"
CARD_VERSION = 1

# (item, section of the report/card that covers it, "covered" | "partial",
#  the evaluation key that must be present for the item to count); topics are in the
#  translation table under "tripod.<item>"
TRIPOD_AI_ITEMS: tuple[tuple[str, str, str, str], ...] = (
    ("3b", "sec_summary", "partial", ""),
    ("5a", "sec_data", "partial", ""),
    ("8a", "sec_data", "partial", ""),
    ("10", "sec_data", "partial", ""),
    ("12a", "sec_data", "covered", ""),
    ("12c", "sec_summary", "partial", ""),
    ("12d", "sec_subgroups", "covered", "subgroups"),
    ("12e", "sec_performance", "covered", ""),
    ("12f", "sec_calibration", "covered", "calibration.calibrator"),
    ("13", "sec_data", "partial", ""),
    ("14", "sec_subgroups", "partial", "subgroups"),
    ("15", "sec_threshold", "covered", "threshold.chosen_on=validation"),
    ("16", "sec_shift", "partial", "shift"),
    ("20a", "sec_data", "covered", ""),
    ("20c", "sec_shift", "partial", "shift"),
    ("21", "sec_data", "covered", ""),
    ("23a", "sec_performance", "covered", ""),
    ("23b", "sec_subgroups", "covered", "subgroups"),
    ("26", "sec_limitations", "partial", ""),
    ("27a", "sec_uncertainty", "partial", "referral"),
)
#: The item that needs a patient-level split; an image-level evaluation leaves it open.
PATIENT_SPLIT_ITEM = "12a"
#: Items about how the model was developed: medpredict cannot document them for a model trained elsewhere.
DEVELOPMENT_ITEMS = frozenset({"5a", "10", "12a", "12c", "13", "20a"})

#: Datasets whose origin the card can describe: a substring of the dataset name -> key suffix
#: of ``origin.*``, ``population.*`` and ``modality.*`` in the translation table.
KNOWN_SOURCES: tuple[tuple[str, str], ...] = (
    ("pneumoniamnist", "pneumoniamnist"),
    ("kermany", "kermany"),
    ("chest_xray", "kermany"),
    ("cleveland", "uci_heart"),
    ("heart", "uci_heart"),
)


def _has(evaluation: dict[str, Any], dotted: str) -> bool:
    """True when the dotted key is present (and, for ``key=value``, equals the value)."""
    dotted, _, wanted = dotted.partition("=")
    value: Any = evaluation
    for part in dotted.split("."):
        if not isinstance(value, dict) or value.get(part) in (None, [], {}):
            return False
        value = value[part]
    return not wanted or str(value) == wanted


def _units(evaluation: dict[str, Any]) -> str | None:
    value = evaluation.get("units") or (evaluation.get("metrics") or {}).get("units")
    return str(value) if value in ("patient", "image") else None


def tripod_items(evaluation: dict[str, Any], lang: str = "en") -> list[dict[str, str]]:
    """TRIPOD+AI items this evaluation documents: ``[{item, topic, status, section}]``.

    With image-level units (no patient column) the patient-level split item is
    ``not_covered``: one patient's images may sit on both sides of the split. For a model
    trained elsewhere (``run.trained_by == "elsewhere"``) the development items
    (:data:`DEVELOPMENT_ITEMS`) are not claimed.
    """
    t = translator(lang)
    image_level = _units(evaluation) == "image"
    elsewhere = (evaluation.get("run") or {}).get("trained_by") == "elsewhere"
    out = []
    for item, section, status, needs in TRIPOD_AI_ITEMS:
        if needs and not _has(evaluation, needs):
            continue
        if elsewhere and item in DEVELOPMENT_ITEMS:
            continue
        if item == PATIENT_SPLIT_ITEM and image_level:
            status = "not_covered"
        out.append({"item": item, "topic": t(f"tripod.{item}"), "status": status, "section": t(section)})
    return out


def limitations(evaluation: dict[str, Any], t: Callable[..., str]) -> list[str]:
    """Plain-language limitations derived from the numbers in ``evaluation``."""
    out: list[str] = []
    metrics = evaluation["metrics"]
    image_level = _units(evaluation) == "image"
    if metrics.get("n_patients", 0) < 100 and not image_level:
        out.append(t("lim_small", n=metrics.get("n_patients", 0)))
    if image_level:
        out.append(t("lim_image_units"))
    elif metrics.get("bootstrap_unit") == "image":
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
    shortcut = explanations.get("shortcut")
    if (shortcut and not shortcut.get("passed", True)) or (not shortcut and checks and checks.get("shortcut_flags")):
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
        text += f" ({ci[0]:.1%}–{ci[1]:.1%})" if pct else f" ({ci[0]:.3f}–{ci[1]:.3f})"
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


def known_source(evaluation: dict[str, Any]) -> str | None:
    """The :data:`KNOWN_SOURCES` key of the evaluation's dataset, if the card can describe its origin."""
    run = evaluation.get("run") or {}
    name = " ".join(str(run.get(k) or "") for k in ("dataset", "data_source")).lower()
    return next((key for needle, key in KNOWN_SOURCES if needle in name), None)


# ------------------------------------------------------------------ the card


def card_dict(evaluation: dict[str, Any], t: Translator, info: CardInfo) -> dict[str, Any]:
    """The model card as a JSON-safe dict (the facts; the pages lay them out)."""
    from medpredict import __version__

    run = evaluation.get("run") or {}
    m = evaluation["metrics"]
    identity = run.get("identity") or {}
    calibration = evaluation.get("calibration") or {}
    explanations = evaluation.get("explanations") or {}
    checks = explanations.get("checks")
    source = known_source(evaluation)
    input_spec = run.get("input") or {}
    positive = _positive(evaluation)
    supplied = info.to_dict()
    return {
        "card_format": CARD_FORMAT,
        "card_version": CARD_VERSION,
        "language": t.lang,
        "name": identity.get("name") or run.get("model_name"),
        "version": identity.get("version") or run.get("model_version"),
        "date": run.get("created"),
        "positive_label": positive,
        "trained_by": run.get("trained_by"),
        "provenance": run.get("provenance"),
        "details": {
            "identity": identity or None,
            "architecture": identity.get("architecture") or run.get("model_name"),
            "owner": info.owner,
            "contact": info.contact,
            "licence": info.licence,
            "regulatory_status": info.regulatory_status or t("regulatory_default"),
            "citation": info.citation,
            "medpredict_version": run.get("medpredict_version") or __version__,
            "seed": run.get("seed"),
            "training": run.get("training"),
        },
        "intended_use": info.intended_use or _intended_use(run, t),
        "intended_users": info.intended_users,
        "population": info.population or (t(f"population.{source}") if source else None),
        "setting": info.setting,
        "out_of_scope": list(info.out_of_scope) or [t("out_of_scope.default_1"), t("out_of_scope.default_2"),
                                                     t("out_of_scope.default_3")],
        "input": {
            "kind": run.get("input_kind"),
            "modality": info.modality or (t(f"modality.{source}") if source else _declared_modality(run)),
            "image_size": input_spec.get("image_size"),
            "channels": input_spec.get("channels"),
            "spatial_dims": input_spec.get("spatial_dims"),
            "normalisation": input_spec.get("normalisation"),
            "data_origin": info.data_origin or (t(f"origin.{source}") if source else None),
            "dataset": run.get("dataset"),
        },
        "task": evaluation["task"],
        "labels": evaluation["labels"],
        "units": _units(evaluation),
        "data": {"dataset": run.get("dataset"), "source": run.get("data_source"),
                 "citation": run.get("citation"), "splits": run.get("splits")},
        "performance": {k: {"value": v, "ci95": ci} for k, v, ci, _ in headline_rows(evaluation)},
        "bootstrap": {"unit": m.get("bootstrap_unit"), "n_boot": m.get("n_boot")},
        "threshold": evaluation.get("threshold"),
        "calibration": {
            "method": calibration.get("method"),
            "prior_correction": calibration.get("prior_correction"),
            "calibrator": calibration.get("calibrator"),
            "test": {k: (calibration.get("test") or {}).get(k) for k in
                     ("ece", "slope", "intercept", "calibration_in_the_large", "brier")},
            "validation": calibration.get("validation") or (
                {k: calibration["val"].get(k) for k in ("ece", "slope", "intercept")} if calibration.get("val")
                else None),
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
        "shortcut": {k: v for k, v in (explanations.get("shortcut") or {}).items() if k != "flagged_cases"} or None,
        "failure_modes": failure_modes(evaluation, t),
        "ethical_considerations": info.ethical_considerations,
        "caveats": list(info.caveats),
        "monitoring": {"suggested": monitoring_items(evaluation, t), "plan": list(info.monitoring)},
        "limitations": limitations(evaluation, t),
        "tripod_ai": tripod_items(evaluation, t.lang),
        "tripod_ai_reference": "Collins GS et al. TRIPOD+AI statement. BMJ 2024;385:e078378",
        "model_cards_reference": "Mitchell M et al. Model Cards for Model Reporting. FAT* 2019. "
                                 "doi:10.1145/3287560.3287596",
        "owner_fields": supplied,
        "to_be_supplied": info.missing(),
    }


def _positive(evaluation: dict[str, Any]) -> str | None:
    if evaluation.get("task") != "binary":
        return None
    given = evaluation.get("positive_label") or (evaluation.get("metrics") or {}).get("positive_label")
    return str(given) if given is not None else str(evaluation["labels"][1])


def _intended_use(run: dict[str, Any], t: Translator) -> str:
    given = run.get("intended_use")
    return t.message(str(given)) if given else t("intended_use_default")


def _declared_modality(run: dict[str, Any]) -> str | None:
    """The bundle's declared intended use (modalities, body parts, views), when it has one."""
    spec = run.get("intended_use_spec") or {}
    parts = [spec.get("description") or ""]
    for key in ("modalities", "body_parts", "views"):
        if spec.get(key):
            parts.append("/".join(map(str, spec[key])))
    text = ", ".join(p for p in parts if p)
    return text or None


def failure_modes(evaluation: dict[str, Any], t: Translator) -> list[str]:
    """Ways this model is known to fail or to be at risk, from the evaluation's own findings."""
    out: list[str] = []
    out.extend(t.message(str(flag)) for flag in (evaluation.get("agreement") or {}).get("flags") or [])
    explanations = evaluation.get("explanations") or {}
    shortcut = explanations.get("shortcut")
    if shortcut:
        out.append(t("failure_shortcut", flagged=shortcut.get("flagged"), checked=shortcut.get("checked"),
                     share=f"{float(shortcut.get('share') or 0):.1%}", limit=f"{float(shortcut.get('limit') or 0):.0%}",
                     result=t("passed") if shortcut.get("passed") else t("failed")))
    elif (explanations.get("checks") or {}).get("shortcut_flags"):
        out.append(t("lim_shortcut"))
    if _units(evaluation) == "image":
        out.append(t("units_image_warning"))
    guard = evaluation.get("input_guard") or (evaluation.get("metrics") or {}).get("input_guard")
    if guard:
        out.append(t("failure_ood", share=f"{float(guard.get('ood_flagged_share') or 0):.1%}"))
    slope = ((evaluation.get("calibration") or {}).get("test") or {}).get("slope")
    if slope is not None and np.isfinite(slope) and not 0.8 <= slope <= 1.25:
        out.append(t("lim_calibration", slope=slope, kind=t("lim_over") if slope < 1 else t("lim_under")))
    source = known_source(evaluation)
    if source and t.has(f"failure.{source}"):
        out.append(t(f"failure.{source}"))
    if not out:
        out.append(t("failure_none"))
    return out


def monitoring_items(evaluation: dict[str, Any], t: Translator) -> list[str]:
    """What to watch in use, each with its reference value from this evaluation."""
    m = evaluation["metrics"]
    out = []
    if isinstance(m.get("prevalence"), float):
        out.append(t("monitor_prevalence", value=f"{m['prevalence']:.1%}"))
    citl = ((evaluation.get("calibration") or {}).get("test") or {}).get("calibration_in_the_large")
    if citl is not None and np.isfinite(citl):
        out.append(t("monitor_citl", value=f"{citl:+.3f}"))
    if isinstance(m.get("sensitivity"), float) and isinstance(m.get("specificity"), float):
        out.append(t("monitor_sens_spec", sens=f"{m['sensitivity']:.1%}", spec=f"{m['specificity']:.1%}"))
    guard = evaluation.get("input_guard") or m.get("input_guard")
    if guard:
        out.append(t("monitor_ood", value=f"{float(guard.get('ood_flagged_share') or 0):.1%}"))
    referral = evaluation.get("referral") or {}
    if referral.get("share_referred") is not None:
        out.append(t("monitor_referral", value=f"{float(referral['share_referred']):.1%}"))
    conformal = evaluation.get("conformal")
    if conformal:
        out.append(t("monitor_coverage", value=f"{conformal['coverage']:.1%}",
                     target=f"{conformal['target_coverage']:.0%}"))
    return out


def card_sections(evaluation: dict[str, Any], t: Translator, info: CardInfo) -> list[dict[str, Any]]:
    """The card as ``[{key, title, blocks}]`` (page blocks, see :mod:`medpredict.report.render`)."""
    from medpredict.report.card_sections import build_sections

    return build_sections(evaluation, card_dict(evaluation, t, info), t, info)


def build_model_card(evaluation: dict[str, Any], *, lang: str = "en",
                     info: CardInfo | None = None) -> tuple[str, dict[str, Any]]:
    """Render the model card as Markdown and as a JSON-safe dict.

    Raises:
        ConfigError: unknown ``lang``.
    """
    from medpredict.report.render import render_text

    t = translator(lang)
    info = info or CardInfo()
    card = card_dict(evaluation, t, info)
    from medpredict.report.card_sections import build_sections

    sections = build_sections(evaluation, card, t, info)
    markdown = render_text("model_card.md.j2", t=t, card=card, sections=sections)
    return markdown, card


def render_model_card_html(evaluation: dict[str, Any], *, lang: str = "en", info: CardInfo | None = None) -> str:
    """The model card as a self-contained HTML page.

    Raises:
        ConfigError: unknown ``lang``.
    """
    from medpredict.report.render import render_page

    t = translator(lang)
    info = info or CardInfo()
    return render_page("model_card.html.j2", lang=lang, title=t("card_title"),
                       subtitle=_subtitle(card_dict(evaluation, t, info)),
                       sections=card_sections(evaluation, t, info))


def _subtitle(card: dict[str, Any]) -> str:
    from medpredict.report.render import date_text

    parts = [card.get("name"), f"v{card['version']}" if card.get("version") else None, date_text(card.get("date"))]
    return " · ".join(str(p) for p in parts if p)
