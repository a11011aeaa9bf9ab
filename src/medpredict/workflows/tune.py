"""Hyper-parameter and architecture search within a wall-time budget (``medpredict tune``).

Optuna's TPE sampler (seeded) proposes a network, an input size, the augmentation
strength, the learning rate, the weight decay and the class weighting; every trial trains
with the shared engine (:func:`medpredict.training.engine.fit`) on the validation split only, and
the median pruner stops trials whose validation AUC trails the median of earlier trials
at the same epoch. The manifest is read once and the preprocessed images are cached per
input size, so trials after the first at a size skip all image reading and resizing.

The test split is touched once, at the end: the best trial's settings are trained again
through :func:`medpredict.training.image.train` into ``out/best/`` (a normal run folder with
a bundle), which :func:`medpredict.workflows.evaluate.evaluate` scores on the test split. With
``ensemble_top=k`` the same final step also reports the average of the top-k trials'
probabilities on test (threshold locked on their averaged validation probabilities).

Writes ``out/tune.json`` (every trial: parameters, validation AUC per epoch, seconds,
state), rewritten after each trial so an interrupted search keeps what it learned.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpredict.atomic import write_json
from medpredict.config import RunConfig
from medpredict.data.datasets import ArrayDataset
from medpredict.data.manifest import Manifest
from medpredict.data.transforms import BatchAugment, Normalisation
from medpredict.errors import ConfigError, DataError, require_extra
from medpredict.training import policy
from medpredict.training.engine import fit, predict_logits
from medpredict.training.image import build_dataset, build_network, load_data, train
from medpredict.workflows.evaluate import evaluate

log = logging.getLogger(__name__)

# Networks that train at a useful speed on a few CPU cores (see the MODELS table).
CPU_MODELS = ("tiny-resnet", "mobile-cnn", "small-cnn")
# Candidate input sides; only those no larger than the images' own size are searched.
IMAGE_SIZES = (28, 32, 48, 64)
# Seconds kept back for reading the data again, calibration and the test evaluation.
FINAL_OVERHEAD_S = 30.0


def parse_budget(text: str | float) -> float:
    """``"30m"``, ``"1.5h"``, ``"90s"`` or a bare number of minutes → minutes.

    Raises:
        ConfigError: the text is not a positive duration.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text).lower())
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"--budget {text!r} is not a duration; write e.g. 30m, 1.5h or 90s.")
    value, unit = float(match.group(1)), match.group(2) or "m"
    return value * {"s": 1 / 60, "m": 1.0, "h": 60.0}[unit]


@dataclass(frozen=True)
class TuneResult:
    """What the search found and where it went.

    Attributes:
        best_params: the winning trial's config overrides (dotted keys).
        best_val_auc: its validation AUC during the search.
        test_metrics: :func:`medpredict.workflows.evaluate.evaluate` metrics of ``out/best`` on test.
        ensemble_metrics: test metrics of the top-k average, or ``None``.
        trials: one dict per trial, as in ``tune.json``.
    """

    out_dir: Path
    best_run_dir: Path
    best_params: dict[str, Any]
    best_val_auc: float
    test_metrics: dict[str, Any]
    ensemble_metrics: dict[str, Any] | None
    trials: list[dict[str, Any]]
    seconds: float

    exit_code = 0

    def summary(self) -> str:
        states = [t["state"] for t in self.trials]
        counts = ", ".join(f"{states.count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL") if s in states)
        lines = [
            f"Tuning: {len(self.trials)} trials ({counts}) in {self.seconds / 60:.1f} min",
            f"  best validation AUC {self.best_val_auc:.4f} with "
            + ", ".join(f"{k}={_short(v)}" for k, v in self.best_params.items()),
            f"  test (touched once): {_headline(self.test_metrics)}",
        ]
        if self.ensemble_metrics is not None:
            members = self.ensemble_metrics["members"]
            lines.append(f"  top-{members} ensemble on test: {_headline(self.ensemble_metrics)}")
        lines += [f"  best run:  {self.best_run_dir}", f"  all trials: {self.out_dir / 'tune.json'}"]
        return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _headline(metrics: dict[str, Any]) -> str:
    keys = ("auc", "accuracy", "sensitivity", "specificity")
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if isinstance(metrics.get(k), float))


@dataclass
class _Prepared:
    """One input size's preprocessed splits, kept in memory across trials."""

    train: ArrayDataset
    val: ArrayDataset
    normalisation: Normalisation
    test: ArrayDataset | None = None


@dataclass
class _DataCache:
    """The manifest read once, and its images preprocessed once per input size."""

    base: RunConfig
    manifest: Manifest
    progress: bool
    by_size: dict[int, _Prepared] = field(default_factory=dict)

    def get(self, size: int) -> _Prepared:
        if size not in self.by_size:
            config = self.base.replace({"preprocess.image_size": size})
            frame, task = self.manifest.frame, self.manifest.task
            train = build_dataset(frame[frame["split"] == "train"], config, task, progress=self.progress)
            val = build_dataset(frame[frame["split"] == "val"], config, task, progress=self.progress)
            normalisation = Normalisation.fit(train.inputs[0].float().div(255), config.preprocess.normalize)
            self.by_size[size] = _Prepared(train, val, normalisation)
        return self.by_size[size]

    def test(self, size: int) -> ArrayDataset:
        prepared = self.get(size)
        if prepared.test is None:
            config = self.base.replace({"preprocess.image_size": size})
            frame = self.manifest.frame
            prepared.test = build_dataset(frame[frame["split"] == "test"], config, self.manifest.task, progress=False)
        return prepared.test


class _EpochReporter:
    """Reports each epoch's validation AUC to an Optuna trial (``engine.fit``'s ``on_epoch``).

    Raises ``optuna.TrialPruned`` when the trial trails the median of earlier trials at the
    same epoch, which ends ``fit``; never after the last epoch, when the trial is complete.
    """

    def __init__(self, trial: Any, epochs: int) -> None:
        self.trial, self.epochs = trial, epochs
        self.scores: list[float] = []

    def __call__(self, record: dict[str, Any], model: torch.nn.Module) -> None:
        import optuna

        score = float(record["val_score"])
        self.scores.append(score)
        self.trial.report(score, record["epoch"])
        if record["epoch"] < self.epochs and self.trial.should_prune():
            raise optuna.TrialPruned(f"validation AUC {score:.4f} at epoch {record['epoch']} is below the median")


def search_sizes(manifest: Manifest, base: RunConfig) -> tuple[int, ...]:
    """The input sides worth searching: those of :data:`IMAGE_SIZES` no larger than the images."""
    from medpredict.readers import read_image

    first = manifest.frame["image_path"].iloc[0]
    native = min(read_image(str(first), channels=base.data.channels).shape[1:])
    sizes = tuple(s for s in IMAGE_SIZES if s <= native)
    return sizes or (base.preprocess.image_size,)


def _suggest(trial: Any, models: tuple[str, ...], sizes: tuple[int, ...]) -> dict[str, Any]:
    """One trial's config overrides: the search space."""
    return {
        "model.name": trial.suggest_categorical("model.name", list(models)),
        "preprocess.image_size": trial.suggest_categorical("preprocess.image_size", list(sizes)),
        "augment.strength": trial.suggest_float("augment.strength", 0.0, 1.5),
        "train.lr": trial.suggest_float("train.lr", 3e-4, 1e-2, log=True),
        "train.weight_decay": trial.suggest_float("train.weight_decay", 1e-6, 1e-2, log=True),
        "train.class_weighting": trial.suggest_categorical("train.class_weighting", ["balanced", "none"]),
    }


def tune(
    base_config: RunConfig,
    *,
    budget_minutes: float,
    n_trials: int | None = None,
    out: str | Path,
    ensemble_top: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> TuneResult:
    """Search the space of :func:`_suggest` within ``budget_minutes`` and train the winner.

    Args:
        base_config: data, epochs, batch size and everything not searched.
        budget_minutes: wall time for the whole call; no trial starts unless one more trial
            and the final retraining fit in what is left.
        n_trials: stop after this many trials even if time is left.
        out: output folder: ``tune.json`` and ``best/`` (a run folder).
        ensemble_top: also report the top-k trials' averaged probabilities on test (k >= 2).
        seed: seeds the TPE sampler; training seeds come from ``base_config.train.seed``.

    Raises:
        ConfigError: ``out/best`` already holds a run, or the budget is not positive.
        DataError: no trial completed within the budget.
    """
    require_extra("optuna", "tune")
    import optuna

    from medpredict.progress import progress_bar

    if budget_minutes <= 0:
        raise ConfigError(f"budget_minutes = {budget_minutes!r}; give a positive number of minutes.")
    if n_trials is not None and n_trials < 1:
        raise ConfigError(f"--trials {n_trials}: give 1 or more trials, or leave it out to search until the budget.")
    if ensemble_top < 0 or ensemble_top == 1:
        raise ConfigError(f"--ensemble-top {ensemble_top}: give 0 (none) or 2 or more trials to average.")
    out = Path(out)
    if (out / "best").exists() and any((out / "best").iterdir()):
        raise ConfigError(f"{out / 'best'} already holds a run; choose another --out for this search.")
    started = time.monotonic()
    deadline = started + budget_minutes * 60
    manifest = load_data(base_config)
    task, labels = manifest.task, manifest.labels
    num_outputs = 1 if task == "regression" else len(labels)
    cache = _DataCache(base_config, manifest, progress)
    sizes = search_sizes(manifest, base_config)
    models = CPU_MODELS
    log.info("Tuning %s: models %s, sizes %s, budget %.1f min.", base_config.data.source, models, sizes, budget_minutes)

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    records: list[dict[str, Any]] = []
    states: dict[int, dict[str, torch.Tensor]] = {}  # best weights of the leading trials, for the ensemble
    keep = ensemble_top if ensemble_top >= 2 else 0

    def run_trial(trial: optuna.Trial) -> float:
        overrides = _suggest(trial, models, sizes)
        record: dict[str, Any] = {"number": trial.number, "params": overrides, "state": "RUNNING", "seconds": 0.0}
        records.append(record)
        remaining_min = (deadline - time.monotonic() - _final_reserve(records)) / 60
        config = base_config.replace({**overrides, "train.max_minutes": max(remaining_min, 0.01)})
        trial_start = time.monotonic()  # reading a new input size counts: the final training reads again
        data = cache.get(config.preprocess.image_size)
        torch.manual_seed(config.train.seed)  # the same initialisation training.train uses
        model = build_network(config, num_outputs, data.normalisation)
        reporter = _EpochReporter(trial, config.train.epochs)
        augment = BatchAugment(config.augment, config.preprocess.spatial_dims)
        try:
            result = fit(
                model, data.train, data.val, task=task, config=config.train, run_dir=None,
                class_counts=policy.class_counts(data.train.target, task, num_outputs), progress=False,
                train_transform=lambda inputs, g: (augment(inputs[0], g),), on_epoch=reporter,
            )
        finally:
            record["seconds"] = round(time.monotonic() - trial_start, 2)
            record["val_auc_per_epoch"] = [round(s, 5) for s in reporter.scores]
        record.update({"val_auc": result.best_score, "best_epoch": result.best_epoch, "stopped": result.stopped})
        states[trial.number] = result.best_state
        for number in sorted(states, key=lambda n: -_score(records, n))[keep:]:
            del states[number]  # only the leading trials' weights are kept in memory
        return result.best_score

    def on_done(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        record = next(r for r in records if r["number"] == frozen.number)
        record["state"] = frozen.state.name
        if frozen.state.name == "PRUNED":
            record["val_auc"] = max(frozen.intermediate_values.values(), default=float("nan"))
        _write_tune_json(out, base_config, budget_minutes, seed, sizes, models, records, None)
        bar.update(1)
        best = _best_record(records)
        if best is not None:
            bar.set_postfix(best_auc=f"{best['val_auc']:.4f}")

    bar = progress_bar(total=n_trials, desc="tune", unit="trial", enabled=progress)
    count = 0
    while n_trials is None or count < n_trials:
        left = deadline - time.monotonic()
        needed = _trial_estimate(records) + _final_reserve(records)
        if left < needed:
            log.info("Search stops: %.0f s left; one more trial and the final training need ~%.0f s.", left, needed)
            break
        study.optimize(run_trial, n_trials=1, callbacks=[on_done], catch=(DataError, RuntimeError))
        count += 1
    bar.close()

    return _finish(
        records, states, base_config=base_config, out=out, budget_minutes=budget_minutes, seed=seed, sizes=sizes,
        models=models, cache=cache, labels=labels, task=task, ensemble_top=ensemble_top, started=started,
        progress=progress,
    )


def _finish(
    records: list[dict[str, Any]],
    states: dict[int, dict[str, torch.Tensor]],
    *,
    base_config: RunConfig,
    out: Path,
    budget_minutes: float,
    seed: int,
    sizes: tuple[int, ...],
    models: tuple[str, ...],
    cache: _DataCache,
    labels: tuple[str, ...],
    task: str,
    ensemble_top: int,
    started: float,
    progress: bool,
) -> TuneResult:
    """Retrain the best trial's recipe as ``out/best``, evaluate it on test, and write ``tune.json``.

    Raises:
        DataError: no trial completed within the budget.
    """
    best = _best_record(records)
    if best is None:
        raise DataError(
            f"No trial completed within {budget_minutes:.1f} minutes ({len(records)} started). "
            "Give a larger --budget or fewer --epochs."
        )
    num_outputs = 1 if task == "regression" else len(labels)
    best_config = base_config.replace({**best["params"], "name": "best", "out_dir": str(out)})
    final = train(best_config, progress=progress)
    evaluation = evaluate(final.run_dir, split="test", progress=progress)
    ensemble = None
    if ensemble_top >= 2 and len(states) >= 2:
        ensemble = _ensemble_metrics(
            [(r, states[r["number"]]) for r in records if r["number"] in states], base_config, cache,
            num_outputs, labels, task,
        )
    _write_tune_json(out, base_config, budget_minutes, seed, sizes, models, records, {
        "best_trial": best["number"], "best_params": best["params"], "best_val_auc": best["val_auc"],
        "best_run": str(final.run_dir), "test_metrics": _plain_metrics(evaluation.metrics), "ensemble": ensemble,
        "seconds": round(time.monotonic() - started, 1),
    })
    return TuneResult(
        out_dir=out, best_run_dir=final.run_dir, best_params=best["params"], best_val_auc=float(best["val_auc"]),
        test_metrics=evaluation.metrics, ensemble_metrics=ensemble, trials=records,
        seconds=time.monotonic() - started,
    )


def _score(records: list[dict[str, Any]], number: int) -> float:
    record = next(r for r in records if r["number"] == number)
    value = record.get("val_auc", -math.inf)
    return value if value == value else -math.inf  # NaN sorts last


def _best_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    done = [r for r in records if r["state"] == "COMPLETE" and r.get("val_auc") == r.get("val_auc")]
    return max(done, key=lambda r: r["val_auc"]) if done else None


def _trial_estimate(records: list[dict[str, Any]]) -> float:
    """Seconds the next trial will probably take: the median of finished ones (0 before any)."""
    seconds = [r["seconds"] for r in records if r["state"] == "COMPLETE"]
    return float(np.median(seconds)) if seconds else 0.0


def _final_reserve(records: list[dict[str, Any]]) -> float:
    """Seconds kept for retraining the best trial so far and evaluating it on test."""
    best = _best_record(records)
    return FINAL_OVERHEAD_S + (best["seconds"] * 1.2 if best else _trial_estimate(records))


def _plain_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "auc", "auc_ci", "accuracy", "sensitivity", "specificity", "threshold")
    return {k: metrics[k] for k in keys if k in metrics}


def _ensemble_metrics(
    members: list[tuple[dict[str, Any], dict[str, torch.Tensor]]], base: RunConfig, cache: _DataCache,
    num_outputs: int, labels: tuple[str, ...], task: str,
) -> dict[str, Any] | None:
    """Average the members' validation and test probabilities; threshold locked on validation."""
    from medpredict.calibration.thresholds import ThresholdPicker
    from medpredict.evaluation.metrics import classification_metrics

    if task not in ("binary", "multiclass"):
        return None
    val_probs, test_probs = [], []
    for record, state in members:
        config = base.replace(record["params"])
        data = cache.get(config.preprocess.image_size)
        test = cache.test(config.preprocess.image_size)
        model = build_network(config, num_outputs, data.normalisation)
        model.load_state_dict(state)
        val_probs.append(torch.softmax(predict_logits(model, data.val), 1).numpy())
        test_probs.append(torch.softmax(predict_logits(model, test), 1).numpy())
    y_val, y_test = data.val.target.numpy(), test.target.numpy()  # the same rows at every size
    p_val, p_test = np.mean(val_probs, 0), np.mean(test_probs, 0)
    threshold = None
    if task == "binary":
        threshold = ThresholdPicker(method="youden").fit(y_val, p_val[:, 1]).threshold_
    metrics = classification_metrics(y_test, p_test, labels=list(labels), threshold=threshold, n_boot=200)
    return {"members": len(members), "trials": [r["number"] for r, _ in members], **_plain_metrics(metrics)}


def _write_tune_json(
    out: Path, base: RunConfig, budget: float, seed: int, sizes: tuple[int, ...], models: tuple[str, ...],
    records: list[dict[str, Any]], final: dict[str, Any] | None,
) -> None:
    write_json(out / "tune.json", {
        "budget_minutes": budget, "seed": seed, "data": base.data.source, "epochs": base.train.epochs,
        "search_space": {
            "model.name": list(models), "preprocess.image_size": list(sizes), "augment.strength": [0.0, 1.5],
            "train.lr": [3e-4, 1e-2, "log"], "train.weight_decay": [1e-6, 1e-2, "log"],
            "train.class_weighting": ["balanced", "none"],
        },
        "trials": records, "final": final,
    })
