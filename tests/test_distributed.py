"""Training under ``torchrun`` with 2 CPU processes (DistributedDataParallel over gloo).

The 2-process model must be as good as a 1-process model on the same data, and only rank 0
may write the run folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_square_npz, tiny_config
from medpredict.inference.predictor import Predictor
from medpredict.training.image import train

TORCHRUN = Path(sys.executable).with_name("torchrun")
EPOCHS = 4
# A larger, calmer version of the tiny task, so that two runs can be compared on quality.
SETTINGS = {"train.epochs": EPOCHS, "train.lr": 0.003}
RUN_FILES = {
    "config.yaml", "train.log", "metrics.jsonl", "curves.png", "checkpoint.safetensors", "splits.csv",
    "val_predictions.csv", "model/weights.safetensors", "model/bundle.json", "model/checksums.json",
    "model/input_guard.json",
}


def _torchrun_train(npz: Path, out: Path, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    config = tiny_config(npz, out.parent, name=out.name, **SETTINGS)
    command = [
        str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "medpredict.cli", "-q", "train",
        "--data", str(npz), "--model", config.model.name, "--image-size", str(config.preprocess.image_size),
        "--epochs", str(EPOCHS), "--batch-size", str(config.train.batch_size), "--lr", str(config.train.lr),
        "--out", str(out), "--set", "train.threads=1", "--set", f"train.patience={config.train.patience}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.fixture(scope="module")
def calm_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_square_npz(tmp_path_factory.mktemp("ddp") / "calm.npz", n=(256, 96, 96))


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_two_process_training_matches_one_process_and_writes_one_run(calm_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs" / "ddp"
    done = _torchrun_train(calm_npz, out)
    assert done.returncode == 0, done.stderr[-3000:]

    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {f"runs/ddp/{name}" for name in RUN_FILES}  # rank 1 wrote nothing anywhere
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1))  # one writer: each epoch logged once
    assert (out / "train.log").read_text().count(f"epoch 1/{EPOCHS} ") == 1

    predictor = Predictor.from_bundle(out)
    assert predictor.meta["config"]["train"]["epochs"] == EPOCHS
    ddp_auc = predictor.meta["val_metrics"]["auc"]
    single = train(tiny_config(calm_npz, tmp_path / "single", **SETTINGS), progress=False)
    single_auc = single.val_metrics["auc"]
    assert single_auc > 0.85 and ddp_auc > 0.85, (ddp_auc, single_auc)
    assert abs(ddp_auc - single_auc) < 0.06, (ddp_auc, single_auc)


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_two_process_training_with_an_odd_number_of_training_images(tmp_path: Path) -> None:
    npz = make_square_npz(tmp_path / "odd.npz", n=(97, 48, 48))
    done = _torchrun_train(npz, tmp_path / "runs" / "odd", timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
