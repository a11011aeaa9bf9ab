"""The one training loop of image, record and fused models.

The optimisation policy (loss and class weights, AdamW parameter groups, one-cycle or
cosine schedule) is :mod:`medpredict.training.policy`; this module runs it: early stopping
on the validation AUC or loss, a checkpoint after every epoch (``--resume`` continues from
it), bf16 autocast where the hardware runs it natively (a GPU, or a CPU with avx512_bf16 / AMX:
see :mod:`medpredict.training.precision`), and DistributedDataParallel when started by ``torchrun``.

Each epoch draws its randomness from generators seeded by ``(seed, epoch)``, so a run
resumed from a checkpoint continues exactly as an uninterrupted run would have.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medpredict.atomic import write_text
from medpredict.config import TrainConfig
from medpredict.data.datasets import ArrayDataset
from medpredict.errors import ConfigError
from medpredict.progress import progress_bar
from medpredict.training import policy
from medpredict.training.checkpoint import (
    check_fingerprint,
    continue_schedule,
    load_state,
    load_weights_of_checkpoint,
    save_state,
)
from medpredict.training.precision import Precision, choose_precision

log = logging.getLogger(__name__)

Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor]
BatchTransform = Callable[[tuple[torch.Tensor, ...], torch.Generator], tuple[torch.Tensor, ...]]
EpochCallback = Callable[[dict[str, Any], nn.Module], None]

CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"
METRICS_LOG = "metrics.jsonl"
CURVES = "curves.png"
CURVE_EVERY_S = 20.0  # redraw the curves at most this often (a plot costs ~0.7 s); always at the end
LOSS_MIN_DELTA = 1e-4  # a validation loss must fall by more than this to count as better


@dataclass
class Distributed:
    """Where this process sits in a ``torchrun`` job (world size 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


@dataclass
class FitResult:
    """What training produced. ``best_state`` holds the weights of the best epoch (CPU)."""

    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_score: float
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = "completed"
    seconds: float = 0.0
    precision: str = "fp32"  # the training arithmetic that ran (medpredict.training.precision)


def learning_problem(result: FitResult, task: str) -> str | None:
    """Why the weights ``fit`` kept are not a model that learned, or ``None`` when they are.

    Refused: a validation score that was never finite (the kept weights are the untrained
    ones), and a classifier that ran several epochs without ever scoring above its first
    epoch while that first score was no better than chance (AUC 0.5).
    """
    scores = [float(h["val_score"]) for h in result.history]
    if not scores:
        return None
    if not any(math.isfinite(s) for s in scores):
        return (
            f"the validation score was not a number in any of the {len(scores)} epochs, so the kept weights "
            "are the untrained ones"
        )
    if result.best_epoch < 1:
        return "no epoch improved the validation score, so the kept weights are the untrained ones"
    first = scores[0]
    later = [s for s in scores[1:] if math.isfinite(s)]
    classifier = task in ("binary", "multiclass", "multilabel")
    if classifier and later and math.isfinite(first) and first <= 0.5 and max(later) <= first:
        return (
            f"the validation AUC never rose above its first epoch's {first:.3f} (chance is 0.5) in "
            f"{len(scores)} epochs: the model did not learn"
        )
    return None


def resolve_device(name: str, dist: Distributed | None = None) -> torch.device:
    """``auto`` → CUDA when available, else CPU; under torchrun each rank takes its GPU.

    Raises:
        ConfigError: CUDA asked for where this PyTorch has none (a CPU build, or no GPU visible),
            or a GPU index beyond the ones present.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        suffix = name.partition(":")[2]
        index = int(suffix) if suffix.isdigit() else (0 if not suffix else -1)
        if count == 0 or not 0 <= index < count:
            why = "this PyTorch has no CUDA (a CPU build) or sees no GPU" if count == 0 else f"only {count} GPU(s)"
            raise ConfigError(f"--device {name}: {why}. Use --device cpu, or auto to take a GPU when there is one.")
    if name == "cuda" and dist is not None and dist.enabled:
        return torch.device(f"cuda:{dist.local_rank}")
    return torch.device(name)


def validation_score(y: np.ndarray, outputs: np.ndarray, task: str) -> float:
    """The number early stopping maximises: AUC for classification, −MSE for regression."""
    from sklearn.metrics import roc_auc_score

    if task == "regression":
        return -float(np.mean((outputs.reshape(-1) - y.reshape(-1)) ** 2))
    try:
        if task == "binary":
            return float(roc_auc_score(y, outputs[:, 1]))
        if task == "multiclass":
            return float(
                roc_auc_score(y, outputs, multi_class="ovr", average="macro", labels=range(outputs.shape[1]))
            )
        aucs = [
            roc_auc_score(y[:, k], outputs[:, k]) for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)
        ]
        return float(np.mean(aucs)) if aucs else float("nan")
    except ValueError:  # a validation set holding one class only
        return float(np.mean(outputs.argmax(1) == y)) if task != "multilabel" else float("nan")


def outputs_to_probs(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Logits → probabilities (softmax, sigmoid for multi-label, identity for regression)."""
    if task == "multilabel":
        return torch.sigmoid(logits)
    if task == "regression":
        return logits
    return torch.softmax(logits, dim=1)


@torch.no_grad()
def predict_logits(
    model: nn.Module, dataset: ArrayDataset, *, batch_size: int = 256, device: torch.device | None = None
) -> torch.Tensor:
    """Run ``model`` over ``dataset`` in eval mode and return the logits on CPU."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(dataset), batch_size):
        inputs, _ = dataset.batch(torch.arange(start, min(start + batch_size, len(dataset))))
        chunks.append(model(*(t.to(device) for t in inputs)).float().cpu())
    model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0)


def _plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medpredict.atomic import atomic_open

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="training")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_score.plot(epochs, [h["val_score"] for h in history], marker="o", color="tab:green")
    ax_score.set(xlabel="epoch", ylabel="validation score", title="Validation AUC (−MSE for regression)")
    for ax in (ax_loss, ax_score):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def _is_2d_image_model(dataset: ArrayDataset) -> bool:
    """Whether the first input is a batch of 2-D images ``(N, C, H, W)`` (channels-last applies)."""
    return bool(dataset.inputs) and dataset.inputs[0].dim() == 4


def _budget_spent(config: TrainConfig, started: float, dist: Distributed, device: torch.device) -> bool:
    """Whether the wall-time budget is spent, decided by rank 0 for every rank of a torchrun job."""
    if config.max_minutes is None:
        return False
    spent = float(time.monotonic() - started > config.max_minutes * 60)
    if dist.enabled:  # ranks time themselves differently: use rank 0's clock everywhere
        flag = torch.tensor([spent], device=device)
        torch.distributed.broadcast(flag, src=0)
        spent = float(flag.item())
    return bool(spent)


@dataclass
class _State:
    """What one fit carries from epoch to epoch (and through a checkpoint)."""

    history: list[dict[str, Any]]
    best_state: dict[str, torch.Tensor]
    best_monitored: float = -math.inf  # higher is better: the score, or minus the loss
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    start_epoch: int = 0


@dataclass
class _Setup:
    """The pieces of one fit: where it runs, the wrapped network, loss, optimiser and schedule."""

    dist: Distributed
    device: torch.device
    net: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    per_rank_batch: int
    channels_last: bool
    precision: Precision
    created_group: bool


def _setup(
    model: nn.Module,
    train_set: ArrayDataset,
    task: str,
    config: TrainConfig,
    class_counts: np.ndarray | None,
    precision: Precision | None,
) -> _Setup:
    dist = Distributed.from_env()
    device = resolve_device(config.device, dist)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    model.to(device)
    channels_last = config.channels_last and _is_2d_image_model(train_set)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    net: nn.Module = model
    created_group = False
    if dist.enabled:
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            created_group = True
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optim = policy.optimizer(model, config)
    per_rank_batch = max(1, config.batch_size // dist.world_size)
    steps = math.ceil(math.ceil(len(train_set) / dist.world_size) / per_rank_batch)
    precision = precision or choose_precision(config.amp, device)
    log.info("Training arithmetic: %s%s.", precision.reason, ", channels-last" if channels_last else "")
    return _Setup(
        dist=dist,
        device=device,
        net=net,
        loss_fn=policy.loss_function(task, config, class_counts, len(train_set)).to(device),
        optimizer=optim,
        scheduler=policy.scheduler(optim, config, steps * config.epochs),
        per_rank_batch=per_rank_batch,
        channels_last=channels_last,
        precision=precision,
        created_group=created_group,
    )


def _resume(
    model: nn.Module, setup: _Setup, path: Path | None, resume: bool, epochs: int, fingerprint: dict[str, Any] | None
) -> _State:
    """The state to start from: fresh, or the checkpoint's when resuming one of the same run."""
    state = _State(history=[], best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    if not (resume and path is not None and path.exists()):
        return state
    saved = load_state(path)
    check_fingerprint(saved.get("fingerprint"), fingerprint, path)
    load_weights_of_checkpoint(model, saved["model"], path)
    setup.optimizer.load_state_dict(saved["optimizer"])
    continue_schedule(setup.scheduler, saved["scheduler"])
    state = _State(
        history=saved["history"],
        best_state=saved["best_model"],
        best_monitored=saved.get("best_monitored", saved["best_score"]),  # older checkpoints monitored the score
        best_score=saved["best_score"],
        best_epoch=saved["best_epoch"],
        bad_epochs=saved["bad_epochs"],
        start_epoch=saved["epoch"] + 1,
    )
    log.info("Resuming from %s at epoch %d of %d.", path, state.start_epoch + 1, epochs)
    return state


def _train_epoch(
    setup: _Setup,
    train_set: ArrayDataset,
    epoch: int,
    *,
    task: str,
    config: TrainConfig,
    train_transform: BatchTransform | None,
    progress: bool,
) -> float:
    """One pass over the training set in a seeded order; returns the mean training loss."""
    dist, n_train = setup.dist, len(train_set)
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    torch.manual_seed(config.seed * 100_003 + epoch)  # dropout and other in-model randomness
    order = torch.randperm(n_train, generator=generator)
    if dist.enabled:
        # Pad by wrapping (as DistributedSampler does) so every rank runs the same number of
        # batches; otherwise their gradient all-reduces fall out of step.
        order = torch.cat([order, order[: (-n_train) % dist.world_size]])[dist.rank :: dist.world_size]
    setup.net.train()
    total_loss, seen = 0.0, 0
    bar = progress_bar(
        range(0, len(order), setup.per_rank_batch),
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="batch",
        enabled=progress and dist.is_main,
        leave=False,
    )
    for start in bar:
        index = order[start : start + setup.per_rank_batch]
        if len(index) < 2 < len(order):
            continue  # a last batch of one row: a useless gradient estimate, and BatchNorm refuses it
        inputs, target = train_set.batch(index)
        if train_transform is not None:
            inputs = train_transform(inputs, generator)
        inputs = tuple(t.to(setup.device, non_blocking=True) for t in inputs)
        if setup.channels_last:
            inputs = tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in inputs)
        target = target.to(setup.device, non_blocking=True)
        with setup.precision.autocast():
            logits = setup.net(*inputs)
        out = logits.float().squeeze(1) if task == "regression" else logits.float()
        loss = setup.loss_fn(out, target)
        setup.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        setup.optimizer.step()
        setup.scheduler.step()
        total_loss += loss.item() * len(index)
        seen += len(index)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", lr=f"{setup.scheduler.get_last_lr()[0]:.2e}")
    bar.close()
    return total_loss / max(seen, 1)


def _validate(model: nn.Module, setup: _Setup, val_set: ArrayDataset | None, task: str) -> tuple[float, float]:
    """Validation loss and score (AUC, or -MSE for regression); NaN for both without a validation set."""
    if val_set is None or len(val_set) == 0:
        return float("nan"), float("nan")
    val_logits = predict_logits(model, val_set, device=setup.device)
    val_out = val_logits.squeeze(1) if task == "regression" else val_logits
    with torch.no_grad():
        val_loss = float(setup.loss_fn(val_out.to(setup.device), val_set.target.to(setup.device)))
    score = validation_score(val_set.target.numpy(), outputs_to_probs(val_logits, task).numpy(), task)
    return val_loss, score


def _improved(state: _State, config: TrainConfig, val_loss: float, score: float, validated: bool) -> bool:
    """Whether this epoch is the best so far by the config's ``monitor`` (always, without validation)."""
    if not validated:
        return True  # nothing to stop on: the last epoch is the model
    if config.monitor == "loss":
        return -val_loss > state.best_monitored + LOSS_MIN_DELTA
    return score > state.best_monitored


def _checkpoint(
    model: nn.Module,
    setup: _Setup,
    state: _State,
    epoch: int,
    record: dict[str, Any],
    run_dir: Path,
    last_plot: float,
    fingerprint: dict[str, Any] | None,
) -> float:
    """Write the checkpoint, the metrics line and (at most every CURVE_EVERY_S) the curves."""
    save_state(
        run_dir / CHECKPOINT,
        {
            "model": model.state_dict(),
            "optimizer": setup.optimizer.state_dict(),
            "scheduler": setup.scheduler.state_dict(),
            "epoch": epoch,
            "history": state.history,
            "best_model": state.best_state,
            "best_score": state.best_score,
            "best_monitored": state.best_monitored,
            "best_epoch": state.best_epoch,
            "bad_epochs": state.bad_epochs,
            **({"fingerprint": fingerprint} if fingerprint is not None else {}),
        },
    )
    with open(run_dir / METRICS_LOG, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    if time.monotonic() - last_plot > CURVE_EVERY_S:
        _plot_curves(state.history, run_dir / CURVES)
        return time.monotonic()
    return last_plot


def fit(
    model: nn.Module,
    train_set: ArrayDataset,
    val_set: ArrayDataset | None,
    *,
    task: str,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    class_counts: np.ndarray | None = None,
    progress: bool = True,
    resume: bool = False,
    train_transform: BatchTransform | None = None,
    on_epoch: EpochCallback | None = None,
    fingerprint: dict[str, Any] | None = None,
    precision: Precision | None = None,
) -> FitResult:
    """Train ``model`` (image, record or fused network) and keep the best epoch's weights.

    The best epoch is the one with the highest validation score (``config.monitor="score"``)
    or the lowest validation loss (``"loss"``, improvements under 1e-4 ignored); training
    stops after ``config.patience`` epochs without one. The global random state is left as it
    was, and so is PyTorch's thread count when ``config.threads`` changes it for the fit.

    Args:
        train_set / val_set: in-memory datasets (:class:`ArrayDataset`); without ``val_set``
            every epoch runs and the last one's weights are kept (cross-validation folds).
        task: ``binary``, ``multiclass``, ``multilabel`` or ``regression``.
        run_dir: where the checkpoint, ``metrics.jsonl`` and ``curves.png`` go; ``None``
            trains without writing anything (cross-validation folds).
        class_counts: samples per class in the training set, for balanced weighting
            (:func:`medpredict.training.policy.class_counts`).
        resume: continue from ``run_dir/checkpoint.safetensors`` if it exists. More epochs
            than the checkpoint's schedule stretch the schedule to the new length.
        train_transform: batch augmentation ``(inputs, generator) -> inputs``.
        on_epoch: called after every epoch (on every rank) with that epoch's record
            (``epoch``, ``train_loss``, ``val_loss``, ``val_score``, ``seconds``, ...) and the
            model holding that epoch's weights, after the checkpoint is written; an exception
            it raises (e.g. ``optuna.TrialPruned``) ends training. Its own time is not part
            of the epoch's ``seconds``.
        fingerprint: what the run trains on (data, model, preprocessing; JSON values), stored
            in the checkpoint; resuming refuses a checkpoint whose fingerprint differs
            (:func:`medpredict.training.checkpoint.check_fingerprint`).
        precision: the training arithmetic; ``None`` chooses from ``config.amp`` and the
            hardware (:func:`medpredict.training.precision.choose_precision`).

    Raises:
        ConfigError: resuming a checkpoint of other data, another model or preprocessing.
    """
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return _fit(model, train_set, val_set, task=task, config=config, run_dir=run_dir,
                        class_counts=class_counts, progress=progress, resume=resume,
                        train_transform=train_transform, on_epoch=on_epoch, fingerprint=fingerprint,
                        precision=precision)
    finally:
        torch.set_num_threads(threads)


def _fit(
    model: nn.Module,
    train_set: ArrayDataset,
    val_set: ArrayDataset | None,
    *,
    task: str,
    config: TrainConfig,
    run_dir: str | Path | None,
    class_counts: np.ndarray | None,
    progress: bool,
    resume: bool,
    train_transform: BatchTransform | None,
    on_epoch: EpochCallback | None,
    fingerprint: dict[str, Any] | None,
    precision: Precision | None,
) -> FitResult:
    run_dir = Path(run_dir) if run_dir is not None else None
    setup = _setup(model, train_set, task, config, class_counts, precision)
    writes = run_dir is not None and setup.dist.is_main
    state = _resume(model, setup, run_dir / CHECKPOINT if run_dir else None, resume, config.epochs, fingerprint)
    if writes and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / METRICS_LOG, "".join(json.dumps(h) + "\n" for h in state.history))
    say = log.info if run_dir is not None else log.debug  # cross-validation folds stay quiet
    started = time.monotonic() - sum(h["seconds"] for h in state.history)
    stopped, last_plot = "completed", -math.inf
    validated = val_set is not None and len(val_set) > 0
    for epoch in range(state.start_epoch, config.epochs):
        epoch_start = time.monotonic()
        train_loss = _train_epoch(setup, train_set, epoch, task=task, config=config,
                                  train_transform=train_transform, progress=progress)
        val_loss, score = _validate(model, setup, val_set, task)
        improved = _improved(state, config, val_loss, score, validated)
        if improved:
            state.best_monitored = score if config.monitor == "score" else -val_loss
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
            state.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            state.bad_epochs += 1
        record = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_score": score,
                  "lr": setup.scheduler.get_last_lr()[0], "seconds": time.monotonic() - epoch_start, "best": improved}
        state.history.append(record)
        say("epoch %d/%d  train loss %.4f  val loss %.4f  val score %.4f%s", epoch + 1, config.epochs, train_loss,
            val_loss, score, "  (best)" if improved else "")
        if writes and run_dir is not None:
            last_plot = _checkpoint(model, setup, state, epoch, record, run_dir, last_plot, fingerprint)
        if on_epoch is not None:
            on_epoch(record, model)
        if state.bad_epochs >= config.patience:
            stopped = "early_stop"
            say("Stopping early: no better validation %s for %d epochs.", config.monitor, config.patience)
            break
        if _budget_spent(config, started, setup.dist, setup.device):
            stopped = "time_budget"
            say("Stopping: the time budget of %.1f minutes is spent.", config.max_minutes)
            break
    if writes and run_dir is not None and state.history:
        _plot_curves(state.history, run_dir / CURVES)
    if setup.created_group:
        torch.distributed.destroy_process_group()
    model.load_state_dict(state.best_state)
    return FitResult(best_state=state.best_state, best_epoch=state.best_epoch + 1, best_score=state.best_score,
                     history=state.history, stopped=stopped, seconds=time.monotonic() - started,
                     precision=setup.precision.name)
