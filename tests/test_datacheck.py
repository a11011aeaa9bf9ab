"""Tests for medpredict.data.check: the image data-quality report (JSON + HTML)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fixtures_images import write_png
from medpredict.data.check import check_images
from medpredict.data.manifest import load_manifest


def blocks(seed: int) -> np.ndarray:
    """64x64 uint8 image of 4x4 random blocks: distinct per seed, robust to a small brightening."""
    values = np.random.default_rng(seed).integers(40, 216, (4, 4))
    return np.kron(values, np.ones((16, 16))).astype(np.uint8)


def write_problem_set(root: Path) -> Path:
    """Ten rows with one of every problem; returns the manifest CSV.

    - img0.png (train) and dup0.png (test): byte-identical, across splits
    - img1.png (train) and bright1.png (val): near-identical (brightened copy), across splits
    - img2.png (train) and img3.png (test): one patient in two splits
    - bad.png: unreadable; gone.png: missing
    """
    for i in range(6):
        write_png(root / f"img{i}.png", blocks(i))
    shutil.copy(root / "img0.png", root / "dup0.png")
    write_png(root / "bright1.png", np.clip(blocks(1).astype(int) + 8, 0, 255).astype(np.uint8))
    (root / "bad.png").write_bytes(b"this is not a PNG")
    rows = [
        ("img0.png", "train", "SECRET-0", 0), ("dup0.png", "test", "SECRET-9", 0),
        ("img1.png", "train", "SECRET-1", 1), ("bright1.png", "val", "SECRET-8", 1),
        ("img2.png", "train", "SECRET-2", 0), ("img3.png", "test", "SECRET-2", 1),
        ("img4.png", "val", "SECRET-4", 0), ("img5.png", "test", "SECRET-5", 1),
        ("bad.png", "train", "SECRET-6", 0), ("gone.png", "train", "SECRET-7", 1),
    ]
    csv = root / "manifest.csv"
    pd.DataFrame(rows, columns=["path", "split", "patient_id", "label"]).to_csv(csv, index=False)
    return csv


@pytest.fixture
def problem_report(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    return check_images(load_manifest(write_problem_set(data)), tmp_path / "report", progress=False)


def test_every_problem_is_counted(problem_report) -> None:
    report = problem_report.report
    assert not problem_report.ok and report["ok"] is False
    assert report["rows"] == 10 and report["patients"] == 9
    assert report["missing_files"] == ["gone.png"]
    assert "bad.png" in {p["file"] for p in report["unreadable_files"]}
    assert report["exact_duplicates"]["groups"] == 1
    assert report["exact_duplicates"]["redundant_files"] == 1
    assert report["exact_duplicates"]["groups_across_splits"] == 1
    assert report["exact_duplicates"]["examples"] == [
        {"files": ["img0.png", "dup0.png"], "splits": ["test", "train"]}
    ]
    # the byte-identical pair is near-identical too, and the brightened copy is found
    assert report["near_duplicates"]["groups"] == 2
    assert report["near_duplicates"]["groups_across_splits"] == 2
    near_files = [sorted(e["files"]) for e in report["near_duplicates"]["examples"]]
    assert ["bright1.png", "img1.png"] in near_files
    assert report["patients_across_splits"] == 1
    assert report["splits"] == {"train": 5, "test": 3, "val": 2}
    assert report["class_balance"]["train"] == {"0": 3, "1": 2}
    assert report["image_size"] == {"height_min": 64, "height_max": 64, "width_min": 64, "width_max": 64}
    problems = " | ".join(report["problems"])
    for phrase in ("1 files are missing", "unreadable", "1 patients appear in more than one split",
                   "1 groups of identical images cross splits"):
        assert phrase in problems
    assert any("2 groups of near-identical images cross splits" in w for w in report["warnings"])


def test_missing_file_is_not_also_unreadable(problem_report) -> None:
    assert [p["file"] for p in problem_report.report["unreadable_files"]] == ["bad.png"]


def test_json_and_html_are_written_without_patient_ids(problem_report, tmp_path: Path) -> None:
    assert problem_report.json_path == tmp_path / "report" / "data_check.json"
    on_disk = json.loads(problem_report.json_path.read_text())
    assert on_disk["exact_duplicates"]["groups"] == 1 and on_disk["ok"] is False
    html = problem_report.html_path.read_text()
    assert html.lower().startswith("<!doctype html>")
    assert "Problems found" in html and "dup0.png" in html
    assert 'src="data:image/png;base64,' in html  # the class-balance chart is embedded
    for text in (html, problem_report.json_path.read_text()):
        assert "SECRET" not in text  # the report names files, never patients


def test_clean_folder_passes(tmp_path: Path) -> None:
    seed = 100
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = tmp_path / "data" / split / label
            folder.mkdir(parents=True)
            for i in range(2):
                seed += 1
                write_png(folder / f"{i}.png", blocks(seed))
    result = check_images(load_manifest(tmp_path / "data"), tmp_path / "out", progress=False)
    assert result.ok and result.report["problems"] == []
    assert result.report["exact_duplicates"]["groups"] == 0
    assert result.report["splits"] == {"test": 4, "train": 4}
    assert "No blocking problem found." in result.html_path.read_text()


def test_html_escapes_file_names(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_png(data / "<b>x&y.png", blocks(7))
    shutil.copy(data / "<b>x&y.png", data / "copy.png")  # a duplicate, so the name appears in the table
    csv = data / "m.csv"
    pd.DataFrame({"path": ["<b>x&y.png", "copy.png"], "label": [0, 1]}).to_csv(csv, index=False)
    html = check_images(load_manifest(csv), tmp_path / "out", progress=False).html_path.read_text()
    assert "<b>x" not in html and "&lt;b&gt;x&amp;y.png" in html


@pytest.mark.slow
def test_real_kermany_exact_duplicates(shared_data: Path, tmp_path: Path) -> None:
    manifest = load_manifest(shared_data / "chest_xray_kermany_224" / "manifest.csv")
    report = check_images(manifest, tmp_path, progress=False).report
    assert report["rows"] == 5840
    assert report["exact_duplicates"]["groups"] == 30  # as the data README says
    assert report["exact_duplicates"]["redundant_files"] == 32
    assert report["exact_duplicates"]["groups_across_splits"] == 0
    assert report["missing_files"] == [] and report["unreadable_files"] == []
    assert report["ok"]


def test_label_spellings_and_missing_targets_are_reported(tmp_path: Path, capsys) -> None:
    # The issue: five labels read 'normal ' (trailing space) and data check said nothing.
    from medpredict.cli import main

    for i in range(8):
        write_png(tmp_path / f"{i}.png", blocks(20 + i))
    labels = ["normal", "normal ", "normal ", "pneumonia", "Pneumonia", "pneumonia", "Unknown", "N/A"]
    pd.DataFrame({"path": [f"{i}.png" for i in range(8)], "label": labels}).to_csv(tmp_path / "m.csv", index=False)
    result = check_images(load_manifest(tmp_path / "m.csv"), tmp_path / "report", progress=False)
    assert result.report["label_variants"] == {"normal": ["normal", "normal "], "pneumonia": ["Pneumonia", "pneumonia"]}
    assert not result.ok and sum("differ only in case or spaces" in p for p in result.report["problems"]) == 2
    assert any("2 rows have no target value" in w for w in result.report["warnings"])
    assert main(["-q", "data", "check", str(tmp_path / "m.csv"), "--out", str(tmp_path / "cli")]) == 1
    assert "PROBLEM: labels that differ only in case or spaces" in capsys.readouterr().out
