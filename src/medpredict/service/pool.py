"""The bounded worker pool: at most N requests predicting at once, at most M waiting, 503 beyond.

A prediction request is *admitted* before its body is read (:class:`AdmissionMiddleware`):
when N + M prediction requests are already in the service, it is answered at once with
HTTP 503 and a ``Retry-After`` estimate, so that a burst costs neither memory nor CPU.
An admitted request then waits (at most ``wait_s``) for one of N worker threads, which
decode, predict and draw its pictures; decoding a large image is the memory-hungry part,
so N bounds the service's peak memory. After each piece of work the C heap is given back
to the operating system (``malloc_trim``, where glibc provides it): decoded images are
freed by then, and without the trim glibc keeps the freed pages of its per-thread arenas,
so the resident size would stay at its peak after a burst.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import anyio
import anyio.to_thread

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Routes whose requests go through the pool (POST only).
PREDICT_PREFIX = "/api/v1/predict"


class Busy(Exception):
    """No worker is free within the wait, or the queue is full; ``retry_after_s`` says when to retry."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class WorkerPool:
    """N worker threads and a queue of M admitted requests.

    Args:
        workers: requests predicting at once (N).
        queue: admitted requests waiting for a worker (M).
        wait_s: the longest an admitted request waits for a worker before 503.

    Admission (:meth:`try_admit`, :meth:`leave`) runs on the event loop only, so it needs
    no lock.
    """

    def __init__(self, workers: int, queue: int, wait_s: float) -> None:
        self.workers = int(workers)
        self.queue = int(queue)
        self.wait_s = float(wait_s)
        self.admitted = 0
        self._limiter = anyio.CapacityLimiter(self.workers)
        self._seconds = 1.0  # running mean of one piece of work, for Retry-After
        self._timing = threading.Lock()

    @property
    def capacity(self) -> int:
        return self.workers + self.queue

    def try_admit(self) -> bool:
        """Count one more request in, unless N + M are already in."""
        if self.admitted >= self.capacity:
            return False
        self.admitted += 1
        return True

    def leave(self) -> None:
        self.admitted = max(0, self.admitted - 1)

    def retry_after(self) -> int:
        """Seconds until a worker is likely free: the work ahead divided among the workers."""
        ahead = max(1, self.admitted) / self.workers
        return int(min(60, max(1, math.ceil(self._seconds * ahead))))

    def busy_message(self) -> str:
        return (
            f"The service is busy ({self.workers} predicting, {self.queue} waiting); "
            f"retry in {self.retry_after()} s."
        )

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work(*args)`` on a worker thread once one is free.

        Raises:
            Busy: no worker became free within ``wait_s``.
        """
        try:
            with anyio.fail_after(self.wait_s):
                await self._limiter.acquire()
        except TimeoutError:
            raise Busy(self.busy_message(), self.retry_after()) from None
        try:
            return await anyio.to_thread.run_sync(self._timed, work, *args)
        finally:
            self._limiter.release()

    def _timed(self, work: Callable[..., T], *args: Any) -> T:
        began = time.perf_counter()
        try:
            return work(*args)
        finally:
            seconds = time.perf_counter() - began
            with self._timing:
                self._seconds = 0.8 * self._seconds + 0.2 * seconds
            release_memory()


class MemoryBudget:
    """Memory for decoding, shared by the workers: a large image waits until enough is free.

    Workers bound how many requests run at once; this bounds what their decoded images
    take together, so that two 8192² uploads decode one after the other while small
    ones run side by side. A request larger than the whole budget runs alone.

    Args:
        total_bytes: the budget.
    """

    def __init__(self, total_bytes: int) -> None:
        self.total = int(total_bytes)
        self.used = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` (at most the whole budget) of the budget while the block runs; blocks until free."""
        need = min(max(0, int(nbytes)), self.total)
        with self._changed:
            self._changed.wait_for(lambda: self.used + need <= self.total)
            self.used += need
        try:
            yield
        finally:
            with self._changed:
                self.used -= need
                self._changed.notify_all()


_TRIM: Callable[[int], int] | None = None
_TRIM_LOOKED = False


def release_memory() -> None:
    """Give the C heap's free pages back to the operating system (glibc ``malloc_trim``; else nothing)."""
    global _TRIM, _TRIM_LOOKED
    if not _TRIM_LOOKED:
        _TRIM_LOOKED = True
        name = ctypes.util.find_library("c")
        try:
            _TRIM = ctypes.CDLL(name).malloc_trim if name else None
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
            _TRIM = None
    if _TRIM is not None:
        _TRIM(0)


class AdmissionMiddleware:
    """ASGI middleware answering 503 + ``Retry-After`` to prediction requests the pool cannot admit.

    Runs before the body is read. ``on_refused(path)`` is called for each refusal (the audit log).
    """

    def __init__(self, app: Any, *, pool: WorkerPool, on_refused: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.pool = pool
        self.on_refused = on_refused

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope["path"].startswith(PREDICT_PREFIX):
            await self.app(scope, receive, send)
            return
        if not self.pool.try_admit():
            if self.on_refused is not None:
                self.on_refused(scope["path"])
            await send_busy(send, self.pool.busy_message(), self.pool.retry_after())
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.pool.leave()


async def send_busy(send: Any, message: str, retry_after_s: int) -> None:
    """A 503 answer with ``Retry-After``, sent straight through ASGI.

    The connection stays open: the server reads and drops the unread body, so the client
    gets this answer rather than a connection reset in the middle of its upload.
    """
    body = json.dumps({"detail": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(retry_after_s).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
