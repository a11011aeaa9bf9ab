"""End-to-end training runs on a tiny synthetic task: run folder, resume after SIGKILL, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import tiny_config
from medpredict.errors import ConfigError, DataError
from medpredict.training.image import train

RUN_FILES = (
    "config.yaml",
    "train.log",
    "metrics.jsonl",
    "curves.png",
    "checkpoint.safetensors",
    "splits.csv",
    "val_predictions.csv",
    "model/weights.safetensors",
    "model/bundle.json",
    "model/checksums.json",
)


def test_run_folder_holds_everything_inference_and_audit_need(tiny_run: Path) -> None:
    for name in RUN_FILES:
        assert (tiny_run / name).is_file(), name
    lines = (tiny_run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["epoch"] == 3
    meta = json.loads((tiny_run / "model" / "bundle.json").read_text())
    assert meta["labels"] == ["0", "1"] and meta["task"] == "binary"
    assert meta["val_metrics"]["auc"] > 0.9  # the corner square is easy to learn
    assert 0.0 < meta["threshold"]["threshold"] < 1.0  # locked on validation
    assert meta["calibration"]["kind"] == "posthoc" and meta["calibration"]["prior_correction"] is True
    assert meta["preprocess"]["image_size"] == 16
    assert meta["data"]["rows"] == {"train": 96, "val": 48, "test": 48}


def test_refuses_to_overwrite_a_run_without_resume(tiny_run: Path) -> None:
    config = tiny_config(Path("unused.npz"), tiny_run.parent, name=tiny_run.name)
    with pytest.raises(ConfigError, match="--resume"):
        train(config, progress=False)


def test_missing_target_column_is_a_clear_error(tmp_path: Path, square_npz: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_path,patient_id,diagnosis\nx.png,p1,1\n")
    with pytest.raises(DataError, match="target column 'label'.*diagnosis"):
        train(tiny_config(manifest, tmp_path / "runs"), progress=False)


def _val_scores(run_dir: Path) -> list[float]:
    return [json.loads(line)["val_score"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_same_seed_gives_identical_results(square_npz: Path, tmp_path: Path) -> None:
    first = train(tiny_config(square_npz, tmp_path, name="a", **{"train.epochs": 2}), progress=False)
    second = train(tiny_config(square_npz, tmp_path, name="b", **{"train.epochs": 2}), progress=False)
    assert [h["train_loss"] for h in first.fit.history] == [h["train_loss"] for h in second.fit.history]
    a = load_file(str(first.bundle_dir / "weights.safetensors"))
    b = load_file(str(second.bundle_dir / "weights.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)


_TRAIN_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from conftest import tiny_config
from medpredict.training.image import train
train(tiny_config(Path({npz!r}), Path({out!r}), name="killed", **{{"train.epochs": 8, "train.batch_size": 8}}),
      resume="--resume" in sys.argv, progress=False)
"""


def test_training_killed_mid_run_resumes_to_the_same_result(square_npz: Path, tmp_path: Path) -> None:
    script = tmp_path / "run_training.py"
    script.write_text(
        _TRAIN_SCRIPT.format(tests=str(Path(__file__).parent), npz=str(square_npz), out=str(tmp_path))
    )
    run_dir = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            log = run_dir / "metrics.jsonl"
            if log.exists() and len(log.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, "training finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    epochs_done = len((run_dir / "metrics.jsonl").read_text().splitlines())
    assert 2 <= epochs_done < 8
    assert not (run_dir / "model").exists()  # killed before the bundle was written

    resumed = subprocess.run(
        [sys.executable, str(script), "--resume"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
        check=True,
    )
    assert resumed.returncode == 0
    uninterrupted = train(
        tiny_config(square_npz, tmp_path, name="straight", **{"train.epochs": 8, "train.batch_size": 8}),
        progress=False,
    )
    assert _val_scores(run_dir) == _val_scores(uninterrupted.run_dir)
    killed_weights = load_file(str(run_dir / "model" / "weights.safetensors"))
    straight_weights = load_file(str(uninterrupted.bundle_dir / "weights.safetensors"))
    assert all(bool((killed_weights[k] == straight_weights[k]).all()) for k in straight_weights)
