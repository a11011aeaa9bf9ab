"""Hyper-parameter and architecture search within a wall-time budget (``medpredict tune``).

Optuna's TPE sampler (seeded) proposes a network, an input size, the augmentation
strength, the learning rate, the weight decay and the class weighting. Every trial is a
complete training run (:func:`medpredict.training.image.train`) into
``out/trials/trial-NNNN/`` with its bundle, so the winner is kept as it was trained and
moved to ``out/best/`` — not retrained. On a small validation split (under 300 cases or 50
of a class) training cross-fits (:mod:`medpredict.training.crossfit`), so trials are scored
by their out-of-fold AUC over train + validation instead of one tiny split. Pruning fits the
data size (:mod:`medpredict.workflows.study`).

The search can run as several workers sharing one study: ``workers=N`` starts N processes
on this machine; ``storage="postgresql://..."`` with the same ``study_name`` on several
machines makes them one search (each invocation finishes with the best trial it can see;
the best bundle lives on the machine that trained it).

The test split is touched once, at the end: :func:`medpredict.workflows.evaluate.evaluate`
scores ``out/best`` on it. With ``ensemble_top=k`` it also reports the average of the top-k
trials' calibrated probabilities on test (threshold locked on their averaged validation —
out-of-fold for cross-fitted trials — probabilities).

Writes ``out/tune.json`` (every trial once: parameters, scores per epoch or fold, seconds,
state, worker), rewritten after each trial so an interrupted search keeps what it learned.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medpredict.atomic import write_json
from medpredict.config import RunConfig
from medpredict.errors import ConfigError, DataError, require_extra
from medpredict.training.crossfit import small_data_reason
from medpredict.training.image import load_data, train
from medpredict.workflows.evaluate import evaluate
from medpredict.workflows.study import (
    EpochReporter,
    FoldReporter,
    leaders,
    make_pruner,
    prune_folders,
    storage_for,
    trial_records,
    worker_identity,
)

log = logging.getLogger(__name__)

# Networks that train at a useful speed on a few CPU cores (see the MODELS table).
CPU_MODELS = ("tiny-resnet", "mobile-cnn", "small-cnn")
# Candidate input sides; only those no larger than the images' own size are searched.
IMAGE_SIZES = (28, 32, 48, 64)
# Seconds kept back for the test evaluation of the winner.
FINAL_OVERHEAD_S = 30.0
DEFAULT_STUDY = "medpredict-tune"
#: Kept for callers of the earlier name.
_EpochReporter = EpochReporter


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
        best_val_auc: its score during the search (out-of-fold AUC on small data).
        test_metrics: :func:`medpredict.workflows.evaluate.evaluate` metrics of ``out/best`` on
            test (empty when the best trial ran on another machine).
        ensemble_metrics: test metrics of the top-k average, or ``None``.
        trials: one dict per trial, as in ``tune.json``.
        scored_by: how trials were scored (``validation split`` or ``cross-validation``).
    """

    out_dir: Path
    best_run_dir: Path
    best_params: dict[str, Any]
    best_val_auc: float
    test_metrics: dict[str, Any]
    ensemble_metrics: dict[str, Any] | None
    trials: list[dict[str, Any]]
    seconds: float
    scored_by: str = "validation split"

    exit_code = 0

    def summary(self) -> str:
        states = [t["state"] for t in self.trials]
        counts = ", ".join(f"{states.count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL") if s in states)
        lines = [
            f"Tuning: {len(self.trials)} trials ({counts}) in {self.seconds / 60:.1f} min, scored by {self.scored_by}",
            f"  best validation AUC {self.best_val_auc:.4f} with "
            + ", ".join(f"{k}={_short(v)}" for k, v in self.best_params.items()),
            f"  test (touched once): {_headline(self.test_metrics) or 'not evaluated here'}",
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


@dataclass(frozen=True)
class _Plan:
    """What every worker of one search needs to know about the data and the space."""

    sizes: tuple[int, ...]
    models: tuple[str, ...]
    small_data: bool
    n_val: int
    folds: int


def search_sizes(manifest: Any, base: RunConfig) -> tuple[int, ...]:
    """The input sides worth searching: those of :data:`IMAGE_SIZES` no larger than the images."""
    from medpredict.readers import read_image

    first = manifest.frame["image_path"].iloc[0]
    native = min(read_image(str(first), channels=base.data.channels).shape[1:])
    sizes = tuple(s for s in IMAGE_SIZES if s <= native)
    return sizes or (base.preprocess.image_size,)


def _plan(base: RunConfig) -> _Plan:
    manifest = load_data(base)
    val = manifest.frame[manifest.frame["split"] == "val"]
    if val.empty:
        raise DataError(f"{base.data.source} has no validation rows; check the split column or fractions.")
    reason = small_data_reason(base, val["target"].to_numpy(), manifest.task)
    if reason:
        log.info("Small data (%s): trials are scored by %d-fold cross-validation.", reason, base.train.folds)
    return _Plan(search_sizes(manifest, base), CPU_MODELS, reason is not None, len(val), base.train.folds)


def _suggest(trial: Any, models: tuple[str, ...], sizes: tuple[int, ...]) -> dict[str, Any]:
    """One trial's config overrides: the search space."""
    return {
        "model.name": trial.suggest_categorical("model.name", list(models)),
        "preprocess.image_size": trial.suggest_categorical("preprocess.image_size", list(sizes)),
        "augment.strength": trial.suggest_float("augment.strength", 0.0, 2.0),
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
    storage: str | None = None,
    study_name: str | None = None,
    workers: int = 1,
    worker_index: int | None = None,
) -> TuneResult:
    """Search the space of :func:`_suggest` within ``budget_minutes`` and keep the winner's bundle.

    Args:
        base_config: data, epochs, batch size and everything not searched.
        budget_minutes: wall time for the whole call; no trial starts unless one more trial
            and the test evaluation fit in what is left.
        n_trials: the trials this call runs (shared out among its workers); ``None``: until
            the budget is spent.
        out: output folder: ``tune.json``, ``trials/`` and ``best/`` (a run folder).
        ensemble_top: also report the top-k trials' averaged probabilities on test (k >= 2).
        seed: seeds the TPE sampler (worker ``i`` uses ``seed + i``); training seeds come
            from ``base_config.train.seed``.
        storage: an Optuna storage URL shared by every worker of the search, e.g.
            ``postgresql://user:password@host/db``; ``None`` keeps the study in memory (one
            worker) or in ``out/study.journal`` (several).
        study_name: the study's name in ``storage`` (the same on every machine).
        workers: worker processes this call starts (each trains its own trials).
        worker_index: this invocation's index among the search's machines (seeds its sampler);
            ``None`` derives one from the process id when ``storage`` is shared.

    Raises:
        ConfigError: ``out/best`` already holds a run, or the budget or worker count is not positive.
        DataError: no trial completed within the budget.
    """
    require_extra("optuna", "tune")
    import optuna

    if budget_minutes <= 0:
        raise ConfigError(f"budget_minutes = {budget_minutes!r}; give a positive number of minutes.")
    if workers < 1:
        raise ConfigError(f"--workers {workers} must be at least 1.")
    if n_trials is not None and n_trials < 1:
        raise ConfigError(f"--trials {n_trials}: give 1 or more trials, or leave it out to search until the budget.")
    if ensemble_top < 0 or ensemble_top == 1:
        raise ConfigError(f"--ensemble-top {ensemble_top}: give 0 (none) or 2 or more trials to average.")
    out = Path(out)
    if (out / "best").exists() and any((out / "best").iterdir()):
        raise ConfigError(f"{out / 'best'} already holds a run; choose another --out for this search.")
    started = time.monotonic()
    deadline_wall = time.time() + budget_minutes * 60
    plan = _plan(base_config)
    study_name = study_name or DEFAULT_STUDY
    index = worker_index if worker_index is not None else (os.getpid() % 100_000 if storage else 0)
    log.info(
        "Tuning %s: models %s, sizes %s, budget %.1f min, %d worker(s), study %r in %s.",
        base_config.data.source, plan.models, plan.sizes, budget_minutes, workers, study_name,
        "memory" if storage is None and workers == 1 else "a journal file" if storage is None else "shared storage",
    )
    store = storage_for(storage, out, workers)
    pruner = make_pruner(small_data=plan.small_data, n_val=plan.n_val, epochs=base_config.train.epochs)
    study = optuna.create_study(
        storage=store, study_name=study_name, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed + index), pruner=pruner,
    )
    keep = max(1, ensemble_top)
    quotas = _quotas(n_trials, workers)
    search: dict[str, Any] = {"budget_minutes": budget_minutes, "seed": seed, "plan": plan, "out": out, "keep": keep}
    if workers == 1:
        _search(study, base_config, deadline_wall, quotas[0], index, progress=progress, **search)
    else:
        _spawn_workers(base_config, storage, study_name, deadline_wall, quotas, index, search)
        study = optuna.load_study(study_name=study_name, storage=storage_for(storage, out, workers))
    return _finish(study, base_config, out, plan, started, budget_minutes, seed, ensemble_top, progress)


def _quotas(n_trials: int | None, workers: int) -> list[int | None]:
    if n_trials is None:
        return [None] * workers
    return [n_trials // workers + (1 if i < n_trials % workers else 0) for i in range(workers)]


def _spawn_workers(
    base: RunConfig, storage: str | None, study_name: str, deadline_wall: float, quotas: list[int | None],
    index: int, search: dict[str, Any],
) -> None:
    """Run the search in ``len(quotas)`` processes (spawned: no state shared but the storage)."""
    threads = base.train.threads or os.cpu_count() or 1
    per_worker = base.replace({"train.threads": max(1, threads // len(quotas))})
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger("medpredict").getEffectiveLevel()
    processes = []
    for i, quota in enumerate(quotas):
        job = {"base": per_worker, "storage": storage, "study_name": study_name, "deadline_wall": deadline_wall,
               "quota": quota, "index": index + i, "workers": len(quotas), "log_level": level, **search}
        process = context.Process(target=_worker_main, args=(job,), name=f"tune-worker-{i}")
        process.start()
        processes.append(process)
    for process in processes:
        process.join()
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        log.warning("Tune workers %s ended with an error; their finished trials are kept in the study.", failed)


def _worker_main(job: dict[str, Any]) -> None:
    """One spawned worker: open the shared study and search until its budget or quota is spent."""
    import optuna

    logging.basicConfig(
        level=job["log_level"], format=f"%(asctime)s worker {job['index']} %(levelname)s %(name)s: %(message)s"
    )
    plan: _Plan = job["plan"]
    study = optuna.load_study(
        study_name=job["study_name"], storage=storage_for(job["storage"], job["out"], job["workers"]),
        sampler=optuna.samplers.TPESampler(seed=job["seed"] + job["index"]),
        pruner=make_pruner(small_data=plan.small_data, n_val=plan.n_val, epochs=job["base"].train.epochs),
    )
    _search(study, job["base"], job["deadline_wall"], job["quota"], job["index"], progress=False,
            budget_minutes=job["budget_minutes"], seed=job["seed"], plan=plan, out=job["out"], keep=job["keep"])


def _search(
    study: Any, base: RunConfig, deadline_wall: float, quota: int | None, index: int, *, progress: bool,
    budget_minutes: float, seed: int, plan: _Plan, out: Path, keep: int,
) -> None:
    """Run trials of ``study`` until the deadline (or ``quota`` trials); see the module docstring."""
    import optuna

    from medpredict.progress import progress_bar

    deadline = time.monotonic() + (deadline_wall - time.time())
    me = worker_identity(index)

    def objective(trial: optuna.Trial) -> float:
        overrides = _suggest(trial, plan.models, plan.sizes)
        run_dir = out / "trials" / f"trial-{trial.number:04d}"
        for key, value in {**me, "run": str(run_dir)}.items():
            trial.set_user_attr(key, value)
        minutes = max((deadline - time.monotonic() - FINAL_OVERHEAD_S) / 60, 0.01)
        config = base.replace({
            **overrides, "train.max_minutes": minutes, "name": run_dir.name, "out_dir": str(run_dir.parent),
        })
        epochs = EpochReporter(trial, config.train.epochs) if not plan.small_data else None
        folds = FoldReporter(trial, config.train.folds) if plan.small_data else None
        tick = time.monotonic()
        try:
            result = train(config, progress=False, on_epoch=epochs, on_fold=folds)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)  # pruned or failed: nothing worth keeping
            raise
        finally:
            trial.set_user_attr("seconds", round(time.monotonic() - tick, 2))
            trial.set_user_attr("val_auc_per_epoch", [round(s, 5) for s in epochs.scores] if epochs else [])
            if folds:
                trial.set_user_attr("fold_scores", [round(s, 5) for s in folds.scores])
        scored_by = f"{config.train.folds}-fold cross-validation" if plan.small_data else "validation split"
        trial.set_user_attr("scored_by", scored_by)
        trial.set_user_attr("best_epoch", result.fit.best_epoch)
        return float(result.fit.best_score)

    def on_done(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        prune_folders(study, keep, me)
        _write_tune_json(out, base, budget_minutes, seed, plan, trial_records(study), None)
        bar.update(1)
        best = leaders(study, 1)
        if best:
            bar.set_postfix(best_auc=f"{best[0].value:.4f}")

    bar = progress_bar(total=quota, desc="tune", unit="trial", enabled=progress)
    count = 0
    while quota is None or count < quota:
        left = deadline - time.monotonic()
        needed = _trial_estimate(study) + FINAL_OVERHEAD_S
        if left < needed:
            log.info("Search stops: %.0f s left; one more trial and the test evaluation need ~%.0f s.", left, needed)
            break
        study.optimize(objective, n_trials=1, callbacks=[on_done], catch=(DataError, RuntimeError))
        count += 1
    bar.close()


def _trial_estimate(study: Any) -> float:
    """Seconds the next trial will probably take: the median of finished ones (0 before any)."""
    seconds = [t.user_attrs.get("seconds", 0.0) for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return float(np.median(seconds)) if seconds else 0.0


def _finish(
    study: Any, base: RunConfig, out: Path, plan: _Plan, started: float, budget: float, seed: int,
    ensemble_top: int, progress: bool,
) -> TuneResult:
    """Move the best trial's run to ``out/best``, test it once, write the final ``tune.json``."""
    records = trial_records(study)
    best = leaders(study, max(1, ensemble_top))
    if not best:
        raise DataError(
            f"No trial completed within {budget:.1f} minutes ({len(records)} started). "
            "Give a larger --budget or fewer --epochs."
        )
    winner = best[0]
    kept = Path(winner.user_attrs["run"])
    best_run = out / "best"
    test_metrics: dict[str, Any] = {}
    if kept.is_dir():
        shutil.move(str(kept), str(best_run))
        test_metrics = evaluate(best_run, split="test", progress=progress).metrics
    else:
        best_run = kept
        log.warning("The best trial (%d) ran on %s; its run folder %s is not on this machine.",
                    winner.number, winner.user_attrs.get("host"), kept)
    ensemble = None
    if ensemble_top >= 2:
        runs = [best_run] + [Path(t.user_attrs["run"]) for t in best[1:]]
        ensemble = _ensemble_metrics([r for r in runs if (r / "model").is_dir()])
    scored_by = winner.user_attrs.get("scored_by", "validation split")
    final = {
        "best_trial": winner.number, "best_params": dict(winner.params), "best_val_auc": winner.value,
        "best_run": str(best_run), "kept_not_retrained": True, "scored_by": scored_by,
        "test_metrics": _plain_metrics(test_metrics), "ensemble": ensemble,
        "seconds": round(time.monotonic() - started, 1),
    }
    _write_tune_json(out, base, budget, seed, plan, records, final)
    return TuneResult(
        out_dir=out, best_run_dir=best_run, best_params=dict(winner.params), best_val_auc=float(winner.value),
        test_metrics=test_metrics, ensemble_metrics=ensemble, trials=records,
        seconds=time.monotonic() - started, scored_by=scored_by,
    )


def _plain_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "auc", "auc_ci", "accuracy", "sensitivity", "specificity", "threshold")
    return {k: metrics[k] for k in keys if k in metrics}


def _ensemble_metrics(runs: list[Path]) -> dict[str, Any] | None:
    """Average the runs' calibrated probabilities: validation (out-of-fold where cross-fitted) from
    each run's ``val_predictions.csv``, test from its bundle; the threshold is locked on validation."""
    import pandas as pd

    from medpredict.calibration.thresholds import ThresholdPicker
    from medpredict.config import PreprocessConfig
    from medpredict.data.datasets import load_images
    from medpredict.evaluation.metrics import classification_metrics
    from medpredict.inference.predictor import Predictor

    if len(runs) < 2:
        return None
    predictors = [Predictor.from_bundle(run) for run in runs]
    first = predictors[0]
    if first.task not in ("binary", "multiclass"):
        return None
    labels, columns = first.labels, [f"p_{name}" for name in first.labels]
    tables = [pd.read_csv(run / "val_predictions.csv").set_index("row") for run in runs]
    rows = sorted(set.intersection(*(set(t.index) for t in tables)))
    y_val = tables[0].loc[rows, "target"].astype(int).to_numpy()
    p_val = np.mean([t.loc[rows, columns].to_numpy() for t in tables], axis=0)
    test = load_data(first.bundle.info.config).split("test")
    y_test = test["target"].to_numpy().astype(int)
    p_test = []
    for predictor in predictors:
        config = PreprocessConfig(image_size=predictor.image_size, spatial_dims=predictor.spatial_dims)
        images = load_images(test["image_path"].tolist(), config, predictor.channels, progress=False)
        logits = np.concatenate([
            predictor.outputs(images[i : i + 256].float().div(255))[0] for i in range(0, len(images), 256)
        ])
        p_test.append(predictor.calibrate(logits))
    threshold = None
    if first.task == "binary":
        threshold = ThresholdPicker(method="youden").fit(y_val, p_val[:, 1]).threshold_
    metrics = classification_metrics(y_test, np.mean(p_test, axis=0), labels=list(labels), threshold=threshold,
                                      n_boot=200)
    return {"members": len(runs), "runs": [str(r) for r in runs], **_plain_metrics(metrics)}


def _write_tune_json(
    out: Path, base: RunConfig, budget: float, seed: int, plan: _Plan, records: list[dict[str, Any]],
    final: dict[str, Any] | None,
) -> None:
    write_json(out / "tune.json", {
        "budget_minutes": budget, "seed": seed, "data": base.data.source, "epochs": base.train.epochs,
        "small_data": plan.small_data, "folds": plan.folds if plan.small_data else None,
        "search_space": {
            "model.name": list(plan.models), "preprocess.image_size": list(plan.sizes),
            "augment.strength": [0.0, 2.0], "train.lr": [3e-4, 1e-2, "log"],
            "train.weight_decay": [1e-6, 1e-2, "log"], "train.class_weighting": ["balanced", "none"],
        },
        "trials": records, "final": final,
    })
