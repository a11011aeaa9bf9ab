"""One Optuna study shared by several search workers: storage, pruning that fits the data, trial runs.

A study lives in an Optuna storage. Without ``--storage`` one process keeps it in memory;
``--workers N`` on one machine shares a journal file (``OUT/study.journal``); a team spreads
one search over machines with a database all of them reach (``--storage
postgresql://user:pass@host/db --study NAME`` on every machine). Trial numbers come from the
storage, so every trial is recorded once, whichever worker ran it.

Each trial is a full training run (:func:`medpredict.training.image.train`) into
``OUT/trials/trial-NNNN/``, bundle included, so the winner is *kept*, not retrained; a
worker deletes the folders of its own pruned and failed trials, and of its finished trials
that are no longer among the study's leaders.

Pruning waits as long as the data's noise demands:

* small data (the run is cross-fitted, :mod:`medpredict.training.crossfit`): a trial reports
  the mean held-out AUC of its folds after each fold; the median pruner may stop it from the
  second fold on, never on one noisy epoch;
* otherwise it reports the validation AUC per epoch and may be stopped from epoch
  :func:`pruning_warmup` on — later for smaller validation splits, whose AUC jumps more
  between epochs.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any

from medpredict.errors import ConfigError

log = logging.getLogger(__name__)

#: SQLAlchemy's driver for PostgreSQL here: psycopg 3 (the ``tune`` extra installs it).
POSTGRES_DRIVER = "postgresql+psycopg"
JOURNAL = "study.journal"


def storage_for(url: str | None, out: Path, workers: int) -> Any:
    """The Optuna storage of a search: ``url`` (PostgreSQL, SQLite, ...), a journal file, or memory.

    ``postgresql://`` URLs use psycopg 3. Trials of a worker that stops sending heartbeats
    (a machine that went away) are marked failed after two minutes.

    Raises:
        ConfigError: a URL Optuna cannot open (names it without the password).
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url is None:
        if workers <= 1:
            return None  # in memory
        out.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(out / JOURNAL)))
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = POSTGRES_DRIVER + "://" + url.split("://", 1)[1]
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental; they are what we need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=30, grace_period=120
            )
    except Exception as exc:  # SQLAlchemy and driver errors have no common base we can name here
        raise ConfigError(
            f"Cannot open the study storage {_redacted(url)}: {type(exc).__name__}: {exc}. "
            "Check the URL (e.g. postgresql://user:password@host:5432/dbname), that the database exists "
            "and that this machine can reach it."
        ) from None


def _redacted(url: str) -> str:
    head, sep, tail = url.partition("://")
    if "@" in tail:
        credentials, _, rest = tail.rpartition("@")
        tail = f"{credentials.split(':')[0]}:***@{rest}"
    return head + sep + tail


def pruning_warmup(n_val: int, epochs: int) -> int:
    """First epoch at which a trial on a plain validation split may be pruned.

    An AUC on ``n`` validation cases wobbles by about ``1/sqrt(n)`` between epochs, so the
    median rule needs more epochs before it means anything on small splits: 2 epochs for
    2,000+ cases, 4 for ~500, 7 for ~300; never past half the epochs.
    """
    wait = math.ceil(2000 / max(n_val, 1))
    return int(min(max(2, wait), max(1, epochs // 2)))


def make_pruner(*, small_data: bool, n_val: int, epochs: int) -> Any:
    """The median pruner with the warm-up of :func:`pruning_warmup` (steps are epochs), or from
    the second fold on for cross-fitted trials (steps are folds)."""
    import optuna

    if small_data:
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=pruning_warmup(n_val, epochs))


def worker_identity(index: int) -> dict[str, Any]:
    """Who runs a trial (stored with it): host, process and worker index."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "worker": index}


class EpochReporter:
    """Reports each epoch's validation AUC to an Optuna trial (``engine.fit``'s ``on_epoch``).

    Raises ``optuna.TrialPruned`` when the pruner says so, which ends ``fit``; never after the
    last epoch, when the trial is complete.
    """

    def __init__(self, trial: Any, epochs: int) -> None:
        self.trial, self.epochs = trial, epochs
        self.scores: list[float] = []

    def __call__(self, record: dict[str, Any], model: Any) -> None:
        import optuna

        score = float(record["val_score"])
        self.scores.append(score)
        self.trial.report(score, record["epoch"])
        if record["epoch"] < self.epochs and self.trial.should_prune():
            raise optuna.TrialPruned(f"validation AUC {score:.4f} at epoch {record['epoch']} is below the median")


class FoldReporter:
    """Reports a cross-fitted trial's mean held-out AUC after each fold (``train``'s ``on_fold``)."""

    def __init__(self, trial: Any, folds: int) -> None:
        self.trial, self.folds = trial, folds
        self.scores: list[float] = []

    def __call__(self, fold: int, score: float, mean: float) -> None:
        import optuna

        self.scores.append(float(score))
        self.trial.report(float(mean), fold)
        if fold + 1 < self.folds and self.trial.should_prune():
            raise optuna.TrialPruned(f"mean held-out AUC {mean:.4f} after fold {fold + 1} is below the median")


def trial_records(study: Any) -> list[dict[str, Any]]:
    """Every trial of the study, once, in number order, as ``tune.json`` lists them."""
    records = []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        attrs = trial.user_attrs
        value = trial.value if trial.state.name == "COMPLETE" else None
        if value is None and trial.intermediate_values:
            value = max(trial.intermediate_values.values())
        records.append({
            "number": trial.number,
            "params": dict(trial.params),
            "state": trial.state.name,
            "val_auc": value,
            "seconds": attrs.get("seconds", 0.0),
            "val_auc_per_epoch": attrs.get("val_auc_per_epoch", []),
            "fold_scores": attrs.get("fold_scores"),
            "scored_by": attrs.get("scored_by"),
            "best_epoch": attrs.get("best_epoch"),
            "worker": {k: attrs[k] for k in ("host", "pid", "worker") if k in attrs},
            "run": attrs.get("run"),
        })
    return records


def leaders(study: Any, keep: int) -> list[Any]:
    """The ``keep`` complete trials with the highest values (best first)."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value == t.value]
    return sorted(done, key=lambda t: -float(t.value))[:keep]


def prune_folders(study: Any, keep: int, me: dict[str, Any]) -> None:
    """Delete this worker's trial folders that are not among the ``keep`` leaders (others' are theirs)."""
    kept = {t.number for t in leaders(study, keep)}
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        mine = attrs.get("host") == me["host"] and attrs.get("pid") == me["pid"]
        run = attrs.get("run")
        if mine and run and trial.number not in kept and trial.state.name != "RUNNING" and Path(run).exists():
            shutil.rmtree(run, ignore_errors=True)
