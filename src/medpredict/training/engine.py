"""The training loop shared by image, record and fused models.

AdamW with a one-cycle or cosine schedule, class-balanced loss, early stopping on the
validation AUC, a checkpoint after every epoch (``--resume`` continues from it), bf16 autocast
where the hardware runs it natively (a GPU, or a CPU with avx512_bf16 / AMX: see
:mod:`medpredict.training.precision`), and DistributedDataParallel when started by ``torchrun``.

Each epoch draws its randomness from generators seeded by ``(seed, epoch)``, so a run
resumed from a checkpoint continues exactly as an uninterrupted run would have.
"""

from __future__ import annotations

import copy
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
from tqdm.auto import tqdm

from medpredict.atomic import write_text
from medpredict.config import TrainConfig
from medpredict.data.datasets import ArrayDataset
from medpredict.training.checkpoint import load_state, save_state
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
    precision: str = "fp32"


def resolve_device(name: str, dist: Distributed | None = None) -> torch.device:
    """``auto`` → CUDA when available, else CPU; under torchrun each rank takes its GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
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


def _loss_fn(task: str, config: TrainConfig, class_counts: np.ndarray | None) -> nn.Module:
    if task == "regression":
        return nn.MSELoss()
    if task == "multilabel":
        pos_weight = None
        if config.class_weighting == "balanced" and class_counts is not None:
            pos, n = class_counts.astype(float), float(class_counts.sum() if class_counts.ndim == 0 else 1)
            pos_weight = torch.tensor(np.clip((n - pos) / np.maximum(pos, 1), 1, 100), dtype=torch.float32)
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    weights = class_weights(class_counts, config.class_weighting)
    weight = None if weights is None else torch.tensor(weights, dtype=torch.float32)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)


def class_weights(class_counts: np.ndarray | None, class_weighting: str) -> np.ndarray | None:
    """Per-class loss weights of a single-label task (None for an unweighted loss).

    ``balanced`` weighs each class by ``N / (K * n_k)`` (inverse frequency). Post-fit
    calibration undoes exactly this prior shift (``medpredict.calibration.posthoc``).
    """
    if class_weighting != "balanced" or class_counts is None:
        return None
    counts = np.maximum(np.asarray(class_counts, dtype=float), 1.0)
    return counts.sum() / (len(counts) * counts)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)  # no decay on norms and biases
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


def _scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=max(total, 2),
            pct_start=0.15,
            div_factor=10,
            final_div_factor=100,
        )
    if config.schedule == "cosine":
        warm = max(1, total // 20)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(total, 1)))),
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


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


def fit(
    model: nn.Module,
    train_set: ArrayDataset,
    val_set: ArrayDataset,
    *,
    task: str,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    class_counts: np.ndarray | None = None,
    progress: bool = True,
    resume: bool = False,
    train_transform: BatchTransform | None = None,
    on_epoch: EpochCallback | None = None,
    precision: Precision | None = None,
) -> FitResult:
    """Train ``model`` and return the best weights by validation score.

    Args:
        train_set / val_set: in-memory datasets (:class:`ArrayDataset`).
        task: ``binary``, ``multiclass``, ``multilabel`` or ``regression``.
        run_dir: where the checkpoint, ``metrics.jsonl`` and ``curves.png`` go; ``None``
            trains without writing anything (cross-validation folds).
        class_counts: samples per class in the training set, for balanced weighting.
        resume: continue from ``run_dir/checkpoint.safetensors`` if it exists.
        train_transform: batch augmentation ``(inputs, generator) -> inputs``.
        on_epoch: called after every epoch (on every rank) with that epoch's record
            (``epoch``, ``train_loss``, ``val_loss``, ``val_score``, ``seconds``, ...) and the
            model holding that epoch's weights, after the checkpoint is written; an exception
            it raises (e.g. ``optuna.TrialPruned``) ends training. Its own time is not part
            of the epoch's ``seconds``.
        precision: the training arithmetic; ``None`` chooses from ``config.amp`` and the
            hardware (:func:`medpredict.training.precision.choose_precision`).
    """
    dist = Distributed.from_env()
    device = resolve_device(config.device, dist)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    run_dir = Path(run_dir) if run_dir is not None else None
    torch.manual_seed(config.seed)
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
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loss_fn = _loss_fn(task, config, class_counts).to(device)
    optimizer = _optimizer(model, config)
    per_rank_batch = max(1, config.batch_size // dist.world_size)
    n_train = len(train_set)
    steps = math.ceil(math.ceil(n_train / dist.world_size) / per_rank_batch)
    scheduler = _scheduler(optimizer, config, steps * config.epochs)
    precision = precision or choose_precision(config.amp, device)
    log.info("Training arithmetic: %s%s.", precision.reason, ", channels-last" if channels_last else "")

    history: list[dict[str, Any]] = []
    best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
    best_score, best_epoch, bad_epochs, start_epoch = -math.inf, -1, 0, 0
    checkpoint_path = run_dir / CHECKPOINT if run_dir else None
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        state = load_state(checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best_state = state["history"], state["best_model"]
        best_score, best_epoch, bad_epochs = state["best_score"], state["best_epoch"], state["bad_epochs"]
        start_epoch = state["epoch"] + 1
        log.info("Resuming from %s at epoch %d of %d.", checkpoint_path, start_epoch + 1, config.epochs)
    if run_dir is not None and dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / METRICS_LOG, "".join(json.dumps(h) + "\n" for h in history))

    started = time.monotonic() - sum(h["seconds"] for h in history)
    stopped = "completed"
    last_plot = -math.inf
    y_val = val_set.target.numpy()
    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.monotonic()
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout and other in-model randomness
        order = torch.randperm(n_train, generator=generator)
        if dist.enabled:
            # Pad by wrapping (as DistributedSampler does) so every rank runs the same number of
            # batches; otherwise their gradient all-reduces fall out of step.
            order = torch.cat([order, order[: (-n_train) % dist.world_size]])[dist.rank :: dist.world_size]
        net.train()
        total_loss, seen = 0.0, 0
        bar = tqdm(
            range(0, len(order), per_rank_batch),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            unit="batch",
            disable=not (progress and dist.is_main),
            leave=False,
        )
        for start in bar:
            index = order[start : start + per_rank_batch]
            inputs, target = train_set.batch(index)
            if train_transform is not None:
                inputs = train_transform(inputs, generator)
            inputs = tuple(t.to(device, non_blocking=True) for t in inputs)
            if channels_last:
                inputs = tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in inputs)
            target = target.to(device, non_blocking=True)
            with precision.autocast():
                logits = net(*inputs)
            out = logits.float().squeeze(1) if task == "regression" else logits.float()
            loss = loss_fn(out, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        bar.close()

        val_logits = predict_logits(model, val_set, device=device)
        val_out = val_logits.squeeze(1) if task == "regression" else val_logits
        val_loss = float(loss_fn(val_out.to(device), val_set.target.to(device)))
        score = validation_score(y_val, outputs_to_probs(val_logits, task).numpy(), task)
        improved = score > best_score
        if improved:
            best_score, best_epoch, bad_epochs = score, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        record = {
            "epoch": epoch + 1,
            "train_loss": total_loss / max(seen, 1),
            "val_loss": val_loss,
            "val_score": score,
            "lr": scheduler.get_last_lr()[0],
            "seconds": time.monotonic() - epoch_start,
            "best": improved,
        }
        history.append(record)
        log.info(
            "epoch %d/%d  train loss %.4f  val loss %.4f  val score %.4f%s",
            epoch + 1,
            config.epochs,
            record["train_loss"],
            val_loss,
            score,
            "  (best)" if improved else "",
        )
        if checkpoint_path is not None and run_dir is not None and dist.is_main:
            save_state(
                checkpoint_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "best_model": best_state,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                },
            )
            with open(run_dir / METRICS_LOG, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            if time.monotonic() - last_plot > CURVE_EVERY_S:
                _plot_curves(history, run_dir / CURVES)
                last_plot = time.monotonic()
        if on_epoch is not None:
            on_epoch(record, model)
        if bad_epochs >= config.patience:
            stopped = "early_stop"
            log.info("Stopping early: no better validation score for %d epochs.", config.patience)
            break
        if _budget_spent(config, started, dist, device):
            stopped = "time_budget"
            log.info("Stopping: the time budget of %.1f minutes is spent.", config.max_minutes)
            break
    if run_dir is not None and dist.is_main and history:
        _plot_curves(history, run_dir / CURVES)
    if created_group:
        torch.distributed.destroy_process_group()
    model.load_state_dict(best_state)
    return FitResult(
        best_state=best_state,
        best_epoch=best_epoch + 1,
        best_score=best_score,
        history=history,
        stopped=stopped,
        seconds=time.monotonic() - started,
        precision=precision.name,
    )
