"""The exception types medpredict raises for people to read.

Every message says what was wrong, the value received, and what to do. The CLI
prints the message of a :class:`MedpredictError` and exits with status 2, without a
traceback; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MedpredictError(Exception):
    """Base class of the errors a user can fix (bad input, bad config, bad bundle)."""


class DataError(MedpredictError, ValueError):
    """Input data is missing, unreadable or not what the task needs."""


class ConfigError(MedpredictError, ValueError):
    """A configuration value or command-line flag is invalid."""


class BundleError(MedpredictError, RuntimeError):
    """A model bundle is missing, tampered with or incompatible with this version."""


class LeakageError(DataError):
    """The same patient or the same image appears in more than one split."""


class DependencyError(MedpredictError, ImportError):
    """An optional dependency (an extra) is not installed."""


class ServerError(MedpredictError, ConnectionError):
    """A server (PACS, FHIR) cannot be reached, fails TLS, or refuses the credentials."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""`` if none is close."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown_choice(kind: str, value: str, choices: Iterable[str]) -> ConfigError:
    """Build the error for an unknown name, listing the valid ones and the closest match."""
    options = sorted(str(c) for c in choices)
    return ConfigError(
        f"Unknown {kind} '{value}'.{did_you_mean(value, options)} Choose one of: {', '.join(options)}."
    )


def require_extra(module: str, extra: str) -> object:
    """Import an optional module, or raise :class:`DependencyError` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyError(
            f"This feature needs the Python package '{module.split('.')[0]}', which is not installed. "
            f"Install it with: pip install 'medpredict[{extra}]'"
        ) from exc
