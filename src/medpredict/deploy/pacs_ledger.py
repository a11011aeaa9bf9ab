"""What the PACS node has done, kept in one JSON file keyed by hashed UIDs.

The ledger (``medpredict-pacs-ledger/2``) has four maps, each keyed by the 12-hex-digit
SHA-256 prefix of a UID (:func:`medpredict.deploy.uid_log.short_id`), so it holds no UID
in clear and no patient identifier:

* ``studies``: per study, when it was last examined, its status and the number of
  instances the server reported then. A study is examined again when that number changes
  (an image was added) or when one of its quarantined instances is due for a retry.
* ``instances``: per source image that got a result (or whose result was found already in
  the study), what was stored.
* ``skipped``: per study or series outside the model's intended use, the reason.
* ``quarantine``: per source image whose processing failed, the reason, the number of
  attempts and when it may be retried (``retry_after``; ``null`` once the
  :class:`RetryPolicy`'s attempts are used up: it stays there, recorded, until someone
  removes it or runs ``pacs --retry-quarantined``).

A ledger of format 1 (studies only) is read as studies whose instance count is unknown:
they are examined once more, and the results already in them are recognised.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpredict.atomic import write_json
from medpredict.deploy.uid_log import short_id
from medpredict.errors import ConfigError, DataError

FORMAT = "medpredict-pacs-ledger/2"


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing image is tried again.

    Attributes:
        max_attempts: attempts in all (the first included); after the last it is given up.
        backoff_s: seconds before the first retry; each later wait doubles.
    """

    max_attempts: int = 3
    backoff_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.backoff_s < 0:
            raise ConfigError(
                f"Retry policy needs max_attempts >= 1 and backoff_s >= 0; got {self.max_attempts}, {self.backoff_s}."
            )

    def retry_after(self, attempts: int, now: _dt.datetime) -> _dt.datetime | None:
        """When an image that failed ``attempts`` times may be tried again (None: given up)."""
        if attempts >= self.max_attempts:
            return None
        return now + _dt.timedelta(seconds=self.backoff_s * 2 ** (attempts - 1))


def now_utc() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _iso(moment: _dt.datetime) -> str:
    return moment.isoformat(timespec="seconds")


class Ledger:
    """The node's memory (see the module docstring); every change is written at once, atomically.

    Args:
        path: the JSON file; created on the first change. ``None`` keeps it in memory.

    Raises:
        DataError: the file exists but is not a ledger.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.studies: dict[str, dict[str, Any]] = {}
        self.instances: dict[str, dict[str, Any]] = {}
        self.skipped: dict[str, dict[str, Any]] = {}
        self.quarantine: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.is_file():
            self._read(self.path)

    def _read(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DataError(f"The PACS ledger {path} is not valid JSON ({exc}); move it aside.") from None
        if not isinstance(data, dict) or not str(data.get("format", "")).startswith("medpredict-pacs-ledger/"):
            raise DataError(f"{path} is not a medpredict PACS ledger (no 'format' key); move it aside.")
        if data["format"] == "medpredict-pacs-ledger/1":
            # format 1 knew studies only: examine them again once (count unknown)
            self.studies = {k: {**v, "instances": None} for k, v in dict(data.get("studies", {})).items()}
            return
        self.studies = dict(data.get("studies", {}))
        self.instances = dict(data.get("instances", {}))
        self.skipped = dict(data.get("skipped", {}))
        self.quarantine = dict(data.get("quarantine", {}))

    def save(self) -> None:
        if self.path is not None:
            write_json(
                self.path,
                {
                    "format": FORMAT,
                    "studies": self.studies,
                    "instances": self.instances,
                    "skipped": self.skipped,
                    "quarantine": self.quarantine,
                },
            )

    # --- studies

    def needs_look(self, study_uid: str, instance_count: int | None, now: _dt.datetime) -> bool:
        """True when the study is new, its instance count changed (or is unknown), or a retry is due."""
        entry = self.studies.get(short_id(study_uid))
        if entry is None or entry.get("pending"):
            return True
        if instance_count is None or entry.get("instances") != instance_count:
            return True
        return any(self.retry_due(sop, now) for sop in self._quarantined_in(short_id(study_uid)))

    def record_study(self, study_uid: str, *, instances: int | None, status: str, pending: bool = False) -> None:
        """Remember a study as examined; ``pending`` when images were left for the next pass."""
        self.studies[short_id(study_uid)] = {
            "at": _iso(now_utc()),
            "status": status,
            "instances": instances,
            **({"pending": True} if pending else {}),
        }
        self.save()

    def done(self, study_uid: str) -> bool:
        """True when the study was examined and nothing in it waits (no pending images)."""
        entry = self.studies.get(short_id(study_uid))
        return entry is not None and not entry.get("pending")

    # --- instances

    def has_result(self, sop_uid: str) -> bool:
        return short_id(sop_uid) in self.instances

    def record_result(self, sop_uid: str, study_uid: str, **details: Any) -> None:
        """Remember that ``sop_uid`` has its result (and clear it from the quarantine)."""
        key = short_id(sop_uid)
        self.instances[key] = {"study": short_id(study_uid), "at": _iso(now_utc()), **details}
        self.quarantine.pop(key, None)
        self.save()

    # --- skipped studies and series

    def record_skip(self, uid: str, study_uid: str, reason: str, *, level: str) -> bool:
        """Remember that a study or series is outside the intended use; True if this is news."""
        key = short_id(uid)
        known = self.skipped.get(key)
        if known is not None and known.get("reason") == reason:
            return False
        self.skipped[key] = {"level": level, "study": short_id(study_uid), "reason": reason, "at": _iso(now_utc())}
        self.save()
        return True

    # --- quarantine

    def quarantined(self, sop_uid: str) -> dict[str, Any] | None:
        return self.quarantine.get(short_id(sop_uid))

    def retry_due(self, sop_key_or_uid: str, now: _dt.datetime) -> bool:
        """True when the quarantined image (UID or its short id) may be tried again now."""
        entry = self.quarantine.get(sop_key_or_uid) or self.quarantine.get(short_id(sop_key_or_uid))
        if entry is None or entry.get("retry_after") is None:
            return False
        return _dt.datetime.fromisoformat(entry["retry_after"]) <= now

    def put_in_quarantine(
        self, sop_uid: str, study_uid: str, reason: str, policy: RetryPolicy, now: _dt.datetime
    ) -> dict[str, Any]:
        """Record one more failed attempt for ``sop_uid``; returns its quarantine entry."""
        key = short_id(sop_uid)
        entry = self.quarantine.get(key) or {"study": short_id(study_uid), "attempts": 0, "first_failed": _iso(now)}
        entry["attempts"] = int(entry["attempts"]) + 1
        entry["reason"] = reason
        entry["last_failed"] = _iso(now)
        retry = policy.retry_after(entry["attempts"], now)
        entry["retry_after"] = None if retry is None else _iso(retry)
        self.quarantine[key] = entry
        self.save()
        return entry

    def release_quarantine(self) -> int:
        """Make every quarantined image due now (``pacs --retry-quarantined``); returns how many."""
        moment = _iso(now_utc() - _dt.timedelta(seconds=1))
        for entry in self.quarantine.values():
            entry["retry_after"] = moment
            entry["attempts"] = 0
        self.save()
        return len(self.quarantine)

    def _quarantined_in(self, study_key: str) -> list[str]:
        return [key for key, entry in self.quarantine.items() if entry.get("study") == study_key]
