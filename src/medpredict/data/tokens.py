"""How a cell says "no value", and label spellings that differ only in case or spaces.

Shared by the image manifest (:mod:`medpredict.data.manifest`), the data check and the
record tables (:mod:`medpredict.records.tables`), so that a target written ``'Unknown'`` or
``'normal '`` is treated the same way wherever it is read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Tokens that mean "no value" in the tables hospitals and the UCI repository ship.
MISSING_TOKENS = frozenset({"", "?", "na", "n/a", "nan", "null", "none", "-", "--", "missing", "."})
# In a target column these words are never a class either: the outcome was not determined.
# (In a feature, "unknown" may be an informative level, so the cleaner keeps it there.)
TARGET_MISSING_TOKENS = MISSING_TOKENS | frozenset(
    {"unknown", "unk", "not known", "not available", "n.a.", "#n/a", "undetermined", "not recorded",
     "not applicable", "pending", "??"}
)


def clean_token(value: object) -> object:
    """Strip whitespace (tabs included) and turn a missing-value token into ``None``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        token = value.strip().strip("'\"").strip()
        return None if token.lower() in MISSING_TOKENS else token
    return value


def clean_target_token(value: object) -> object:
    """:func:`clean_token` for a target cell: also ``'Unknown'``, ``'unk'``, ``'pending'`` ... are ``None``."""
    token = clean_token(value)
    if isinstance(token, str) and token.lower() in TARGET_MISSING_TOKENS:
        return None
    return token


def label_variants(values: pd.Series) -> dict[str, list[str]]:
    """Spellings of one label that differ only in case or spaces: ``{"normal": ["Normal", "normal "]}``.

    Keys are the spelling with spaces collapsed and lower-cased; only groups of two or more
    distinct spellings are returned (each would otherwise become a class of its own).
    """
    groups: dict[str, set[str]] = {}
    for value in values.dropna().astype(str).unique():
        groups.setdefault(" ".join(value.split()).casefold(), set()).add(value)
    return {key: sorted(spellings) for key, spellings in sorted(groups.items()) if len(spellings) > 1}


def written_as(values: pd.Series, limit: int = 5) -> str:
    """How missing cells were written, most frequent first: ``"'Unknown' x4, (empty) x2"``."""

    def shown(value: object) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip():
            return "(empty)"
        return repr(str(value))

    counts = values.astype(object).map(shown).value_counts()
    text = ", ".join(f"{k} x{int(n)}" for k, n in counts.head(limit).items())
    return text + (", ..." if len(counts) > limit else "")
