"""train_table, cross_validate, baselines, regression and clustering on small synthetic tables."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from medpredict.errors import ConfigError, DataError
from medpredict.models.records import build_record_model
from medpredict.records.cleaning import TableCleaner
from medpredict.training.clustering import cluster_embeddings, cluster_table
from medpredict.training.record_fit import RECORD_TRAINING
from medpredict.training.records import corrected_interval, cross_validate, load_table_data, train_table

FAST = replace(RECORD_TRAINING, epochs=15)


@pytest.fixture
def table(tmp_path):
    """120 patients; outcome depends on age, chol and smoking; '?', a tab token and repeat visits."""
    rng = np.random.default_rng(1)
    n = 120
    age = rng.normal(55, 10, n)
    chol = rng.normal(230, 40, n)
    smoker = rng.choice(["never", "former", "current"], n)
    risk = 0.08 * (age - 55) + 0.03 * (chol - 230) + np.where(smoker == "current", 1.5, 0.0)
    outcome = (risk + rng.normal(0, 0.8, n) > 0).astype(int)
    stay = 3 + 0.1 * age + rng.normal(0, 1, n)
    frame = pd.DataFrame(
        {
            "patient_id": [f"p{i // 2:03d}" for i in range(n)],  # two visits per patient
            "age": age.round(0).astype(int).astype(str),
            "chol": chol.round(0).astype(int).astype(str),
            "smoker": smoker,
            "stage": rng.choice(["I", "II", "III", "IV"], n),
            "length_of_stay": stay.round(2).astype(str),
            "outcome": outcome.astype(str),
        }
    )
    frame.loc[3, "chol"] = "?"
    frame.loc[5, "age"] = "\t61"
    path = tmp_path / "records.csv"
    frame.to_csv(path, index=False)
    return path


def test_train_table_writes_a_loadable_bundle(table, tmp_path):
    from medpredict.bundle.store import load_bundle

    run = train_table(
        table, target="outcome", out=tmp_path / "run", train=FAST, n_boot=100, progress=False
    )
    bundle = load_bundle(run.run_dir)
    meta = bundle.meta
    assert meta["input_kind"] == "table" and meta["task"] == "binary" and meta["labels"] == ["0", "1"]
    assert set(run.metrics["models"]) == {"mlp", "logistic", "boosting"}
    assert 0.0 <= run.metrics["models"]["mlp"]["test"]["auc"] <= 1.0
    # patient-level split: no patient on two sides
    groups = run.data.groups
    sides = pd.Series(run.splits).groupby(groups).nunique()
    assert (sides == 1).all()
    # the predictor's path: cleaner.json + model hparams rebuild the same outputs
    cleaner = TableCleaner.from_dict(bundle.read_json("cleaner.json"))
    hparams = {k: v for k, v in meta["model"].items() if k != "kind"}
    model = build_record_model(**hparams)
    model.load_state_dict(bundle.state_dict)
    model.eval()
    x = cleaner.transform(run.data.frame.head(5))
    torch.testing.assert_close(model(torch.as_tensor(x)), run.model(torch.as_tensor(x)))
    for name in ("metrics.json", "config.yaml", "cleaning_report.json", "test_predictions.csv"):
        assert (run.run_dir / name).is_file()
    assert "patient_id" not in (run.run_dir / "test_predictions.csv").read_text()


def test_cross_validation_uses_same_folds_for_all_models(table):
    data = load_table_data(table, target="outcome")
    result = cross_validate(data, n_splits=3, n_repeats=1, train=FAST, progress=False)
    models = result["models"]
    assert set(models) == {"mlp", "logistic", "boosting"}
    assert all(len(m["scores"]) == 3 for m in models.values())
    for entry in models.values():
        low, high = entry["auc_ci"]
        assert 0 <= low <= entry["auc_mean"] <= high <= 1
    assert models["logistic"]["auc_mean"] > 0.7  # the signal is there, so the pipeline works
    assert "p_value" in result["compare"]["mlp"]


def test_regression_target(table, tmp_path):
    run = train_table(
        table, target="length_of_stay", out=tmp_path / "reg", train=FAST, n_boot=100, progress=False
    )
    assert run.data.task == "regression" and run.data.labels == []
    test = run.metrics["models"]["mlp"]["test"]
    assert {"mae", "rmse", "r2"} <= set(test)
    assert test["mae"] < 3.0  # outputs are in days, not standardised units


def test_multiclass_target(table, tmp_path):
    run = train_table(
        table,
        target="stage",
        out=tmp_path / "multi",
        train=FAST,
        baselines=False,
        n_boot=100,
        progress=False,
    )
    assert run.data.task == "multiclass" and run.data.labels == ["I", "II", "III", "IV"]
    assert len(run.metrics["models"]["mlp"]["test"]["per_class"]) == 4


def test_target_rule_and_errors(table, tmp_path):
    data = load_table_data(table, target="age>60")
    assert data.task == "binary" and set(np.unique(data.y)) == {0, 1}
    with pytest.raises(DataError, match="Did you mean 'outcome'"):
        load_table_data(table, target="outcomes")
    with pytest.raises(DataError, match="not 2"):
        load_table_data(table, target="stage", task="binary")
    with pytest.raises(ConfigError, match="Did you mean 'mlp'"):
        train_table(table, target="outcome", out=tmp_path / "x", model="mpl")


def test_clustering_on_learned_embedding(table, tmp_path):
    summary = cluster_table(table, target="outcome", out=tmp_path / "clusters", k=3).found
    assert summary["k"] == 3 and sum(c["n"] for c in summary["clusters"]) == 120
    assert -1 <= summary["silhouette"] <= 1
    assert (tmp_path / "clusters" / "clusters.png").stat().st_size > 1000


def test_cluster_k_is_chosen_by_silhouette():
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(c, 0.1, (20, 4)) for c in (0, 5, 10)])
    result = cluster_embeddings(blobs)
    assert result["k"] == 3 and result["map"].shape == (60, 2)
    with pytest.raises(ConfigError):
        cluster_embeddings(blobs, k=1)


def test_corrected_interval_is_wider_than_naive():
    scores = [0.80, 0.85, 0.90, 0.82, 0.88]
    low, high = corrected_interval(scores, n_train=80, n_test=20)
    naive = 2.776 * np.std(scores, ddof=1) / np.sqrt(5)
    assert low < np.mean(scores) < high and (high - low) / 2 > naive


def test_metrics_json_is_valid_json(table, tmp_path):
    run = train_table(
        table,
        target="outcome",
        out=tmp_path / "run",
        train=FAST,
        baselines=False,
        n_boot=100,
        progress=False,
    )
    assert json.loads((run.run_dir / "metrics.json").read_text())["task"] == "binary"


def test_no_value_words_in_a_record_target_are_dropped_and_counted(table, tmp_path, caplog):
    # The issue: 'Unknown' became a class the model predicted for everyone; 'N/A' was dropped.
    frame = pd.read_csv(table, dtype=str)
    frame.loc[:9, "outcome"] = ["Unknown", "UNKNOWN", "N/A", "unk", "?", "pending", "not known", "Unknown", "", "n/a"]
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = load_table_data(tmp_path / "t.csv", target="outcome")
    assert data.labels == ["0", "1"] and data.task == "binary"
    assert data.removed["missing_target"] == 10 and len(data.y) == 110
    assert "written as 'Unknown' x2" in caplog.text
    ruled = load_table_data(tmp_path / "t.csv", target="outcome==1")  # a rule leaves them missing too
    assert ruled.removed["missing_target"] == 10
