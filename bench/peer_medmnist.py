"""MedMNIST v2's published 28-px baseline as a plain PyTorch loop: the peer medpredict is measured against.

Written from the paper's description (Yang et al., "MedMNIST v2", Scientific Data 2023,
"Methods / Baseline methods"), not from its code:

* ResNet-18 adapted to 28 px: 3x3 stride-1 stem, no max-pool
  (``medpredict.models.build_model("resnet18-cifar")``, MONAI's ResNet-18);
* Adam, learning rate 1e-3, no weight decay, batch 128, cross-entropy;
* 100 epochs, learning rate x0.1 at epochs 50 and 75;
* no augmentation; pixels scaled to [0, 1] then normalised with mean 0.5 and std 0.5;
* the checkpoint with the best validation AUC is evaluated once on the official test
  split (AUC; ACC at the arg-max, as MedMNIST reports it).

``--epochs N`` runs the first N epochs of that schedule (the milestones stay at 50 and 75)
and reports measured throughput and the validation AUC curve; the full 100-epoch wall
time is *extrapolated* from the measured seconds per epoch and labelled so.

Usage::

    nice .venv/bin/python bench/peer_medmnist.py --epochs 3 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger("bench.peer_medmnist")

FULL_EPOCHS = 100
MILESTONES = (50, 75)
BATCH = 128
LR = 1e-3
DEFAULT_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"


def load_split(npz: Path, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, 28, 28)`` float32 normalised to [-1, 1] and labels ``(N,)`` int64."""
    with np.load(npz) as data:
        images, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return (x - 0.5) / 0.5, torch.from_numpy(labels.astype(np.int64))


@torch.no_grad()
def scores(model: nn.Module, x: torch.Tensor, batch: int = 512) -> np.ndarray:
    """Positive-class softmax probabilities, eval mode."""
    model.eval()
    out = torch.cat([torch.softmax(model(x[i : i + batch]).float(), 1)[:, 1] for i in range(0, len(x), batch)])
    return out.numpy()


def auc_acc(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)), float(np.mean((p >= 0.5) == y))


def train_peer(
    npz: Path = DEFAULT_NPZ,
    *,
    epochs: int = FULL_EPOCHS,
    seed: int = 0,
    threads: int | None = None,
    max_train: int | None = None,
    test_each_epoch: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train the peer recipe for ``epochs`` epochs and test the best-validation checkpoint once.

    ``test_each_epoch`` adds the test AUC of every epoch to the history: an analysis for the
    benchmark's time-to-AUC figure that a real study would not do (it looks at test repeatedly).
    """
    from medpredict.models import build_model

    if threads:
        torch.set_num_threads(threads)
    x_train, y_train = load_split(npz, "train", max_train)
    x_val, y_val = load_split(npz, "val")
    x_test, y_test = load_split(npz, "test")
    torch.manual_seed(seed)
    model = build_model("resnet18-cifar", in_channels=1, num_classes=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(MILESTONES), gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, Any]] = []
    best_auc, best_state, best_epoch = -1.0, copy.deepcopy(model.state_dict()), 0
    started = time.monotonic()
    for epoch in range(1, epochs + 1):
        model.train()
        tick = time.perf_counter()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), BATCH):
            index = order[start : start + BATCH]
            loss = loss_fn(model(x_train[index]), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        train_s = time.perf_counter() - tick
        val_auc, val_acc = auc_acc(y_val.numpy(), scores(model, x_val))
        record: dict[str, Any] = {
            "epoch": epoch, "val_auc": val_auc, "val_acc": val_acc, "train_seconds": train_s,
            "images_per_s": len(x_train) / train_s, "elapsed_s": time.monotonic() - started,
        }
        if test_each_epoch:
            record["test_auc_analysis"] = auc_acc(y_test.numpy(), scores(model, x_test))[0]
        if val_auc > best_auc:
            best_auc, best_state, best_epoch = val_auc, copy.deepcopy(model.state_dict()), epoch
        history.append(record)
        log.info("peer epoch %d/%d  val AUC %.4f  %.1f s (%.0f img/s)", epoch, epochs, val_auc, train_s,
                 record["images_per_s"])
        if on_epoch is not None:
            on_epoch(record)
    wall = time.monotonic() - started
    model.load_state_dict(best_state)
    test_auc, test_acc = auc_acc(y_test.numpy(), scores(model, x_test))
    s_per_epoch = float(np.median([h["train_seconds"] for h in history]))
    eval_s = max(0.0, wall - sum(h["train_seconds"] for h in history)) / epochs
    return {
        "recipe": "MedMNIST v2 ResNet-18 (28): Adam 1e-3, batch 128, x0.1 at 50/75, no augmentation",
        "epochs_run": epochs, "n_train": len(x_train), "best_epoch": best_epoch, "best_val_auc": best_auc,
        "test_auc": test_auc, "test_acc": test_acc, "wall_s": wall, "s_per_epoch": s_per_epoch,
        "images_per_s": float(np.median([h["images_per_s"] for h in history])),
        "full_run_s_extrapolated": (s_per_epoch + eval_s) * FULL_EPOCHS, "history": history,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    parser.add_argument("--epochs", type=int, default=FULL_EPOCHS, help="epochs to run (the recipe has 100)")
    parser.add_argument("--threads", type=int, help="torch threads (default: PyTorch's)")
    parser.add_argument("--max-train", type=int, help="use only the first N training images (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = train_peer(args.npz, epochs=args.epochs, seed=args.seed, threads=args.threads, max_train=args.max_train)
    curve = ", ".join(f"{h['val_auc']:.3f}" for h in result["history"])
    print(f"peer ResNet-18 (28), {result['epochs_run']} epochs on {result['n_train']} images, "
          f"{result['threads']} threads")
    print(f"  throughput {result['images_per_s']:.1f} images/s, {result['s_per_epoch']:.1f} s/epoch")
    print(f"  validation AUC per epoch: {curve}")
    print(f"  best-validation checkpoint (epoch {result['best_epoch']}) on test: "
          f"AUC {result['test_auc']:.4f}, ACC {result['test_acc']:.4f}")
    print(f"  full {FULL_EPOCHS}-epoch run: {result['full_run_s_extrapolated'] / 3600:.2f} h (extrapolated)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
