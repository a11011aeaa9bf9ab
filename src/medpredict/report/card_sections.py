"""The model card's sections as page blocks, shared by its Markdown and HTML forms.

:func:`build_sections` lays out the facts of :func:`medpredict.report.model_card.card_dict`
in the order of Mitchell et al. (2019), plus input specification, failure modes and
monitoring. A field the owner must supply and did not is shown as "to be supplied by the
model owner (card key ``name``)", so a reviewer sees the gap and how to fill it.
"""

from __future__ import annotations

from typing import Any

from medpredict.report.card_info import CardInfo
from medpredict.report.i18n import Translator
from medpredict.report.model_card import headline_rows
from medpredict.report.render import bullets, data, date_text, estimate, num, p, pct, rich, table

Block = dict[str, Any]

CARD_SECTIONS = ("details", "intended_use", "input", "factors", "metrics", "data", "quantitative",
                 "failure_modes", "ethics", "caveats", "monitoring", "tripod")


def _given(value: Any, key: str, t: Translator) -> Any:
    """The owner's value as data, or the "to be supplied" marker naming the card key."""
    if value in (None, "", [], ()):
        return {"text": rich(t, "to_supply", code_fields={"key": key}), "cls": "missing"}
    return data(value)


def _details(ev: dict[str, Any], card: dict[str, Any], t: Translator) -> list[Block]:
    d = card["details"]
    training = d.get("training") or {}
    rows = [
        [t("card.name"), data(card.get("name") or "n/a")],
        [t("card.version"), data(card.get("version") or "n/a")],
        [t("card.date"), data(date_text(card.get("date")) or "n/a")],
        [t("card.architecture"), data(d.get("architecture") or "n/a")],
        [t("card.owner"), _given(d.get("owner"), "owner", t)],
        [t("card.contact"), _given(d.get("contact"), "contact", t)],
        [t("card.licence"), _given(d.get("licence"), "licence", t)],
        [t("card.regulatory"), d["regulatory_status"] if not card["owner_fields"].get("regulatory_status")
         else data(d["regulatory_status"])],
        [t("card.citation"), _given(d.get("citation"), "citation", t)],
        [t("card.software"), data(f"medpredict {d.get('medpredict_version')}")],
        [t("card.seed"), str(d["seed"]) if d.get("seed") is not None else "n/a"],
    ]
    if training:
        rows.append([t("card.training"), t("card.training_value", epochs=training.get("epochs_run", "n/a"),
                                           best=training.get("best_epoch", "n/a"),
                                           stopped=t.term("stopped", training.get("stopped", "")),
                                           seconds=training.get("seconds", "n/a"))])
    return [table([t("card.field"), t("value")], rows, cls="facts")]


def _intended_use(ev: dict[str, Any], card: dict[str, Any], t: Translator, info: CardInfo) -> list[Block]:
    rows = [
        [t("card.primary_use"), data(info.intended_use) if info.intended_use else card["intended_use"]],
        [t("card.users"), _given(card.get("intended_users"), "intended_users", t)],
        [t("card.population"), data(info.population) if info.population else
         (card["population"] + " " + t("card.population_from_data") if card.get("population")
          else _given(None, "population", t))],
        [t("card.setting"), _given(card.get("setting"), "setting", t)],
    ]
    out_of_scope = [data(x) for x in info.out_of_scope] if info.out_of_scope else card["out_of_scope"]
    return [table([t("card.field"), t("value")], rows, cls="facts"), p(t("card.out_of_scope")),
            bullets(out_of_scope)]


def _input(ev: dict[str, Any], card: dict[str, Any], t: Translator, info: CardInfo) -> list[Block]:
    spec = card["input"]
    rows: list[list[Any]] = []
    modality = data(info.modality) if info.modality else (spec.get("modality") or _given(None, "modality", t))
    rows.append([t("card.modality"), modality])
    if spec.get("image_size"):
        dims = spec.get("spatial_dims") or 2
        side = spec["image_size"]
        size = " × ".join([str(side)] * int(dims))
        rows.append([t("card.image_size"), t("card.image_size_value", size=size, channels=spec.get("channels"),
                                               colour=t("card.grey") if spec.get("channels") == 1
                                               else t("card.colour"))])
    norm = spec.get("normalisation")
    if norm:
        rows.append([t("card.preprocessing"), t("card.normalisation", mean=num(norm.get("mean")),
                                                  std=num(norm.get("std")))])
    if spec.get("dataset"):
        rows.append([t("dataset"), data(spec["dataset"])])
    origin = data(info.data_origin) if info.data_origin else (spec.get("data_origin")
                                                               or _given(None, "data_origin", t))
    rows.append([t("card.origin"), origin])
    if spec.get("kind") and not spec.get("image_size"):
        rows.append([t("card.input_kind"), t.term("input_kind", spec["kind"])])
    return [table([t("card.field"), t("value")], rows, cls="facts")]


def _factors(ev: dict[str, Any], card: dict[str, Any], t: Translator) -> list[Block]:
    subgroups = ev.get("subgroups") or []
    columns = sorted({str(r["column"]) for r in subgroups})
    if columns:
        blocks: list[Block] = [p(t("card.factors_lead")), p({"text": ", ".join(columns), "data": True})]
    else:
        blocks = [p(t("card.factors_none"), "warn")]
    if card.get("units") == "image":
        blocks.append(p(t("units_image_warning"), "warn"))
    return blocks


def _metrics(ev: dict[str, Any], card: dict[str, Any], t: Translator) -> list[Block]:
    items = [t("card.metrics_discrimination"), t("card.metrics_calibration"), t("card.metrics_utility")]
    threshold = ev.get("threshold")
    if threshold:
        items.append(t("card.metrics_threshold", value=f"{threshold['value']:.3f}",
                       method=t.term("threshold_method", threshold["method"]),
                       where=t.term("chosen_on", threshold["chosen_on"])))
    unit = card["units"] or card["bootstrap"].get("unit") or "patient"
    items.append(t("card.metrics_ci", n_boot=card["bootstrap"].get("n_boot"),
                   resampled=t("ci_resampled_image") if unit == "image" else t("ci_resampled_patient")))
    return [bullets(items)]


def _data(ev: dict[str, Any], card: dict[str, Any], t: Translator) -> list[Block]:
    splits = (card["data"].get("splits") or {})
    order = [s for s in ("train", "val", "test") if s in splits] + [s for s in splits if s not in
                                                                       ("train", "val", "test")]
    image_units = card["units"] == "image"
    header = [t("split"), t("rows")] + ([] if image_units else [t("patients")]) + [t("prevalence")]
    rows = []
    for name in order:
        info = splits[name]
        row: list[Any] = [t.term("split", name), info.get("n", "n/a")]
        if not image_units:
            row.append(info.get("n_patients") if info.get("n_patients") is not None else "n/a")
        row.append(pct(info.get("prevalence")) if info.get("prevalence") is not None else "n/a")
        rows.append(row)
    return [p(t("card.data_lead")), table(header, rows)]


def _quantitative(ev: dict[str, Any], card: dict[str, Any], t: Translator) -> list[Block]:
    rows = [[t(key), estimate(value, ci, percent)] for key, value, ci, percent in headline_rows(ev)]
    blocks: list[Block] = [table([t("metric"), t("card.value_ci")], rows)]
    cal = card["calibration"]
    test, validation = cal.get("test") or {}, cal.get("validation") or {}
    cal_rows = [[t("ece"), num(test.get("ece")), num(validation.get("ece")) if validation else "n/a"],
                [t("slope"), num(test.get("slope")), num(validation.get("slope")) if validation else "n/a"],
                [t("intercept"), num(test.get("intercept")), num(validation.get("intercept")) if validation else "n/a"]]
    method = t.term("calibrator", cal.get("method") or "none")
    blocks += [p(t("calibrator_line_short", method=method)),
               table([t("metric"), t("test"), t("validation")], cal_rows, cls="compact")]
    subgroups = ev.get("subgroups")
    if subgroups:
        blocks.append(table([t("subgroup_col"), t("level"), "n", t("auc"), t("status")], [
            [data(r["column"]), data(r["level"]), r["n"], estimate(r.get("auc"), r.get("auc_ci")),
             t.term("status", r["status"])] for r in subgroups]))
    return blocks


def build_sections(ev: dict[str, Any], card: dict[str, Any], t: Translator, info: CardInfo) -> list[dict[str, Any]]:
    """``[{key, title, blocks}]`` of the model card, in :data:`CARD_SECTIONS` order."""
    ethics = (p(data(info.ethical_considerations)) if info.ethical_considerations
              else p(_given(None, "ethical_considerations", t)))
    caveats = [data(c) for c in info.caveats] + list(card["limitations"])
    monitoring: list[Block] = [p(t("card.monitoring_suggested")), bullets(card["monitoring"]["suggested"])]
    monitoring.append(p(t("card.monitoring_plan")))
    monitoring.append(bullets([data(x) for x in info.monitoring]) if info.monitoring
                      else p(_given(None, "monitoring", t)))
    tripod_rows = [[i["item"], i["topic"], {"text": t(i["status"]), "cls": "ok" if i["status"] == "covered" else ""},
                    i["section"]] for i in card["tripod_ai"]]
    bodies: dict[str, list[Block]] = {
        "details": _details(ev, card, t),
        "intended_use": _intended_use(ev, card, t, info),
        "input": _input(ev, card, t, info),
        "factors": _factors(ev, card, t),
        "metrics": _metrics(ev, card, t),
        "data": _data(ev, card, t),
        "quantitative": _quantitative(ev, card, t),
        "failure_modes": [p(t("card.failure_lead")), bullets(card["failure_modes"])],
        "ethics": [ethics],
        "caveats": [bullets(caveats)],
        "monitoring": monitoring,
        "tripod": [p(t("tripod_note"), "note"), table([t("item"), t("topic"), t("status"), t("where")], tripod_rows),
                   p(data(card["tripod_ai_reference"]), "note")],
    }
    return [{"key": key, "title": t(f"card.sec_{key}"), "blocks": bodies[key]} for key in CARD_SECTIONS]
