"""Progress for long loops: a bar on a terminal, a plain line now and then in a log, nothing under ``-q``.

:func:`progress_bar` is the one place medpredict decides how to show progress:

* the console shows warnings only (``medpredict -q``, or a library user's logging at
  WARNING): nothing at all;
* standard error is a terminal: a tqdm bar, redrawn in place;
* otherwise (a file, a pipe, CI, a service log): an INFO line on the
  ``medpredict.progress`` logger when another 10% is done and at least
  :data:`MIN_INTERVAL_S` have passed, or every :data:`MAX_INTERVAL_S` seconds, and a
  closing line when any line was written. A loop that finishes within
  :data:`MIN_INTERVAL_S` writes nothing, so a log never fills with carriage-return spam.

Typical use::

    for path in progress_bar(paths, desc="reading images", unit="img", enabled=progress):
        ...
    with progress_bar(total=n, desc="tune", unit="trial") as bar:
        bar.update(1)
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TypeVar, overload

log = logging.getLogger("medpredict.progress")

T = TypeVar("T")

#: No periodic line before this many seconds since the previous one (or the start).
MIN_INTERVAL_S = 10.0
#: A line at least this often while a loop runs, even between 10% steps or without a total.
MAX_INTERVAL_S = 30.0


class ProgressBar(Protocol[T]):
    """What every progress object offers (tqdm's subset that medpredict uses)."""

    def __iter__(self) -> Iterator[T]: ...

    def update(self, n: float = 1) -> Any: ...

    def set_postfix(self, **values: Any) -> Any: ...

    def close(self) -> None: ...

    def __enter__(self) -> ProgressBar[T]: ...

    def __exit__(self, *exc: object) -> None: ...


def console_shows_info() -> bool:
    """Whether an INFO record of ``medpredict`` would reach a console (not a file) handler.

    ``medpredict -q`` sets the console handler to WARNING: False. A run's ``train.log`` is a
    file handler and does not count. With no console handler configured at all (a library
    user who never set up logging), True: such a user sees tqdm bars as before.
    """
    logger: logging.Logger | None = logging.getLogger("medpredict")
    found = False
    while logger is not None:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                found = True
                if handler.level <= logging.INFO:
                    return True
        if not logger.propagate:
            break
        logger = logger.parent
    return not found


def _is_terminal() -> bool:
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


@overload
def progress_bar(
    iterable: Iterable[T], *, total: float | None = ..., desc: str = ..., unit: str = ..., enabled: bool = ...,
    leave: bool = ..., unit_scale: bool = ...,
) -> ProgressBar[T]: ...


@overload
def progress_bar(
    iterable: None = None, *, total: float | None = ..., desc: str = ..., unit: str = ..., enabled: bool = ...,
    leave: bool = ..., unit_scale: bool = ...,
) -> ProgressBar[Any]: ...


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    leave: bool = True,
    unit_scale: bool = False,
) -> ProgressBar[Any]:
    """A progress wrapper for ``iterable`` (or a manual counter with ``total``); see the module docstring.

    Args:
        iterable: what to loop over; ``None`` for a bar driven by :meth:`update`.
        total: the expected count (default ``len(iterable)`` where it has one).
        desc, unit: the bar's label and unit (``"img"``, ``"batch"``, ``"B"``).
        enabled: the caller's own switch (``progress=False`` in library calls).
        leave: keep the finished bar on the terminal (tqdm's ``leave``).
        unit_scale: show 1.2M instead of 1200000 (bytes).
    """
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not enabled or not console_shows_info():
        return _Silent(iterable)
    if _is_terminal():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, unit_scale=unit_scale)  # type: ignore[return-value]
    return _LogLines(iterable, total=total, desc=desc, unit=unit)


class _Silent:
    """No output: passes the iterable through and ignores updates."""

    def __init__(self, iterable: Iterable[Any] | None) -> None:
        self._iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self._iterable if self._iterable is not None else ())

    def update(self, n: float = 1) -> None:
        return None

    def set_postfix(self, **values: Any) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _LogLines:
    """Plain INFO lines at 10% steps (no closer than MIN_INTERVAL_S) or every MAX_INTERVAL_S."""

    def __init__(self, iterable: Iterable[Any] | None, *, total: float | None, desc: str, unit: str,
                 clock: Any = time.monotonic) -> None:
        self._iterable = iterable
        self.total, self.desc, self.unit = total, desc or "progress", unit
        self.n: float = 0
        self._clock = clock
        self._start = self._last = clock()
        self._next_step = 0.1
        self._postfix = ""
        self._lines = 0
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        for item in self._iterable if self._iterable is not None else ():
            yield item
            self.update(1)
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = self._clock()
        since = now - self._last
        step_reached = bool(self.total) and self.n / float(self.total or 1) >= self._next_step
        if (step_reached and since >= MIN_INTERVAL_S) or since >= MAX_INTERVAL_S:
            self._emit(now)

    def set_postfix(self, **values: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _count(self) -> str:
        if self.unit == "B":
            return f"{self.n / 1e6:.1f} MB" + (f" of {self.total / 1e6:.1f} MB" if self.total else "")
        done = f"{self.n:g}"
        return f"{done}/{self.total:g} {self.unit}" if self.total else f"{done} {self.unit}"

    def _emit(self, now: float) -> None:
        share = f" ({self.n / self.total:.0%})" if self.total else ""
        extra = f"; {self._postfix}" if self._postfix else ""
        log.info("%s: %s%s, %.0f s%s", self.desc, self._count(), share, now - self._start, extra)
        self._last = now
        self._lines += 1
        if self.total:
            while self._next_step <= self.n / self.total:
                self._next_step += 0.1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._lines:  # short loops write nothing at all
            log.info("%s: done, %s in %.0f s", self.desc, self._count(), self._clock() - self._start)

    def __enter__(self) -> _LogLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
