"""The one translation table of every page medpredict writes (``--lang en`` / ``--lang zh``).

The wording lives in ``strings.yaml`` beside this module: one entry per key, each with
its English and Chinese text side by side, so a translator sees both and a key cannot
exist in one language only (a test checks). :func:`translator` returns a
:class:`Translator`: ``t(key, **fields)`` formats the text with ``str.format``, and
``t.term(group, value)`` names a value of a closed set (split, method, calibrator ...) —
an unknown value is returned as it is.

Some sentences reach the pages already written, in English, by modules below the
report (the validation-vs-test and data-shift flags, explanation captions).
:meth:`Translator.message` recognises them by the patterns in :data:`MESSAGES` and
rewords them; a sentence it does not recognise stays English and is logged once, so a
new flag shows up in the untranslated-text test rather than disappearing.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import Any

from medpredict.errors import unknown_choice

log = logging.getLogger(__name__)

STRINGS = Path(__file__).parent / "strings.yaml"
LANGUAGES = ("en", "zh")

#: English sentences written by other modules -> the table key that rewords them. Named
#: groups become the key's fields; a group named ``metric``, ``direction`` or ``case`` is
#: itself translated as a term of that group.
MESSAGES: tuple[tuple[str, str], ...] = (
    (r"No threshold was locked on validation data; 0\.5 was used\.", "msg.no_threshold"),
    (r"No patient ids: the bootstrap resamples images, so intervals may be too narrow\.", "msg.no_patient_ids"),
    (r"The test set holds one class only: ROC, PR and decision curves are undefined\.", "msg.one_class"),
    (r"(?P<metric>AUC|Sensitivity|Specificity|Accuracy) is (?P<val>[-\d.]+) on validation but (?P<test>[-\d.]+) "
     r"on test \(p = (?P<p>[-\d.e+]+)\): the test cases differ from the validation cases beyond chance\.",
     "msg.agreement_metric"),
    (r"Prediction sets covered (?P<coverage>[\d.]+%) of test cases \(95% CI (?P<lo>[\d.]+%)-(?P<hi>[\d.]+%)\) "
     r"against the (?P<target>[\d.]+%) promised on validation: the coverage guarantee needs test cases "
     r"exchangeable with validation, and these are not\.", "msg.agreement_coverage"),
    (r"Calibration fitted on validation raised the test ECE by (?P<change>[\d.]+): validation and test disagree "
     r"on how confident the model should be; recalibrate on data like the deployment population\.",
     "msg.agreement_ece"),
    (r"Refitted on these test cases instead \((?P<folds>\d+)-fold cross-fitted: fitted on all folds but one, "
     r"scored on the one left out\), calibration and prediction sets reach ECE (?P<ece>[\d.]+) and coverage "
     r"(?P<coverage>[\d.]+%): the fitting works, and it is validation that differs from these cases\. Refit "
     r"calibration and sets on cases from the deployment population before relying on probabilities and sets "
     r"there\.", "msg.agreement_refit"),
    (r"Prevalence differs from the development data \((?P<there>[\d.]+%) there, (?P<here>[\d.]+%) here\): "
     r"predictive values \(PPV/NPV\) will differ\.", "msg.shift_prevalence"),
    (r"The model (?P<direction>under|over)-estimates risk on average by (?P<amount>[\d.]+%) here "
     r"\(calibration-in-the-large\): consider recalibrating on local data\.", "msg.shift_citl"),
    (r"Image brightness differs from the development data \(standardised difference (?P<smd>[-+\d.]+)\): "
     r"check scanner, protocol or preprocessing\.", "msg.shift_brightness"),
    (r"Column '(?P<column>[^']+)' of the development data is absent here\.", "msg.shift_column_absent"),
    (r"Input distribution shifted \(\|standardised difference\| > (?P<limit>[\d.]+)\) in: (?P<columns>.+)\.",
     "msg.shift_columns"),
    (r"Research and decision support only: flags cases for a clinician's review; not a diagnosis\.",
     "msg.intended_use_evaluate"),
    (r"(?P<declared>.+?)\.? Research and decision support only: flags cases for a clinician's review; "
     r"not a diagnosis\.", "msg.intended_use_declared"),
    (r"predicted probability (?P<p>[\d.]+)", "msg.predicted_probability"),
    (r"decision (?P<decision>.+); p\((?P<positive>.+)\) = (?P<p>[\d.]+)", "msg.decision_score"),
    (r"decision (?P<decision>.+); p = (?P<p>[\d.]+)", "msg.decision_probability"),
    (r"(?P<case>true positive|true negative|false positive|false negative)", "msg.case"),
)
_TERM_GROUPS = ("metric", "direction", "case")


@functools.cache
def _table() -> dict[str, dict[str, str]]:
    """``{key: {"en": ..., "zh": ...}}`` from ``strings.yaml`` (read once per process)."""
    import yaml

    data = yaml.safe_load(STRINGS.read_text(encoding="utf-8"))
    return {str(k): {str(lang): str(text) for lang, text in v.items()} for k, v in data.items()}


class Translator:
    """Look up wording in one language; missing keys fall back to English, then to the key.

    Attributes:
        lang: ``"en"`` or ``"zh"``.
    """

    def __init__(self, lang: str) -> None:
        if lang not in LANGUAGES:
            raise unknown_choice("report language", lang, LANGUAGES)
        self.lang = lang

    def __call__(self, key: str, /, **fields: Any) -> str:
        text = self.raw(key)
        return text.format(**fields) if fields else text

    def raw(self, key: str) -> str:
        """The text of ``key`` before its fields are filled in."""
        entry = _table().get(key)
        if entry is None:
            log.debug("No wording for key %r", key)
            return key
        return entry.get(self.lang) or entry.get("en") or key

    def has(self, key: str) -> bool:
        """Whether the table holds ``key``."""
        return key in _table()

    def term(self, group: str, value: Any) -> str:
        """The name of ``value`` in ``group`` (``term("split", "val") -> "validation"``); unknown: as is."""
        key = f"{group}.{str(value).lower()}"
        return self(key) if self.has(key) else str(value)

    def message(self, text: str) -> str:
        """A sentence written in English elsewhere, in this language (see :data:`MESSAGES`)."""
        if self.lang == "en":
            return text
        out = _reword(text, self)
        if out is None:
            _log_unknown(text[:60])
            return text
        return out


def _declared_use(text: str, t: Translator) -> str:
    """``"DESCRIPTION; modality CR/DX; body part CHEST; view PA/AP"`` with its tag names in ``t``'s language.

    The description is the model owner's own words and stays as written.
    """
    names = {"modality": "intended.modality", "body part": "intended.body_part", "view": "intended.view"}
    parts = []
    for part in text.split("; "):
        label, _, values = part.partition(" ")
        if part.startswith("body part "):
            label, values = "body part", part[len("body part "):]
        parts.append(t(names[label], values=values) if label in names and values else part)
    return t("punct.semicolon").join(parts)


def _reword(text: str, t: Translator) -> str | None:
    for pattern, key in _compiled():
        match = pattern.fullmatch(text.strip())
        if match:
            fields = {name: (t.term(name, value) if name in _TERM_GROUPS else value)
                      for name, value in match.groupdict().items()}
            if "declared" in fields:  # the bundle's intended use: its owner's words, then the tags it names
                fields["declared"] = _declared_use(fields["declared"], t)
            return t(key, **fields)
    # a caption such as "true positive: predicted probability 0.93" is reworded part by part
    if ": " in text:
        parts = [_reword(part, t) for part in text.split(": ")]
        if all(p is not None for p in parts):
            return t("punct.colon").join(p for p in parts if p is not None)
    return None


@functools.cache
def _compiled() -> tuple[tuple[re.Pattern[str], str], ...]:
    return tuple((re.compile(pattern), key) for pattern, key in MESSAGES)


@functools.cache
def _log_unknown(start: str) -> None:
    log.warning("No translation for the message starting %r; it is shown in English.", start)


def table_keys(prefix: str = "") -> list[str]:
    """The table's keys that start with ``prefix``, in the file's order."""
    return [key for key in _table() if key.startswith(prefix)]


def translator(lang: str = "en") -> Translator:
    """Return the :class:`Translator` for ``lang``.

    Raises:
        ConfigError: ``lang`` is not one of :data:`LANGUAGES` (with a suggestion).
    """
    return Translator(lang)
