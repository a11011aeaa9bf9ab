"""Write files and folders so that a crash never leaves one half-written.

Everything is written to a temporary sibling first and moved into place with
``os.replace``, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide reports from colleagues sharing the folder
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write UTF-8 text."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write bytes."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as indented, valid JSON.

    NumPy scalars and arrays become JSON numbers, booleans and lists (``np.float32(0.5)`` is
    written ``0.5``); NaN and infinities, which JSON cannot hold, are written as ``null``;
    anything else JSON does not know (paths, dates) as its ``str()``.
    """
    text = json.dumps(_plain(obj), indent=2, sort_keys=False, default=str, allow_nan=False)
    return write_text(path, text + "\n")


def _plain(obj: Any) -> Any:
    """``obj`` with NumPy values turned into Python ones and non-finite floats into ``None``."""
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {(k.item() if isinstance(k, np.generic) else k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover_dir(path: str | os.PathLike[str]) -> Path:
    """Undo a replacement that :func:`atomic_dir` could not finish.

    A process killed between moving the old folder aside and moving the new one in leaves
    nothing at ``path`` and the old folder at ``.NAME.old``; this moves it back.
    """
    path = Path(path)
    aside = _aside(path)
    if not path.exists() and aside.is_dir():
        os.replace(aside, path)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` whole.

    A previous folder at ``path`` stays intact until the new one is complete, then is
    moved aside and removed. A crash leaves the old or the new folder, or — killed between
    the two renames — the old one at ``.NAME.old``, which :func:`recover_dir` (called here
    and by every bundle load) puts back.
    """
    path = recover_dir(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o755)
    old: Path | None = None
    try:
        yield tmp
        if path.exists():
            old = _aside(path)
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if old is not None and old.exists() and not path.exists():
            os.replace(old, path)  # put the previous folder back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
