"""The one way medpredict writes HTML (and the Markdown model card): Jinja2 templates.

Every page — the evaluation report, the model card, the image and table data-check
reports — is a template under ``medpredict/report/templates/`` extending ``base.html.j2``,
styled by the one stylesheet ``style.css`` and worded through the one translation table
(:mod:`medpredict.report.i18n`). Pages are self-contained: the stylesheet is inlined,
figures are base64 PNGs, no script and no external request. A Chinese page also embeds
the subset of a CJK font it needs (:mod:`medpredict.report.fonts`).

Jinja2 is used rather than string concatenation because it escapes every value by
default (``.html.j2`` templates; ``.md.j2`` ones are plain text) and keeps the layout
out of the Python code that computes what to show.

Layering: this module needs only jinja2, fontTools and the translation table, so the
data-check modules (``data/check.py``, ``records/check.py``) import it without pulling in
the evaluation code.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from medpredict.report import fonts
from medpredict.report.i18n import Translator, translator

TEMPLATES = Path(__file__).parent / "templates"
_FONT_SLOT = "/*@font-face*/"


@functools.cache
def environment() -> jinja2.Environment:
    """The Jinja2 environment: HTML templates autoescaped, undefined names an error."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=True,
                                            default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(md=markdown_text)
    return env


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def pct(value: Any, digits: int = 1) -> str:
    """``0.1234 -> "12.3%"``; ``"n/a"`` for a missing or non-finite value."""
    return f"{value:.{digits}%}" if _finite(value) else "n/a"


def num(value: Any, digits: int = 3) -> str:
    """``0.12345 -> "0.123"``; integers as they are; ``"n/a"`` for a missing or non-finite value."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.{digits}f}" if _finite(value) else "n/a"


def ci_text(interval: Any, percent: bool = False, digits: int | None = None) -> str:
    """``[0.81, 0.9] -> "0.810–0.900"`` (or percentages); ``""`` when there is no finite interval."""
    if not interval or len(interval) != 2 or not all(_finite(v) for v in interval):
        return ""
    if percent:
        d = 1 if digits is None else digits
        return f"{pct(interval[0], d)}–{pct(interval[1], d)}"
    d = 3 if digits is None else digits
    return f"{num(interval[0], d)}–{num(interval[1], d)}"


def estimate(value: Any, interval: Any = None, percent: bool = False) -> str:
    """A value with its interval in parentheses: ``"84.1% (80.2%–87.5%)"``."""
    text = pct(value) if percent else num(value)
    bounds = ci_text(interval, percent)
    return f"{text} ({bounds})" if bounds and text != "n/a" else text


def date_text(created: Any) -> str | None:
    """``2026-12-02T09:43:47+00:00`` as ``2026-12-02 09:43 UTC`` (as given when it does not parse)."""
    import datetime as dt

    if not created:
        return None
    try:
        when = dt.datetime.fromisoformat(str(created))
    except ValueError:
        return str(created)
    if when.utcoffset() == dt.timedelta(0):
        return when.strftime("%Y-%m-%d %H:%M UTC")
    return when.isoformat(sep=" ", timespec="minutes")


def stylesheet() -> str:
    """The one stylesheet every page inlines."""
    return (TEMPLATES / "style.css").read_text(encoding="utf-8")


def render_page(template: str, *, lang: str, **context: Any) -> str:
    """Render an HTML page template; a page with CJK text gets its font subset embedded.

    Args:
        template: a file name under ``templates/`` (e.g. ``"report.html.j2"``).
        lang: ``"en"`` or ``"zh"``.
        **context: the template's variables (``t``, ``lang`` and ``css`` are added).

    Raises:
        ConfigError: unknown ``lang``.
    """
    t = translator(lang)
    page = environment().get_template(template).render(t=t, lang=lang, css=stylesheet(), font_slot=_FONT_SLOT,
                                                       **context)
    # the font is chosen from the finished page, so it holds exactly the characters shown
    return page.replace(_FONT_SLOT, fonts.font_face_css(page) if lang != "en" else "", 1)


def render_text(template: str, *, t: Translator, **context: Any) -> str:
    """Render a plain-text template (the Markdown model card); nothing is escaped."""
    return environment().get_template(template).render(t=t, **context)


# ------------------------------------------------------------------ page blocks
#
# Pages are sections of blocks, each a small dict the templates lay out (``blocks.html.j2``
# for HTML, ``blocks.md.j2`` for Markdown), so the report, the model card and the data
# checks share one vocabulary:
#
#   {"kind": "p", "text": str|Markup, "cls": "lead"|"note"|"warn"|"ok"|"bad"|""}
#   {"kind": "h3", "text": ...}
#   {"kind": "list", "items": [text, ...], "cls": ...}
#   {"kind": "cards", "cards": [{"label", "value", "ci", "note"}]}
#   {"kind": "table", "header": [text], "rows": [[cell]], "cls": ..., "label": str}
#   {"kind": "figs", "figs": [{"png": base64, "alt": str, "caption": text}]}
#   {"kind": "na", "text": ...}
#
# A cell or text is a ``str`` (escaped), a ``Markup`` (already safe HTML, from :func:`rich`)
# or ``{"text": ..., "data": True}`` for values that come from the user's data (labels,
# column and file names): those carry ``translate="no"``, so neither a translation tool
# nor the untranslated-text test treats them as wording.


def data(value: Any) -> dict[str, Any]:
    """A table cell holding a value from the user's data (shown as is, ``translate="no"``)."""
    return {"text": str(value), "data": True}


def rich(t: Translator, key: str, *, data_fields: dict[str, Any] | None = None,
         code_fields: dict[str, Any] | None = None, **fields: Any) -> Markup:
    """``t(key, **fields)`` as safe HTML in which each of ``data_fields`` is wrapped in
    ``<span translate="no">`` (a class label or column name inside a translated sentence) and
    each of ``code_fields`` in ``<code translate="no">`` (a key of a file the user writes)."""
    wrapped = {k: Markup('<span translate="no">{}</span>').format(v) for k, v in (data_fields or {}).items()}
    wrapped |= {k: Markup('<code translate="no">{}</code>').format(v) for k, v in (code_fields or {}).items()}
    return Markup(escape(t.raw(key))).format(**fields, **wrapped)


def markdown_text(value: Any) -> str:
    """A block's text for Markdown: tags dropped (``<code>`` becomes backticks), entities decoded."""
    if isinstance(value, dict):
        value = value.get("text", "")
    if isinstance(value, Markup):
        code = re.sub(r"<code[^>]*>(.*?)</code>", r"`\1`", str(value))
        return Markup(code).striptags()
    return str(value)


def p(text: Any, cls: str = "") -> dict[str, Any]:
    return {"kind": "p", "text": text, "cls": cls}


def h3(text: Any) -> dict[str, Any]:
    return {"kind": "h3", "text": text}


def bullets(items: list[Any], cls: str = "") -> dict[str, Any]:
    return {"kind": "list", "items": list(items), "cls": cls}


def table(header: list[Any], rows: list[list[Any]], *, cls: str = "", label: str = "") -> dict[str, Any]:
    return {"kind": "table", "header": list(header), "rows": [list(r) for r in rows], "cls": cls, "label": label}


def figs(*figures: dict[str, Any] | None) -> dict[str, Any] | None:
    kept = [f for f in figures if f and f.get("png")]
    return {"kind": "figs", "figs": kept} if kept else None


def fig(png: str | None, alt: str, caption: Any) -> dict[str, Any] | None:
    return {"png": png, "alt": alt, "caption": caption} if png else None


def na(t: Translator, reason_key: str = "") -> dict[str, Any]:
    text = t("not_available") + (t("punct.colon") + t(reason_key) if reason_key else "")
    return {"kind": "na", "text": text}
