"""The prediction audit log: one SQLite row per request, with no patient identifiers.

Each row holds the request id, time, route, model name and version, a SHA-256 of the
input bytes (never the bytes, never a file name, never DICOM header values), the output
(probabilities, label, threshold, uncertainty) or the error class, the HTTP status and the
latency. The database runs in WAL mode so readers (an auditor's query) do not block the
service's writes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from medpredict.errors import ConfigError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id    TEXT PRIMARY KEY,
    created_at    TEXT NOT NULL,
    route         TEXT NOT NULL,
    model_name    TEXT NOT NULL,
    model_version TEXT NOT NULL,
    input_sha256  TEXT NOT NULL,
    input_kind    TEXT NOT NULL,
    status        INTEGER NOT NULL,
    output_json   TEXT,
    error         TEXT,
    latency_ms    REAL
)
"""
#: Keys of a prediction kept in the log; anything else a predictor adds is left out.
OUTPUT_KEYS = ("probabilities", "label", "score", "threshold", "uncertainty")


def input_digest(*parts: bytes) -> str:
    """SHA-256 over the request's input parts (file bytes, canonical record JSON)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


class AuditLog:
    """Append-only prediction log in SQLite (WAL), safe to share between request threads.

    Args:
        path: the database file; its folder is created. ``":memory:"`` for tests.

    Raises:
        ConfigError: the database cannot be opened or created.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"Cannot open the audit log {self.path}: {exc}. Give a writable path.") from exc
        self._lock = threading.Lock()

    def record(
        self,
        *,
        request_id: str,
        route: str,
        model_name: str,
        model_version: str,
        input_sha256: str,
        input_kind: str,
        status: int,
        output: dict[str, Any] | list[dict[str, Any]] | None = None,
        error: str | None = None,
        latency_ms: float | None = None,
    ) -> None:
        """Append one row. ``output`` is reduced to :data:`OUTPUT_KEYS`; ``error`` is an error class name."""
        kept: list[dict[str, Any]] | dict[str, Any] | None = None
        if output is not None:
            rows = output if isinstance(output, list) else [output]
            reduced = [{k: row.get(k) for k in OUTPUT_KEYS if k in row} for row in rows]
            kept = reduced if isinstance(output, list) else reduced[0]
        row = (
            request_id,
            _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"),
            route,
            model_name,
            model_version,
            input_sha256,
            input_kind,
            int(status),
            None if kept is None else json.dumps(kept, sort_keys=True),
            error,
            latency_ms,
        )
        with self._lock:
            self._db.execute("INSERT INTO predictions VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest rows as dicts, newest first."""
        with self._lock:
            cursor = self._db.execute("SELECT * FROM predictions ORDER BY created_at DESC LIMIT ?", (int(limit),))
            names = [c[0] for c in cursor.description]
            return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()
