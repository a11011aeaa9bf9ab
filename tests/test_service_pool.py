"""The service's memory and its bounded worker pool (issue 13, item 1).

An 85 kB PNG of 8192² took the server from 0.26 to 8.6 GB (the overlay was blended at full
size), and nothing capped concurrent requests. Now: explanations stay at the model's input
size, an upload is reduced to the model's input and a display copy right after decoding,
decoding shares a memory budget, and requests beyond N workers + M waiting get 503.
"""

from __future__ import annotations

import base64
import io
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from medpredict.service.app import ServiceSettings, create_app  # noqa: E402
from medpredict.service.pool import MemoryBudget  # noqa: E402
from test_service import KEY, _png, tiny_run  # noqa: E402

H = {"X-API-Key": KEY}
CLEAR_REFS = Path("/proc/self/clear_refs")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from medpredict.inference.predictor import Predictor

    return Predictor.from_bundle(tiny_run(tmp_path_factory))


def _big_png(side: int) -> bytes:
    """A valid grey PNG of side² with a sparse pattern: ~100 kB on the wire, side² bytes decoded."""
    import struct

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = bytearray(side + 1)  # filter byte 0, then the pixels
    row[1::7] = b"\xc8" * len(row[1::7])
    rows = zlib.compress(bytes(row) * side, 9)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not CLEAR_REFS.exists(), reason="needs Linux /proc/self/clear_refs to reset the peak RSS")
def test_a_4096_png_with_explanation_is_answered_within_bounded_memory(predictor) -> None:
    settings = ServiceSettings(api_key=KEY, max_upload_bytes=2**20)
    data = _big_png(4096)
    assert len(data) < 200_000
    with TestClient(create_app(predictor, settings)) as client:
        client.post("/api/v1/predict", files={"file": ("warm.png", _png())}, headers=H)  # imports, first pass
        CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
        before = _peak_rss_mib()
        res = client.post("/api/v1/predict", files={"file": ("big.png", data)}, headers=H)
        grown = _peak_rss_mib() - before
    assert res.status_code == 200, res.text
    # The float32 image alone is 64 MiB; before the fix the full-size overlay took ~2.4 GB more.
    assert grown < 300, f"the peak RSS grew by {grown:.0f} MiB"
    body = res.json()
    assert body["input"]["size"] == [4096, 4096]
    sizes = {key: Image.open(io.BytesIO(base64.b64decode(body[key].split(",", 1)[1]))).size
             for key in ("image_png", "heatmap_png", "overlay_png")}
    assert set(sizes.values()) == {(512, 512)}  # display-sized, all three alike


class _Gate:
    """A predictor that waits at a gate before predicting, so requests pile up on purpose."""

    def __init__(self, predictor) -> None:
        self._predictor = predictor
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def __getattr__(self, name: str):
        return getattr(self._predictor, name)

    def predict(self, **kwargs):
        self.entered.release()
        assert self.release.wait(30), "the test never opened the gate"
        return self._predictor.predict(**kwargs)


def test_requests_beyond_workers_and_queue_get_503_with_retry_after(predictor, tmp_path) -> None:
    gate = _Gate(predictor)
    settings = ServiceSettings(api_key=KEY, workers=1, queue=1, audit_path=str(tmp_path / "audit.sqlite"))
    statuses: list[int] = []
    with TestClient(create_app(gate, settings)) as client:

        def send() -> None:
            res = client.post("/api/v1/predict?explain=false", files={"file": ("a.png", _png())}, headers=H)
            statuses.append(res.status_code)

        first = threading.Thread(target=send)
        first.start()
        assert gate.entered.acquire(timeout=30)  # the one worker is busy
        second = threading.Thread(target=send)  # admitted: waits in the queue
        second.start()
        deadline = time.monotonic() + 10
        while client.app.state.pool.admitted < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = [client.post("/api/v1/predict", files={"file": ("a.png", _png())}, headers=H) for _ in range(3)]
        gate.release.set()
        first.join(30)
        second.join(30)
        rows = client.app.state.audit.recent()
    assert sorted(statuses) == [200, 200]
    for res in refused:
        assert res.status_code == 503
        assert int(res.headers["retry-after"]) >= 1
        assert "busy" in res.json()["detail"]
    assert sorted(r["status"] for r in rows) == [200, 200, 503, 503, 503]


def test_a_request_that_waits_too_long_for_a_worker_gets_503(predictor) -> None:
    gate = _Gate(predictor)
    settings = ServiceSettings(api_key=KEY, workers=1, queue=4, queue_wait_s=0.3)
    with TestClient(create_app(gate, settings)) as client:
        first = threading.Thread(
            target=client.post, args=("/api/v1/predict",), kwargs={"files": {"file": ("a.png", _png())}, "headers": H}
        )
        first.start()
        assert gate.entered.acquire(timeout=30)
        began = time.monotonic()
        res = client.post("/api/v1/predict", files={"file": ("a.png", _png())}, headers=H)
        waited = time.monotonic() - began
        gate.release.set()
        first.join(30)
    assert res.status_code == 503 and "retry-after" in res.headers
    assert 0.25 < waited < 5


def test_the_memory_budget_lets_small_images_share_and_large_ones_wait() -> None:
    budget = MemoryBudget(100)
    order: list[str] = []
    small_done, large_done = threading.Event(), threading.Event()
    large_done.set()

    def hold(nbytes: int, name: str, until: threading.Event) -> None:
        with budget.reserve(nbytes):
            order.append(name)
            until.wait(5)

    with budget.reserve(60):
        small = threading.Thread(target=hold, args=(30, "small", small_done))
        small.start()
        deadline = time.monotonic() + 5
        while "small" not in order and time.monotonic() < deadline:
            time.sleep(0.01)
        assert order == ["small"] and budget.used == 90  # 60 + 30 fit together
        large = threading.Thread(target=hold, args=(50, "large", large_done))
        large.start()
        small_done.set()
        small.join(5)
        large.join(0.3)
        assert order == ["small"]  # 60 + 50 does not fit: the large one still waits
    large.join(5)
    assert order == ["small", "large"] and budget.used == 0
    with budget.reserve(10**9):  # larger than the whole budget: runs alone, holding all of it
        assert budget.used == 100


def test_heat_maps_stay_at_the_models_input_size(predictor) -> None:
    rng = np.random.default_rng(0)
    case = predictor.predict(images=[rng.random((1, 300, 200), dtype=np.float32)], explain=True)[0]
    assert case.explanation.heatmap.shape == (predictor.image_size, predictor.image_size)
