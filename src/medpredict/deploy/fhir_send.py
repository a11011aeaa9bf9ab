"""POST FHIR transaction bundles to a server, through an outbox so that none is lost.

:class:`FhirOutbox` writes each bundle to a folder first (atomically), then POSTs it to
the server's base URL (``Content-Type: application/fhir+json``) and deletes it once the
server answered 2xx. A bundle that could not be delivered for a passing reason (a 5xx, a
timeout) stays and is sent again by the next :meth:`FhirOutbox.flush`; the bundles are
conditional creates (:func:`medpredict.deploy.fhir.transaction`), so a resend files
nothing twice. A bundle the server rejects (another 4xx) is moved to ``rejected/`` with
the server's answer beside it. A refused connection, a TLS failure or a 401/403 raises
:class:`~medpredict.errors.ServerError` (a one-line error), leaving the outbox as it is.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpredict.atomic import write_json
from medpredict.deploy.remote import server_error
from medpredict.errors import ConfigError

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"


@dataclass
class FlushResult:
    """What one flush did: bundles ``sent``, still ``pending`` (will be resent), ``rejected`` (with reasons)."""

    sent: int = 0
    pending: int = 0
    rejected: list[str] = field(default_factory=list)


class FhirOutbox:
    """Bundles waiting for a FHIR server (see the module docstring).

    Args:
        folder: the outbox folder (created when needed).
        url: the FHIR server's base URL, e.g. ``https://fhir.hospital/r4``.
        headers: extra HTTP headers (e.g. ``Authorization``).
        timeout_s: seconds per request.

    Raises:
        ConfigError: ``url`` is not an http(s) URL.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"FHIR URL '{url}' must start with http:// or https:// (the server's base URL).")
        self.folder = Path(folder)
        self.url = url.rstrip("/")
        self.headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, **(headers or {})}
        self.timeout_s = timeout_s

    def add(self, name: str, bundle: dict[str, Any]) -> Path:
        """Queue ``bundle`` as ``NAME.json`` (atomically); returns its path."""
        path = self.folder / f"{name}.json"
        write_json(path, bundle)
        return path

    def waiting(self) -> list[Path]:
        return sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []

    def flush(self) -> FlushResult:
        """POST every waiting bundle; see the module docstring for what happens on failure.

        Raises:
            ServerError: connection refused, TLS failure, or HTTP 401/403.
        """
        import requests

        result = FlushResult()
        for path in self.waiting():
            body = path.read_bytes()
            try:
                response = requests.post(self.url, data=body, headers=self.headers, timeout=self.timeout_s)
                response.raise_for_status()
            except requests.exceptions.RequestException as exc:
                fatal = server_error(exc, what="the FHIR server", url=self.url)
                if fatal is not None:
                    raise fatal from None
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if status is not None and 400 <= status < 500 and status not in (408, 429):
                    result.rejected.append(self._reject(path, status, exc.response))
                    continue
                result.pending += 1
                logger.warning("FHIR bundle %s not delivered (%s); it stays in the outbox", path.stem, _why(exc))
                continue
            path.unlink()
            result.sent += 1
            logger.info("FHIR bundle %s delivered (HTTP %d)", path.stem, response.status_code)
        return result

    def _reject(self, path: Path, status: int, response: Any) -> str:
        rejected = self.folder / "rejected"
        rejected.mkdir(parents=True, exist_ok=True)
        answer = _answer(response)
        (rejected / f"{path.stem}.response.txt").write_text(f"HTTP {status}\n{answer}\n", encoding="utf-8")
        path.replace(rejected / path.name)
        reason = f"FHIR server rejected bundle {path.stem} (HTTP {status}): {answer[:200]}"
        logger.warning("%s; moved to %s", reason, rejected)
        return reason


def _why(exc: BaseException) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return f"HTTP {status}" if status is not None else type(exc).__name__


def _answer(response: Any) -> str:
    """The server's OperationOutcome diagnostics, or the start of its body."""
    try:
        outcome = response.json()
    except ValueError:
        return str(response.text or "")[:500]
    issues = outcome.get("issue", []) if isinstance(outcome, dict) else []
    texts = [str(i.get("diagnostics") or i.get("details", {}).get("text") or "") for i in issues]
    return "; ".join(t for t in texts if t) or json.dumps(outcome)[:500]
