"""The MIMIC-IV demo task end to end: extract the cohort (:mod:`medpredict.ehr.mimic`), train a record model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medpredict.atomic import write_json, write_text
from medpredict.ehr.mimic import build_cohort
from medpredict.errors import DataError
from medpredict.records.tables import infer_schema
from medpredict.rundirs import claim_run_dir
from medpredict.training.records import TableRun, table_data_from_frame, train_table


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
) -> TableRun:
    """Extract the cohort, then train and evaluate end to end with a patient-level split.

    Writes ``out/cohort.csv`` (the extracted table), ``out/cohort.json`` (extraction
    counts and the schema used) and the run folder of
    :func:`medpredict.training.records.train_table` (bundle in ``out/model``).

    Returns:
        The :class:`medpredict.training.records.TableRun`.
    """
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
