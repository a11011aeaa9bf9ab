"""Probabilities of record models on a rare outcome: the network against logistic regression.

A class-weighted network over-predicts a rare outcome unless its calibration undoes the
weights. This bench makes a shipped table rare — it keeps every negative row and a seeded
sample of positive rows so that 5% of rows are positive — and runs 10 x 5-fold repeated
cross-validation of the record network (fitted exactly as ``medpredict records train`` fits
it: inner validation split, early stopping, prior correction and the calibrator chosen on
validation) and of logistic regression on the same folds. It reports AUC and Brier score
side by side, and the network's Brier score relative to logistic regression's.

    nice .venv/bin/python bench/records_rare.py [--table wisconsin] [--prevalence 0.05] [--repeats 10]

Data: Wisconsin Breast Cancer original (Wolberg) and Chronic Kidney Disease (Rubini,
Soundarapandian, Eswaran 2015), UCI Machine Learning Repository, CC BY 4.0.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from medpredict.training.records import cross_validate, load_table_data

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tabular"
TABLES = {
    "wisconsin": (DATA / "wisconsin_breast_cancer_original" / "breast-cancer-wisconsin.data", "class"),
    "kidney": (DATA / "uci_chronic_kidney_disease" / "chronic_kidney_disease.arff", "class"),
}


def make_rare(data, prevalence: float, seed: int):  # noqa: ANN001, ANN201 - TableData in and out
    """Keep every negative row and a seeded sample of positive rows (positive = class 1)."""
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(data.y == 1), np.flatnonzero(data.y == 0)
    keep_pos = int(round(prevalence * len(negatives) / (1 - prevalence)))
    rows = np.sort(np.r_[negatives, rng.choice(positives, size=keep_pos, replace=False)])
    return replace(
        data,
        frame=data.frame.iloc[rows].reset_index(drop=True),
        y=data.y[rows],
        groups=data.groups[rows],
        source=f"{data.source} (positives sampled to {prevalence:.0%})",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", choices=sorted(TABLES), default="wisconsin")
    parser.add_argument("--prevalence", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    path, target = TABLES[args.table]
    data = make_rare(load_table_data(path, target=target), args.prevalence, args.seed)
    started = time.monotonic()
    result = cross_validate(data, models=("mlp", "logistic"), n_repeats=args.repeats, seed=args.seed, progress=False)
    figures = {
        "table": args.table,
        "rows": len(data.y),
        "positives": int(data.y.sum()),
        "labels": data.labels,
        "repeats": args.repeats,
        "models": {
            name: {"auc": m["auc_mean"], "auc_ci": m["auc_ci"], "brier": m["brier_mean"], "brier_ci": m["brier_ci"]}
            for name, m in result["models"].items()
        },
        "seconds": round(time.monotonic() - started, 1),
    }
    models = figures["models"]
    figures["brier_ratio_network_to_logistic"] = models["mlp"]["brier"] / models["logistic"]["brier"]
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
