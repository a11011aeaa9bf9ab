"""MIMIC-IV task extraction: prediction-time window, exclusions, patient-level split, end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medpredict.ehr.mimic import build_cohort
from medpredict.errors import ConfigError, DataError
from medpredict.workflows.mimic import run_mimic_task


@pytest.fixture
def mimic(tmp_path):
    """A MIMIC-IV-shaped folder: 40 patients, 2 admissions each, labs inside and outside 24 h."""
    rng = np.random.default_rng(0)
    (tmp_path / "hosp").mkdir()
    admissions, labs = [], []
    base = pd.Timestamp("2150-01-01")
    for s in range(40):
        for a in range(2):
            hadm = 1000 + 2 * s + a
            admit = base + pd.Timedelta(days=100 * s + 30 * a)
            los = 0.5 if (s, a) == (0, 0) else float(rng.uniform(2, 14))  # one stay shorter than 24 h
            admissions.append(
                {
                    "subject_id": s,
                    "hadm_id": hadm,
                    "admittime": admit,
                    "dischtime": admit + pd.Timedelta(days=los),
                    "deathtime": None,
                    "edregtime": admit - pd.Timedelta(hours=3),
                    "admission_type": "URGENT",
                    "admission_location": rng.choice(["EMERGENCY ROOM", "TRANSFER FROM HOSPITAL"]),
                    "insurance": rng.choice(["Medicare", "Other"]),
                    "hospital_expire_flag": int(rng.random() < 0.2),
                }
            )
            creat = 1.0 + (los > 7) * 0.6 + rng.normal(0, 0.3)  # predictive, not a restatement of the target
            labs.append(
                {
                    "subject_id": s,
                    "itemid": 50912,
                    "charttime": admit - pd.Timedelta(hours=1),
                    "valuenum": round(creat, 2),
                }
            )  # in the ED, before admission: allowed
            labs.append(
                {
                    "subject_id": s,
                    "itemid": 50912,
                    "charttime": admit + pd.Timedelta(hours=48),
                    "valuenum": 99.0,
                }
            )  # after the prediction time: must never be used
            labs.append(
                {
                    "subject_id": s,
                    "itemid": 50983,
                    "charttime": admit + pd.Timedelta(hours=2),
                    "valuenum": 140.0,
                }
            )
    pd.DataFrame(admissions).to_csv(tmp_path / "hosp" / "admissions.csv.gz", index=False)
    pd.DataFrame(labs).to_csv(tmp_path / "hosp" / "labevents.csv.gz", index=False)
    pd.DataFrame(
        {"subject_id": range(40), "gender": ["F", "M"] * 20, "anchor_age": 60, "anchor_year": 2150}
    ).to_csv(tmp_path / "hosp" / "patients.csv.gz", index=False)
    return tmp_path


def test_cohort_uses_only_data_before_prediction_time(mimic):
    cohort, info = build_cohort(mimic)
    assert info["extraction"]["excluded_ended_within_window"] == 1 and len(cohort) == 79
    assert cohort["creatinine_max"].max() < 99  # the 48 h value is outside the window
    assert cohort["creatinine_first"].notna().all()  # the ED value before admission counts
    assert set(cohort["target"]) == {0, 1} and info["schema"]["columns"]["subject_id"] == "id"


def test_length_of_stay_and_mortality_tasks(mimic):
    los, info = build_cohort(mimic, task="length_of_stay")
    assert info["schema"]["task"] == "regression" and los["target"].min() >= 1.0
    deaths, _ = build_cohort(mimic, task="mortality")
    assert set(deaths["target"]) <= {0, 1}
    with pytest.raises(ConfigError, match="Did you mean 'mortality'"):
        build_cohort(mimic, task="mortallity")


def test_end_to_end_with_patient_level_split(mimic, tmp_path):
    run = run_mimic_task(mimic, out=tmp_path / "run", n_boot=100)
    sides = pd.Series(run.splits).groupby(run.data.groups).nunique()
    assert (sides == 1).all() and len(sides) == 40  # every patient on exactly one side
    assert (tmp_path / "run" / "model" / "cleaner.json").is_file()
    assert (tmp_path / "run" / "cohort.json").is_file()
    assert "mlp" in run.metrics["models"] and "test" in run.metrics["models"]["mlp"]


def test_not_a_mimic_folder(tmp_path):
    with pytest.raises(DataError, match="hosp/ and icu/"):
        build_cohort(tmp_path)
