"""Small-data mode: when it applies, patient-grouped folds, out-of-fold post-fit, and the ensemble
bundle through every path (predictor, Grad-CAM, input guard, ONNX export, resume)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_config
from medpredict.config import load_config
from medpredict.errors import ConfigError, DataError
from medpredict.inference.predictor import Predictor
from medpredict.models.ensemble import EnsembleNet
from medpredict.training.crossfit import (
    SMALL_DATA_DEFAULTS,
    fold_assignment,
    small_data_config,
    small_data_reason,
)
from medpredict.training.image import train

FOLDS = 2


@pytest.mark.parametrize(
    ("mode", "n_val", "per_class_min", "task", "applies"),
    [
        ("auto", 78, 20, "binary", True),  # the 78-image validation split
        ("auto", 524, 135, "binary", False),  # PneumoniaMNIST's official validation split
        ("auto", 400, 40, "binary", True),  # enough cases, but one class under 50
        ("auto", 299, 100, "multiclass", True),  # just under 300 cases
        ("off", 78, 20, "binary", False),  # the user's word wins
        ("on", 524, 135, "binary", True),
        ("auto", 78, 20, "regression", False),  # classification only
    ],
)
def test_when_small_data_mode_applies(mode: str, n_val: int, per_class_min: int, task: str, applies: bool) -> None:
    y = np.array([0] * per_class_min + [1] * (n_val - per_class_min))
    config = load_config(None, {"train.small_data": mode})
    assert (small_data_reason(config, y, task) is not None) is applies


def test_small_data_on_refuses_a_regression_task() -> None:
    with pytest.raises(ConfigError, match="classification"):
        small_data_reason(load_config(None, {"train.small_data": "on"}), np.zeros(10), "regression")


def test_small_data_defaults_replace_only_default_settings() -> None:
    config, changed = small_data_config(load_config(None, {"train.epochs": 7}))
    assert config.train.epochs == 7 and "train.epochs" not in changed  # the user's choice is kept
    assert config.train.batch_size == SMALL_DATA_DEFAULTS["train.batch_size"]
    assert changed["train.batch_size"] == (128, SMALL_DATA_DEFAULTS["train.batch_size"])
    assert config.augment.strength == SMALL_DATA_DEFAULTS["augment.strength"]


def test_folds_keep_patients_and_identical_images_together_and_are_stratified() -> None:
    rng = np.random.default_rng(0)
    patients = [f"p{i // 2}" for i in range(120)]  # two images per patient
    y = np.array([(i // 2) % 3 == 0 for i in range(120)], dtype=np.int64)
    keys = pd.Series([f"k{i}" for i in range(120)])
    keys[5] = keys[40] = "same-bytes"  # one image filed under two patients
    frame = pd.DataFrame({"patient_id": patients})
    folds = fold_assignment(frame, y, 4, seed=int(rng.integers(100)), content_keys=keys)
    assert set(folds) == {0, 1, 2, 3}
    assert frame.assign(fold=folds).groupby("patient_id")["fold"].nunique().max() == 1
    assert folds[5] == folds[40]
    shares = [y[folds == f].mean() for f in range(4)]
    assert max(shares) - min(shares) < 0.15  # each fold keeps roughly the class balance


def test_too_few_patients_for_the_folds_is_a_clear_error() -> None:
    frame = pd.DataFrame({"patient_id": ["a", "a", "b", "b"]})
    with pytest.raises(DataError, match="at least 3 patients"):
        fold_assignment(frame, np.array([0, 1, 0, 1]), 3, seed=0)


@pytest.fixture(scope="module")
def small_run(square_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tiny_config(square_npz, tmp_path_factory.mktemp("small"), name="small", **{
        "train.small_data": "auto", "train.folds": FOLDS, "train.epochs": 2,
    })
    return train(config, progress=False).run_dir


def test_small_validation_split_trains_an_ensemble_of_fold_models(small_run: Path) -> None:
    meta = json.loads((small_run / "model" / "bundle.json").read_text())
    assert meta["model"]["members"] == FOLDS
    small = meta["training"]["small_data"]
    assert small["folds"] == FOLDS and sum(small["fold_sizes"]) == 96 + 48  # train + validation pooled
    assert "48 cases" in small["reason"]
    for fold in range(FOLDS):
        assert (small_run / "folds" / str(fold) / "fold.safetensors").is_file()
    # post-fit saw every pooled case once, out of fold
    oof = pd.read_csv(small_run / "val_predictions.csv")
    assert len(oof) == 96 + 48 and oof["row"].is_unique
    assert meta["val_metrics"]["n"] == 96 + 48
    assert meta["calibration"]["kind"] == "posthoc" and 0 < meta["threshold"]["threshold"] < 1
    # the settings used are the ones stored: the user's epochs kept, small-data batch size taken
    assert meta["config"]["train"]["epochs"] == 2 and meta["config"]["train"]["batch_size"] == 32


def test_ensemble_predicts_the_mean_of_its_members_logits(small_run: Path) -> None:
    predictor = Predictor.from_bundle(small_run)
    model = predictor.model
    assert isinstance(model, EnsembleNet) and len(model.members) == FOLDS
    x = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        members = torch.stack([m(x) for m in model.members]).mean(0)
        logits, features = predictor.outputs(x)
    np.testing.assert_allclose(logits, members.numpy(), atol=1e-5)
    assert features is not None and features.shape == (5, model.embedding_dim)
    assert predictor.identity.architecture == f"small-cnn x{FOLDS} ensemble"
    cases = predictor.predict([np.random.default_rng(0).random((1, 16, 16), dtype=np.float32)])
    assert cases[0].input_check.status in ("ok", "unusual")  # the guard ran on the ensemble's features


def test_ensemble_gradcam_is_the_mean_of_the_members_maps(small_run: Path) -> None:
    from medpredict.explain.maps import gradcam

    model = Predictor.from_bundle(small_run).model
    image = torch.rand(1, 16, 16)
    heat = gradcam(model, image, 1)
    members = np.mean([gradcam(m, image, 1) for m in model.members], axis=0)
    expected = (members - members.min()) / (members.max() - members.min())
    assert heat.shape == (16, 16) and heat.min() >= 0 and heat.max() <= 1
    np.testing.assert_allclose(heat, expected, atol=1e-5)


def test_resume_loads_finished_folds_instead_of_training_them(small_run: Path, square_npz: Path) -> None:
    done = [small_run / "folds" / str(f) / "fold.safetensors" for f in range(FOLDS)]
    stamps = [p.stat().st_mtime_ns for p in done]
    before = json.loads((small_run / "model" / "bundle.json").read_text())
    config = tiny_config(square_npz, small_run.parent, name=small_run.name, **{
        "train.small_data": "auto", "train.folds": FOLDS, "train.epochs": 2,
    })
    with pytest.raises(ConfigError, match="--resume"):  # a small-data run folder is a run too
        train(config, progress=False)
    train(config, resume=True, progress=False)
    assert [p.stat().st_mtime_ns for p in done] == stamps  # nothing retrained
    after = json.loads((small_run / "model" / "bundle.json").read_text())
    assert after["training"]["small_data"]["fold_scores"] == before["training"]["small_data"]["fold_scores"]


@pytest.mark.slow
def test_ensemble_exports_to_one_onnx_graph(small_run: Path, tmp_path: Path) -> None:
    import shutil

    from medpredict.deploy.export import export_run
    from medpredict.inference.loader import load_predictor

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    report = export_run(run)
    assert report.max_abs_diff <= 1e-4
    images = [np.random.default_rng(i).random((1, 16, 16), dtype=np.float32) for i in range(4)]
    torch_cases = load_predictor(run).predict(images)
    onnx_cases = load_predictor(run, backend="onnx").predict(images)
    for a, b in zip(torch_cases, onnx_cases, strict=True):
        assert a.decision == b.decision and a.input_check.status == b.input_check.status
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 1e-4
