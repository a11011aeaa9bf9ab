"""Hash DICOM UIDs in log records, so that no full Study/Series/SOP Instance UID reaches a log.

``dicomweb-client`` logs every request with the full UIDs in its path at INFO, and
``highdicom`` and ``urllib3`` name UIDs too. :func:`hashed_uids` installs a filter on those
libraries' loggers (and on medpredict's) that replaces each UID in a record's message and
arguments by :func:`short_id`, the 12-hex-digit SHA-256 prefix the PACS node and its
ledger use; UIDs under the DICOM root ``1.2.840.10008.`` (SOP classes, transfer syntaxes)
identify nobody and are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Iterator
from typing import Any

#: A DICOM UID: five or more numeric components (an IPv4 address has four).
UID_PATTERN = re.compile(r"(?<![\d.])[0-9]+(?:\.[0-9]+){4,}(?![\d.])")
STANDARD_ROOT = "1.2.840.10008."
#: Loggers whose records may name UIDs (their children are covered too).
LOGGERS = ("dicomweb_client", "highdicom", "pydicom", "urllib3", "requests", "medpredict")


def short_id(uid: str) -> str:
    """A 12-hex-digit SHA-256 prefix of ``uid``: safe to log and to store."""
    return hashlib.sha256(uid.encode("utf-8")).hexdigest()[:12]


def scrub(text: str) -> str:
    """``text`` with every non-standard UID replaced by its :func:`short_id`."""

    def replace(match: re.Match[str]) -> str:
        uid = match.group(0)
        return uid if uid.startswith(STANDARD_ROOT) else short_id(uid)

    return UID_PATTERN.sub(replace, text)


class UidFilter(logging.Filter):
    """Rewrites a record's message (formatted with its arguments) with UIDs hashed; drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: leave it to the handler's own error path
            return True
        record.msg, record.args = scrub(message), None
        if record.exc_info and record.exc_info[1] is not None:
            # the formatted traceback would quote the exception's text: keep the type, hash the text
            exc = record.exc_info[1]
            record.msg += f" ({type(exc).__name__}: {scrub(str(exc))})"
            record.exc_info, record.exc_text = None, None
        return True


def _loggers(prefixes: tuple[str, ...]) -> list[logging.Logger]:
    names = [name for name in logging.Logger.manager.loggerDict if name.split(".")[0] in prefixes]
    return [logging.getLogger(name) for name in (*prefixes, *names)]


@contextlib.contextmanager
def hashed_uids(prefixes: tuple[str, ...] = LOGGERS) -> Iterator[UidFilter]:
    """While the block runs, every logger under ``prefixes`` hashes UIDs in its records.

    Logger filters see only records logged on that very logger, so the filter goes on
    each existing logger under the prefixes; import the libraries (as :func:`imports`
    does) before entering, so that their module loggers exist.
    """
    imports()
    uid_filter = UidFilter()
    installed = list(dict.fromkeys(_loggers(prefixes)))
    for logger in installed:
        logger.addFilter(uid_filter)
    try:
        yield uid_filter
    finally:
        for logger in installed:
            logger.removeFilter(uid_filter)


def imports() -> None:
    """Import the DICOM libraries' modules that log, so that their loggers exist."""
    import importlib
    import pkgutil

    for name in ("dicomweb_client", "highdicom"):
        try:
            package: Any = importlib.import_module(name)
        except ImportError:
            continue
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            if info.name.rsplit(".", 1)[-1].startswith(("_", "cli", "test")):
                continue
            with contextlib.suppress(ImportError):
                importlib.import_module(info.name)
