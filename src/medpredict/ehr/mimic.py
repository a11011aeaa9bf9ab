"""A repeatable prediction task from the MIMIC-IV Clinical Database Demo (v2.2).

The extraction (:func:`build_cohort`), one row per hospital admission:

* **Who**: every admission in ``hosp/admissions`` whose stay lasted at least
  ``window_hours`` (24 h), so the outcome is still open when the prediction is made.
  Admissions that ended (discharge or death) inside the window are excluded and counted.
* **When the prediction is made**: ``admittime + 24 h``. Only data recorded before then
  is used: demographics and admission details known at admission, and blood tests
  charted from the start of the emergency-department visit (``edregtime``, when it
  came first) up to ``admittime + 24 h``. Nothing recorded later (diagnoses, discharge
  location, later labs) enters the features.
* **Features**: age at admission (``anchor_age`` shifted to the admission year),
  gender, admission type, admission location, insurance; for 13 common labs
  (sodium, potassium, chloride, bicarbonate, anion gap, BUN, creatinine, glucose,
  haemoglobin, haematocrit, white cells, platelets, lactate) the first value and the
  worst-direction extreme (maximum, or minimum for haemoglobin, haematocrit, platelets
  and bicarbonate) in the window; the number of lab results in the window. Race is
  deliberately left out.
* **Targets** (``task``): ``prolonged_stay`` (default; hospital stay > 7 days),
  ``mortality`` (in-hospital death, ``hospital_expire_flag``; only 14 events in the
  demo, so its numbers are very uncertain) or ``length_of_stay`` (regression, days).
* **Split**: by patient (``subject_id`` is the id column), so all admissions of one
  patient fall on one side.

With 100 patients this is a pipeline and integration test bed, not a place for
clinical claims. Data: Johnson A. et al., MIMIC-IV Clinical Database Demo v2.2,
PhysioNet 2023, doi:10.13026/dp1f-ex47 (ODbL 1.0).

One command runs it end to end: ``python -m medpredict.ehr.mimic ../shared/data/mimic_iv_demo_2.2
--out runs/mimic`` (also ``medpredict tabular mimic`` once the CLI wires it).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medpredict.errors import DataError, unknown_choice

logger = logging.getLogger(__name__)

TASKS = ("prolonged_stay", "mortality", "length_of_stay")
PROLONGED_DAYS = 7.0
# itemid -> (feature name, True if low values are the bad direction)
LABS: dict[int, tuple[str, bool]] = {
    50983: ("sodium", False),
    50971: ("potassium", False),
    50902: ("chloride", False),
    50882: ("bicarbonate", True),
    50868: ("anion_gap", False),
    51006: ("bun", False),
    50912: ("creatinine", False),
    50931: ("glucose", False),
    51222: ("hemoglobin", True),
    51221: ("hematocrit", True),
    51301: ("wbc_k", False),  # K/uL, hence not the cells/uL default range of "wbc"
    51265: ("platelets", True),
    50813: ("lactate", False),
}
# Plausibility ranges in MIMIC's units where the built-in defaults do not cover a feature.
_RANGES = {"wbc_k": [0.05, 500.0], "anion_gap": [0.0, 80.0]}


def _read(root: Path, relative: str, **kwargs: Any) -> pd.DataFrame:
    path = root / relative
    if not path.is_file():
        raise DataError(
            f"MIMIC-IV file not found: {path}. Give the folder that holds hosp/ and icu/ "
            "(e.g. ../shared/data/mimic_iv_demo_2.2)."
        )
    return pd.read_csv(path, **kwargs)


def build_cohort(
    root: str | Path, *, task: str = "prolonged_stay", window_hours: float = 24.0
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Extract the admission-level table described in the module docstring.

    Returns:
        ``(frame, schema_overrides)``: one row per admission with ``subject_id``,
        ``hadm_id``, features and the target column ``target``; and the schema
        overrides (target, column kinds, ranges) to pass to the table pipeline.

    Raises:
        DataError: the folder is not a MIMIC-IV (demo) folder.
        ConfigError: unknown task.
    """
    if task not in TASKS:
        raise unknown_choice("MIMIC task", task, TASKS)
    root = Path(root)
    times = ["admittime", "dischtime", "deathtime", "edregtime"]
    admissions = _read(root, "hosp/admissions.csv.gz", parse_dates=times)
    patients = _read(root, "hosp/patients.csv.gz")
    labs = _read(
        root,
        "hosp/labevents.csv.gz",
        usecols=["subject_id", "itemid", "charttime", "valuenum"],
        parse_dates=["charttime"],
    )
    frame = admissions.merge(patients[["subject_id", "gender", "anchor_age", "anchor_year"]], on="subject_id")
    frame["los_days"] = (frame["dischtime"] - frame["admittime"]).dt.total_seconds() / 86400.0
    window = pd.Timedelta(hours=window_hours)
    ended = frame["dischtime"].fillna(frame["deathtime"]) <= frame["admittime"] + window
    stats: dict[str, Any] = {"admissions": len(frame), "excluded_ended_within_window": int(ended.sum())}
    frame = frame.loc[~ended].reset_index(drop=True)
    frame["age"] = frame["anchor_age"] + frame["admittime"].dt.year - frame["anchor_year"]
    frame["window_start"] = frame[["edregtime", "admittime"]].min(axis=1)
    frame["window_end"] = frame["admittime"] + window

    labs = labs[labs["itemid"].isin(LABS) & labs["valuenum"].notna()]
    joined = labs.merge(frame[["subject_id", "hadm_id", "window_start", "window_end"]], on="subject_id")
    inside = joined[
        (joined["charttime"] >= joined["window_start"]) & (joined["charttime"] <= joined["window_end"])
    ]
    inside = inside.sort_values("charttime")
    features = pd.DataFrame({"hadm_id": frame["hadm_id"]})
    counts = inside.groupby("hadm_id").size().rename("n_lab_results")
    features = features.merge(counts, on="hadm_id", how="left")
    features["n_lab_results"] = features["n_lab_results"].fillna(0)
    for itemid, (name, low_is_bad) in LABS.items():
        values = inside[inside["itemid"] == itemid].groupby("hadm_id")["valuenum"]
        worst = values.min() if low_is_bad else values.max()
        extra = pd.DataFrame(
            {f"{name}_first": values.first(), f"{name}_{'min' if low_is_bad else 'max'}": worst}
        )
        features = features.merge(extra, left_on="hadm_id", right_index=True, how="left")

    if task == "prolonged_stay":
        target = (frame["los_days"] > PROLONGED_DAYS).astype(int)
        labels = {"0": f"stay <= {PROLONGED_DAYS:g} days", "1": f"stay > {PROLONGED_DAYS:g} days"}
    elif task == "mortality":
        target = frame["hospital_expire_flag"].astype(int)
        labels = {"0": "survived", "1": "died in hospital"}
    else:
        target = frame["los_days"].round(3)
        labels = {}
    cohort = pd.concat(
        [
            frame[
                [
                    "subject_id",
                    "hadm_id",
                    "age",
                    "gender",
                    "admission_type",
                    "admission_location",
                    "insurance",
                ]
            ],
            features.drop(columns="hadm_id"),
            pd.DataFrame({"target": target}),
        ],
        axis=1,
    )
    stats.update(
        rows=len(cohort),
        patients=int(cohort["subject_id"].nunique()),
        window_hours=window_hours,
        task=task,
        target_summary=(
            {str(k): int(v) for k, v in cohort["target"].value_counts().sort_index().items()}
            if task != "length_of_stay"
            else {
                "mean_days": float(cohort["target"].mean()),
                "median_days": float(cohort["target"].median()),
            }
        ),
        lab_coverage={
            c: round(float(cohort[c].notna().mean()), 3) for c in cohort.columns if c.endswith("_first")
        },
    )
    overrides: dict[str, Any] = {
        "target": "target",
        "task": "regression" if task == "length_of_stay" else "binary",
        "columns": {
            "subject_id": "id",
            "hadm_id": "ignore",
            "gender": "binary",
            "admission_type": "categorical",
            "admission_location": "categorical",
            "insurance": "categorical",
            "n_lab_results": "numeric",
        },
        "ranges": {
            f"{name}_{suffix}": bounds for name, bounds in _RANGES.items() for suffix in ("first", "max")
        },
        "labels": labels,
    }
    logger.info(
        "MIMIC-IV cohort (%s): %d admissions of %d patients; %d excluded (stay shorter than %g h).",
        task,
        stats["rows"],
        stats["patients"],
        stats["excluded_ended_within_window"],
        window_hours,
    )
    return cohort, {"schema": overrides, "extraction": stats}


def run_mimic_task(
    root: str | Path,
    *,
    out: str | Path = "runs/mimic",
    task: str = "prolonged_stay",
    model: str = "mlp",
    seed: int = 0,
    cv_repeats: int = 0,
    n_boot: int = 1000,
    force: bool = False,
) -> Any:
    """Extract the cohort, then train and evaluate end to end with a patient-level split.

    Writes ``out/cohort.csv`` (the extracted table), ``out/cohort.json`` (extraction
    counts and the schema used) and the run folder of
    :func:`medpredict.training.records.train_table` (bundle in ``out/model``).

    Returns:
        The :class:`medpredict.training.records.TableRun`.
    """
    from medpredict.atomic import write_json, write_text
    from medpredict.records.tables import infer_schema
    from medpredict.rundirs import claim_run_dir
    from medpredict.training.records import table_data_from_frame, train_table

    out = claim_run_dir(out, force=force)  # a run there is refused (or, with force, moved aside) first
    cohort, info = build_cohort(root, task=task)
    write_text(out / "cohort.csv", cohort.to_csv(index=False))
    text = cohort.astype(object).where(cohort.notna(), None)  # the pipeline reads cells as written
    schema = infer_schema(text, overrides=info["schema"])
    write_json(out / "cohort.json", {**info, "inferred_kinds": dict(schema.kinds)})
    data = table_data_from_frame(text, schema, source=f"{root} ({task})")
    if len(np.unique(data.groups)) != info["extraction"]["patients"]:
        raise DataError(
            "internal: patient groups do not match subject_id; the split would not be by patient."
        )
    return train_table(
        data, out=out, model=model, seed=seed, cv_repeats=cv_repeats, n_boot=n_boot, progress=False
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m medpredict.ehr.mimic ROOT --out runs/mimic [--task ...]``."""
    parser = argparse.ArgumentParser(description="Train and evaluate the MIMIC-IV demo task end to end.")
    parser.add_argument("root", help="the MIMIC-IV demo folder (holds hosp/ and icu/)")
    parser.add_argument("--out", default="runs/mimic")
    parser.add_argument("--task", default="prolonged_stay", choices=TASKS)
    parser.add_argument("--model", default="mlp", choices=("mlp", "transformer"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cv-repeats", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_mimic_task(
        args.root, out=args.out, task=args.task, model=args.model, seed=args.seed, cv_repeats=args.cv_repeats
    )


if __name__ == "__main__":
    main()
