"""The HTTP server: uvicorn with deadlines for requests that never finish arriving.

uvicorn drops an idle keep-alive connection (``timeout_keep_alive``) but holds a connection
whose request line and headers, or whose body, never finish: each such "slow loris"
costs a socket and a task for as long as the client likes. :class:`DeadlineProtocol` is
uvicorn's own h11 protocol with a clock per request:

* the request line and headers must be complete ``header_timeout_s`` after the first byte
  (or after the connection opened, when no byte comes);
* a body may pause at most ``body_timeout_s`` between two pieces, and must be complete
  ``request_timeout_s`` after its first byte;

past a deadline the client gets ``408 Request Timeout`` (if no answer has started) and the
connection is closed. The clock stops while the server itself holds reading back (flow
control while the app is busy), so only a slow client is dropped. Headers are also
limited in size (``max_header_bytes``) and connections in number (``max_connections``,
503 beyond).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from medpredict.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    """Deadlines and sizes the server holds every connection to.

    Attributes:
        header_timeout_s: request line + headers complete within this after the first byte.
        body_timeout_s: the longest pause between two pieces of a body.
        request_timeout_s: the whole request complete within this after its first byte.
        keep_alive_s: an idle keep-alive connection is closed after this.
        max_header_bytes: the largest request line + headers (431/400 beyond, from h11).
        max_connections: open connections; more get 503 from uvicorn.
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    request_timeout_s: float = 120.0
    keep_alive_s: float = 5.0
    max_header_bytes: int = 16 * 1024
    max_connections: int = 256

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "request_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} = {getattr(self, name)} must be a positive number of seconds.")
        if self.max_header_bytes < 1024 or self.max_connections < 1:
            raise ConfigError(
                f"max_header_bytes ({self.max_header_bytes}) must be at least 1024 and max_connections "
                f"({self.max_connections}) at least 1."
            )


_TIMEOUT_BODY = b"The request did not arrive in time."
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _TIMEOUT_BODY
)


class DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus the request deadlines of :class:`ConnectionLimits`.

    Build a subclass bound to limits with :func:`deadline_protocol`; uvicorn instantiates it
    per connection.
    """

    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._started = 0.0  # when the current request's first byte came
        self._phase = "idle"  # idle | headers | body

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == "idle" and self.conn.their_state is h11.IDLE:
            self._start_request()
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def _start_request(self) -> None:
        self._started = self.loop.time()
        self._phase = "headers"
        self._arm(self._started + self.limits.header_timeout_s)

    def _follow(self) -> None:
        """Move the clock along with the request: headers, body, or done."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._phase = "body"
            now = self.loop.time()
            self._arm(min(now + self.limits.body_timeout_s, self._started + self.limits.request_timeout_s))
        elif state is not h11.IDLE or self._phase == "body":
            # The request is complete (or the connection is closing); the keep-alive timer takes over.
            self._phase = "idle"
            self._cancel()

    def _arm(self, when: float) -> None:
        self._cancel()
        self._timer = self.loop.call_at(when, self._expired)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self._phase == "body" and self.flow is not None and self.flow.read_paused:
            # The app has not read what came so far: the server is the slow side, not the client.
            self._arm(self.loop.time() + self.limits.body_timeout_s)
            return
        logger.info("Closed a connection whose request %s did not arrive in time.", self._phase)
        cycle = self.cycle if self._phase == "body" else None
        if cycle is None or not cycle.response_started:
            self.transport.write(_TIMEOUT_RESPONSE)
        if cycle is not None:
            cycle.disconnected = True  # the app's receive() now says so; its answer goes nowhere
            cycle.message_event.set()
        self.transport.close()


def deadline_protocol(limits: ConnectionLimits) -> type[DeadlineProtocol]:
    """A :class:`DeadlineProtocol` subclass bound to ``limits`` (uvicorn takes a class)."""
    return type("BoundDeadlineProtocol", (DeadlineProtocol,), {"limits": limits})


def server_config(app: Any, *, host: str, port: int, limits: ConnectionLimits, log_level: str = "info") -> Any:
    """A ``uvicorn.Config`` serving ``app`` with ``limits`` enforced."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=int(port),
        http=deadline_protocol(limits),
        timeout_keep_alive=int(max(1, round(limits.keep_alive_s))),
        h11_max_incomplete_event_size=limits.max_header_bytes,
        limit_concurrency=limits.max_connections,
        log_level=log_level,
        access_log=False,
    )
