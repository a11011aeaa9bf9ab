"""The real server (uvicorn on 127.0.0.1) under concurrent load, slow clients, and requests without the key.

A small version of ``bench/load_service.py`` (which runs 50 clients x 20 requests and writes
figures): 10 clients x 10 mixed requests, twice, with zero 5xx, every valid request
answered 200, every hostile one with its 4xx, and the server's resident memory bounded.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

_BENCH = Path(__file__).resolve().parents[1] / "bench" / "load_service.py"
_spec = importlib.util.spec_from_file_location("load_service_bench", _BENCH)
assert _spec is not None and _spec.loader is not None
load = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = load  # dataclasses look their module up while the file runs
_spec.loader.exec_module(load)

#: The longest a request may stay unfinished (headers or body) before the server drops it.
UNFINISHED_REQUEST_LIMIT_S = 10.0
#: Resident-memory growth allowed over a second round of load, after a warm-up round.
STEADY_RSS_GROWTH_KB = 96 * 1024


@pytest.fixture(scope="module")
def server(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    with load.running_server(tiny_run, tmp_path_factory.mktemp("serve")) as running:
        # Two connections that never finish their request, opened now and checked by the last test.
        stalled = []
        for request in (
            b"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n",  # headers never finished
            b"POST /api/v1/predict/record HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: "
            + load.KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{",  # body never sent
        ):
            sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
            sock.sendall(request)
            stalled.append(sock)
        running.stalled = stalled
        running.stalled_since = time.monotonic()
        yield running
        for sock in stalled:
            sock.close()


def test_api_key_is_required_on_every_route_but_health(server) -> None:
    statuses = load.api_key_coverage(server)
    assert {"GET /health", "POST /api/v1/predict", "GET /api/v1/model"} <= set(statuses)
    assert statuses.pop("GET /health") == 200
    assert statuses and all(status == 401 for status in statuses.values()), statuses


def test_concurrent_mixed_load_has_no_5xx_and_bounded_memory(server) -> None:
    warm = load.run_load(server, clients=10, requests_per_client=10)
    steady = load.run_load(server, clients=10, requests_per_client=10)
    for result in (warm, steady):
        assert result.total == 100 and result.client_errors == []
        assert result.server_errors == 0, result.statuses
        assert result.wrong_answers == 0, result.statuses  # valid -> 200, hostile -> its 4xx
    assert steady.statuses["predict"] == {"200": 20}
    assert steady.rss_after_kb - steady.rss_before_kb < STEADY_RSS_GROWTH_KB, (
        steady.rss_before_kb,
        steady.rss_after_kb,
    )
    assert server.process.poll() is None  # still up


def test_slow_clients_do_not_block_others(server) -> None:
    slow = load.slow_loris(server, hold_s=3.0, connections=3)
    assert slow.others_failed == 0 and slow.others_served >= 5, slow


@pytest.mark.xfail(
    strict=True,
    reason="known limitation: uvicorn has no deadline for a request whose headers or body never finish, so "
    "such a connection is held (other clients are still served, see test_slow_clients_do_not_block_others); "
    "README: run behind a reverse proxy with client header/body timeouts",
)
def test_unfinished_requests_are_dropped_in_time(server) -> None:
    wait = UNFINISHED_REQUEST_LIMIT_S + 2.0 - (time.monotonic() - server.stalled_since)
    if wait > 0:
        time.sleep(wait)
    answers = [load._closed_or_answered(sock, 0.5) for sock in server.stalled]
    assert all(a.startswith("closed") or a.startswith("HTTP/1.1 4") for a in answers), answers
