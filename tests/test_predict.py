"""The single inference path: Predictor.from_bundle on a trained tiny run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medpredict.errors import BundleError, DataError
from medpredict.inference.files import predict_files
from medpredict.inference.predictor import Predictor


def _square_png(path: Path, positive: bool) -> Path:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 90, size=(48, 48)).astype(np.uint8)  # larger than the model's 16 px
    if positive:
        image[3:19, 3:19] = 230
    Image.fromarray(image).save(path)
    return path


def test_predicts_calibrated_probabilities_and_label_at_locked_threshold(
    tiny_run: Path, tmp_path: Path
) -> None:
    predictor = Predictor.from_bundle(tiny_run)
    positive, negative = _square_png(tmp_path / "pos.png", True), _square_png(tmp_path / "neg.png", False)
    pos, neg = predictor.predict([positive, negative])
    assert pos.label == "1" and neg.label == "0"
    assert pos.score > predictor.threshold > neg.score
    assert sum(pos.probabilities.values()) == pytest.approx(1.0)
    assert pos.prediction_set == ("1",)
    assert pos.input_check.status in ("ok", "unusual") and pos.input_check.ood_threshold is not None
    # the set is exactly the decision, so only an unusual input could make this a referral
    assert pos.refer == (pos.input_check.status == "unusual") and pos.refer == bool(pos.referral_reasons)
    assert pos.to_dict()["source"] == "pos.png"  # the file name, never the folders above it
    assert pos.model == predictor.identity and len(pos.model.version) == 12


def test_arrays_and_paths_give_the_same_prediction(tiny_run: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_bundle(tiny_run)
    path = _square_png(tmp_path / "pos.png", True)
    array = np.asarray(Image.open(path), dtype=np.float32)[None] / 255.0
    from_path, from_array = predictor.predict([path, array])
    assert from_path.score == pytest.approx(from_array.score, abs=1e-6)


def test_gradcam_points_at_the_square(tiny_run: Path, tmp_path: Path) -> None:
    heatmap = Predictor.from_bundle(tiny_run).explain(_square_png(tmp_path / "pos.png", True))
    assert heatmap.shape == (16, 16)
    assert heatmap[:8, :8].mean() > heatmap[8:, 8:].mean()


def test_wrong_shapes_and_values_are_refused(tiny_run: Path) -> None:
    predictor = Predictor.from_bundle(tiny_run)
    with pytest.raises(DataError, match="2-D image"):
        predictor.predict([np.zeros((1, 1, 4, 4, 4), dtype=np.float32)])
    with pytest.raises(DataError, match="NaN"):
        predictor.predict([np.full((1, 8, 8), np.nan, dtype=np.float32)])


def test_tampered_bundle_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run / "model", copy / "model")
    meta_path = copy / "model" / "bundle.json"
    meta = json.loads(meta_path.read_text())
    meta["threshold"]["threshold"] = 0.01  # a quiet edit that would flip every decision
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="checksum"):
        Predictor.from_bundle(copy)


def test_predict_files_writes_csv_json_and_overlays_and_keeps_going_past_bad_files(
    tiny_run: Path, tmp_path: Path
) -> None:
    good = _square_png(tmp_path / "pos.png", True)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    result = predict_files(tiny_run, [good, bad], tmp_path / "out", progress=False)
    rows = {Path(r["source"]).name: r for r in result.rows}
    assert rows["pos.png"]["label"] == "1" and (tmp_path / "out" / rows["pos.png"]["overlay"]).is_file()
    assert "not a readable image" in rows["notes.png"]["error"]
    csv = (tmp_path / "out" / "predictions.csv").read_text()
    assert "p_1" in csv and "notes.png" in csv
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"][0]["label"] == "1"


def test_predictions_carry_model_version_and_time_and_no_local_paths(tiny_run: Path, tmp_path: Path) -> None:
    import datetime as dt

    import pandas as pd

    from medpredict.inference.predictor import Predictor

    folder = tmp_path / "PATIENT-Jane-Doe-0042" / "study"  # a folder name that identifies a patient
    (folder / "series2").mkdir(parents=True)
    _square_png(folder / "a.png", True)
    _square_png(folder / "series2" / "b.png", False)
    single = _square_png(tmp_path / "PATIENT-Jane-Doe-0042" / "c.png", True)
    broken = folder / "series2" / "broken.png"
    broken.write_text("not an image")  # its error message names the file too
    predict_files(tiny_run, [folder, single], tmp_path / "out", progress=False, overlays=False)
    table = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert sorted(table["source"]) == ["a.png", "c.png", "series2/b.png", "series2/broken.png"]  # relative
    assert "'series2/broken.png' is not a readable image" in table["error"].dropna().iloc[0]
    assert set(table["model_version"]) == {Predictor.from_bundle(tiny_run).version}
    stamps = [dt.datetime.fromisoformat(s) for s in table["predicted_at"]]
    assert all(s.tzinfo is not None and abs((dt.datetime.now(dt.UTC) - s).total_seconds()) < 600 for s in stamps)
    for name in ("predictions.csv", "predictions.json"):
        text = (tmp_path / "out" / name).read_text()
        assert "Jane-Doe" not in text and str(tmp_path) not in text


# --------------------------------------------------------------------------- issue 13: exit codes and output folders


def test_predict_exits_2_when_no_input_succeeds(tiny_run: Path, tmp_path: Path, capsys) -> None:
    from medpredict.cli import main

    bad = [tmp_path / f"bad{i}.png" for i in range(3)]
    for path in bad:
        path.write_text("not an image")
    code = main(["-q", "predict", str(tiny_run), *map(str, bad), "--out", str(tmp_path / "out"), "--no-overlays"])
    assert code == 2
    assert "Predicted 0 of 3 inputs" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "Cannot read the manifest .*No columns to parse"),  # an empty file: pandas' EmptyDataError before
        ("image_path\n", "has no rows"),  # a header only
    ],
)
def test_predict_on_an_empty_manifest_is_one_line(tiny_run: Path, tmp_path: Path, capsys, content, message) -> None:
    from medpredict.cli import main

    manifest = tmp_path / "empty.csv"
    manifest.write_text(content)
    code = main(["-q", "predict", str(tiny_run), str(manifest), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    import re

    assert re.search(message, err), err


def test_predict_out_inside_the_bundle_is_refused_and_the_bundle_still_loads(tiny_run: Path, tmp_path: Path) -> None:
    from medpredict.errors import ConfigError

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    good = _square_png(tmp_path / "pos.png", True)
    with pytest.raises(ConfigError, match="inside .*model.*break its checksums"):
        predict_files(run, [good], run / "model", progress=False)
    Predictor.from_bundle(run)  # the checksums still hold


def test_predict_does_not_overwrite_earlier_predictions_without_force(tiny_run: Path, tmp_path: Path) -> None:
    from medpredict.errors import ConfigError

    good = _square_png(tmp_path / "pos.png", True)
    out = tmp_path / "out"
    predict_files(tiny_run, [good], out, overlays=False, progress=False)
    first = (out / "predictions.csv").read_text()
    with pytest.raises(ConfigError, match="already holds results .*predictions.csv.*--force"):
        predict_files(tiny_run, [good], out, overlays=False, progress=False)
    predict_files(tiny_run, [good], out, overlays=False, progress=False, force=True)
    (aside,) = tmp_path.glob("out.old-*")
    assert (aside / "predictions.csv").read_text() == first
