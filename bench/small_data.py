"""Small data: default ``medpredict train`` vs the MedMNIST ResNet-18 peer vs ``medpredict tune``, side by side.

Two subsets are built from the shipped data with a fixed seed (0) and kept under
``bench/results/small_data/``:

* ``pneumonia_550_80`` — 550 images of PneumoniaMNIST's official training split and 80 of
  its validation split (random, seeded); test: the official test split (624).
* ``kermany_viral_600_80`` — bacterial vs viral pneumonia, 600 training and 80 validation
  images of Kermany's official training children, whole children (and identical images)
  on one side only; test: the official test split's pneumonia images (390: 242 / 148).
  medpredict reads the manifest (patient ids, 224-px JPEGs resized to its default 28 px);
  the peer reads the same images at 28 px from an ``.npz`` made by medpredict's own reader.

Methods, each on the same subset and seeds:

* ``train`` — ``medpredict.training.image.train`` with no settings but the data (what
  ``medpredict train --data SUBSET`` does): the validation split is small, so small-data mode
  (k-fold cross-fitting, an ensemble of the fold models, out-of-fold calibration) applies;
  tested once with ``medpredict.workflows.evaluate.evaluate`` (threshold locked out of fold).
* ``peer`` — ``bench/peer_medmnist.py``: ResNet-18 (28), Adam 1e-3, 100 epochs, no
  augmentation, best-validation checkpoint, accuracy at the arg-max (as MedMNIST reports).
* ``tune`` — ``medpredict.workflows.tune.tune`` with ``--budget`` (default 30 minutes): on
  small data it scores trials by cross-validation and keeps the best trial's bundle.
* ``train[NAME]`` — ``--variant NAME=KEY=VALUE,...``: ``train`` with settings overridden.

Every finished run is appended to ``bench/results/small_data.json`` at once, and a rerun
skips what is there (``--force`` redoes it), so the hours this takes on 2 shared cores can
be spread over several invocations. Writes ``bench/results/small_data.md``.

Usage::

    nice .venv/bin/python bench/small_data.py --quick                     # plumbing, minutes
    nice .venv/bin/python bench/small_data.py --methods train peer --seeds 0 1 2
    nice .venv/bin/python bench/small_data.py --methods tune --seeds 0 1 2 --budget 30m
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_medmnist  # noqa: E402  (a sibling script)

from medpredict.atomic import write_json, write_text  # noqa: E402

log = logging.getLogger("bench.small_data")
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DATA = HERE.parents[1] / "shared" / "data"
SUBSET_SEED = 0
DATASETS = ("pneumonia", "kermany")
METHODS = ("train", "peer", "tune")


# --- subsets ------------------------------------------------------------------------------------


def pneumonia_subset(out: Path, n_train: int = 550, n_val: int = 80) -> dict[str, Any]:
    """PneumoniaMNIST: ``n_train`` / ``n_val`` seeded random images of the official train / val splits."""
    path = out / f"pneumonia_{n_train}_{n_val}.npz"
    rng = np.random.default_rng(SUBSET_SEED)
    with np.load(DATA / "medmnist" / "pneumoniamnist.npz") as data:
        arrays = {k: data[k] for k in data.files}
    picked: dict[str, np.ndarray] = {}
    for split, n in (("train", n_train), ("val", n_val)):
        index = np.sort(rng.choice(len(arrays[f"{split}_labels"]), n, replace=False))
        picked[f"{split}_images"] = arrays[f"{split}_images"][index]
        picked[f"{split}_labels"] = arrays[f"{split}_labels"][index]
    picked["test_images"], picked["test_labels"] = arrays["test_images"], arrays["test_labels"]
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **picked)
    counts = {s: np.bincount(picked[f"{s}_labels"].reshape(-1), minlength=2).tolist() for s in ("train", "val", "test")}
    return {"medpredict": str(path), "peer": str(path), "counts": counts, "settings": {},
            "classes": ["normal", "pneumonia"]}


def kermany_subset(out: Path, n_train: int = 600, n_val: int = 80) -> dict[str, Any]:
    """Kermany bacterial vs viral: whole training children drawn until ``n_val`` / ``n_train`` images."""
    from medpredict.data.splits import group_ids

    manifest, npz = out / f"kermany_viral_{n_train}_{n_val}.csv", out / f"kermany_viral_{n_train}_{n_val}.npz"
    root = DATA / "chest_xray_kermany_224"
    frame = pd.read_csv(root / "manifest.csv")
    frame = frame[frame["subtype"] != "normal"].reset_index(drop=True)
    frame["path"] = [str(root / p) for p in frame["path"]]
    frame["patient_id"] = frame["split"] + "/" + frame["patient_key_within_split"].astype(str)
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    groups = group_ids(train["patient_id"], train["sha256"])
    order = np.random.default_rng(SUBSET_SEED).permutation(np.unique(groups))
    chosen: dict[str, list[int]] = {"val": [], "train": []}
    for group in order:
        rows = np.flatnonzero(groups == group).tolist()
        target = "val" if len(chosen["val"]) < n_val else "train" if len(chosen["train"]) < n_train else None
        if target is None:
            break
        chosen[target] += rows[: (n_val if target == "val" else n_train) - len(chosen[target])]
    parts = [train.loc[chosen["train"]].assign(split="train"), train.loc[chosen["val"]].assign(split="val"),
             frame[frame["split"] == "test"]]
    subset = pd.concat(parts, ignore_index=True)[["path", "split", "subtype", "patient_id", "sha256"]]
    if not manifest.exists():
        out.mkdir(parents=True, exist_ok=True)
        write_text(manifest, subset.to_csv(index=False))
    if not npz.exists():
        _write_peer_npz(subset, npz)
    counts = {s: subset[subset["split"] == s]["subtype"].value_counts().sort_index().tolist()
              for s in ("train", "val", "test")}
    return {"medpredict": str(manifest), "peer": str(npz), "counts": counts, "classes": ["bacteria", "virus"],
            "settings": {"data.image_column": "path", "data.target": "subtype", "data.patient_column": "patient_id"}}


def _write_peer_npz(subset: pd.DataFrame, path: Path) -> None:
    """The subset's images at 28 px through medpredict's reader, as a MedMNIST-style ``.npz``."""
    from medpredict.config import PreprocessConfig
    from medpredict.data.datasets import load_images

    arrays = {}
    for split in ("train", "val", "test"):
        rows = subset[subset["split"] == split]
        images = load_images(rows["path"].tolist(), PreprocessConfig(image_size=28), 1, progress=False)
        arrays[f"{split}_images"] = images[:, 0].numpy()
        arrays[f"{split}_labels"] = (rows["subtype"] == "virus").to_numpy().astype(np.uint8).reshape(-1, 1)
    np.savez_compressed(path, **arrays)


# --- methods ------------------------------------------------------------------------------------


def run_train(subset: dict[str, Any], seed: int, workdir: Path, overrides: dict[str, Any], args: Any) -> dict[str, Any]:
    from medpredict.config import load_config
    from medpredict.training.image import train
    from medpredict.workflows.evaluate import evaluate

    settings = {"data.source": subset["medpredict"], **subset["settings"], **overrides, "train.seed": seed,
                "train.threads": args.threads, "name": f"train_s{seed}", "out_dir": str(workdir)}
    if args.quick:
        settings.update({"train.epochs": 2, "train.folds": 2})
    started = time.monotonic()
    result = train(load_config(None, settings), progress=False)
    wall = time.monotonic() - started
    evaluation = evaluate(result.run_dir, split="test", n_boot=200, progress=False)
    m = evaluation.metrics
    guard = json.loads(evaluation.metrics_path.read_text()).get("input_guard") or {}
    meta = json.loads((result.bundle_dir / "bundle.json").read_text())
    return {"auc": m["auc"], "accuracy": m["accuracy"], "sensitivity": m.get("sensitivity"),
            "specificity": m.get("specificity"), "auc_ci": m.get("auc_ci"), "minutes": wall / 60,
            "small_data": (meta.get("training") or {}).get("small_data"), "oof_auc": meta["val_metrics"].get("auc"),
            "test_ood_flagged_share": guard.get("ood_flagged_share")}


def run_peer(subset: dict[str, Any], seed: int, workdir: Path, overrides: dict[str, Any], args: Any) -> dict[str, Any]:
    started = time.monotonic()
    peer = peer_medmnist.train_peer(Path(subset["peer"]), epochs=args.peer_epochs, seed=seed, threads=args.threads)
    return {"auc": peer["test_auc"], "accuracy": peer["test_acc"], "epochs": peer["epochs_run"],
            "best_epoch": peer["best_epoch"], "best_val_auc": peer["best_val_auc"],
            "minutes": (time.monotonic() - started) / 60}


def run_tune(subset: dict[str, Any], seed: int, workdir: Path, overrides: dict[str, Any], args: Any) -> dict[str, Any]:
    from medpredict.config import load_config
    from medpredict.workflows.tune import parse_budget, tune

    settings = {"data.source": subset["medpredict"], **subset["settings"], **overrides, "train.seed": seed,
                "train.threads": args.threads}
    started = time.monotonic()
    result = tune(load_config(None, settings), budget_minutes=parse_budget(args.budget), out=workdir / f"tune_s{seed}",
                  seed=seed, progress=False)
    m = result.test_metrics
    states = [t["state"] for t in result.trials]
    return {"auc": m["auc"], "accuracy": m["accuracy"], "sensitivity": m.get("sensitivity"),
            "specificity": m.get("specificity"), "minutes": (time.monotonic() - started) / 60,
            "trials": len(states), "pruned": states.count("PRUNED"), "best_params": result.best_params,
            "best_cv_auc": result.best_val_auc}


RUNNERS = {"train": run_train, "peer": run_peer, "tune": run_tune}


# --- report -------------------------------------------------------------------------------------


def _stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def to_markdown(payload: dict[str, Any]) -> str:
    lines = ["# Small data: default train vs MedMNIST ResNet-18 peer vs tune", "",
             f"Command(s): {'; '.join(f'`{c}`' for c in payload.get('commands', []))}. "
             "Test split touched once per run. Shared 2-core machine: minutes are indicative only.", ""]
    for name, entry in payload["datasets"].items():
        subset = entry["subset"]
        lines += [f"## {name}", "", f"Subset (seed {SUBSET_SEED}): classes {subset['classes']}, "
                  f"counts per split {subset['counts']}.", "",
                  "| method | seeds | test AUC (mean ± sd) | test ACC (mean ± sd) | AUC per seed | ACC per seed | "
                  "minutes per run |", "|---|---|---|---|---|---|---|"]
        by_method: dict[str, list[dict[str, Any]]] = {}
        for run in entry["runs"]:
            by_method.setdefault(run["method"], []).append(run)
        for method, runs in by_method.items():
            runs = sorted(runs, key=lambda r: r["seed"])
            seeds = ", ".join(str(r["seed"]) for r in runs)
            aucs, accs = [r["auc"] for r in runs], [r["accuracy"] for r in runs]
            per_auc, per_acc = ", ".join(f"{v:.3f}" for v in aucs), ", ".join(f"{v:.3f}" for v in accs)
            minutes = np.mean([r["minutes"] for r in runs])
            lines.append(
                f"| {method} | {seeds} | {_stats(aucs)} | {_stats(accs)} | {per_auc} | {per_acc} | {minutes:.1f} |"
            )
        train, peer, tuned = (by_method.get(m, []) for m in ("train", "peer", "tune"))
        if train and peer:
            beats = (np.mean([r["auc"] for r in train]) > np.mean([r["auc"] for r in peer])
                     and np.mean([r["accuracy"] for r in train]) > np.mean([r["accuracy"] for r in peer]))
            lines.append(f"\n`train` beats the peer on mean AUC and accuracy: **{'yes' if beats else 'no'}**.")
        if train and tuned:
            gap = np.mean([r["auc"] for r in tuned]) - np.mean([r["auc"] for r in train])
            lines.append(f"`tune` minus `train`, mean test AUC: {gap:+.4f} (goal: `train` within 0.01).")
        lines.append("")
    return "\n".join(lines)


def _parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    import yaml

    name, _, body = text.partition("=")
    overrides = {key: yaml.safe_load(value) for key, _, value in
                 (item.partition("=") for item in filter(None, body.split(",")))}
    if not name or not overrides:
        raise SystemExit(f"--variant {text!r}: expected NAME=KEY=VALUE[,KEY=VALUE...]")
    return name, overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["train", "peer"])
    parser.add_argument("--variant", action="append", default=[], help="NAME=KEY=VALUE,... a train variant")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", default="30m", help="tune's budget per run (default 30m)")
    parser.add_argument("--peer-epochs", type=int, default=peer_medmnist.FULL_EPOCHS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="plumbing check: tiny epochs and budgets")
    parser.add_argument("--force", action="store_true", help="redo runs already in the results")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.peer_epochs, args.budget, args.seeds = 1, "2m", args.seeds[:1]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = args.out / ("small_data_quick.json" if args.quick else "small_data.json")
    payload = json.loads(results.read_text()) if results.exists() else {"datasets": {}, "commands": []}
    payload["commands"] = sorted(set(payload.get("commands", [])) | {
        " ".join(["nice .venv/bin/python bench/small_data.py", *argv])})
    variants = dict(_parse_variant(v) for v in args.variant)
    jobs = [(m, {}) for m in args.methods] + [(f"train[{n}]", o) for n, o in variants.items()]
    for dataset in args.datasets:
        subset = (pneumonia_subset if dataset == "pneumonia" else kermany_subset)(args.out / "small_data")
        entry = payload["datasets"].setdefault(dataset, {"subset": subset, "runs": []})
        entry["subset"] = subset
        for seed in args.seeds:
            for method, overrides in jobs:
                done = [r for r in entry["runs"] if r["method"] == method and r["seed"] == seed]
                if done and not args.force:
                    log.info("%s %s seed %d: already measured, skipped", dataset, method, seed)
                    continue
                log.info("%s: %s, seed %d", dataset, method, seed)
                runner = RUNNERS[method.split("[")[0]]
                with tempfile.TemporaryDirectory(prefix="medpredict-small-") as tmp:
                    figures = runner(subset, seed, Path(tmp), overrides, args)
                entry["runs"] = [r for r in entry["runs"] if not (r["method"] == method and r["seed"] == seed)]
                entry["runs"].append({"method": method, "seed": seed, "overrides": overrides, **figures})
                write_json(results, payload)
                log.info("%s %s seed %d: test AUC %.4f, ACC %.4f", dataset, method, seed, figures["auc"],
                         figures["accuracy"])
    write_text(results.with_suffix(".md"), to_markdown(payload))
    print(to_markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
