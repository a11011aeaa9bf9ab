"""Load test of ``medpredict serve`` on loopback: many concurrent clients, mixed valid, heavy and hostile requests.

Starts the real server (``medpredict.service.app.serve``, uvicorn) in a subprocess on
127.0.0.1 with a tiny trained bundle, then runs CLIENTS threads x REQUESTS requests each,
cycling through small predictions, full-size DICOMs (the shipped 1955x1841 chest CR
``RG1_J2KI.dcm``) and 8192² PNGs with explanations on, model-card reads, and requests that
must be refused (no key, garbage bytes, truncated PNG, oversized body, malformed record).
Prediction requests may also get 503 when the worker pool and its queue are full; those
are counted, never retried. Records every status and latency, and the server's resident
memory (VmRSS sampled every 0.1 s, VmHWM = its peak) from ``/proc/<pid>/status``: idle
(after start-up and warm-up), peak, and a few seconds after the load. Then holds
slow-loris connections (headers or body never finished) open while checking that normal
clients are still served and the stalled ones are dropped; and measures the first
request's latency on a fresh server with and without the warm-up.

    python bench/load_service.py --clients 50 --requests 20        # writes bench/results/load_service.*

Also imported by ``tests/test_load_service.py``, which runs a smaller load.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KEY = "load-test-key-0123456789"
UPLOAD_LIMIT_MB = 4.0
SHIPPED_DICOM = ROOT.parent / "shared" / "data" / "dicom" / "pydicom_data" / "RG1_J2KI.dcm"

#: kind -> the statuses that count as a correct answer. Prediction routes may also answer 503
#: (busy, with Retry-After) before they look at the request; ``no_key`` and ``oversized`` are
#: refused before the worker pool.
EXPECTED: dict[str, tuple[int, ...]] = {
    "predict": (200, 503),
    "predict_explain": (200, 503),
    "dicom_explain": (200, 503),
    "big_png_explain": (200, 503),
    "model_card": (200,),
    "health": (200,),
    "no_key": (401,),
    "garbage": (415, 503),
    "truncated_png": (422, 503),
    "oversized": (413,),
    "bad_record": (422, 503),
}
MIX = (
    "predict",
    "dicom_explain",
    "no_key",
    "big_png_explain",
    "garbage",
    "model_card",
    "truncated_png",
    "predict_explain",
    "oversized",
    "bad_record",
    "health",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def memory_kb(self) -> dict[str, int]:
        return proc_memory_kb(self.process.pid)


@contextlib.contextmanager
def running_server(
    run_dir: Path,
    workdir: Path,
    *,
    startup_s: float = 180.0,
    warm: bool = True,
    workers: int = 2,
    queue: int = 8,
) -> Iterator[Server]:
    """Start ``serve`` on a free loopback port; stop it (SIGTERM, then SIGKILL) on exit.

    ``/health`` answers only once the server listens, which ``serve`` does after its warm-up.
    """
    import httpx

    port = free_port()
    code = (
        "import logging; logging.basicConfig(level=logging.INFO);"
        "from medpredict.service.app import serve;"
        f"serve({str(run_dir)!r}, host='127.0.0.1', port={port}, api_key={KEY!r}, "
        f"max_upload_mb={UPLOAD_LIMIT_MB}, audit_path={str(workdir / f'audit-{port}.sqlite')!r}, "
        f"warm={warm!r}, workers={workers}, queue={queue})"
    )
    log = workdir / f"server-{port}.log"
    # This checkout's sources first, whatever the working folder (the server runs in ``workdir``).
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": path}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", code], stdout=sink, stderr=subprocess.STDOUT, cwd=workdir, env=env
        )
    server = Server(process, port, log)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.base + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not answer /health within {startup_s} s")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def big_png(side: int) -> bytes:
    """A valid grey PNG of side² with a sparse pattern: ~100 kB on the wire for 8192², side² bytes decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = bytearray(side + 1)  # filter byte 0, then the pixels
    row[1::7] = b"\xc8" * len(row[1::7])
    rows = zlib.compress(bytes(row) * side, 9)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def full_size_dicom() -> bytes:
    """The shipped 1955x1841 chest CR (JPEG 2000), or an uncompressed CR of that size where it is absent."""
    if SHIPPED_DICOM.is_file():
        return SHIPPED_DICOM.read_bytes()
    import numpy as np

    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures_images import write_dicom

    with tempfile.TemporaryDirectory() as tmp:
        pixels = (np.random.default_rng(1).random((1955, 1841)) * 4000).astype(np.uint16)
        return write_dicom(Path(tmp) / "cr.dcm", pixels, Modality="CR").read_bytes()


def payloads(big_side: int = 8192) -> dict[str, bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(buffer, format="PNG")
    png = buffer.getvalue()
    return {
        "png": png,
        "big_png": big_png(big_side),
        "dicom": full_size_dicom(),
        "truncated_png": png[: len(png) // 2],
        "garbage": bytes(rng.integers(0, 256, 3000, dtype=np.uint8)),
        "oversized": b"\x89PNG\r\n\x1a\n" + bytes(int(UPLOAD_LIMIT_MB * 1024 * 1024) + 4096),
    }


def one_request(client: Any, kind: str, data: dict[str, bytes]) -> int:
    key = {"X-API-Key": KEY}
    if kind == "predict":
        return int(
            client.post(
                "/api/v1/predict?explain=false", files={"file": ("a.png", data["png"])}, headers=key
            ).status_code
        )
    if kind in ("predict_explain", "dicom_explain", "big_png_explain"):
        name, payload = {
            "predict_explain": ("../b.png", data["png"]),
            "dicom_explain": ("chest.dcm", data["dicom"]),
            "big_png_explain": ("big.png", data["big_png"]),
        }[kind]
        return int(client.post("/api/v1/predict", files={"file": (name, payload)}, headers=key).status_code)
    if kind == "model_card":
        return int(client.get("/api/v1/model", headers=key).status_code)
    if kind == "health":
        return int(client.get("/health").status_code)
    if kind == "no_key":
        return int(client.post("/api/v1/predict", files={"file": ("a.png", data["png"])}).status_code)
    if kind in ("garbage", "truncated_png", "oversized"):
        return int(client.post("/api/v1/predict", files={"file": ("x.png", data[kind])}, headers=key).status_code)
    if kind == "bad_record":
        return int(
            client.post(
                "/api/v1/predict", data={"record": "{not json"}, files={"file": ("a.png", data["png"])}, headers=key
            ).status_code
        )
    raise ValueError(kind)


@dataclass
class LoadResult:
    clients: int
    requests_per_client: int
    total: int = 0
    seconds: float = 0.0
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)
    busy_503: int = 0
    server_errors: int = 0  # 5xx other than 503
    wrong_answers: int = 0
    client_errors: list[str] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    rss_idle_kb: int = 0
    rss_peak_kb: int = 0  # VmHWM: the highest resident size the process ever had
    rss_sampled_max_kb: int = 0
    rss_after_kb: int = 0  # after the load, once the server has been idle for settle_s
    rss_timeline_kb: list[tuple[float, int]] = field(default_factory=list)

    @property
    def rss_after_over_idle(self) -> float:
        return self.rss_after_kb / max(1, self.rss_idle_kb)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["rss_after_over_idle"] = round(self.rss_after_over_idle, 3)
        values["rss_timeline_kb"] = self.rss_timeline_kb[:: max(1, len(self.rss_timeline_kb) // 200)]
        return values


def _sample_memory(server: Server, out: list[tuple[float, int]], stop: threading.Event) -> None:
    began = time.perf_counter()
    while not stop.is_set():
        with contextlib.suppress(OSError, KeyError):
            out.append((round(time.perf_counter() - began, 2), server.memory_kb()["VmRSS"]))
        stop.wait(0.1)


def run_load(
    server: Server,
    clients: int,
    requests_per_client: int,
    *,
    timeout_s: float = 300.0,
    big_side: int = 8192,
    settle_s: float = 3.0,
) -> LoadResult:
    """``clients`` threads, each with its own connection pool, ``requests_per_client`` requests each."""
    import httpx
    import numpy as np

    data = payloads(big_side)
    result = LoadResult(clients, requests_per_client)
    counts: dict[str, Counter[int]] = {kind: Counter() for kind in EXPECTED}
    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def worker(index: int) -> None:
        with httpx.Client(base_url=server.base, timeout=timeout_s) as client:
            start.wait()
            for step in range(requests_per_client):
                kind = MIX[(index + step) % len(MIX)]
                began = time.perf_counter()
                try:
                    status = one_request(client, kind, data)
                except httpx.HTTPError as exc:
                    with lock:
                        result.client_errors.append(f"{kind}: {type(exc).__name__}")
                    continue
                with lock:
                    counts[kind][status] += 1
                    latencies.append((time.perf_counter() - began) * 1e3)

    result.rss_idle_kb = server.memory_kb()["VmRSS"]
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_memory, args=(server, result.rss_timeline_kb, stop), daemon=True)
    sampler.start()
    began = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout_s * requests_per_client)
    result.seconds = round(time.perf_counter() - began, 2)
    time.sleep(settle_s)  # idle again: what the server holds on to after the burst
    stop.set()
    sampler.join(5)
    memory = server.memory_kb()
    result.rss_after_kb, result.rss_peak_kb = memory["VmRSS"], memory["VmHWM"]
    result.rss_sampled_max_kb = max((kb for _, kb in result.rss_timeline_kb), default=0)
    result.statuses = {kind: {str(k): v for k, v in sorted(c.items())} for kind, c in counts.items() if c}
    result.total = sum(sum(c.values()) for c in counts.values())
    result.busy_503 = sum(c.get(503, 0) for c in counts.values())
    result.server_errors = sum(v for c in counts.values() for k, v in c.items() if k >= 500 and k != 503)
    result.wrong_answers = sum(v for kind, c in counts.items() for k, v in c.items() if k not in EXPECTED[kind])
    if latencies:
        values = np.asarray(latencies)
        result.latency_ms = {
            q: round(float(np.percentile(values, p)), 1) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))
        }
        result.latency_ms["max"] = round(float(values.max()), 1)
    return result


@dataclass
class SlowResult:
    """What happened to connections that never finish their request."""

    held_s: float
    others_served: int
    others_failed: int
    headers_closed_by_server: bool
    body_answer: str


def _closed_or_answered(sock: socket.socket, wait_s: float) -> str:
    """'closed', the first response line, or 'open' if the server neither answered nor closed."""
    sock.settimeout(wait_s)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return "open"
    except OSError as exc:
        return f"closed ({type(exc).__name__})"
    return "closed" if not data else data.split(b"\r\n", 1)[0].decode("latin-1")


def slow_loris(server: Server, *, hold_s: float = 12.0, connections: int = 4) -> SlowResult:
    """Hold connections that trickle headers or never send the promised body; keep serving others.

    The server drops both kinds after its header/body deadlines (10 s by default), so with
    ``hold_s`` past them every stalled connection should be closed (or answered 408).
    """
    import httpx

    header_socks, body_socks = [], []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
        header_socks.append(sock)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(
            b"POST /api/v1/predict/record HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: "
            + KEY.encode()
            + b'\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"record":'
        )  # body promised, never sent
        body_socks.append(sock)
    served = failed = 0
    deadline = time.monotonic() + hold_s
    with httpx.Client(base_url=server.base, timeout=10) as client:
        while time.monotonic() < deadline:
            for sock in header_socks:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Slow: 1\r\n")  # one more header line now and then
            try:
                ok = client.get("/api/v1/model", headers={"X-API-Key": KEY}).status_code == 200
            except httpx.HTTPError:
                ok = False
            served, failed = served + ok, failed + (not ok)
            time.sleep(0.25)
    headers_closed = all(_closed_or_answered(s, 0.5).split()[0] in ("closed", "HTTP/1.1") for s in header_socks)
    body_answer = _closed_or_answered(body_socks[0], 0.5)
    for sock in header_socks + body_socks:
        sock.close()
    return SlowResult(round(hold_s, 1), served, failed, headers_closed, body_answer)


#: What a browser opens: the page, its files and the API docs (not in the OpenAPI paths).
BROWSER_PATHS = ("/", "/docs", "/docs-assets/swagger-ui.css", "/openapi.json", "/static/app.js", "/favicon.ico")


def api_key_coverage(server: Server) -> dict[str, int]:
    """Every route of the OpenAPI schema and every page path, called without the key: route -> status."""
    import httpx

    schema = httpx.get(server.base + "/openapi.json", headers={"X-API-Key": KEY}, timeout=10).json()
    found = {}
    routes = [(m.upper(), path) for path, methods in schema["paths"].items() for m in methods]
    for method, path in routes + [("GET", p) for p in BROWSER_PATHS]:
        found[f"{method} {path}"] = httpx.request(method, server.base + path, timeout=10).status_code
    return found


def first_request_ms(run_dir: Path, workdir: Path, *, warm: bool) -> dict[str, float]:
    """Latency of the first and second predictions (PNG, explanation on) on a freshly started server."""
    import httpx

    png = payloads(64)["png"]
    times = []
    with running_server(run_dir, workdir, warm=warm) as server, httpx.Client(base_url=server.base, timeout=120) as c:
        for _ in range(2):
            began = time.perf_counter()
            res = c.post("/api/v1/predict", files={"file": ("a.png", png)}, headers={"X-API-Key": KEY})
            res.raise_for_status()
            times.append(round((time.perf_counter() - began) * 1e3, 1))
    return {"first_ms": times[0], "second_ms": times[1]}


def train_tiny_run(root: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_square_npz, tiny_config
    from medpredict.training.image import train

    npz = make_square_npz(root / "squaremnist.npz")
    return train(tiny_config(npz, root / "runs"), progress=False).run_dir


def _figure(result: LoadResult, slow: SlowResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    kinds = list(result.statuses)
    ok = [sum(v for k, v in result.statuses[kind].items() if int(k) in EXPECTED[kind] and k != "503") for kind in kinds]
    busy = [result.statuses[kind].get("503", 0) for kind in kinds]
    wrong = [sum(result.statuses[kind].values()) - a - b for kind, a, b in zip(kinds, ok, busy, strict=True)]
    left.barh(kinds, ok, label="expected answer")
    left.barh(kinds, busy, left=ok, color="tab:orange", label="503 busy (Retry-After)")
    left.barh(kinds, wrong, left=[a + b for a, b in zip(ok, busy, strict=True)], color="tab:red", label="unexpected")
    left.set_xlabel("requests")
    left.set_title(
        f"{result.clients} clients x {result.requests_per_client} requests: "
        f"{result.busy_503} x 503, {result.server_errors} other 5xx"
    )
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    if result.rss_timeline_kb:
        seconds, kb = zip(*result.rss_timeline_kb, strict=True)
        right.plot(seconds, [k / 1024 for k in kb], label="server RSS")
    right.axhline(result.rss_idle_kb / 1024, color="tab:gray", linestyle="--", label="idle")
    right.axhline(1.2 * result.rss_idle_kb / 1024, color="tab:gray", linestyle=":", label="idle + 20%")
    right.axhline(1500, color="tab:red", linestyle="--", label="1.5 GB")
    right.set_xlabel("seconds since the load began")
    right.set_ylabel("resident memory (MiB)")
    right.set_title(
        f"peak {result.rss_peak_kb / 1024:.0f} MiB, after {result.rss_after_kb / 1024:.0f} MiB; "
        f"slow-loris: {slow.others_served} others served"
    )
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--run", type=Path, help="a run folder to serve (default: train a tiny one)")
    parser.add_argument("--big-side", type=int, default=8192, help="side of the large PNGs (default 8192)")
    parser.add_argument("--workers", type=int, default=2, help="the server's worker pool")
    parser.add_argument("--queue", type=int, default=8, help="the server's queue of waiting requests")
    parser.add_argument("--hold", type=float, default=12.0, help="seconds to hold slow-loris connections")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medpredict-load-") as tmp:
        work = Path(tmp)
        run_dir = args.run or train_tiny_run(work)
        latency = {
            "cold": first_request_ms(run_dir, work, warm=False),
            "warmed_up": first_request_ms(run_dir, work, warm=True),
        }
        with running_server(run_dir, work, workers=args.workers, queue=args.queue) as server:
            coverage = api_key_coverage(server)
            result = run_load(server, args.clients, args.requests, big_side=args.big_side)
            slow = slow_loris(server, hold_s=args.hold)
            after_slow = server.memory_kb()
    summary = {
        "load": result.to_dict(),
        "first_request_latency": latency,
        "slow_loris": asdict(slow),
        "rss_after_slow_loris_kb": after_slow,
        "no_key_status_by_route": coverage,
        "settings": {"workers": args.workers, "queue": args.queue, "big_side": args.big_side},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    (args.out / "load_service.json").write_text(json.dumps(summary, indent=2) + "\n")
    _figure(result, slow, args.out / "load_service.png")
    print(json.dumps({k: v for k, v in summary.items() if k != "load"} | {"load": {
        k: v for k, v in result.to_dict().items() if k != "rss_timeline_kb"}}, indent=2))
    held = result.rss_peak_kb < 1.5e6 and result.rss_after_over_idle <= 1.2
    clean = result.server_errors == 0 and result.wrong_answers == 0 and not result.client_errors
    return 0 if clean and held else 1


if __name__ == "__main__":
    raise SystemExit(main())
