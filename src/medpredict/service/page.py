"""The web page in the reader's language: its wording, its CJK font, rendered once per language.

Every word the page shows, its script's messages included, comes from the ``web.*`` keys of
the product's one translation table (:mod:`medpredict.report.i18n`, English and Chinese side
by side). The server renders ``templates/index.html.j2`` with the markup's wording and puts
the script's wording into the page as JSON (``<script type="application/json"
id="page-strings">``), so the page is in its language at first paint and needs no second
request. The page embeds the subset of Noto Sans CJK its Chinese characters need
(:func:`medpredict.report.fonts.font_face_css`, as the Chinese report does), so it renders on
a workstation without a CJK font and fetches nothing from elsewhere; without the font it is
served all the same, and a warning is logged.

The language is the server's default (``serve --lang``, English unless set) unless the page
address asks for another (``/?lang=zh``; the page links to the other language). The
browser's Accept-Language is not used: ward workstations are often set up in English
whatever their users read, and a department expects the language its administrator chose.

Values of the user's data (file names, class labels, the model's identity) are filled in
by the script inside ``translate="no"`` elements. Messages the service writes into its JSON
answers stay English, except those of a closed set, which the script rewords from the same
table: referral reasons, input-check verdicts and heat-map methods. An error's ``detail``
(it names the file or field) is shown in English after a sentence in the page's language
chosen by the HTTP status.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from medpredict.errors import unknown_choice
from medpredict.inference.contract import REASON_EMPTY, REASON_OOD, REASON_SET
from medpredict.report import fonts
from medpredict.report.i18n import LANGUAGES, table_keys, translator

TEMPLATES = Path(__file__).parent / "templates"
#: Each language's own name, as the link to it is written on the other page.
AUTONYMS = {"en": "English", "zh": "中文"}
#: The ``lang`` attribute of each page (BCP 47: browsers pick a Simplified Chinese face for zh-CN).
HTML_LANG = {"en": "en", "zh": "zh-CN"}
#: Messages of a closed set in the service's answers -> the table key that words them.
ANSWER_TERMS: dict[str, str] = {
    **{f"reason:{r}": f"referral_reason.{r}" for r in (REASON_SET, REASON_EMPTY, REASON_OOD)},
    "method:grad-cam": "explain_method.grad-cam",
    "method:occlusion": "explain_method.occlusion",
}
_PREFIX = "web."


def check_language(lang: str) -> str:
    """Return ``lang`` if the page is written in it.

    Raises:
        ConfigError: another language, with the ones offered.
    """
    if lang not in LANGUAGES:
        raise unknown_choice("page language", lang, LANGUAGES)
    return lang


def web_keys() -> list[str]:
    """Every ``web.*`` key of the translation table."""
    return table_keys(_PREFIX)


def script_strings(lang: str) -> dict[str, str]:
    """The wording the page's script uses: ``web.js.*`` keys without their prefix, and the answer terms."""
    t = translator(check_language(lang))
    strings = {key.removeprefix(_PREFIX + "js."): t(key) for key in web_keys() if key.startswith(_PREFIX + "js.")}
    strings.update({name: t(key) for name, key in ANSWER_TERMS.items()})
    return strings


@functools.cache
def render_index(lang: str) -> str:
    """The page in ``lang``, font included (cached: the font subset takes seconds).

    Raises:
        ConfigError: a language the page is not written in.
    """
    import jinja2
    from markupsafe import Markup

    t = translator(check_language(lang))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    other = next(code for code in LANGUAGES if code != lang)
    context: dict[str, Any] = {
        "t": t,
        "lang": HTML_LANG[lang],
        "other": {"code": other, "name": AUTONYMS[other], "lang": HTML_LANG[other]},
        # JSON inside <script>: no literal "<", so no "</script>" or "<!--" can end it early
        "strings": Markup(json.dumps(script_strings(lang), ensure_ascii=False, sort_keys=True)
                          .replace("<", "\\u003c")),
        "font_face": "",
    }
    page = env.get_template("index.html.j2").render(**context)
    # the font is chosen from the finished page, script wording included, so it holds every
    # character shown (the English page needs it for the link "中文" only)
    context["font_face"] = Markup(fonts.font_face_css(page))
    return env.get_template("index.html.j2").render(**context)
