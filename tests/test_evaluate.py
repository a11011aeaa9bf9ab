"""``evaluate`` end to end: a run's own test split, external data, and real-data reports in Chromium."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_square_npz, tiny_config
from medpredict.errors import DataError
from medpredict.report.html import SECTIONS
from medpredict.workflows.evaluate import evaluate


def test_own_test_split_report_metrics_and_model_card_in_bundle(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = evaluate(run, n_boot=200, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["metrics"]["n"] == 48  # the 48 test images of the synthetic set
    # an npz names no patients: every figure and line says images, none says patients
    assert metrics["units"] == "image" and metrics["metrics"]["bootstrap_unit"] == "image"
    assert result.summary().startswith("n=48 images (image-level") and "patients" not in result.summary()
    assert 0.5 < result.metrics["auc"] <= 1.0 and len(result.metrics["auc_ci"]) == 2
    locked = json.loads((run / "model" / "bundle.json").read_text())["threshold"]["threshold"]
    assert result.metrics["threshold"] == pytest.approx(locked)  # never re-tuned on test
    html = (run / "report.html").read_text(encoding="utf-8")
    assert all(f'id="{key}"' in html for key in SECTIONS)
    train = metrics["run"]["splits"]["train"]  # from the bundle: the training split's counts
    bundle_data = json.loads((run / "model" / "bundle.json").read_text())["data"]
    assert train["n"] == bundle_data["rows"]["train"] and train["prevalence"] == bundle_data["prevalence"]["train"]
    assert train["n_positive"] == round(train["prevalence"] * train["n"])
    # validation figures sit beside the test figures, with the coverage promised on validation
    assert [r["metric"] for r in metrics["agreement"]["rows"]][-1] == "conformal coverage"
    assert "Validation vs test" in html and "90% (target)" in html
    assert (run / "model" / "model_card.md").is_file()  # the card travels with the bundle
    from medpredict.inference.predictor import Predictor

    predictor = Predictor.from_bundle(run)
    card = predictor.card
    assert card["performance"]  # and the bundle still verifies
    assert card["details"]["seed"] == 0  # the resolved config's seed, not null
    assert card["version"] == predictor.version and card["date"]
    assert card["input"]["image_size"] == 16 and card["input"]["channels"] == 1
    assert (run / "model_card.html").is_file() and "# Model card:" in (run / "model_card.md").read_text()


def test_external_dataset_gets_shift_diagnostics(tiny_run: Path, tmp_path: Path) -> None:
    other = make_square_npz(tmp_path / "othermnist.npz", seed=7, n=(8, 8, 40))
    result = evaluate(tiny_run, data=str(other), out=tmp_path / "external", n_boot=100, progress=False)
    report = json.loads((tmp_path / "external" / "metrics.json").read_text())
    assert report["run"]["external"] is True
    assert report["shift"] is not None
    assert result.metrics["n"] == 40


def test_cli_card_file_with_an_unknown_key_is_refused_before_predicting(tiny_run: Path, tmp_path: Path,
                                                                       capsys) -> None:
    from medpredict.cli import main

    card = tmp_path / "card.yaml"
    card.write_text("owner: Radiology AI group\ncontakt: someone@example.org\n")
    assert main(["evaluate", str(tiny_run), "--out", str(tmp_path / "out"), "--card", str(card)]) == 2
    err = capsys.readouterr().err
    assert "Unknown model-card key 'contakt'" in err and "Did you mean 'contact'" in err
    assert not (tmp_path / "out").exists()


def test_labels_that_the_model_does_not_know_are_refused(tiny_run: Path, tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(png)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"image_path,label\n{png},pneumothorax\n{png},effusion\n")
    with pytest.raises(DataError, match="not classes of this model"):
        evaluate(tiny_run, data=str(manifest), out=tmp_path / "x", n_boot=0, progress=False)


def _render(report: Path, shot: Path) -> list[str]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(report.as_uri())
            ids = page.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.id)")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    return ids


@pytest.mark.chromium
def test_pneumoniamnist_and_uci_heart_reports_render_in_chromium(shared_data: Path, tmp_path: Path) -> None:
    from PIL import Image

    from medpredict.training.image import train
    from medpredict.training.records import train_table

    image_run = train(
        tiny_config(
            shared_data / "medmnist" / "pneumoniamnist.npz", tmp_path, name="pneumonia",
            **{"preprocess.image_size": 28, "train.epochs": 1, "data.max_per_split": 300},
        ),
        progress=False,
    ).run_dir
    heart = shared_data / "tabular" / "uci_heart_disease" / "processed.cleveland.data"
    table_run = train_table(heart, target="num>0", out=tmp_path / "heart").run_dir
    reports = []  # a record run keeps its model comparison: its evaluation goes to a sub-folder
    for run in (image_run, table_run):
        report = evaluate(run, n_boot=100, progress=False).out_dir
        shot = tmp_path / f"{run.name}.png"
        assert _render(report / "report.html", shot) == list(SECTIONS)
        pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
        assert pixels.shape[0] > 2000 and pixels.std() > 20
        reports.append(report)
    heart_report = json.loads((reports[1] / "metrics.json").read_text())
    assert heart_report["explanations"]["feature_importance"]  # permutation importance for records
    for report in reports:  # both compare test with the validation split they were tuned on
        rows = json.loads((report / "metrics.json").read_text())["agreement"]["rows"]
        assert {"auc", "sensitivity", "specificity"} <= {r["metric"] for r in rows}
        assert "Validation vs test" in (report / "report.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- issue 13: overlap and output folders


def test_external_data_holding_training_images_is_refused_then_reported(tiny_run: Path, square_npz: Path,
                                                                        tmp_path: Path) -> None:
    # The run was trained on square_npz's train split: evaluating that split as "external" data overlaps fully.
    with pytest.raises(DataError, match=r"96 of 96 rows of .* were in the model's training data .*"
                                        r"--allow-training-overlap"):
        evaluate(tiny_run, data=str(square_npz), split="train", out=tmp_path / "x", n_boot=0, progress=False)
    assert not (tmp_path / "x" / "metrics.json").exists()
    evaluate(tiny_run, data=str(square_npz), split="train", out=tmp_path / "x", n_boot=0, progress=False,
             allow_training_overlap=True)
    report = json.loads((tmp_path / "x" / "metrics.json").read_text())
    assert report["training_overlap"]["rows"] == 96 and report["training_overlap"]["of"] == 96
    assert any("were in the model's training data" in w for w in report["warnings"])
    from medpredict.config import from_dict
    from medpredict.data.manifest import load_manifest
    from medpredict.workflows.overlap import training_overlap

    config = from_dict(json.loads((tiny_run / "model" / "bundle.json").read_text())["config"])
    test_rows = load_manifest(square_npz).split("test")
    assert training_overlap(config, test_rows)["rows"] == 0  # the held-out split does not overlap


def test_evaluate_out_holding_other_results_is_refused_or_moved_aside(tiny_run: Path, square_npz: Path,
                                                                      tmp_path: Path) -> None:
    from medpredict.errors import ConfigError

    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"models": {"mlp": {}}}')  # e.g. a record run's comparison
    with pytest.raises(ConfigError, match="already holds other results .*--force"):
        evaluate(tiny_run, data=str(square_npz), out=out, n_boot=0, progress=False)
    assert (out / "metrics.json").read_text() == '{"models": {"mlp": {}}}'
    evaluate(tiny_run, data=str(square_npz), out=out, n_boot=0, progress=False, force=True)
    (aside,) = tmp_path.glob("out.old-*")
    assert json.loads((aside / "metrics.json").read_text()) == {"models": {"mlp": {}}}
    assert json.loads((out / "metrics.json").read_text())["run"]["evaluated"]["split"] == "test"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lang": "fr"}, "Unknown report language 'fr'"),  # was found only after the whole evaluation
        ({"n_boot": -5}, "--n-boot -5"),
    ],
)
def test_bad_options_are_refused_before_any_work(tmp_path: Path, kwargs: dict, message: str) -> None:
    from medpredict.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        evaluate(tmp_path / "no-run-needed", progress=False, **kwargs)


@pytest.fixture(scope="module")
def record_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small record run (its metrics.json compares three models)."""
    from dataclasses import replace

    import pandas as pd

    from medpredict.training.record_fit import RECORD_TRAINING
    from medpredict.training.records import train_table

    root = tmp_path_factory.mktemp("record_run")
    rng = np.random.default_rng(0)
    age = rng.normal(60, 10, 160).round()
    frame = pd.DataFrame({"patient_id": [f"p{i}" for i in range(160)], "age": age, "sex": rng.choice(["M", "F"], 160),
                          "outcome": (age + rng.normal(0, 6, 160) > 60).astype(int)})
    frame.to_csv(root / "table.csv", index=False)
    train_table(root / "table.csv", target="outcome", out=root / "run", train=replace(RECORD_TRAINING, epochs=5),
                n_boot=0, progress=False)
    return root / "run"


def test_evaluate_on_a_record_run_keeps_its_model_comparison(record_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(record_run, run)
    comparison = (run / "metrics.json").read_text()
    first = evaluate(run, n_boot=0, progress=False)
    assert (run / "metrics.json").read_text() == comparison  # the three-model comparison stays
    assert first.out_dir == run / "evaluation-own-test"
    assert json.loads((first.out_dir / "metrics.json").read_text())["metrics"]["n"] > 0
    again = evaluate(run, n_boot=0, progress=False)  # the same evaluation again: the same sub-folder
    assert again.out_dir == first.out_dir and not (run / "evaluation-own-test-2").exists()


def test_evaluate_with_the_training_table_as_external_data_is_refused(record_run: Path, tmp_path: Path) -> None:
    table = record_run.parent / "table.csv"
    with pytest.raises(DataError, match=r"rows of table.csv were in the model's training data .*model inputs"):
        evaluate(record_run, data=str(table), out=tmp_path / "x", n_boot=0, progress=False)
