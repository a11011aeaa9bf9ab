"""Who may call the service: the API key on every route but ``/health``.

The key is accepted as the ``X-API-Key`` header, as ``Authorization: Bearer KEY``, or as the
password of HTTP Basic authentication (any user name), and is compared in constant time.
Basic authentication is what lets a browser open the web page and the API docs: a page
route without the key answers 401 with a ``Basic`` challenge, the browser asks for the key
once, and then sends it with every request to the service, the page's own API calls
included. API routes answer 401 without that challenge, so that a script's failed call
does not open a login dialog.

``--public-docs`` (:attr:`ServiceSettings.public_docs`) opens the page, its static files
and the API docs (``/``, ``/static/*``, ``/docs``, ``/docs-assets/*``, ``/openapi.json``)
without the key; the page then asks for the key itself. The
prediction and model routes always need it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from typing import Any

HEALTH = "/health"
#: What a browser opens: the page, its files and the API docs (public only with ``public_docs``).
BROWSER_PATHS = frozenset({"/", "/favicon.ico", "/docs", "/openapi.json"})
BROWSER_PREFIXES = ("/static/", "/docs-assets/")
REALM = "medpredict (the password is the API key)"


def key_matches(headers: dict[bytes, bytes], expected: str) -> bool:
    """Whether the request's ``X-API-Key``, Bearer token or Basic password equals ``expected``."""
    wanted = expected.encode("utf-8")
    given = [headers.get(b"x-api-key", b"").strip()]
    scheme, _, credentials = headers.get(b"authorization", b"").strip().partition(b" ")
    if scheme.lower() == b"bearer":
        given.append(credentials.strip())
    elif scheme.lower() == b"basic":
        given.append(_basic_password(credentials.strip()))
    # Every candidate is compared, so the time taken does not say which one was sent.
    return sum(hmac.compare_digest(g, wanted) for g in given if g) > 0


def _basic_password(token: bytes) -> bytes:
    try:
        decoded = base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        return b""
    return decoded.partition(b":")[2]


def is_browser_path(path: str) -> bool:
    """The page, its static files or the API docs."""
    return path in BROWSER_PATHS or path.startswith(BROWSER_PREFIXES)


class ApiKeyMiddleware:
    """ASGI middleware answering 401 to requests without the key (see the module docstring).

    Args:
        app: the ASGI app behind it.
        api_key: the key.
        public_docs: let the page, its files and the docs through without the key.
    """

    def __init__(self, app: Any, *, api_key: str, public_docs: bool = False) -> None:
        self.app = app
        self.api_key = api_key
        self.public_docs = public_docs

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == HEALTH or (self.public_docs and is_browser_path(path)):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        if key_matches(headers, self.api_key):
            await self.app(scope, receive, send)
            return
        await _send_401(send, browser=is_browser_path(path))


async def _send_401(send: Any, *, browser: bool) -> None:
    detail = "Missing or wrong API key; send it as the X-API-Key header"
    detail += " (a browser asks for it: any user name, the key as password)." if browser else "."
    body = json.dumps({"detail": detail}).encode()
    challenge = f'Basic realm="{REALM}", charset="UTF-8"' if browser else "ApiKey"
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", challenge.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
