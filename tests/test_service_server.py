"""The server's request deadlines (issue 13, item 8: a header that never finishes held its connection).

A real uvicorn on loopback with :class:`~medpredict.service.server.DeadlineProtocol` and short
deadlines, in front of a small ASGI app that reads the whole body and answers its length.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("uvicorn")

from medpredict.errors import ConfigError  # noqa: E402
from medpredict.service.server import ConnectionLimits, server_config  # noqa: E402

LIMITS = ConnectionLimits(header_timeout_s=0.6, body_timeout_s=0.6, request_timeout_s=2.0, keep_alive_s=1.0)


async def _echo_length(scope, receive, send) -> None:
    """Reads the whole body (after a pause when the path says so) and answers its length."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/slow-app":
        await asyncio.sleep(1.5)  # the app is busy; the client is not to blame
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = int(sock.getsockname()[1])
    config = server_config(_echo_length, host="127.0.0.1", port=free, limits=LIMITS, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield free
    server.should_exit = True
    thread.join(10)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _answer(sock: socket.socket, wait_s: float) -> tuple[str, float]:
    """The first response line (or 'closed'/'open') and the seconds it took."""
    began = time.monotonic()
    sock.settimeout(wait_s)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return "open", time.monotonic() - began
    except OSError:
        return "closed", time.monotonic() - began
    return (data.split(b"\r\n", 1)[0].decode() if data else "closed"), time.monotonic() - began


def _response(sock: socket.socket, wait_s: float = 5) -> tuple[str, bytes]:
    """One whole response: its status line and body (by Content-Length)."""
    sock.settimeout(wait_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return "closed", b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(4096)
    return head.split(b"\r\n", 1)[0].decode(), body


def _post(length: int, path: str = "/") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()


@pytest.mark.parametrize(
    ("opening", "trickle"),
    [
        (b"", None),  # connects and sends nothing
        (b"POST / HTTP/1.1\r\nHost: x\r\n", None),  # headers never finished
        (b"POST / HTTP/1.1\r\n", b"X-Slow: 1\r\n"),  # a header line every 0.2 s: the deadline is total
        (_post(500), None),  # body promised, never sent
        (_post(10_000), b"x" * 10),  # body trickled: no pause is too long, but the whole takes too long
    ],
)
def test_requests_that_never_finish_are_dropped_in_time(port, opening, trickle) -> None:
    with _connect(port) as sock:
        sock.sendall(opening)
        began = time.monotonic()
        answer = "open"
        while answer == "open" and time.monotonic() - began < 4:
            if trickle is not None:
                try:
                    sock.sendall(trickle)
                except OSError:
                    answer = "closed"
                    break
            answer, _ = _answer(sock, 0.2)
        took = time.monotonic() - began
    assert answer in ("HTTP/1.1 408 Request Timeout", "closed"), answer
    assert took < LIMITS.request_timeout_s + 1.0


def test_a_complete_request_is_answered_and_kept_alive_until_idle(port) -> None:
    with _connect(port) as sock:
        for _ in range(2):
            sock.sendall(_post(5) + b"hello")
            assert _response(sock) == ("HTTP/1.1 200 OK", b"5")
        answer, took = _answer(sock, 3)  # idle: uvicorn's keep-alive timeout closes it
    assert answer == "closed" and took < 2.5


def test_a_body_with_short_pauses_is_not_dropped(port) -> None:
    with _connect(port) as sock:
        sock.sendall(_post(40))
        for _ in range(4):  # 4 x 0.3 s: each pause under the 0.6 s limit, 1.2 s in all
            time.sleep(0.3)
            sock.sendall(b"x" * 10)
        answer = _response(sock)
    assert answer == ("HTTP/1.1 200 OK", b"40")


def test_a_busy_app_does_not_get_its_client_dropped(port) -> None:
    # 400 kB: past uvicorn's read buffer, so reading pauses until the (slow) app takes the body.
    size = 400_000
    with _connect(port) as sock:
        began = time.monotonic()
        sock.sendall(_post(size, "/slow-app") + b"y" * size)
        answer = _response(sock)
        took = time.monotonic() - began
    assert answer == ("HTTP/1.1 200 OK", str(size).encode())
    assert took > 1.0  # it waited for the app, past the body deadline, and was answered


def test_limits_are_checked() -> None:
    with pytest.raises(ConfigError, match="header_timeout_s"):
        ConnectionLimits(header_timeout_s=0)
    with pytest.raises(ConfigError, match="max_header_bytes"):
        ConnectionLimits(max_header_bytes=10)
