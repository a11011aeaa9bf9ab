"""The self-contained ``report.html`` (plus ``metrics.json`` and the model card).

:func:`render_html` renders the report's sections (:mod:`medpredict.report.sections`)
with ``templates/report.html.j2``. Everything is inline: the stylesheet, every figure as a
base64 PNG and, for Chinese, the subset of a CJK font the page needs; the file opens
offline and can be archived or e-mailed as it is. Every section is always present; a
section without data says why, so a reader never wonders whether something was
forgotten. Each figure has labelled axes, a one-line plain-language caption and an alt
text that says what it shows with its key number.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medpredict.atomic import write_json, write_text
from medpredict.report import plots
from medpredict.report.card_info import CardInfo, load_card_info
from medpredict.report.evaluation import evaluation_to_json
from medpredict.report.i18n import translator
from medpredict.report.model_card import build_model_card, render_model_card_html
from medpredict.report.render import date_text, render_page
from medpredict.report.sections import SECTIONS, report_sections

logger = logging.getLogger(__name__)

__all__ = ["SECTIONS", "build_report", "render_html"]


def render_html(evaluation: dict[str, Any], *, lang: str = "en", card: CardInfo | None = None) -> str:
    """The report as one HTML string (see the module docstring).

    Raises:
        ConfigError: unknown ``lang``.
    """
    t = translator(lang)
    look = plots.look_for(lang)
    ev = _with_card(evaluation, card)
    run = ev.get("run") or {}
    identity = run.get("identity") or {}
    subtitle = [identity.get("text") or run.get("model_name"), run.get("dataset"), date_text(run.get("created"))]
    return render_page("report.html.j2", lang=lang, title=t("title"),
                       subtitle=" · ".join(str(s) for s in subtitle if s),
                       sections=report_sections(ev, t, look))


def _with_card(evaluation: dict[str, Any], card: CardInfo | None) -> dict[str, Any]:
    """The evaluation with the owner's card fields under ``run["card"]`` (they override defaults)."""
    if card is None:
        return evaluation
    run = dict(evaluation.get("run") or {})
    run["card"] = card.to_dict()
    return {**evaluation, "run": run}


def build_report(out_dir: str | Path, evaluation: dict[str, Any], *, lang: str = "en",
                 card: CardInfo | dict[str, Any] | str | Path | None = None) -> Path:
    """Write ``report.html``, ``metrics.json`` and the model card (``model_card.md/.json/.html``).

    All files are written atomically into ``out_dir`` (created if needed).

    Args:
        out_dir: the folder.
        evaluation: :func:`medpredict.report.assemble_evaluation` output.
        lang: ``"en"`` or ``"zh"``.
        card: the model owner's card fields: a :class:`CardInfo`, a mapping, or a YAML
            file (see :mod:`medpredict.report.model_card` for the keys).

    Returns:
        The path of ``report.html``.

    Raises:
        ConfigError: unknown ``lang``, or an unknown or ill-typed card key (before anything is written).
    """
    translator(lang)  # refuse an unknown language before writing anything
    info = load_card_info(card)
    out = Path(out_dir)
    page = render_html(evaluation, lang=lang, card=info)
    markdown, card_dict = build_model_card(evaluation, lang=lang, info=info)
    card_html = render_model_card_html(evaluation, lang=lang, info=info)
    write_json(out / "metrics.json", evaluation_to_json(evaluation))
    write_text(out / "model_card.md", markdown)
    write_json(out / "model_card.json", evaluation_to_json(card_dict))
    write_text(out / "model_card.html", card_html)
    path = write_text(out / "report.html", page)
    logger.info("Report written to %s (%d kB)", path, len(page) // 1024)
    return path


