"""Failures of hospital servers (PACS, FHIR) as one-line errors a person can act on.

:func:`server_error` turns the ``requests`` exceptions behind a refused connection, a
failed TLS handshake, a timeout while connecting, and an HTTP 401/403 answer into a
:class:`~medpredict.errors.ServerError` that names the server, its configured base URL and
what to check. The message never quotes the request URL (it holds study UIDs), only the
base URL the user gave. Other failures (a 404 or 500 for one study) return ``None``: they
belong to that study, not to the connection.
"""

from __future__ import annotations

from typing import Any

from medpredict.deploy.uid_log import scrub
from medpredict.errors import ServerError


def server_error(exc: BaseException, *, what: str, url: str, credentials_hint: str = "") -> ServerError | None:
    """A :class:`ServerError` for a connection, TLS or authentication failure; None for anything else.

    Args:
        exc: the exception a request raised.
        what: the server, for people (``"the DICOMweb server"``).
        url: the base URL the user configured.
        credentials_hint: what to check after a 401 (e.g. the flag and variable names).
    """
    import requests

    if isinstance(exc, requests.exceptions.SSLError):
        return ServerError(
            f"TLS with {what} at {url} failed ({_root_reason(exc)}). Check that the URL's scheme matches the "
            "server (https:// only for a TLS endpoint) and that its certificate is trusted "
            "(REQUESTS_CA_BUNDLE can name the hospital's CA bundle)."
        )
    if isinstance(exc, requests.exceptions.ConnectionError):  # refused, unresolvable, connect timeout
        return ServerError(
            f"Cannot connect to {what} at {url} ({_root_reason(exc)}). Check that the server runs and that "
            "the host and port are right."
        )
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 401:
            hint = f" {credentials_hint}" if credentials_hint else ""
            return ServerError(f"{what.capitalize()} at {url} refused the credentials (HTTP 401 Unauthorized).{hint}")
        if status == 403:
            return ServerError(
                f"{what.capitalize()} at {url} answered HTTP 403 Forbidden: the account is known but may not "
                "do this; ask the server's administrator for read and store rights."
            )
    return None


def _root_reason(exc: BaseException) -> str:
    """The innermost cause's text (``[Errno 111] Connection refused``), without request URLs."""
    seen: set[int] = set()
    current: Any = exc
    reason = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            reason = f"{current.strerror}"
        elif current.args and isinstance(current.args[0], BaseException):
            current = current.args[0]
            continue
        nxt = getattr(current, "reason", None)
        current = nxt if isinstance(nxt, BaseException) else (current.__cause__ or current.__context__)
    text = reason or type(exc).__name__
    if "Max retries" in text or "url:" in text:
        text = type(exc).__name__
    return scrub(text)
