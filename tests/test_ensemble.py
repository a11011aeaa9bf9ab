"""Seed ensembles: two runs of one recipe joined into one bundle that predicts the mean of their logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config
from medpredict.errors import ConfigError
from medpredict.inference.predictor import Predictor
from medpredict.training.ensemble import ensemble_runs
from medpredict.training.image import train


@pytest.fixture(scope="module")
def second_seed(square_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tiny_config(square_npz, tmp_path_factory.mktemp("seed1"), name="seed1", **{"train.seed": 1})
    return train(config, progress=False).run_dir


def test_two_seeds_join_into_one_bundle(tiny_run: Path, second_seed: Path, tmp_path: Path) -> None:
    bundle = ensemble_runs([tiny_run, second_seed], out=tmp_path / "ens")
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["model"]["members"] == 2
    assert [m["seed"] for m in meta["training"]["ensemble_of"]] == [0, 1]
    assert 0 < meta["threshold"]["threshold"] < 1 and meta["val_metrics"]["n"] == 48  # post-fit on validation
    x = torch.rand(4, 1, 16, 16)
    joined = Predictor.from_bundle(tmp_path / "ens").outputs(x)[0]
    singles = [Predictor.from_bundle(run).outputs(x)[0] for run in (tiny_run, second_seed)]
    np.testing.assert_allclose(joined, np.mean(singles, axis=0), atol=1e-5)


@pytest.mark.slow
def test_runs_of_different_recipes_are_refused(
    tiny_run: Path, square_npz: Path, tmp_path: Path
) -> None:
    other = train(tiny_config(square_npz, tmp_path, name="wide", **{"preprocess.image_size": 12,
                                                                   "train.epochs": 1}), progress=False).run_dir
    with pytest.raises(ConfigError, match="input"):
        ensemble_runs([tiny_run, other], out=tmp_path / "ens")
    with pytest.raises(ConfigError, match="at least two"):
        ensemble_runs([tiny_run], out=tmp_path / "ens")
