"""The Chinese edition: no English left in any page, plots included, and every CJK glyph in the embedded font.

The untranslated-text check reads what a reader sees: the visible text of the rendered HTML
(outside ``<style>`` and outside elements marked ``translate="no"``, which hold the user's own
data: class labels, column and file names), the alt and aria texts, the Markdown model card,
and every text matplotlib draws into the figures. In that text a run of Latin letters is
English left over unless it is an abbreviation, a proper name or a word of the user's data
(the allow-lists below, one comment per group). Numbers, units written as symbols and
single letters (n, p, x) pass.
"""

from __future__ import annotations

import base64
import io
import logging
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fixtures_images import write_png
from medpredict.calibration.conformal import SplitConformal
from medpredict.calibration.scalers import TemperatureScaler, softmax
from medpredict.calibration.thresholds import ThresholdPicker
from medpredict.evaluation.subgroups import reference_statistics, shift_diagnostics
from medpredict.inference.contract import REASON_EMPTY, REASON_OOD, REASON_SET
from medpredict.report import assemble_evaluation, build_report, fonts, plots
from medpredict.report.i18n import Translator, _table, translator

ALLOWED = {
    # measures and methods written the same way in Chinese medical literature
    "AUC", "ROC", "PPV", "NPV", "ECE", "CI", "SD", "Brier", "F", "Wilson", "Platt", "Grad", "CAM",
    # standards, journals, data sets, software and their authors (proper names)
    "TRIPOD", "AI", "BMJ", "Collins", "GS", "et", "al", "Mitchell", "FAT", "doi", "MedMNIST", "PneumoniaMNIST",
    "Kermany", "Zhang", "Goldbaum", "Yang", "Cell", "UCI", "Janosi", "Steinbrunn", "Pfisterer", "Detrano", "CC",
    "BY", "medpredict", "Mendeley", "Scientific",
    # time zone in dates
    "UTC",
}
#: Proper names of more than one word and references (cited as published), removed before the words are checked.
PHRASES = ("Scientific Data", "Mendeley Data", "Collins GS et al. TRIPOD+AI statement.",
           "Mitchell M et al. Model Cards for Model Reporting.")
LABELS = ["normal", "pneumonia"]


# ------------------------------------------------------------------ reading what a reader sees


class _Visible(HTMLParser):
    """Visible text and alt/aria/title attributes, skipping <style> and translate="no" elements."""

    VOID = {"img", "br", "meta", "link", "input", "hr", "source", "col", "area", "base", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self.stack: list[tuple[str, bool]] = []

    def _hidden(self) -> bool:
        return any(skip for _, skip in self.stack)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        skip = tag in ("style", "script") or attributes.get("translate") == "no"
        if not skip and not self._hidden():
            self.texts += [v for k, v in attrs if k in ("alt", "aria-label", "title") and v]
        if tag not in self.VOID:
            self.stack.append((tag, skip))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data: str) -> None:
        if data.strip() and not self._hidden():
            self.texts.append(data)


def visible_texts(page: str) -> list[str]:
    parser = _Visible()
    parser.feed(page)
    return parser.texts


def english_left(texts: list[str], data_words: set[str] = frozenset()) -> list[str]:
    """Runs of Latin words that are neither allowed terms nor the user's data, with their context."""
    found = []
    for text in texts:
        for phrase in PHRASES:
            text = text.replace(phrase, " ")
        for word in re.findall(r"[A-Za-z][A-Za-z']*", text):
            if len(word) > 1 and word not in ALLOWED and word not in data_words:
                found.append(f"{word!r} in {text.strip()[:80]!r}")
    return found


@pytest.fixture
def plot_texts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text drawn into a figure while the test runs (the PNGs themselves cannot be read)."""
    seen: list[str] = []
    original = plots.to_base64

    def recording(fig: Any, look: Any = None) -> str:
        seen.extend(plots.texts_of(fig))
        return original(fig, look)

    monkeypatch.setattr(plots, "to_base64", recording)
    import medpredict.records.check as table_check

    monkeypatch.setattr(table_check, "to_base64", recording)
    return seen


# ------------------------------------------------------------------ a rich synthetic evaluation


def _split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    z = 1.3 * (2 * y - 1) + rng.normal(0, 1.2, n)
    return y, np.c_[np.zeros(n), 4.0 * z], np.array([f"P{i:04d}" for i in range(n)])


def _png_data_url(rng: np.random.Generator) -> str:
    buffer = io.BytesIO()
    Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def rich_evaluation(units: str = "patient") -> dict[str, Any]:
    """Every section filled, the test unlike validation (so every validation-vs-test flag fires),
    shift flags from a real shift diagnosis, and the fields newer evaluations carry."""
    rng = np.random.default_rng(3)
    y_val, logits_val, groups_val = _split(rng, 300)
    y, logits, groups = _split(rng, 300)
    logits[y == 0, 1] += 5.0  # test negatives look positive: specificity and coverage collapse
    scaler = TemperatureScaler().fit(logits_val, y_val)
    probs_val, probs = scaler.transform(logits_val), scaler.transform(logits)
    images = rng.random((300, 1, 16, 16)).astype(np.float32)
    reference = reference_statistics(y_val, images=images * 0.5)
    shift = shift_diagnostics({**reference, "prevalence": 0.2}, y, probs[:, 1], images=images)
    heat = np.zeros((28, 28), np.float32)
    heat[8:18, 9:19] = 1.0
    examples = [{"image": rng.random((1, 28, 28)).astype(np.float32), "heatmap": heat, "title": title,
                 "caption": caption, "explained_class": "pneumonia", "method": method}
                for title, caption, method in (("true positive", "decision pneumonia; p(pneumonia) = 0.91", "grad-cam"),
                                               ("false negative", "predicted probability 0.12", "occlusion"))]
    checks = {"randomisation": {"similarity": 0.1, "max_similarity": 0.4, "passed": True},
              "faithfulness_mean": 0.4, "min_faithfulness": 0.05, "shortcut_flags": [], "passed": True}
    frame = pd.DataFrame({"sex": rng.choice(["F", "M"], y.size), "age": rng.uniform(2, 95, y.size)})
    ev = assemble_evaluation(
        y, probs, labels=LABELS, groups=groups if units == "patient" else None,
        threshold=ThresholdPicker("sensitivity", target=0.9).fit(y_val, probs_val[:, 1]).to_dict(),
        calibration=scaler.to_dict(), probs_uncalibrated=softmax(logits), y_val=y_val, probs_val=probs_val,
        groups_val=groups_val, conformal=SplitConformal(0.1).fit(probs_val, y_val).to_dict(),
        subgroup_frame=frame, subgroup_columns=["sex", "age"], shift=shift,
        explanations={"examples": examples, "checks": checks,
                      "feature_importance": [{"feature": "age", "importance_mean": 0.1, "importance_std": 0.01}],
                      "local": [{"title": "highest predicted risk", "prediction": 0.9, "expected": 0.5,
                                 "rows": [{"feature": "age", "value": 70, "attribution": 0.2}]}]},
        training_curves={"epoch": [1, 2, 3], "train_loss": [0.7, 0.5, 0.4], "val_loss": [0.7, 0.6, 0.55],
                         "val_score": [0.8, 0.85, 0.86]},
        run_info={"model_name": "brief-cnn", "dataset": "pneumoniamnist.npz", "seed": 0, "evaluated_split": "test",
                  "intended_use": "Research and decision support only: flags cases for a clinician's review; "
                                  "not a diagnosis.",
                  "input": {"image_size": 28, "channels": 1, "spatial_dims": 2,
                            "normalisation": {"mean": 0.58, "std": 0.17}},
                  "training": {"best_epoch": 3, "epochs_run": 3, "stopped": "completed", "seconds": 6.9},
                  "splits": {"train": {"n": 600, "n_patients": 600, "prevalence": 0.75}}},
        n_boot=20,
    )
    ev.update(units=units, positive_label="pneumonia",
              input_guard={"ood_flagged_share": 0.04, "threshold": 12.5, "method": "mahalanobis"})
    ev["referral"].update(share_referred=0.12, accuracy_kept=0.93,
                          reasons={REASON_SET: 50, REASON_EMPTY: 3, REASON_OOD: 22, "input unusual": 1})
    ev["explanations"]["shortcut"] = {
        "checked": 40, "flagged": 6, "share": 0.15, "limit": 0.1, "passed": False,
        "flagged_cases": [{"index": 3, "border_fraction": 0.6, "image": _png_data_url(rng)},
                          {"index": 17, "border_fraction": 0.7, "image": rng.random((28, 28)), "heatmap": heat}]}
    ev["calibration"].update(method="temperature", prior_correction=True,
                             validation={"ece": 0.03, "intercept": 0.01, "slope": 0.97})
    return ev


@pytest.fixture
def no_font_embedding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the font subset (seconds per page) where a test reads only the words; the glyph test embeds it."""
    monkeypatch.setattr(fonts, "font_face_css", lambda text: "")


@pytest.fixture(scope="module")
def evaluation() -> dict[str, Any]:
    return rich_evaluation()


@pytest.fixture(scope="module")
def zh_report(evaluation: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zh")
    build_report(out, evaluation, lang="zh")
    return out


def test_the_synthetic_evaluation_reaches_every_translated_sentence(evaluation: dict[str, Any]) -> None:
    """Guards the test below: the warnings it must find translated are really there."""
    warnings = " ".join(evaluation["warnings"])
    assert "AUC is" in warnings and "Specificity is" in warnings and "Prediction sets covered" in warnings
    assert any("Prevalence differs" in f for f in evaluation["shift"]["flags"])
    assert any("brightness" in f for f in evaluation["shift"]["flags"])


@pytest.mark.cjk_font  # without the font the plots keep English texts, by design
def test_chinese_report_and_model_card_leave_no_english(evaluation, tmp_path: Path, plot_texts,
                                                        no_font_embedding) -> None:
    for units in ("patient", "image"):
        ev = evaluation if units == "patient" else rich_evaluation("image")
        out = tmp_path / units
        card = {"owner": "Paediatric AI group", "contact": "ai@example.org"} if units == "image" else None
        build_report(out, ev, lang="zh", card=card)
        data_words = set(LABELS) | {"brief", "cnn", "pneumoniamnist", "npz", "sex", "age", "Paediatric", "group",
                                    "ai", "example", "org"}
        for name in ("report.html", "model_card.html"):
            left = english_left(visible_texts((out / name).read_text(encoding="utf-8")), data_words)
            assert left == [], f"{units}/{name}: {left[:10]}"
        markdown = (out / "model_card.md").read_text(encoding="utf-8")
        without_code = re.sub(r"`[^`]*`", "", markdown)  # card-file keys are code, written as the user writes them
        left = english_left(without_code.splitlines(), data_words)
        assert left == [], left[:10]
    assert len(plot_texts) > 100  # the figures were drawn and read
    assert english_left(plot_texts, set(LABELS) | {"sex", "age"}) == []


def test_the_check_finds_english_left_in_a_page(evaluation, tmp_path: Path, monkeypatch,
                                               no_font_embedding) -> None:
    """The detector is not blind: drop one Chinese entry and the page fails the check."""
    table = _table()
    monkeypatch.setitem(table, "verdict_poor", {"en": table["verdict_poor"]["en"]})
    build_report(tmp_path, evaluation, lang="zh")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert any("calibrated" in hit for hit in english_left(visible_texts(page), set(LABELS)))
    assert english_left(["模型 AUC 0.91（95% 置信区间 0.88–0.93）"]) == []


@pytest.mark.cjk_font
def test_chinese_data_checks_leave_no_english(tmp_path: Path, plot_texts, no_font_embedding) -> None:
    from medpredict.data.check import check_images
    from medpredict.data.manifest import load_manifest
    from medpredict.records.check import check_table

    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        write_png(tmp_path / f"img{i}.png", (rng.random((32, 32)) * 255).astype(np.uint8))
        rows.append((f"img{i}.png", ("train", "val", "test", "train")[i % 4], f"P{i}", i % 2))
    (tmp_path / "dup.png").write_bytes((tmp_path / "img0.png").read_bytes())  # a duplicate across splits
    (tmp_path / "bad.png").write_bytes(b"not a png")
    rows += [("dup.png", "test", "P9", 0), ("bad.png", "train", "P10", 1), ("gone.png", "val", "P11", 0)]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=["path", "split", "patient_id", "label"]).to_csv(manifest, index=False)
    page = check_images(load_manifest(manifest), tmp_path / "img", progress=False, lang="zh").html_path
    left = english_left(visible_texts(page.read_text(encoding="utf-8")))
    assert left == [], left[:10]

    csv = tmp_path / "records.csv"
    csv.write_text("patient_id,age,chol,smoker,outcome\np1,63,233,never,0\np2,?,250,current,1\n"
                   "p3,\t41,204,former,0\np4,57,9999,never,1\np4,57,9999,never,1\np5,44,,never,0\n"
                   "p6,52,211,?,0\np7,60,240,current,1\np8,48,198,never,0\n")
    check_table(csv, target="outcome", out=tmp_path / "table", lang="zh")
    table_page = (tmp_path / "table" / "table_check.html").read_text(encoding="utf-8")
    data_words = {"age", "chol", "smoker", "outcome", "never", "current", "former"}  # the table's own words
    left = english_left(visible_texts(table_page), data_words)
    assert left == [], left[:10]
    assert english_left(plot_texts, data_words) == []
    assert "What to look at" not in table_page and "需要关注的问题" in table_page


def _embedded_font(page: str) -> Any:
    from fontTools.ttLib import TTFont

    match = re.search(r"url\(data:font/woff;base64,([A-Za-z0-9+/=]+)\)", page)
    assert match, "no embedded font"
    return TTFont(io.BytesIO(base64.b64decode(match.group(1))))


@pytest.mark.cjk_font
def test_every_cjk_glyph_of_each_page_is_in_its_embedded_font(zh_report: Path, tmp_path: Path) -> None:
    from medpredict.records.check import check_table

    csv = tmp_path / "t.csv"
    csv.write_text("age,outcome\n50,0\n60,1\n70,0\n")
    check_table(csv, target="outcome", out=tmp_path / "t", lang="zh")
    pages = [zh_report / "report.html", zh_report / "model_card.html", tmp_path / "t" / "table_check.html"]
    for path in pages:
        page = path.read_text(encoding="utf-8")
        shown = set(fonts.cjk_characters(re.sub(r"base64,[A-Za-z0-9+/=]+", "", page)))
        assert len(shown) > 30
        cmap = _embedded_font(page).getBestCmap()
        assert {c for c in shown if ord(c) not in cmap} == set(), path.name
        assert len(cmap) <= len(shown) + 10  # a subset, not the 65,000-glyph font
        assert "@font-face" in page and 'src="http' not in page and "<script" not in page
    assert (zh_report / "report.html").stat().st_size < 1_500_000


def test_english_pages_embed_no_font(tmp_path: Path) -> None:
    ev = assemble_evaluation(np.array([0, 1, 0, 1]), np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.4, 0.6]]),
                             labels=LABELS, n_boot=0)
    page = build_report(tmp_path, ev).read_text(encoding="utf-8")
    assert "@font-face" not in page and "medpredict CJK" in page  # named in the stylesheet, not embedded


def test_without_a_cjk_font_the_chinese_page_still_comes_out(monkeypatch, tmp_path: Path, caplog) -> None:
    """Graceful: a warning, no embedded font, and plot texts in English (no boxes in the PNGs)."""
    monkeypatch.setattr(fonts, "find_cjk_font", lambda: None)
    fonts.subset_woff.cache_clear()
    fonts.plot_font_family.cache_clear()
    fonts._warn_missing.cache_clear()
    seen: list[str] = []
    original = plots.to_base64
    monkeypatch.setattr(plots, "to_base64", lambda fig, look=None: seen.extend(plots.texts_of(fig)) or
                        original(fig, look))
    ev = assemble_evaluation(np.array([0, 1, 0, 1] * 10), softmax(np.random.default_rng(0).normal(size=(40, 2))),
                             labels=LABELS, n_boot=0)
    with caplog.at_level(logging.WARNING, logger="medpredict.report.fonts"):
        page = build_report(tmp_path, ev, lang="zh").read_text(encoding="utf-8")
    fonts.plot_font_family.cache_clear()
    fonts._warn_missing.cache_clear()
    assert "fonts-noto-cjk" in caplog.text
    assert "模型评估报告" in page and "@font-face" not in page
    assert "Predicted class" in seen and not any(fonts.cjk_characters(s) for s in seen)


def test_translation_table_is_complete_and_consistent() -> None:
    import string

    formatter = string.Formatter()
    for key, entry in _table().items():
        assert set(entry) == {"en", "zh"}, key
        fields = [{f for _, f, _, _ in formatter.parse(entry[lang]) if f} for lang in ("en", "zh")]
        assert fields[0] == fields[1], key
        assert fonts.cjk_characters(entry["zh"]) or key in {"metric.auc", "card.auc", "explain_method.grad-cam",
                                                          "msg.case", "example_caption"}, key


def test_messages_from_other_modules_are_reworded() -> None:
    t: Translator = translator("zh")
    assert t.message("Specificity is 0.885 on validation but 0.527 on test (p = 1.5e-18): the test cases differ "
                     "from the validation cases beyond chance.") == (
        "特异度在验证集上为 0.885，在测试集上为 0.527（p = 1.5e-18）：测试病例与验证病例的差异超出了偶然范围。")
    assert t.message("true positive: predicted probability 0.74") == "真阳性：预测概率 0.74"
    assert translator("en").message("anything") == "anything"
    assert t.message("A sentence nobody taught it.") == "A sentence nobody taught it."  # shown, and caught above


# ------------------------------------------------------------------ in a real browser

_PAGE_CHECK = """async () => {
  await document.fonts.ready;
  const faces = Array.from(document.fonts).filter(f => f.family.replace(/"/g, '') === 'medpredict CJK');
  const text = document.body.innerText;
  const chars = Array.from(new Set(Array.from(text).filter(c => /[\\u4e00-\\u9fff]/.test(c)))).slice(0, 40);
  await document.fonts.load('40px "medpredict CJK"', chars.join(''));
  const canvas = document.createElement('canvas');
  canvas.width = 48; canvas.height = 48;
  const ctx = canvas.getContext('2d');
  const renders = family => new Set(chars.map(c => {
    ctx.clearRect(0, 0, 48, 48); ctx.font = '40px ' + family; ctx.fillText(c, 2, 40);
    return canvas.toDataURL();
  })).size;
  return {faces: faces.map(f => f.status), chars: chars.length, embedded: renders('"medpredict CJK"'),
          system: renders('"no such font", sans-serif'),
          overflow: document.documentElement.scrollWidth - window.innerWidth};
}"""


@pytest.mark.chromium
@pytest.mark.cjk_font
def test_chinese_pages_render_their_glyphs_and_fit_a_phone_in_chromium(zh_report: Path, tmp_path: Path) -> None:
    """In a browser that has no CJK font (fontconfig limited to DejaVu), the page's own font draws
    every Chinese character (boxes would all look alike), and nothing overflows at 390 px."""
    sync_api = pytest.importorskip("playwright.sync_api")
    conf = tmp_path / "fonts.conf"
    conf.write_text('<?xml version="1.0"?><!DOCTYPE fontconfig SYSTEM "fonts.dtd"><fontconfig>'
                    f"<dir>/usr/share/fonts/truetype/dejavu</dir><cachedir>{tmp_path / 'fc'}</cachedir></fontconfig>")
    results = {}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", env={"FONTCONFIG_FILE": str(conf), "HOME": str(tmp_path)},
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            for name in ("report.html", "model_card.html"):
                for width in (390, 1280):
                    page = browser.new_page(viewport={"width": width, "height": 900})
                    page.goto((zh_report / name).as_uri())
                    results[name, width] = page.evaluate(_PAGE_CHECK)
                    page.screenshot(path=str(tmp_path / f"{name}_{width}.png"), full_page=True)
                    page.close()
        finally:
            browser.close()
    for (name, width), got in results.items():
        assert got["faces"] == ["loaded"], (name, got)
        assert got["chars"] == 40
        assert got["system"] <= 2, "this browser has a CJK font of its own: the check below would prove nothing"
        assert got["embedded"] == got["chars"], (name, width, got)  # 40 different glyphs, not 40 boxes
        assert got["overflow"] <= 0, (name, width, got)
    shot = np.asarray(Image.open(tmp_path / "report.html_390.png").convert("L"), dtype=np.float32)
    assert shot.shape[1] == 390 and shot.shape[0] > 4000 and shot.std() > 20


def test_a_declared_intended_use_is_worded_in_chinese_around_the_owners_words() -> None:
    """The bundle's intended use (the demo's, as evaluate writes it): tag names and the fixed sentence translated."""
    from medpredict.report.i18n import translator

    sentence = ("frontal chest radiographs of children (PneumoniaMNIST, 28 px); modality CR/DX; body part CHEST; "
                "view PA/AP. Research and decision support only: flags cases for a clinician's review; "
                "not a diagnosis.")
    zh = translator("zh").message(sentence)
    assert zh.startswith("frontal chest radiographs of children (PneumoniaMNIST, 28 px)")  # the owner's own words
    assert "成像方式 CR/DX" in zh and "身体部位 CHEST" in zh and "体位 PA/AP" in zh and "不构成诊断" in zh
    assert not {"modality", "body part", "view", "Research"} & set(re.findall(r"[A-Za-z]+(?: part)?", zh))
    assert translator("en").message(sentence) == sentence
