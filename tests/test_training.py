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


# --------------------------------------------------------------------------- issue 13: no silent wrong model


def png_manifest(folder: Path, labels: list[str], splits: list[str] | None = None) -> Path:
    """A manifest of 16-px PNGs (class 'pneumonia'/'b' rows carry a bright corner), one patient per row."""
    import numpy as np

    from fixtures_images import write_png

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["image_path,patient_id,label" + (",split" if splits else "")]
    for i, label in enumerate(labels):
        image = rng.integers(0, 150, (16, 16))
        if label.strip().lower() not in ("normal", "a"):
            image[1:6, 1:6] += 90
        write_png(folder / f"{i}.png", image.astype(np.uint8))
        rows.append(f"{i}.png,p{i},{label}" + (f",{splits[i]}" if splits else ""))
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


def test_labels_differing_by_a_space_are_refused_until_mapped(tmp_path: Path) -> None:
    # The issue: five labels read 'normal ' (trailing space); a third class, NaN AUC, a random model saved.
    labels = ["normal ", *(["normal", "pneumonia"] * 20)][:40]
    labels[1:5] = ["normal "] * 4
    manifest = png_manifest(tmp_path / "data", labels)
    with pytest.raises(DataError, match=r"differ only in case or spaces: 'normal' \(\d+ rows\) / 'normal ' \(5 rows\)"
                       r".*--set 'data.label_map=\{\"normal \": \"normal\"\}'"):
        train(tiny_config(manifest, tmp_path / "runs", name="variants"), progress=False)
    assert not (tmp_path / "runs" / "variants").exists()  # nothing left behind
    result = train(tiny_config(manifest, tmp_path / "runs", name="mapped", **{"data.label_map": {"normal ": "normal"}}),
                   progress=False)
    assert json.loads((result.bundle_dir / "bundle.json").read_text())["labels"] == ["normal", "pneumonia"]


def test_a_model_whose_validation_score_never_became_finite_is_not_saved(tmp_path: Path, capsys) -> None:
    from medpredict.cli import main

    # Class 'c' has training rows only: the multi-class validation AUC is NaN in every epoch.
    labels = ["a", "b"] * 12 + ["c"] * 6
    splits = (["train"] * 16 + ["val"] * 8) + ["train"] * 6
    manifest = png_manifest(tmp_path / "data", labels, splits)
    run = tmp_path / "runs" / "nan"
    code = main(["-q", "train", "--data", str(manifest), "--model", "small-cnn", "--image-size", "16", "--epochs", "2",
                 "--set", "train.threads=1", "--set", "data.test_fraction=0", "--set", "train.small_data=off",
                 "--out", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err, err
    err = err.splitlines()[-1]  # above it: progress bars only
    assert err.startswith("medpredict: error: No model was saved") and "not a number in any of the 2 epochs" in err
    assert "class 'c' has 6 training and 0 validation rows" in err
    assert not (run / "model").exists()


def test_learning_problem_reads_the_history() -> None:
    from medpredict.training.engine import FitResult, learning_problem

    def result(scores: list[float], best: int) -> FitResult:
        return FitResult(best_state={}, best_epoch=best, best_score=max(scores),
                         history=[{"val_score": s} for s in scores])

    assert "not a number" in learning_problem(result([float("nan")] * 3, 0), "binary")
    assert "never rose above its first epoch's 0.500" in learning_problem(result([0.5, 0.5, 0.49], 1), "binary")
    assert learning_problem(result([0.5, 0.7, 0.8], 3), "binary") is None  # it learned
    assert learning_problem(result([0.9, 0.85], 1), "binary") is None  # best at epoch 1, far above chance
    assert learning_problem(result([0.5], 1), "binary") is None  # one epoch: nothing to compare


def test_unknown_targets_are_left_out_of_training(tmp_path: Path) -> None:
    labels = (["normal", "pneumonia"] * 20)
    labels[:6] = ["Unknown", "unknown", "N/A", "?", "unk", "UNKNOWN"]
    result = train(tiny_config(png_manifest(tmp_path / "data", labels), tmp_path / "runs", **{"train.epochs": 1}),
                   progress=False)
    meta = json.loads((result.bundle_dir / "bundle.json").read_text())
    assert meta["labels"] == ["normal", "pneumonia"]  # 'Unknown' never becomes a class
    assert sum(meta["data"]["rows"].values()) == 34


def _copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    import shutil

    run = tmp_path / "runs" / "copy"
    shutil.copytree(tiny_run, run)
    return run


@pytest.mark.parametrize(
    ("overrides", "changed"),
    [
        ({"preprocess.image_size": 20}, "preprocess.image_size: 16 in the checkpoint, 20 now"),  # the issue: 64 vs 128
        ({"model.name": "tiny-resnet"}, "model.name: 'small-cnn' in the checkpoint, 'tiny-resnet' now"),
        ({"data.max_per_split": 40}, "data.rows.train: 96 in the checkpoint, 40 now"),  # other rows
    ],
)
def test_resume_refuses_another_run_naming_what_changed(
    tiny_run: Path, square_npz: Path, tmp_path: Path, overrides: dict, changed: str
) -> None:
    run = _copy_run(tiny_run, tmp_path)
    before = (run / "model" / "weights.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="--resume: the checkpoint .* was made for another run") as info:
        train(tiny_config(square_npz, run.parent, name=run.name, **overrides), resume=True, progress=False)
    assert changed in str(info.value)
    assert (run / "model" / "weights.safetensors").read_bytes() == before


def test_resume_with_other_data_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    from conftest import make_square_npz

    other = make_square_npz(tmp_path / "other.npz", n=(96, 48, 48), seed=1)  # same shape, other images/labels
    run = _copy_run(tiny_run, tmp_path)
    (run / "model").rename(run / "model.keep")  # the data check comes before anything is written
    with pytest.raises(ConfigError, match="data.content_of_rows_splits_and_targets"):
        train(tiny_config(other, run.parent, name=run.name), resume=True, progress=False)


def test_resume_with_more_epochs_extends_the_schedule(tiny_run: Path, square_npz: Path, tmp_path: Path) -> None:
    # The issue: 'ValueError: Tried to step 31 times' and no bundle.
    run = _copy_run(tiny_run, tmp_path)
    (run / "report.html").write_text("evaluation of the 3-epoch model")
    result = train(tiny_config(square_npz, run.parent, name=run.name, **{"train.epochs": 5}), resume=True,
                   progress=False)
    assert [h["epoch"] for h in result.fit.history] == [1, 2, 3, 4, 5]
    assert json.loads((result.bundle_dir / "bundle.json").read_text())["training"]["epochs_run"] == 5
    assert not (run / "report.html").exists()  # the old model's results went aside, not beside the new model
    assert [p.name for p in run.glob("evaluation.old-*/report.html")] == ["report.html"]


def test_resume_without_a_checkpoint_is_refused(square_npz: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--resume: .* holds no checkpoint"):
        train(tiny_config(square_npz, tmp_path, name="fresh"), resume=True, progress=False)
    assert not (tmp_path / "fresh").exists()


def test_train_into_a_record_run_is_refused_and_force_moves_it_aside(square_npz: Path, tmp_path: Path) -> None:
    run = tmp_path / "record"
    (run / "model").mkdir(parents=True)
    (run / "model" / "bundle.json").write_text('{"input_kind": "table"}')
    (run / "metrics.json").write_text('{"models": {}}')
    with pytest.raises(ConfigError, match="already holds a record model"):
        train(tiny_config(square_npz, tmp_path, name="record", **{"train.epochs": 1}), progress=False)
    result = train(tiny_config(square_npz, tmp_path, name="record", **{"train.epochs": 1}), force=True, progress=False)
    assert json.loads((result.bundle_dir / "bundle.json").read_text())["input_kind"] == "image"
    (aside,) = tmp_path.glob("record.old-*")
    assert (aside / "metrics.json").read_text() == '{"models": {}}'
    assert not (run / "metrics.json").exists()  # no stale results beside the new model


@pytest.mark.parametrize("name", ["../../escaped", "..", "a/b"])
def test_a_run_name_cannot_leave_the_runs_folder(square_npz: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="not a plain folder name"):
        train(tiny_config(square_npz, tmp_path / "runs", name=name), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cuda_on_a_cpu_torch_is_one_clear_error(square_npz: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="--device cuda: this PyTorch has no CUDA"):
        train(tiny_config(square_npz, tmp_path, name="gpu", **{"train.device": "cuda"}), progress=False)
    assert not (tmp_path / "gpu").exists()
