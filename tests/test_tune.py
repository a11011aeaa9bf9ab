"""The budgeted search on the 16-px synthetic task: trials, pruning, budget, one look at test;
cross-validated trials on small data; two workers sharing one study in a real PostgreSQL."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
import pytest
import torch

from conftest import tiny_config
from medpredict.errors import ConfigError
from medpredict.inference.predictor import Predictor
from medpredict.workflows import tune as tune_module
from medpredict.workflows.study import FoldReporter, pruning_warmup
from medpredict.workflows.tune import _EpochReporter, parse_budget, tune


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("30m", 30.0),  # the documented form
        ("1.5h", 90.0),  # hours, fractional
        ("90s", 1.5),  # seconds
        ("20", 20.0),  # a bare number means minutes
    ],
)
def test_parse_budget(text: str, minutes: float) -> None:
    assert parse_budget(text) == pytest.approx(minutes)


@pytest.mark.parametrize("text", ["", "0m", "soon", "-5m", "10d"])
def test_parse_budget_refuses_non_durations(text: str) -> None:
    with pytest.raises(ConfigError, match="duration"):
        parse_budget(text)


class _FakeTrial:
    def __init__(self, prune_at: int) -> None:
        self.reported: list[tuple[float, int]] = []
        self.prune_at = prune_at

    def report(self, value: float, step: int) -> None:
        self.reported.append((value, step))

    def should_prune(self) -> bool:
        return len(self.reported) >= self.prune_at


def _fit_with(reporter: _EpochReporter, epochs: int) -> Any:
    """Four epochs of a linear model on 32 separable points, reporting through ``on_epoch``."""
    from medpredict.config import TrainConfig
    from medpredict.data.datasets import ArrayDataset
    from medpredict.training.engine import fit

    rng = np.random.default_rng(0)
    y = torch.tensor(np.arange(32) % 2)
    x = torch.tensor(rng.normal(0, 1, (32, 3)), dtype=torch.float32) + 2.0 * y[:, None]
    data = ArrayDataset((x,), y)
    config = TrainConfig(epochs=epochs, batch_size=8, patience=epochs, threads=1, channels_last=False)
    return fit(torch.nn.Linear(3, 2), data, data, task="binary", config=config, progress=False,
               on_epoch=reporter)


def test_epoch_reporter_reports_every_epoch_and_prunes_through_fit() -> None:
    trial = _FakeTrial(prune_at=2)
    reporter = _EpochReporter(trial, epochs=4)
    with pytest.raises(optuna.TrialPruned):
        _fit_with(reporter, epochs=4)
    assert [step for _, step in trial.reported] == [1, 2]  # pruning ended fit after epoch 2
    assert reporter.scores == [value for value, _ in trial.reported]


def test_epoch_reporter_never_prunes_a_finished_trial() -> None:
    trial = _FakeTrial(prune_at=3)  # would prune at the last epoch
    result = _fit_with(_EpochReporter(trial, epochs=3), epochs=3)
    assert [step for _, step in trial.reported] == [1, 2, 3]
    assert [v for v, _ in trial.reported] == [h["val_score"] for h in result.history]


def _spy_evaluate(monkeypatch: pytest.MonkeyPatch, *, stub: bool = False) -> list[dict[str, Any]]:
    """Record every call of ``evaluate`` in tune; ``stub`` skips the real report (saves seconds)."""
    calls: list[dict[str, Any]] = []
    real = tune_module.evaluate

    def spy(run: Any, **kwargs: Any) -> Any:
        calls.append({"run": run, **kwargs})
        return SimpleNamespace(metrics={"auc": 0.5}) if stub else real(run, **kwargs)

    monkeypatch.setattr(tune_module, "evaluate", spy)
    return calls


def test_three_trials_write_tune_json_and_a_loadable_best_run(
    square_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy_evaluate(monkeypatch)
    base = tiny_config(square_npz, tmp_path / "unused", **{"train.epochs": 2})
    result = tune(base, budget_minutes=5, n_trials=3, out=tmp_path / "tune", ensemble_top=2, progress=False)

    assert len(calls) == 1 and calls[0]["split"] == "test"  # the test split is looked at once
    payload = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert len(payload["trials"]) == 3
    for trial in payload["trials"]:
        assert trial["state"] in ("COMPLETE", "PRUNED")
        assert trial["seconds"] > 0 and trial["val_auc_per_epoch"]
        assert trial["params"]["model.name"] in tune_module.CPU_MODELS
        assert trial["params"]["preprocess.image_size"] == 16  # every listed size exceeds the 16-px images
    assert payload["final"]["best_val_auc"] == max(t["val_auc"] for t in payload["trials"] if t["state"] == "COMPLETE")
    assert result.best_run_dir == tmp_path / "tune" / "best"
    predictor = Predictor.from_bundle(result.best_run_dir)
    assert predictor.meta["config"]["model"]["name"] == result.best_params["model.name"]
    assert predictor.meta["config"]["train"]["lr"] == pytest.approx(result.best_params["train.lr"])
    assert isinstance(result.test_metrics["auc"], float)
    assert result.ensemble_metrics is not None and result.ensemble_metrics["members"] == 2
    assert 0.0 <= result.ensemble_metrics["auc"] <= 1.0
    assert "best validation AUC" in result.summary()


def test_budget_stops_starting_trials(square_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tune_module, "FINAL_OVERHEAD_S", 3.0)
    calls = _spy_evaluate(monkeypatch, stub=True)
    base = tiny_config(square_npz, tmp_path / "unused", **{"train.epochs": 2})
    budget_s = 12.0
    start = time.monotonic()
    result = tune(base, budget_minutes=budget_s / 60, out=tmp_path / "tune", progress=False)
    search_and_final = time.monotonic() - start
    assert len(result.trials) >= 1  # no trial cap was given: only the budget stopped the search
    assert sum(t["seconds"] for t in result.trials) < budget_s
    # trials, the final training and the test evaluation together stay close to the budget
    assert search_and_final < budget_s + 30, search_and_final  # slack for a loaded 2-core machine
    assert len(calls) == 1


def test_refuses_an_out_folder_that_holds_a_best_run(square_npz: Path, tmp_path: Path) -> None:
    (tmp_path / "tune" / "best").mkdir(parents=True)
    (tmp_path / "tune" / "best" / "config.yaml").write_text("name: best\n")
    with pytest.raises(ConfigError, match="already holds a run"):
        tune(tiny_config(square_npz, tmp_path), budget_minutes=1, out=tmp_path / "tune", progress=False)


def test_cli_tune_passes_budget_and_keeps_out_for_the_search(
    square_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medpredict import cli

    seen: dict[str, Any] = {}

    class _Result:
        exit_code = 0

        def summary(self) -> str:
            return "ok"

    def fake_tune(config: Any, **kwargs: Any) -> _Result:
        seen.update(config=config, **kwargs)
        return _Result()

    monkeypatch.setattr(tune_module, "tune", fake_tune)
    code = cli.main([
        "tune", "--data", str(square_npz), "--model", "small-cnn", "--epochs", "2", "--budget", "90s",
        "--trials", "4", "--ensemble-top", "3", "--out", str(tmp_path / "search"), "--set", "train.threads=1",
    ])
    assert code == 0
    assert seen["budget_minutes"] == pytest.approx(1.5) and seen["n_trials"] == 4 and seen["ensemble_top"] == 3
    assert seen["out"] == str(tmp_path / "search")
    assert seen["config"].train.epochs == 2 and seen["config"].train.threads == 1
    assert seen["config"].out_dir == "runs"  # --out names the search folder, not a training run


@pytest.mark.parametrize(
    ("n_val", "epochs", "warmup"),
    [
        (5000, 20, 2),  # a large validation split: the median rule may act early
        (524, 20, 4),  # PneumoniaMNIST's validation split
        (300, 20, 7),  # at the small-data boundary
        (78, 20, 10),  # tiny splits wait for half the epochs
        (78, 3, 1),  # ... but never past them
    ],
)
def test_pruning_waits_longer_on_smaller_validation_splits(n_val: int, epochs: int, warmup: int) -> None:
    assert pruning_warmup(n_val, epochs) == warmup


def test_fold_reporter_reports_the_running_mean_and_never_prunes_the_last_fold() -> None:
    trial = _FakeTrial(prune_at=1)
    reporter = FoldReporter(trial, folds=2)
    with pytest.raises(optuna.TrialPruned):
        reporter(0, 0.8, 0.8)
    assert trial.reported == [(0.8, 0)]
    last = FoldReporter(_FakeTrial(prune_at=1), folds=1)
    last(0, 0.7, 0.7)  # a trial whose last fold is done is complete


def test_small_data_trials_are_cross_validated_and_the_winner_is_kept_not_retrained(
    square_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _spy_evaluate(monkeypatch, stub=True)
    calls: list[str] = []
    real_train = tune_module.train

    def counting_train(config: Any, **kwargs: Any) -> Any:
        calls.append(config.name)
        return real_train(config, **kwargs)

    monkeypatch.setattr(tune_module, "train", counting_train)
    base = tiny_config(square_npz, tmp_path / "unused", **{
        "train.small_data": "auto", "train.folds": 2, "train.epochs": 2,
    })
    result = tune(base, budget_minutes=10, n_trials=2, out=tmp_path / "tune", progress=False)
    assert calls == ["trial-0000", "trial-0001"]  # one training per trial, none for the winner
    payload = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert payload["small_data"] is True and payload["final"]["kept_not_retrained"] is True
    assert "cross-validation" in result.scored_by
    for trial in payload["trials"]:
        assert len(trial["fold_scores"]) == 2 and trial["val_auc"] is not None
    meta = json.loads((result.best_run_dir / "model" / "bundle.json").read_text())
    assert meta["model"]["members"] == 2  # the winner's own fold ensemble
    assert meta["training"]["small_data"]["oof_score"] == pytest.approx(result.best_val_auc, abs=1e-4)
    assert not (tmp_path / "tune" / "trials" / f"trial-{payload['final']['best_trial']:04d}").exists()  # moved


@pytest.mark.postgres
def test_two_workers_share_one_postgresql_study(square_npz: Path, tmp_path: Path) -> None:
    """Two worker processes (as on two machines) search one study in a real PostgreSQL on loopback."""
    from medpredict.cli import main
    from postgres_server import PostgresServer

    with PostgresServer() as pg:
        url = pg.create_database("tune")
        code = main([
            "tune", "--data", str(square_npz), "--model", "brief-cnn", "--image-size", "16", "--epochs", "1",
            "--batch-size", "32", "--budget", "10m", "--trials", "3", "--workers", "2", "--storage", url,
            "--study", "ci", "--out", str(tmp_path / "search"), "--set", "train.threads=1",
            "--set", "train.small_data=off",
        ])
        assert code == 0
        rows = pg.query("tune", "SELECT number, state FROM trials ORDER BY number")
    assert [number for number, _ in rows] == [0, 1, 2]  # every trial recorded once
    payload = json.loads((tmp_path / "search" / "tune.json").read_text())
    assert [t["number"] for t in payload["trials"]] == [0, 1, 2]
    assert len({t["worker"]["pid"] for t in payload["trials"]}) == 2  # both workers ran trials
    best = payload["final"]["best_trial"]
    assert payload["final"]["best_val_auc"] == max(t["val_auc"] for t in payload["trials"] if t["state"] == "COMPLETE")
    predictor = Predictor.from_bundle(tmp_path / "search" / "best")  # the best trial's own bundle
    params = next(t["params"] for t in payload["trials"] if t["number"] == best)
    assert predictor.meta["config"]["train"]["lr"] == pytest.approx(params["train.lr"])
