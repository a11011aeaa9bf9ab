"""Load test of ``medpredict serve`` on loopback: many concurrent clients, mixed valid and hostile requests.

Starts the real server (``medpredict.service.app.serve``, uvicorn) in a subprocess on
127.0.0.1 with a tiny trained bundle, then runs CLIENTS threads x REQUESTS requests each,
cycling through valid predictions, model-card reads, and requests that must be refused
(no key, garbage bytes, truncated PNG, oversized body, malformed record). Records every
status, latencies, and the server's resident memory (VmRSS, and VmHWM = its peak) from
``/proc/<pid>/status``; then holds slow-loris connections (headers or body never
finished) open while checking that normal clients are still served.

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
UPLOAD_LIMIT_MB = 0.25

#: kind -> the statuses that count as a correct answer.
EXPECTED: dict[str, tuple[int, ...]] = {
    "predict": (200,),
    "predict_explain": (200,),
    "model_card": (200,),
    "health": (200,),
    "no_key": (401,),
    "garbage": (415,),
    "truncated_png": (422,),
    "oversized": (413,),
    "bad_record": (422,),
}
MIX = (
    "predict",
    "model_card",
    "no_key",
    "predict",
    "garbage",
    "health",
    "truncated_png",
    "predict_explain",
    "oversized",
    "bad_record",
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


@contextlib.contextmanager
def running_server(run_dir: Path, workdir: Path, *, startup_s: float = 120.0) -> Iterator[Server]:
    """Start ``serve`` on a free loopback port; stop it (SIGTERM, then SIGKILL) on exit."""
    import httpx

    port = free_port()
    code = (
        "import logging; logging.basicConfig(level=logging.INFO);"
        "from medpredict.service.app import serve;"
        f"serve({str(run_dir)!r}, host='127.0.0.1', port={port}, api_key={KEY!r}, "
        f"max_upload_mb={UPLOAD_LIMIT_MB}, audit_path={str(workdir / 'audit.sqlite')!r})"
    )
    log = workdir / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
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
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def payloads() -> dict[str, bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(buffer, format="PNG")
    png = buffer.getvalue()
    return {
        "png": png,
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
    if kind == "predict_explain":
        return int(client.post("/api/v1/predict", files={"file": ("../b.png", data["png"])}, headers=key).status_code)
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
    server_errors: int = 0
    wrong_answers: int = 0
    client_errors: list[str] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    rss_before_kb: int = 0
    rss_after_kb: int = 0
    rss_peak_kb: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_load(server: Server, clients: int, requests_per_client: int, *, timeout_s: float = 120.0) -> LoadResult:
    """``clients`` threads, each with its own connection pool, ``requests_per_client`` requests each."""
    import httpx
    import numpy as np

    data = payloads()
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

    result.rss_before_kb = proc_memory_kb(server.process.pid)["VmRSS"]
    began = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout_s * requests_per_client)
    result.seconds = round(time.perf_counter() - began, 2)
    memory = proc_memory_kb(server.process.pid)
    result.rss_after_kb, result.rss_peak_kb = memory["VmRSS"], memory["VmHWM"]
    result.statuses = {kind: {str(k): v for k, v in sorted(c.items())} for kind, c in counts.items() if c}
    result.total = sum(sum(c.values()) for c in counts.values())
    result.server_errors = sum(v for c in counts.values() for k, v in c.items() if k >= 500)
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


def slow_loris(server: Server, *, hold_s: float = 8.0, connections: int = 4) -> SlowResult:
    """Hold connections that trickle headers or never send the promised body; keep serving others."""
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
    headers_closed = all(_closed_or_answered(s, 0.5).startswith("closed") for s in header_socks)
    body_answer = _closed_or_answered(body_socks[0], 0.5)
    for sock in header_socks + body_socks:
        sock.close()
    return SlowResult(round(hold_s, 1), served, failed, headers_closed, body_answer)


def api_key_coverage(server: Server) -> dict[str, int]:
    """Every route and method of the OpenAPI schema, called without the key: path -> status."""
    import httpx

    schema = httpx.get(server.base + "/openapi.json", timeout=10).json()
    found = {}
    for path, methods in schema["paths"].items():
        for method in methods:
            res = httpx.request(method.upper(), server.base + path, timeout=10)
            found[f"{method.upper()} {path}"] = res.status_code
    return found


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

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    kinds = list(result.statuses)
    ok = [sum(v for k, v in result.statuses[kind].items() if int(k) in EXPECTED[kind]) for kind in kinds]
    wrong = [sum(result.statuses[kind].values()) - good for kind, good in zip(kinds, ok, strict=True)]
    left.barh(kinds, ok, label="expected status")
    left.barh(kinds, wrong, left=ok, color="tab:red", label="unexpected")
    left.set_xlabel("requests")
    left.set_title(f"{result.clients} clients x {result.requests_per_client} requests, {result.server_errors} 5xx")
    left.legend()
    memory = [result.rss_before_kb / 1024, result.rss_after_kb / 1024, result.rss_peak_kb / 1024]
    right.bar(["RSS before", "RSS after", "peak (VmHWM)"], memory, color=["tab:gray", "tab:blue", "tab:orange"])
    right.set_ylabel("server memory (MiB)")
    right.set_title(
        f"p50 {result.latency_ms.get('p50')} ms, p99 {result.latency_ms.get('p99')} ms; "
        f"slow-loris: {slow.others_served} served"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--run", type=Path, help="a run folder to serve (default: train a tiny one)")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds to hold slow-loris connections")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medpredict-load-") as tmp:
        work = Path(tmp)
        run_dir = args.run or train_tiny_run(work)
        with running_server(run_dir, work) as server:
            coverage = api_key_coverage(server)
            result = run_load(server, args.clients, args.requests)
            slow = slow_loris(server, hold_s=args.hold)
            after_slow = proc_memory_kb(server.process.pid)
    summary = {
        "load": result.to_dict(),
        "slow_loris": asdict(slow),
        "rss_after_slow_loris_kb": after_slow,
        "no_key_status_by_route": coverage,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    (args.out / "load_service.json").write_text(json.dumps(summary, indent=2) + "\n")
    _figure(result, slow, args.out / "load_service.png")
    print(json.dumps(summary, indent=2))
    return 0 if result.server_errors == 0 and result.wrong_answers == 0 and not result.client_errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
