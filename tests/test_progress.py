"""medpredict.progress: a bar on a terminal, plain periodic lines in a log, nothing under -q."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

from medpredict import progress
from medpredict.progress import _LogLines, _Silent, progress_bar


class _Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def _console(level: int) -> Iterator[logging.Handler]:
    """The medpredict logger with one console handler at ``level``, as ``medpredict.cli.main`` sets it up.

    Entered inside the test body: pytest attaches its capture handlers to non-propagating
    loggers when a test starts, and those must not decide here.
    """
    handler = logging.StreamHandler(io.StringIO())
    handler.setLevel(level)
    logger = logging.getLogger("medpredict")
    previous = logger.handlers[:], logger.propagate, logger.level
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.handlers, logger.propagate, logger.level = previous


def test_quiet_console_gets_no_bar_and_no_lines(monkeypatch) -> None:
    monkeypatch.setattr(progress.sys, "stderr", _Tty())  # even on a terminal
    with _console(logging.WARNING):  # medpredict -q
        bar = progress_bar(range(5), desc="reading images")
    assert isinstance(bar, _Silent) and list(bar) == [0, 1, 2, 3, 4]


def test_a_log_file_does_not_make_bars_appear_under_quiet(tmp_path) -> None:
    file_handler = logging.FileHandler(tmp_path / "train.log")  # the run's train.log collects INFO
    with _console(logging.WARNING):
        logging.getLogger("medpredict").addHandler(file_handler)
        bar = progress_bar(range(3))
    file_handler.close()
    assert isinstance(bar, _Silent)


def test_terminal_gets_a_tqdm_bar(monkeypatch) -> None:
    from tqdm import tqdm

    monkeypatch.setattr(progress.sys, "stderr", _Tty())
    with _console(logging.INFO):
        bar = progress_bar(range(3), desc="x")
    assert isinstance(bar, tqdm)
    bar.close()


def test_pipe_gets_plain_lines_not_bars(monkeypatch) -> None:
    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())  # a file or a pipe
    with _console(logging.INFO):
        assert isinstance(progress_bar(range(3)), _LogLines)
        assert isinstance(progress_bar(range(3), enabled=False), _Silent)


def test_log_lines_every_ten_percent_at_most_every_ten_seconds(caplog) -> None:
    clock = _Clock()
    bar = _LogLines(None, total=100, desc="reading images", unit="img", clock=clock)
    with caplog.at_level(logging.INFO, logger="medpredict.progress"):
        for _ in range(100):
            clock.now += 1.0  # 1 s per item: a 10% step every 10 s
            bar.update(1)
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10  # 9 steps (10%..90%; 100% is the closing line) + the closing line
    assert lines[0] == "reading images: 10/100 img (10%), 10 s"
    assert lines[-1] == "reading images: done, 100/100 img in 100 s"
    assert not any("\r" in line for line in lines)


def test_fast_loops_write_nothing_and_slow_unknown_totals_write_every_30_s(caplog) -> None:
    clock = _Clock()
    with caplog.at_level(logging.INFO, logger="medpredict.progress"):
        fast = _LogLines(range(1000), total=1000, desc="fast", unit="it", clock=clock)
        for _ in fast:
            clock.now += 0.001
        assert caplog.records == []
        slow = _LogLines(None, total=None, desc="download", unit="B", clock=clock)
        for _ in range(10):
            clock.now += 9.0
            slow.update(1_000_000)
        slow.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["download: 4.0 MB, 36 s", "download: 8.0 MB, 72 s", "download: done, 10.0 MB in 90 s"]
