"""Tests for medpredict.data.proxies: columns that restate the target, found and refused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medpredict.data.proxies import target_proxies
from medpredict.errors import DataError


def leaky_frame(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """A label, its restatement (subtype), a real but imperfect predictor, noise and an identifier."""
    rng = np.random.default_rng(seed)
    label = rng.choice(["normal", "pneumonia"], n)
    subtype = np.where(label == "normal", "normal", rng.choice(["bacteria", "virus"], n))
    severity = np.where(label == "pneumonia", 2.0, 0.0) + rng.normal(0, 1.2, n)
    return pd.DataFrame({
        "patient_id": [f"p{i}" for i in range(n)],
        "subtype": subtype,  # Kermany's case: bacteria/virus mean pneumonia
        "copy": label,  # the target itself under another name
        "severity": severity.round(2),  # predictive, not perfectly
        "noise": rng.normal(size=n).round(3),
        "free_text": [f"note {i}" for i in range(n)],  # unique per row
        "label": label,
    })


def test_restatements_are_found_and_real_predictors_are_not() -> None:
    frame = leaky_frame()
    found = target_proxies(frame, frame["label"].to_numpy(), ["subtype", "copy", "severity", "noise", "free_text"])
    assert [p.column for p in found] == ["subtype", "copy"]
    assert all(p.balanced_accuracy >= 0.98 and p.rows == 120 for p in found)
    assert "predicts 'label' almost perfectly on its own" in found[0].describe("label")


def test_missing_cells_are_left_out_not_counted_as_a_level() -> None:
    frame = leaky_frame()
    frame.loc[:9, "subtype"] = "?"
    (proxy,) = target_proxies(frame, frame["label"].to_numpy(), ["subtype"])
    assert proxy.rows == 110


def test_kermany_subtype_restates_the_label(shared_data: Path) -> None:
    manifest = pd.read_csv(shared_data / "chest_xray_kermany_224" / "manifest.csv")
    found = target_proxies(manifest, manifest["label"].to_numpy(), ["subtype", "split"])
    assert [p.column for p in found] == ["subtype"] and found[0].balanced_accuracy == 1.0


def test_table_check_flags_a_column_equal_to_the_target(tmp_path: Path) -> None:
    from medpredict.records.check import check_table

    frame = leaky_frame().drop(columns=["free_text"])
    frame.to_csv(tmp_path / "t.csv", index=False)
    report = check_table(tmp_path / "t.csv", target="label")
    assert [p["column"] for p in report["target_proxies"]] == ["subtype", "copy"]
    assert any(line.startswith("Possible leakage: column 'copy'") for line in report["findings"])


def test_image_data_check_flags_the_kermany_style_subtype(tmp_path: Path) -> None:
    from fixtures_images import write_png
    from medpredict.data.check import check_images
    from medpredict.data.manifest import load_manifest

    frame = leaky_frame(60)
    for i in range(60):
        write_png(tmp_path / f"{i}.png", np.full((8, 8), i * 4, np.uint8))
    frame.assign(image_path=[f"{i}.png" for i in range(60)]).to_csv(tmp_path / "m.csv", index=False)
    result = check_images(load_manifest(tmp_path / "m.csv"), tmp_path / "report", progress=False)
    assert [p["column"] for p in result.report["target_proxies"]] == ["subtype", "copy"]
    assert any("possible leakage: column 'subtype' predicts 'label'" in w for w in result.report["warnings"])


def test_record_training_refuses_a_restatement_unless_allowed(tmp_path: Path, caplog) -> None:
    from dataclasses import replace

    from medpredict.training.record_fit import RECORD_TRAINING
    from medpredict.training.records import train_table

    leaky_frame(160).drop(columns=["free_text"]).to_csv(tmp_path / "t.csv", index=False)
    with caplog.at_level(logging.INFO, logger="medpredict"), pytest.raises(
        DataError, match=r"'subtype' predicts 'label' .* columns: \{subtype: ignore, copy: ignore\}.*--allow-target"
    ):
        train_table(tmp_path / "t.csv", target="label", out=tmp_path / "run", progress=False)
    assert "Record columns the model reads (4): subtype, copy, severity, noise" in caplog.text
    assert not (tmp_path / "run").exists()
    run = train_table(tmp_path / "t.csv", target="label", out=tmp_path / "run",
                      train=replace(RECORD_TRAINING, epochs=2), n_boot=0, baselines=False, progress=False,
                      allow_target_proxy=True)
    assert json.loads((run.bundle_dir / "bundle.json").read_text())["input_kind"] == "table"


def test_fusion_training_logs_its_columns_and_refuses_a_restatement(tmp_path: Path, caplog, capsys) -> None:
    from medpredict.cli import main
    from test_fusion import make_paired_manifest

    manifest = make_paired_manifest(tmp_path)
    frame = pd.read_csv(manifest)
    frame["subtype"] = np.where(frame["label"] == "disease", "bacterial", "none")  # the AUC-1.000 column
    frame.to_csv(manifest, index=False)
    argv = ["fusion", "train", str(manifest), "--out", str(tmp_path / "run"), "--image-model", "small-cnn",
            "--image-size", "16", "--epochs", "1"]
    with caplog.at_level(logging.INFO, logger="medpredict"):
        code = main(argv)  # without -q: the INFO line naming the columns is what is checked
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    err = err.splitlines()[-1]
    assert err.startswith("medpredict: error: Refusing to train")
    assert "column 'subtype' predicts 'label' almost perfectly on its own" in err
    assert "--clinical-columns lab_a,lab_b,noise_1,noise_2,smoker" in err and "--allow-target-proxy" in err
    assert "Clinical columns the model reads (6): lab_a, lab_b, noise_1, noise_2, smoker, subtype" in caplog.text
    assert not (tmp_path / "run").exists()
