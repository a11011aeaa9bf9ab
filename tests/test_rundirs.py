"""Tests for medpredict.rundirs: one rule for every folder a command writes a model or results into."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from medpredict.errors import ConfigError
from medpredict.rundirs import (
    PREDICTION_FILES,
    check_writable,
    claim_output_dir,
    claim_run_dir,
    removed_on_failure,
    set_aside_stale_results,
)


def fake_run(folder: Path, kind: str = "image", *, checkpoint: bool = True) -> Path:
    """A run folder as the trainers leave it: a bundle of ``kind`` (and a checkpoint)."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "bundle.json").write_text(json.dumps({"input_kind": kind}))
    (folder / "model" / "checksums.json").write_text("{}")
    if checkpoint:
        (folder / "checkpoint.safetensors").write_bytes(b"state")
    return folder


@pytest.mark.parametrize(
    ("kind", "checkpoint", "held", "advice"),
    [
        ("image", True, "an image model", "--resume to continue"),  # a finished image run
        ("image", False, "an image model", None),  # the case: no checkpoint, the guard did not look
        ("table", False, "a record model", None),  # a record run: train --out must not replace it
        ("fusion", True, "a fused image + record model", None),  # fused runs cannot be resumed
    ],
)
def test_a_folder_holding_a_run_is_refused_naming_it_and_flags_that_exist(
    tmp_path: Path, kind: str, checkpoint: bool, held: str, advice: str | None
) -> None:
    run = fake_run(tmp_path / "run", kind, checkpoint=checkpoint)
    with pytest.raises(ConfigError) as info:
        claim_run_dir(run, can_resume=True)
    message = str(info.value)
    assert f"already holds {held}" in message and "--force" in message and "--out" in message
    assert "--name" not in message  # a flag that does not exist
    assert ("--resume" in message) == (advice is not None)
    assert (run / "model" / "bundle.json").is_file()  # untouched


def test_results_without_a_model_are_refused_too(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"already holds results \(metrics.json\)"):
        claim_run_dir(tmp_path / "run")


def test_force_moves_the_old_run_aside_whole(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    (run / "report.html").write_text("old report")
    assert claim_run_dir(run, force=True) == run
    assert not run.exists()
    (aside,) = tmp_path.glob("run.old-*")
    assert (aside / "report.html").read_text() == "old report" and (aside / "model" / "bundle.json").is_file()
    fake_run(run)  # a second force on the same second gets its own folder
    claim_run_dir(run, force=True)
    assert len(list(tmp_path.glob("run.old-*"))) == 2


def test_an_empty_or_unrelated_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert claim_run_dir(tmp_path / "mine") == tmp_path / "mine"
    assert claim_run_dir(tmp_path / "new") == tmp_path / "new"
    assert not (tmp_path / "new").exists()  # checking creates nothing


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "holds no checkpoint"),  # the issue: --resume without a checkpoint started afresh
        (lambda p: fake_run(p, "table", checkpoint=False), "holds no checkpoint.*record model"),
        (lambda p: fake_run(p, "fusion"), "only an image run's training can be resumed"),
    ],
)
def test_resume_needs_an_image_runs_checkpoint(tmp_path: Path, setup, message: str) -> None:
    run = tmp_path / "run"
    setup(run)
    with pytest.raises(ConfigError, match=f"--resume: .*{message}"):
        claim_run_dir(run, resume=True, can_resume=True)


def test_resume_of_an_image_run_is_allowed(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    assert claim_run_dir(run, resume=True, can_resume=True) == run


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("x") and p, "is a file, not a folder"),  # --out names a file
        (lambda p: (p.write_text("x"), p / "sub")[1], "cannot be created: .* is a file"),  # a folder under a file
    ],
)
def test_an_out_path_that_cannot_be_a_folder_is_one_clear_error(tmp_path: Path, make, message: str) -> None:
    target = make(tmp_path / "out")
    with pytest.raises(ConfigError, match=message):
        check_writable(target)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_out_is_one_clear_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot be written"):
            check_writable(locked / "run")
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs")
def test_a_folder_even_root_cannot_write_is_one_clear_error() -> None:
    """The unwritable case under any user (the chmod test above skips as root): sysfs refuses new folders."""
    with pytest.raises(ConfigError, match=r"--out /sys/medpredict-run cannot be written \(Permission denied\)"):
        check_writable(Path("/sys/medpredict-run"))
    assert not Path("/sys/medpredict-run").exists()


def test_output_inside_a_bundle_or_a_run_folder_is_refused(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    with pytest.raises(ConfigError, match="inside .*model.*checksums"):
        claim_output_dir(run / "model", PREDICTION_FILES)  # predict --out RUN/model broke the bundle
    with pytest.raises(ConfigError, match="inside .*model"):
        claim_output_dir(run / "model" / "sub", PREDICTION_FILES)
    with pytest.raises(ConfigError, match="is a run folder"):
        claim_output_dir(run, PREDICTION_FILES)
    assert sorted(p.name for p in (run / "model").iterdir()) == ["bundle.json", "checksums.json"]


def test_earlier_predictions_are_refused_or_moved_aside(tmp_path: Path) -> None:
    out = tmp_path / "preds"
    out.mkdir()
    (out / "predictions.csv").write_text("old")
    with pytest.raises(ConfigError, match=r"already holds results \(predictions.csv\).*--force"):
        claim_output_dir(out, PREDICTION_FILES)
    claim_output_dir(out, PREDICTION_FILES, force=True)
    (aside,) = tmp_path.glob("preds.old-*")
    assert (aside / "predictions.csv").read_text() == "old"


def test_a_failed_command_removes_the_folder_it_created_but_keeps_a_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(RuntimeError), removed_on_failure(run):
        run.mkdir()
        (run / "train.log").write_text("")
        raise RuntimeError("data problem")
    assert not run.exists()
    with pytest.raises(RuntimeError), removed_on_failure(run):
        run.mkdir()
        (run / "checkpoint.safetensors").write_bytes(b"state")
        raise RuntimeError("killed later")
    assert (run / "checkpoint.safetensors").exists()  # resumable: kept
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError), removed_on_failure(run, keep=()):
        raise RuntimeError("a folder that existed before is never removed")
    assert (run / "notes.txt").exists()


def test_stale_results_of_a_replaced_model_go_aside(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    for name in ("metrics.json", "report.html"):
        (run / name).write_text(name)
    folder = set_aside_stale_results(run)
    assert folder is not None and folder.parent == run and folder.name.startswith("evaluation.old-")
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "report.html"]
    assert not (run / "metrics.json").exists() and set_aside_stale_results(run) is None
