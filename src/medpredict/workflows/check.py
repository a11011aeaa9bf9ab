"""``medpredict data check``: an image manifest or a clinical table, whichever the source is."""

from __future__ import annotations

from pathlib import Path

from medpredict.data.check import CheckResult, check_images
from medpredict.data.manifest import load_manifest
from medpredict.records.check import TableCheckResult, check_table, looks_like_table


def check_data(
    source: str | Path, *, target: str | None = None, out: str | Path = "data_check", lang: str = "en"
) -> CheckResult | TableCheckResult:
    """Check ``source`` and write the data-quality report into ``out``.

    A clinical table (see :func:`medpredict.records.check.looks_like_table`) gets the table
    check; anything else is read as an image manifest. Either result's ``exit_code`` is 1 when
    a problem stops training.

    Args:
        target: the target column (a rule such as ``num>0`` for tables); ``None`` uses
            ``label`` for images and lets the table reader guess.
        lang: the HTML report's language, ``en`` or ``zh``.

    Raises:
        DataError: the source cannot be read.
    """
    out = Path(out)
    if looks_like_table(source):
        return TableCheckResult(check_table(source, target=target, out=out, lang=lang), out)
    return check_images(load_manifest(source, target=target or "label"), out, lang=lang)
