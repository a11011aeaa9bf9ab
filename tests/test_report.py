"""Tests for medpredict.report: evaluation dict, report.html, metrics.json and the model card."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medpredict.calibration.conformal import SplitConformal
from medpredict.calibration.scalers import TemperatureScaler, softmax
from medpredict.calibration.thresholds import ThresholdPicker
from medpredict.errors import ConfigError
from medpredict.report import assemble_evaluation, build_report, evaluation_to_json
from medpredict.report.html import SECTIONS

CHROMIUM = Path("/usr/bin/chromium")


def _split(rng: np.random.Generator, n_patients: int, per_patient: int = 2) -> tuple[np.ndarray, ...]:
    """Over-confident binary logits with patient-level signal and a few images per patient."""
    patient_y = rng.integers(0, 2, n_patients)
    score = 1.3 * (2 * patient_y - 1) + rng.normal(0, 1.2, n_patients)
    y = np.repeat(patient_y, per_patient)
    z = np.repeat(score, per_patient) + rng.normal(0, 0.4, y.size)
    logits = np.c_[np.zeros(y.size), 5.0 * z]  # about 3x too confident
    groups = np.repeat([f"P{i:04d}" for i in range(n_patients)], per_patient)
    return y, logits, groups


@pytest.fixture(scope="module")
def binary_evaluation(tmp_path_factory: pytest.TempPathFactory) -> dict:
    rng = np.random.default_rng(0)
    y_val, logits_val, groups_val = _split(rng, 200)
    y, logits, groups = _split(rng, 250)
    scaler = TemperatureScaler().fit(logits_val, y_val)
    probs_val, probs = scaler.transform(logits_val), scaler.transform(logits)
    picker = ThresholdPicker("sensitivity", target=0.9).fit(y_val, probs_val[:, 1])
    frame = pd.DataFrame({"sex": rng.choice(["F", "M"], y.size), "age": rng.uniform(2, 95, y.size)})
    png = tmp_path_factory.mktemp("overlay") / "overlay.png"
    Image.fromarray((rng.random((28, 28, 3)) * 255).astype(np.uint8)).save(png)
    heat = np.zeros((28, 28), np.float32)
    heat[8:18, 9:19] = 1.0
    examples = [
        {"image": rng.random((1, 28, 28)).astype(np.float32), "heatmap": heat, "title": "case 1",
         "caption": "Grad-CAM"},
        {"image": str(png), "caption": "saved overlay"},
    ]
    checks = {"randomisation": {"similarity": 0.1, "max_similarity": 0.4, "passed": True},
              "faithfulness_mean": 0.4, "min_faithfulness": 0.05, "shortcut_flags": [], "passed": True}
    return assemble_evaluation(
        y, probs, labels=["normal", "pneumonia"], groups=groups, threshold=picker.to_dict(),
        calibration=scaler.to_dict(), probs_uncalibrated=softmax(logits), y_val=y_val, probs_val=probs_val,
        groups_val=groups_val, conformal=SplitConformal(0.1).fit(probs_val, y_val).to_dict(),
        subgroup_frame=frame, subgroup_columns=["sex", "age"],
        shift={"prevalence_reference": 0.5, "prevalence": float(y.mean()), "calibration_in_the_large": 0.01,
               "flags": ["Prevalence differs."]},
        explanations={"examples": examples, "checks": checks,
                      "feature_importance": pd.DataFrame({"feature": ["age"], "importance_mean": [0.1],
                                                          "importance_std": [0.01]})},
        training_curves={"epoch": [1, 2, 3], "train_loss": [0.7, 0.5, 0.4], "val_loss": [0.7, 0.6, 0.55]},
        run_info={"model_name": "small_cnn", "dataset": "synthetic", "seed": 0,
                  "splits": {"train": {"n": 1000, "n_patients": 500, "prevalence": 0.5}}},
        n_boot=100,
    ) | {"_locked": picker.threshold_}


@pytest.fixture(scope="module")
def report_dir(binary_evaluation: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    build_report(out, binary_evaluation)
    return out


def test_evaluation_uses_the_locked_validation_threshold(binary_evaluation) -> None:
    ev = binary_evaluation
    assert ev["threshold"]["value"] == ev["_locked"] == ev["metrics"]["threshold"]
    assert ev["threshold"]["chosen_on"] == "validation" and ev["threshold"]["val_sensitivity"] >= 0.9
    assert ev["metrics"]["bootstrap_unit"] == "patient" and ev["metrics"]["n_patients"] == 250
    test_split = ev["run"]["splits"]["test"]
    assert test_split["n"] == 500 and test_split["n_patients"] == 250
    assert test_split["n_positive"] == sum(ev["metrics"]["confusion_matrix"][1])
    assert test_split["prevalence"] == ev["metrics"]["prevalence"]
    assert ev["run"]["splits"]["train"]["n"] == 1000  # passed through


def test_temperature_scaling_lowered_test_ece(binary_evaluation) -> None:
    cal = binary_evaluation["calibration"]
    assert cal["method"] == "temperature"
    assert cal["test"]["ece"] < cal["test_uncalibrated"]["ece"]
    assert cal["ece_reduction"] > 0


def test_conformal_and_referral_sections(binary_evaluation) -> None:
    conf = binary_evaluation["conformal"]
    assert conf["target_coverage"] == 0.9 and abs(conf["coverage"] - 0.9) < 0.06
    rows = binary_evaluation["referral"]["rows"]
    assert rows[-1]["accuracy_kept"] > rows[0]["accuracy_kept"]
    # the curve starts from the accuracy reported at the locked threshold
    assert rows[0]["accuracy_kept"] == pytest.approx(binary_evaluation["metrics"]["accuracy"])


def test_report_has_every_section_and_no_external_resources(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    for key in SECTIONS:
        assert f'<section id="{key}"' in page, key
    assert 'src="http' not in page and "href=\"http" not in page and "<script" not in page
    assert "<link" not in page and "@import" not in page
    # ROC, PR, confusion, reliability, threshold, decision, referral, forest, heat maps (2),
    # importance, training
    assert page.count("data:image/png;base64,") >= 12
    assert "Not available" not in page  # every section had data here
    assert "overlay.png" not in page
    assert "before calibration" in page.lower() and "Locked threshold" in page


def test_metrics_json_is_strict_json(report_dir: Path) -> None:
    text = (report_dir / "metrics.json").read_text(encoding="utf-8")

    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    data = json.loads(text, parse_constant=refuse)
    assert data["schema_version"] == 1 and data["metrics"]["auc_ci"][0] < data["metrics"]["auc"]
    example = data["explanations"]["examples"][0]
    assert example["image"] == "embedded in report.html" and "heatmap" not in example
    assert "overlay.png" not in text  # file names can identify patients: never written


def test_model_card_marks_tripod_items(report_dir: Path) -> None:
    markdown = (report_dir / "model_card.md").read_text(encoding="utf-8")
    card = json.loads((report_dir / "model_card.json").read_text(encoding="utf-8"))
    assert markdown.startswith("# Model card: small_cnn")  # a model card, not the report renamed
    for heading in ("## Model details", "## Intended use", "## Input specification", "## Factors", "## Metrics",
                    "## Training and evaluation data", "## Quantitative analyses", "## Known failure modes",
                    "## Ethical considerations", "## Caveats and recommendations", "## Monitoring plan",
                    "## TRIPOD+AI reporting items"):
        assert heading in markdown, heading
    items = {row["item"]: row["status"] for row in card["tripod_ai"]}
    assert items["23a"] == "covered" and items["15"] == "covered" and items["12d"] == "covered"
    assert "17" not in items  # ethics is never claimed
    assert card["performance"]["auc"]["ci95"][0] < card["performance"]["auc"]["value"]
    assert card["threshold"]["chosen_on"] == "validation"


def test_chinese_report_and_unknown_language(binary_evaluation, tmp_path: Path, monkeypatch) -> None:
    from medpredict.report import fonts

    monkeypatch.setattr(fonts, "font_face_css", lambda text: "")  # the words only; test_report_zh checks the font
    page = build_report(tmp_path / "zh", binary_evaluation, lang="zh").read_text(encoding="utf-8")
    assert "模型评估报告" in page and '<html lang="zh">' in page
    assert "## 预期用途" in (tmp_path / "zh" / "model_card.md").read_text(encoding="utf-8")
    with pytest.raises(ConfigError, match="Did you mean 'zh'"):
        build_report(tmp_path / "bad", binary_evaluation, lang="zn")
    assert not (tmp_path / "bad").exists()  # refused before writing anything


def test_multiclass_and_minimal_evaluations(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    probs = softmax(rng.normal(size=(300, 3)) + 2 * np.eye(3)[y])
    ev = assemble_evaluation(y, probs, labels=["normal", "bacterial", "viral"], n_boot=50)
    assert ev["task"] == "multiclass" and ev["threshold"] is None and ev["curves"] is None
    assert "patient ids" in " ".join(ev["warnings"])
    page = build_report(tmp_path, ev).read_text(encoding="utf-8")
    for key in SECTIONS:
        assert f'<section id="{key}"' in page
    assert "Not available" in page and "viral" in page
    binary = assemble_evaluation(y % 2, probs[:, :2] / probs[:, :2].sum(1, keepdims=True),
                                 labels=["a", "b"], n_boot=0)
    assert binary["threshold"]["chosen_on"] == "default" and binary["threshold"]["value"] == 0.5
    assert json.loads(json.dumps(evaluation_to_json(binary)))["metrics"]["n"] == 300


def test_threshold_is_chosen_on_validation_when_not_locked() -> None:
    rng = np.random.default_rng(2)
    y_val, logits_val, _ = _split(rng, 100)
    y, logits, _ = _split(rng, 100)
    ev = assemble_evaluation(y, softmax(logits), labels=["a", "b"], y_val=y_val,
                             probs_val=softmax(logits_val), n_boot=0)
    expected = ThresholdPicker("youden").fit(y_val, softmax(logits_val)[:, 1]).threshold_
    assert ev["threshold"]["value"] == expected and ev["threshold"]["chosen_on"] == "validation"


@pytest.mark.chromium
def test_report_renders_in_headless_chromium(report_dir: Path, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    shot = tmp_path / "report.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto((report_dir / "report.html").as_uri())
            loaded = page.evaluate(
                "Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length"
            )
            ids = page.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.id)")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert ids == list(SECTIONS)
    assert loaded >= 12  # every embedded figure decoded
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 3000 and pixels.std() > 20  # a long page with real content, not blank
    assert re.search(r"\d", (report_dir / "report.html").read_text(encoding="utf-8"))


def test_report_compares_validation_with_test(binary_evaluation, report_dir: Path) -> None:
    agreement = binary_evaluation["agreement"]
    assert [r["metric"] for r in agreement["rows"]][:3] == ["auc", "sensitivity", "specificity"]
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    assert "Validation vs test" in page and "Prediction-set coverage" in page
    # every flag is also a warning of the summary
    assert set(agreement["flags"]) <= set(binary_evaluation["warnings"])


def test_report_warns_when_test_is_not_like_validation(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    y_val, logits_val, _ = _split(rng, 300)
    y, logits, groups = _split(rng, 300)
    logits[y == 0, 1] += 6.0  # test negatives look positive: specificity and coverage collapse
    scaler = TemperatureScaler().fit(logits_val, y_val)
    probs_val, probs = scaler.transform(logits_val), scaler.transform(logits)
    ev = assemble_evaluation(
        y, probs, labels=["normal", "pneumonia"], groups=groups,
        threshold=ThresholdPicker().fit(y_val, probs_val[:, 1]).to_dict(), calibration=scaler.to_dict(),
        probs_uncalibrated=softmax(logits), y_val=y_val, probs_val=probs_val,
        conformal=SplitConformal(0.1).fit(probs_val, y_val).to_dict(), n_boot=100,
    )
    assert any("exchangeable" in w for w in ev["warnings"])
    assert any(w.startswith("Specificity is") for w in ev["warnings"])
    build_report(tmp_path, ev)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "differs" in page and "The test cases differ from the validation cases" in page


# ------------------------------------------------------------------ what a clinician reads (issue 15)


def _visible(page: str) -> str:
    """The page's text without tags, styles and embedded images, whitespace collapsed."""
    page = re.sub(r"<style>.*?</style>", " ", page, flags=re.S)
    page = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    return " ".join(re.sub(r"<[^>]+>", " ", page).replace("&#39;", "'").split())


def test_headline_names_split_n_and_positive_class_and_has_an_npv_card(report_dir: Path, binary_evaluation) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    text = _visible(page)
    assert "Test split: 500 cases from 250 patients; " in text
    positives = binary_evaluation["run"]["splits"]["test"]["n_positive"]
    assert f"{positives} of them with pneumonia" in text
    cards = re.findall(r'<div class="k">(.*?)</div>', page)
    assert [re.sub(r"<[^>]+>", "", c) for c in cards] == [
        "AUC", "Sensitivity for pneumonia", "Specificity (normal)", "PPV (positive predictive value)",
        "NPV (negative predictive value)"]
    assert page.count('<div class="c">95% CI ') == 5  # every headline card carries its interval


def test_threshold_is_explained_method_place_and_trade(report_dir: Path, binary_evaluation) -> None:
    text = _visible((report_dir / "report.html").read_text(encoding="utf-8"))
    cm = binary_evaluation["metrics"]["confusion_matrix"]
    assert "highest one that keeps sensitivity at or above 90%" in text  # the method, in words
    assert "chosen on the validation data and locked before the test data was seen" in text  # where
    assert f"flags {cm[1][1]} of {sum(cm[1])} pneumonia cases" in text  # what it trades
    assert f"raises {cm[0][1]} false alarms among {sum(cm[0])} normal cases" in text
    assert "A lower threshold catches more pneumonia at the cost of more false alarms" in text


def test_calibration_verdict_and_wilson_intervals_per_bin(report_dir: Path, binary_evaluation) -> None:
    from medpredict.report.evaluation import wilson_interval

    bins = [b for b in binary_evaluation["calibration"]["test"]["bins"] if b["n"]]
    assert all(b["observed_ci"][0] <= b["observed"] <= b["observed_ci"][1] for b in bins)
    small = min(bins, key=lambda b: b["n"])
    lo, hi = wilson_interval(round(small["observed"] * small["n"]), small["n"])
    assert small["observed_ci"] == pytest.approx([lo, hi]) and hi - lo > 0.1  # few cases, wide interval
    assert wilson_interval(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)  # the textbook value
    text = _visible((report_dir / "report.html").read_text(encoding="utf-8"))
    assert re.search(r"Verdict: (well calibrated on test|not well calibrated on test)", text)
    assert f"{small['observed']:.1%} ({lo:.1%}–{hi:.1%})" in text  # the bin table shows the interval


def test_verdict_reads_the_numbers() -> None:
    from medpredict.report.i18n import translator
    from medpredict.report.sections import _verdict

    t = translator("en")
    good_bins = [{"n": 50, "mean_predicted": 0.3, "observed": 0.32, "observed_ci": [0.2, 0.46]}]
    good = _verdict({"slope": 1.02, "calibration_in_the_large": 0.01, "ece": 0.02, "bins": good_bins}, t)
    assert good["cls"] == "ok" and "well calibrated" in good["text"]
    bad_bins = [{"n": 50, "mean_predicted": 0.9, "observed": 0.5, "observed_ci": [0.37, 0.63]}] * 3
    bad = _verdict({"slope": 0.5, "calibration_in_the_large": -0.2, "ece": 0.3, "bins": bad_bins}, t)
    assert bad["cls"] == "bad"
    for phrase in ("too extreme (slope 0.50", "over-estimated by 20.0%", "3 of 3 bins lie outside"):
        assert phrase in bad["text"]


def test_captions_alt_texts_and_referral_are_specific(report_dir: Path, binary_evaluation) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    alts = re.findall(r'alt="([^"]*)"', page)
    auc = binary_evaluation["metrics"]["auc"]
    assert any(a.startswith(f"ROC curve: AUC {auc:.3f} (95% CI ") for a in alts)
    assert any(a.startswith("Precision-recall curve: average precision") for a in alts)
    assert any(a.startswith("Reliability diagram: ECE") for a in alts)
    assert not set(alts) & {"ROC curve", "Precision-recall curve", "Confusion matrix", "Reliability diagram"}
    assert "coin toss" not in page and "what a model with no skill would reach" in page
    text = _visible(page)
    rows = binary_evaluation["referral"]["rows"]
    at = {round(r["referral_rate"], 2): r for r in rows}
    assert f"10% referred: {at[0.1]['accuracy_kept']:.1%} on the {at[0.1]['n_kept']} cases kept" in text
    assert f"20% referred: {at[0.2]['accuracy_kept']:.1%}" in text
    assert "50% referred" not in text and "Referring the 50%" not in text


def test_plots_have_named_axes_and_plain_legend_names() -> None:
    from matplotlib.figure import Figure

    from medpredict.report import plots

    drawn: list[Figure] = []
    original = plots.to_base64
    plots.to_base64 = lambda fig, look=None: drawn.append(fig) or original(fig, look)  # type: ignore[assignment]
    try:
        plots.training_plot({"epoch": [1, 2], "train_loss": [0.7, 0.5], "val_loss": [0.8, 0.6],
                             "val_score": [0.8, 0.9]})
        plots.confusion_plot([[5, 1], [2, 7]], ["normal", "pneumonia"])
    finally:
        plots.to_base64 = original  # type: ignore[assignment]
    loss_ax, score_ax = drawn[0].axes
    assert loss_ax.get_ylabel() == "Loss (lower is better)" and score_ax.get_ylabel() == "Validation AUC"
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["training loss", "validation loss"]
    assert [t.get_text() for t in score_ax.get_legend().get_texts()] == ["validation AUC"]
    cm_ax = drawn[1].axes[0]
    assert (cm_ax.get_xlabel(), cm_ax.get_ylabel()) == ("Predicted class", "True class")
    # not clipped: the saved PNG keeps a white margin left of the rotated "True class" label
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(
        plots.confusion_plot([[5, 1], [2, 7]], ["normal", "pneumonia"])))).convert("L"))
    dark_columns = np.flatnonzero((png < 128).any(axis=0))
    assert 2 <= dark_columns[0] < 30  # the label's first stroke, inside the picture


def test_newer_fields_render_and_older_evaluations_still_do(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    y, logits, groups = _split(rng, 120)
    ev = assemble_evaluation(y, softmax(logits), labels=["normal", "pneumonia"], groups=groups, n_boot=50)
    old_page = build_report(tmp_path / "old", ev).read_text(encoding="utf-8")  # none of the newer fields
    assert "image-level" not in old_page and "Input check" not in old_page and "as deployed" not in old_page
    heat = np.zeros((28, 28), np.float32)
    heat[4:10, 4:10] = 1.0
    ev.update(units="image", positive_label="pneumonia",
              input_guard={"ood_flagged_share": 0.05, "threshold": 3.2, "method": "mahalanobis"})
    ev["referral"].update(share_referred=0.2, reasons={"the prediction set is not exactly the decision": 40})
    ev["calibration"].update(method="isotonic", prior_correction=True,
                             validation={"ece": 0.021, "intercept": 0.0, "slope": 1.0})
    ev["explanations"] = {"examples": [{"image": rng.random((28, 28)), "heatmap": heat, "title": "true positive",
                                        "caption": "decision pneumonia; p(pneumonia) = 0.91",
                                        "explained_class": "pneumonia", "method": "grad-cam"}],
                          "checks": None,
                          "shortcut": {"checked": 40, "flagged": 6, "share": 0.15, "limit": 0.1, "passed": False,
                                       "flagged_cases": [{"index": 7, "border_fraction": 0.6,
                                                          "image": rng.random((28, 28)), "heatmap": heat}]}}
    out = tmp_path / "new"
    text = _visible(build_report(out, ev).read_text(encoding="utf-8"))
    assert "Test split: 240 images (the data has no patient ids" in text
    assert "one patient's images may fall on both sides of the split" in text
    assert "Patients" not in text.split("Data and splits")[2].split("Performance")[0]  # no patient column
    assert "images resampled (image-level)" in text
    assert "Input check: 5.0% of the test inputs were flagged as unusual" in text
    assert "refers 20.0% of the test cases" in text and "the prediction set is not exactly the decision: 40" in text
    assert "Calibration method: isotonic regression" in text and "prior correction" in text
    assert "Validation" in text and "0.021" in text  # validation calibration beside test
    assert "Heat map for class pneumonia (Grad-CAM)" in text
    assert "6 of 40 maps flagged (15.0%; limit 10%) FAILED" in text
    assert "Cases the shortcut check flagged" in text
    card = json.loads((out / "model_card.json").read_text(encoding="utf-8"))
    assert {i["item"]: i["status"] for i in card["tripod_ai"]}["12a"] == "not_covered"
    assert card["shortcut"]["flagged"] == 6 and "flagged_cases" not in card["shortcut"]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["explanations"]["shortcut"]["flagged_cases"] == [{"index": 7, "border_fraction": 0.6}]


# ------------------------------------------------------------------ the owner's card fields


def test_card_file_fills_the_owner_fields_and_the_rest_are_marked(binary_evaluation, tmp_path: Path) -> None:
    card_file = tmp_path / "card.yaml"
    card_file.write_text("owner: Paediatric Radiology AI group\ncontact: ai-governance@example.org\n"
                         "licence: Apache-2.0\nout_of_scope: [Adults, Lateral views]\n"
                         "monitoring: Monthly calibration check on 100 confirmed cases\n")
    build_report(tmp_path / "out", binary_evaluation, card=card_file)
    card = json.loads((tmp_path / "out" / "model_card.json").read_text(encoding="utf-8"))
    assert card["details"]["owner"] == "Paediatric Radiology AI group"
    assert card["details"]["regulatory_status"] == "Research use only; not a medical device."  # the default
    assert card["details"]["seed"] == 0 and card["name"] == "small_cnn"
    assert "contact" not in card["to_be_supplied"] and {"setting", "intended_users"} <= set(card["to_be_supplied"])
    markdown = (tmp_path / "out" / "model_card.md").read_text(encoding="utf-8")
    assert "Paediatric Radiology AI group" in markdown and "- Adults" in markdown
    assert "to be supplied by the model owner (card file key `setting`)" in markdown
    assert "Monthly calibration check on 100 confirmed cases" in markdown
    page = (tmp_path / "out" / "model_card.html").read_text(encoding="utf-8")
    assert "<script" not in page and 'translate="no">ai-governance@example.org<' in page


@pytest.mark.parametrize(("text", "message"), [
    ("license: MIT\n", "Unknown model-card key 'license'.*Did you mean 'licence'"),  # US spelling
    ("owner: [a, b]\n", "'owner' .* must be a text"),  # a list where a text belongs
    ("out_of_scope: {adults: true}\n", "'out_of_scope' .* must be a text or a list of texts"),
    ("- just a list\n", "must be a mapping of card fields"),
    ("owner: 'unclosed\n", "not valid YAML"),
])
def test_bad_card_files_are_refused_before_anything_is_written(binary_evaluation, tmp_path: Path, text: str,
                                                               message: str) -> None:
    card_file = tmp_path / "card.yaml"
    card_file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_report(tmp_path / "out", binary_evaluation, card=card_file)
    assert not (tmp_path / "out").exists()


def test_missing_card_file_names_itself(binary_evaluation, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Model-card file not found: .*nope.yaml"):
        build_report(tmp_path / "out", binary_evaluation, card=tmp_path / "nope.yaml")


@pytest.mark.chromium
def test_english_pages_fit_a_phone_in_chromium(tmp_path: Path) -> None:
    """The English report and model card at 390 px (and 1280 px) scroll down only, never sideways."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from test_report_zh import rich_evaluation

    build_report(tmp_path / "en", rich_evaluation(), lang="en")
    overflow = {}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            for name in ("report.html", "model_card.html"):
                for width in (390, 1280):
                    page = browser.new_page(viewport={"width": width, "height": 900})
                    page.goto((tmp_path / "en" / name).as_uri())
                    overflow[name, width] = page.evaluate(
                        "() => document.documentElement.scrollWidth - window.innerWidth"
                    )
                    page.screenshot(path=str(tmp_path / f"{name}_{width}.png"), full_page=True)
                    page.close()
        finally:
            browser.close()
    assert all(value <= 0 for value in overflow.values()), overflow
    shot = np.asarray(Image.open(tmp_path / "report.html_390.png").convert("L"), dtype=np.float32)
    assert shot.shape[1] == 390 and shot.shape[0] > 4000 and shot.std() > 20  # a long page with content
