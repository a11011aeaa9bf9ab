"""Repeated cross-validation benchmark on the three shipped UCI tables.

For each table: 10 x 5-fold repeated stratified CV (grouped by the id column when the
table has one), the cleaner refitted on every training fold, and the record network,
logistic regression and gradient boosting trained on the very same folds. Reports the
mean AUC with a 95% interval (Nadeau-Bengio corrected) and the network's difference
from logistic regression with a corrected resampled t-test p-value.

Writes ``bench/results/records_cv.md`` and ``bench/results/records_cv.json``.

    nice python bench/records_cv.py                       # all three, 10 x 5
    nice python bench/records_cv.py --repeats 2 --only heart
    nice python bench/records_cv.py --models mlp transformer logistic boosting

Data: UCI Heart Disease (Cleveland; Janosi, Steinbrunn, Pfisterer, Detrano), Wisconsin
Breast Cancer original (Wolberg), Chronic Kidney Disease (Rubini, Soundarapandian,
Eswaran 2015), all from the UCI Machine Learning Repository, CC BY 4.0.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path

import torch

from medpredict.atomic import write_json, write_text
from medpredict.training.records import cross_validate, load_table_data

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tabular"
DATASETS = {
    "heart": (
        "UCI Heart (Cleveland), num>0",
        DATA / "uci_heart_disease" / "processed.cleveland.data",
        "num>0",
    ),
    "wisconsin": (
        "Wisconsin breast cancer (original)",
        DATA / "wisconsin_breast_cancer_original" / "breast-cancer-wisconsin.data",
        "class",
    ),
    "kidney": (
        "Chronic kidney disease",
        DATA / "uci_chronic_kidney_disease" / "chronic_kidney_disease.arff",
        "class",
    ),
}


def _cell(entry: dict) -> str:
    low, high = entry["auc_ci"]
    return f"{entry['auc_mean']:.3f} [{low:.3f}, {high:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--only", nargs="*", choices=sorted(DATASETS), default=sorted(DATASETS))
    parser.add_argument("--models", nargs="*", default=["mlp", "logistic", "boosting"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "records_cv"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)  # tiny tables: one thread is fastest and leaves the other core free

    results = {}
    for key in args.only:
        title, path, target = DATASETS[key]
        started = time.monotonic()
        data = load_table_data(path, target=target)
        result = cross_validate(
            data, models=args.models, n_splits=args.splits, n_repeats=args.repeats, seed=0, progress=False
        )
        result["title"] = title
        result["seconds"] = round(time.monotonic() - started, 1)
        results[key] = result
        print(f"{title}: " + ", ".join(f"{m} {_cell(e)}" for m, e in result["models"].items()), flush=True)

    models = args.models
    lines = [
        f"# Tabular repeated cross-validation ({args.repeats} x {args.splits}-fold)",
        "",
        "AUC mean over folds with a 95% t-interval using the Nadeau-Bengio corrected variance. "
        "Same folds for every model; cleaner fitted on each training fold only; "
        "folds grouped by the id column where the table has one.",
        "",
        "| table | rows | " + " | ".join(models) + " | mlp - logistic (p) | s/fold mlp |",
        "|---|---|" + "---|" * len(models) + "---|---|",
    ]
    for result in results.values():
        compare = result.get("compare", {}).get("mlp")
        diff = f"{compare['difference_vs_logistic']:+.3f} (p={compare['p_value']:.2f})" if compare else "-"
        speed = result["models"].get("mlp", {}).get("seconds_per_fold", float("nan"))
        lines.append(
            f"| {result['title']} | {result['n_rows']} (removed {result['removed']}) | "
            + " | ".join(_cell(result["models"][m]) for m in models)
            + f" | {diff} | {speed:.2f} |"
        )
    lines += [
        "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread.",
    ]
    out = Path(args.out)
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    write_json(out.with_suffix(".json"), results)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
