"""The web page in real headless Chromium against a real uvicorn on loopback.

The flow of issue 15: upload -> result -> a bad file (415) -> the next result, checking that
nothing of an old result survives a new request or an error, that each result names its
file, and what the screenshots show (not only that they are not blank): the original and
the overlay panels are the same size, the opacity slider changes the overlay's pixels, the
referral banner shows for a referred case, and the layout holds at phone width (390 px).

The Chinese edition runs the same flow at both widths in a browser without a CJK font of its
own: no English is left in what the page shows (its data values aside), every Chinese
character is drawn by the font subset the page embeds, and every ``web.*`` string of the
translation table has its Chinese wording.

Set ``MEDPREDICT_SCREENSHOT_DIR`` to keep the screenshots somewhere to look at.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
playwright_api = pytest.importorskip("playwright.sync_api")

from fixtures_images import write_dicom, write_png  # noqa: E402
from medpredict.report import fonts  # noqa: E402
from medpredict.report.i18n import table_keys, translator  # noqa: E402
from medpredict.service import page as web_page  # noqa: E402
from medpredict.service.app import ServiceSettings, create_app  # noqa: E402
from medpredict.service.server import ConnectionLimits, server_config  # noqa: E402
from test_report_zh import _PAGE_CHECK, english_left, visible_texts  # noqa: E402
from test_service import tiny_run  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
KEY = "page-key-abcdef"
DESKTOP = {"width": 1200, "height": 900}
PHONE = {"width": 390, "height": 844}

def in_chromium(test):
    """Mark a test that drives the browser (the translation-table tests below need none)."""
    skip = pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs /usr/bin/chromium")
    return pytest.mark.chromium(skip(test))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(app) -> tuple[str, object, threading.Thread]:
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(
        server_config(app, host="127.0.0.1", port=port, limits=ConnectionLimits(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    return f"http://127.0.0.1:{port}", server, thread


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from medpredict.inference.predictor import Predictor

    return Predictor.from_bundle(tiny_run(tmp_path_factory))


@pytest.fixture(scope="module")
def server(predictor, tmp_path_factory):
    """The service as deployed: every route but /health needs the key (a browser logs in with it)."""
    root = tmp_path_factory.mktemp("page")
    url, instance, thread = _start(create_app(predictor, ServiceSettings(api_key=KEY, audit_path=str(root / "a.db"))))
    yield url
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def public_server(predictor):
    """The same with --public-docs: the page loads without the key and asks for it."""
    url, instance, thread = _start(create_app(predictor, ServiceSettings(api_key=KEY, public_docs=True)))
    yield url
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def playwright():
    """One Playwright per module: a second sync session in the same thread is refused."""
    with playwright_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    chromium = playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )
    yield chromium
    chromium.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = tmp_path / "screenshots"
    folder.mkdir()
    yield folder
    keep = os.environ.get("MEDPREDICT_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for shot in folder.glob("*.png"):
            shutil.copy(shot, Path(keep) / shot.name)


def _training_like(path: Path, finding: bool, seed: int) -> Path:
    """A 28-px 'X-ray' drawn like the tiny model's training images (not referred as unusual)."""
    img = (np.random.default_rng(seed).random((28, 28)) * 90).astype(np.uint8)
    if finding:
        img[4:16, 4:16] += 140
    return write_png(path, img)


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)


def _open(browser, url: str, viewport: dict[str, int], path: str = "/", ready: str = "classes"):
    context = browser.new_context(viewport=viewport, http_credentials={"username": "clinician", "password": KEY})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + path)
    page.wait_for_function(f"document.getElementById('model-line').textContent.includes('{ready}')")
    return page, errors


def _predict(page, path: Path) -> dict:
    page.set_input_files("#file", str(path))
    with page.expect_response(lambda r: r.url.endswith("/api/v1/predict")) as answer:
        page.click("#predict-button")
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)
    return answer.value.json()


def _result_is_gone(page) -> None:
    assert page.is_hidden("#result")
    assert page.text_content("#result-source") == "" and page.text_content("#result-label") == ""
    for image in ("#original", "#overlay-base", "#heatmap"):
        assert page.get_attribute(image, "src") is None, image
    assert page.locator("#probabilities tr").count() == 0 and page.locator("#uncertainty dt").count() == 0


@in_chromium
def test_upload_result_bad_file_next_result(server, browser, tmp_path, shots) -> None:
    page, errors = _open(browser, server, DESKTOP)
    assert page.is_hidden("#key-block")  # the browser's login carried the key; the page need not ask
    assert "tiny v" in page.text_content("#model-line")  # the model's identity text, not a dict

    # 1. The first image: a preview before sending, then its result.
    first = _training_like(tmp_path / "chest.png", finding=True, seed=11)
    page.set_input_files("#file", str(first))
    assert page.evaluate("document.getElementById('preview').naturalWidth") == 28
    body = _predict(page, first)
    p = body["prediction"]
    assert p["source"] == "chest.png"
    assert page.text_content("#result-source") == "chest.png"
    assert page.text_content("#result-label") == p["decision"]
    assert page.is_visible("#refer-banner") == p["refer"]
    terms = page.locator("#uncertainty dt").all_text_contents()
    assert terms[:2] == ["Decision threshold (locked at validation)", "Entropy"]
    assert any(t.startswith("Plausible classes (90 % coverage)") for t in terms) and "Input check" in terms
    assert "chosen once, on the validation cases" in page.text_content("#uncertainty")
    assert page.text_content("#map-caption") == body["explanation"] == f"Grad-CAM: evidence for '{p['decision']}'"
    assert f"Result for chest.png: {p['decision']}" in page.text_content("#status")  # announced (aria-live)
    page.screenshot(path=str(shots / "desktop_result.png"), full_page=True)

    # The two panels are the same size on screen, and the slider changes the overlay's pixels.
    original, overlay = (page.locator(".picture .frame").nth(i).bounding_box() for i in (0, 1))
    assert abs(original["width"] - overlay["width"]) < 1 and abs(original["height"] - overlay["height"]) < 1
    assert original["width"] > 200
    page.fill("#opacity", "0")
    page.dispatch_event("#opacity", "input")
    bare = _pixels(page.locator(".stack").screenshot())
    plain = _pixels(page.locator(".picture .frame").nth(0).screenshot())
    page.fill("#opacity", "100")
    page.dispatch_event("#opacity", "input")
    full = _pixels(page.locator(".stack").screenshot(path=str(shots / "desktop_overlay_full.png")))
    assert bare.shape == plain.shape and np.abs(bare - plain).mean() < 2  # opacity 0: the original alone
    assert np.abs(full - bare).mean() > 20  # the heat map's colours now cover the image
    assert page.text_content("#opacity-value") == "100 %"

    # 2. An error clears the result: the service answers 503 for this one request.
    page.route(
        "**/api/v1/predict",
        lambda route: route.fulfill(status=503, content_type="application/json", body='{"detail": "busy"}'),
    )
    page.click("#predict-button")
    page.wait_for_function("document.getElementById('status').textContent.includes('busy')")
    _result_is_gone(page)
    page.unroute("**/api/v1/predict")

    # 3. A file that is not an image: 415, and nothing of the old result is left.
    _predict(page, first)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.set_input_files("#file", str(notes))
    page.click("#predict-button")
    page.wait_for_function("document.getElementById('status').textContent.includes('415')")
    assert "not a PNG, JPEG or DICOM" in page.text_content("#status")
    _result_is_gone(page)
    page.screenshot(path=str(shots / "desktop_after_415.png"), full_page=True)

    # 4. The next image: its own result, naming its own file; an unusual image is referred.
    second = write_png(tmp_path / "second.png", np.full((64, 64), 255, np.uint8))
    body = _predict(page, second)
    assert body["prediction"]["refer"] is True  # all white: unusual for this model
    assert page.text_content("#result-source") == "second.png"
    assert page.is_visible("#refer-banner")
    reasons = page.locator("#refer-reasons li").all_text_contents()
    assert reasons == body["prediction"]["referral_reasons"] and any("unusual" in r for r in reasons)
    assert page.get_attribute("#heatmap", "src").startswith("data:image/png;base64,")
    page.screenshot(path=str(shots / "desktop_referred.png"), full_page=True)
    assert errors == []


@in_chromium
def test_phone_width_keeps_the_panels_side_by_side(server, browser, tmp_path, shots) -> None:
    page, errors = _open(browser, server, PHONE)
    _predict(page, _training_like(tmp_path / "phone.png", finding=False, seed=3))
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scrolling
    original, overlay = (page.locator(".picture .frame").nth(i).bounding_box() for i in (0, 1))
    assert abs(original["width"] - overlay["width"]) < 1 and abs(original["height"] - overlay["height"]) < 1
    assert abs(original["y"] - overlay["y"]) < 1
    assert original["x"] + original["width"] <= overlay["x"]  # side by side, not overlapping
    page.screenshot(path=str(shots / "phone_result.png"), full_page=True)
    assert errors == []


@in_chromium
def test_dicom_result_names_the_series_not_the_patient(server, browser, tmp_path) -> None:
    pixels = (np.random.default_rng(3).random((96, 96)) * 4000).astype(np.uint16)
    dcm = write_dicom(
        tmp_path / "cr.dcm", pixels, Modality="CR", SeriesDescription="PA erect", StudyDescription="CHEST",
        PatientName="Doe^Janet", PatientID="MRN-778899",
    )
    page, _ = _open(browser, server, DESKTOP)
    page.set_input_files("#file", str(dcm))
    assert "cannot show DICOM" in page.text_content("#preview-caption")
    _predict(page, dcm)
    source = page.text_content("#result-source")
    assert source == "cr.dcm (series 'PA erect', study 'CHEST')"
    assert "Janet" not in page.content() and "778899" not in page.content()
    assert page.evaluate("document.getElementById('original').naturalWidth") == 96  # the server's rendering


@in_chromium
def test_keyboard_and_screen_reader_use(server, browser, tmp_path) -> None:
    page, _ = _open(browser, server, DESKTOP)
    for control in ("file", "opacity", "api-key", "record"):
        assert page.locator(f"label[for={control}]").count() == 1, control
    assert page.get_attribute("#status", "aria-live") == "polite"
    _predict(page, _training_like(tmp_path / "keys.png", finding=False, seed=4))
    page.focus("#opacity")
    page.keyboard.press("ArrowLeft")
    assert page.text_content("#opacity-value") == "40 %"
    assert page.evaluate("document.getElementById('heatmap').style.opacity") == "0.4"
    assert page.get_attribute(".stack", "aria-labelledby") == "map-caption"


@in_chromium
def test_without_the_key_the_page_is_not_served(server, browser) -> None:
    context = browser.new_context()
    response = context.request.get(server + "/")
    assert response.status == 401 and response.headers["www-authenticate"].startswith("Basic realm=")
    with pytest.raises(playwright_api.Error, match="AUTH"):  # a browser without the key gets no page
        context.new_page().goto(server + "/")
    context.close()


@in_chromium
def test_public_page_asks_for_the_key_and_reports_refusals(public_server, browser, tmp_path) -> None:
    page = browser.new_page()
    page.goto(public_server + "/")
    page.wait_for_selector("#key-block:not([hidden])")
    page.fill("#api-key", "not-the-key")
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.getElementById('status').textContent.length > 0")
    assert "refused" in page.text_content("#status")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.getElementById('model-line').textContent.includes('classes')")
    body = _predict(page, _training_like(tmp_path / "public.png", finding=True, seed=5))
    assert page.text_content("#result-source") == body["prediction"]["source"] == "public.png"
    page.close()


# --------------------------------------------------------------------------- the Chinese edition

STATIC = Path(web_page.__file__).parent / "static"
#: Words the Chinese page writes in Latin letters on purpose (besides the report's ALLOWED terms).
WEB_ALLOWED = {
    # file formats and interfaces, written so in Chinese software
    "API", "PNG", "JPEG", "DICOM", "JSON",
    # the JSON keyword a user types for a value not measured
    "null",
    # the link to the English page names English in English (an autonym)
    "English",
}
#: The page's script's own literals that are not words for people: element ids come from the
#: template; these are tags, classes, events, HTTP and storage names, and keys of its wording.
SCRIPT_TOKENS = {
    "use strict", "POST", "X-API-Key", "same-origin", "/api/v1/model", "/api/v1/predict", "application/dicom",
    "DOMContentLoaded", "change", "input", "submit", "span", "div", "dt", "dd", "li", "tr", "td", "src",
    "#probabilities tbody", "bar", "bar-cell", "help", "value", "muted", "error", "positive", "negative",
    "number", "table", "fusion", "file", "record", "medpredict-key", "method", "reason", "check.", "reason.",
}
#: The visible text of the page as a reader (or a screen reader) meets it: visible elements' text,
#: alt, aria-label, placeholder and title, and the document title; <script>, <style> and
#: translate="no" elements (the user's data: file names, class labels) are left out.
_VISIBLE_TEXT = """() => {
  const texts = [document.title];
  const walk = (node) => {
    if (node.nodeType === Node.TEXT_NODE) { if (node.textContent.trim()) texts.push(node.textContent); return; }
    if (node.nodeType !== Node.ELEMENT_NODE || ['SCRIPT', 'STYLE'].includes(node.tagName)) return;
    if (node.getAttribute('translate') === 'no' || !node.checkVisibility()) return;
    for (const name of ['alt', 'aria-label', 'placeholder', 'title']) {
      if (node.getAttribute(name)) texts.push(node.getAttribute(name));
    }
    node.childNodes.forEach(walk);
  };
  walk(document.body);
  return texts;
}"""


def test_every_web_string_has_its_own_chinese_wording() -> None:
    """Each web.* key (and each answer term the page rewords) has Chinese text, not the English copied."""
    zh, en = translator("zh"), translator("en")
    keys = table_keys("web.")
    assert len(keys) > 60
    same_in_both = {"explain_method.grad-cam"}  # a method's name, written so in Chinese literature
    untranslated = [key for key in [*keys, *web_page.ANSWER_TERMS.values()] if key not in same_in_both
                    and (not fonts.cjk_characters(zh(key)) or zh(key) == en(key))]
    assert untranslated == []
    # and the page uses exactly these: every key the template or the script names exists, and back
    template = (web_page.TEMPLATES / "index.html.j2").read_text(encoding="utf-8")
    script = (STATIC / "app.js").read_text(encoding="utf-8")
    named = set(re.findall(r"""\bt\(["'](web\.[\w.]+)["']\)""", template))
    named |= {"web.js." + k for k in re.findall(r"""\bsay(?:Text)?\("(\w+)"[,)]""", script)}
    assert named - set(keys) == set()
    in_script = set(_string_literals(script)) | set(re.findall(r"\bS\.(\w+)", script))
    prefixes = tuple(literal for literal in in_script if literal.endswith("."))  # `check.${status}`
    unused = {k for k in keys if k not in named and k.removeprefix("web.js.") not in in_script
              and not k.removeprefix("web.js.").startswith(prefixes)}
    assert unused == set()


def _string_literals(script: str) -> list[str]:
    """The string literals of a script, template-literal ``${...}`` parts removed (comments skipped)."""
    script = re.sub(r"//[^\n]*", "", script)
    literals = re.findall(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|`(?:[^`\\]|\\.)*`', script)
    return [re.sub(r"\$\{[^}]*\}", "", literal[1:-1]) for literal in literals]


def test_the_page_script_writes_no_words_of_its_own() -> None:
    """Every literal of app.js is a key of its wording, an element id or a technical name: a sentence
    written into the script (untranslatable) fails here."""
    script = (STATIC / "app.js").read_text(encoding="utf-8")
    template = (web_page.TEMPLATES / "index.html.j2").read_text(encoding="utf-8")
    known = set(web_page.script_strings("en")) | set(re.findall(r'\bid="([\w-]+)"', template)) | SCRIPT_TOKENS
    words = [lit for lit in _string_literals(script) if re.search(r"[A-Za-z]", lit) and lit not in known]
    assert words == []
    assert "Not accepted" not in script and "Predict" not in script  # the check sees the script's text
    assert "Not accepted" in _string_literals('setStatus(`Not accepted (${status}): ${detail}`)')[0]


def test_chinese_page_markup_leaves_no_english(predictor, tmp_path) -> None:
    """The whole Chinese page as served, hidden parts included (the key and record blocks)."""
    from fastapi.testclient import TestClient

    with TestClient(create_app(predictor, ServiceSettings(api_key=KEY, lang="zh"))) as client:
        page = client.get("/", headers={"X-API-Key": KEY})
        english = client.get("/?lang=en", headers={"X-API-Key": KEY})
        wrong = client.get("/?lang=fr", headers={"X-API-Key": KEY})
    assert page.headers["content-language"] == "zh-CN" and '<html lang="zh-CN">' in page.text
    texts = visible_texts(page.text)
    assert "胸部 X 线片（PNG、JPEG 或 DICOM）" in texts and "API 密钥" in texts
    assert english_left(texts, WEB_ALLOWED) == []
    assert english_left(visible_texts(english.text), WEB_ALLOWED) != []  # the check reads English when there is some
    assert '<a href="/?lang=en" lang="en" hreflang="en">English</a>' in page.text
    assert english.headers["content-language"] == "en" and "Heat-map opacity" in english.text
    assert wrong.status_code == 422 and "page language 'fr'" in wrong.text and "en, zh" in wrong.text


def test_without_a_cjk_font_the_chinese_page_is_still_served(predictor, monkeypatch, caplog) -> None:
    from fastapi.testclient import TestClient

    monkeypatch.setattr(fonts, "find_cjk_font", lambda: None)
    for cached in (fonts.subset_woff, fonts._warn_missing, web_page.render_index):
        cached.cache_clear()
    try:
        with (caplog.at_level("WARNING", logger="medpredict.report.fonts"),
              TestClient(create_app(predictor, ServiceSettings(api_key=KEY))) as client):
            page = client.get("/?lang=zh", headers={"X-API-Key": KEY})
    finally:
        for cached in (fonts.subset_woff, fonts._warn_missing, web_page.render_index):
            cached.cache_clear()
    assert page.status_code == 200 and "模型关注的区域" in page.text and "@font-face" not in page.text
    assert "fonts-noto-cjk" in caplog.text


@pytest.fixture(scope="module")
def bare_browser(playwright, tmp_path_factory):
    """Chromium that knows no CJK font (fontconfig limited to DejaVu): Chinese shows only if the page brings it."""
    home = tmp_path_factory.mktemp("bare-chromium")
    conf = home / "fonts.conf"
    conf.write_text('<?xml version="1.0"?><!DOCTYPE fontconfig SYSTEM "fonts.dtd"><fontconfig>'
                    f"<dir>/usr/share/fonts/truetype/dejavu</dir><cachedir>{home / 'fc'}</cachedir></fontconfig>")
    chromium = playwright.chromium.launch(
        executable_path=str(CHROMIUM), env={"FONTCONFIG_FILE": str(conf), "HOME": str(home)},
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )
    yield chromium
    chromium.close()


def _no_english_shown(page, stage: str) -> list[str]:
    return [f"{stage}: {word}" for word in english_left(page.evaluate(_VISIBLE_TEXT), WEB_ALLOWED)]


#: Visible elements whose own text holds Chinese but whose font does not name the embedded one
#: (a form control keeps the browser's font unless told to inherit: its words would be boxes).
_OUTSIDE_THE_FONT = """() => Array.from(document.querySelectorAll('body *'))
  .filter(el => el.checkVisibility() && Array.from(el.childNodes).some(
    n => n.nodeType === Node.TEXT_NODE && /[\\u3000-\\u9fff\\uff00-\\uffef]/.test(n.textContent)))
  .filter(el => !getComputedStyle(el).fontFamily.includes('medpredict CJK'))
  .map(el => `${el.tagName}#${el.id}: ${el.textContent.trim().slice(0, 20)}`)"""


def _glyphs_drawn_by_the_embedded_font(page) -> None:
    assert page.evaluate(_OUTSIDE_THE_FONT) == []
    got = page.evaluate(_PAGE_CHECK)
    assert got["faces"] == ["loaded"], got
    assert got["chars"] == 40 and got["system"] <= 2, got  # this browser draws boxes for Chinese on its own
    assert got["embedded"] == got["chars"], got  # 40 different glyphs, not 40 boxes
    assert got["overflow"] <= 0, got  # nothing wider than the window


def _embedded_cmap(html: str) -> set[int]:
    from fontTools.ttLib import TTFont

    match = re.search(r"url\(data:font/woff;base64,([A-Za-z0-9+/=]+)\)", html)
    assert match, "no embedded font"
    return set(TTFont(io.BytesIO(base64.b64decode(match.group(1)))).getBestCmap())


@in_chromium
@pytest.mark.cjk_font
@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_chinese_flow_upload_result_bad_file_next_result(server, bare_browser, tmp_path, shots, viewport) -> None:
    width = "desktop" if viewport is DESKTOP else "phone"
    page, errors = _open(bare_browser, server, viewport, path="/?lang=zh", ready="类别")
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    leftovers = _no_english_shown(page, "opened")

    # 1. The first image: its result, worded in Chinese, its data values as they are.
    first = _training_like(tmp_path / "chest.png", finding=True, seed=11)
    body = _predict(page, first)
    p = body["prediction"]
    assert page.text_content("#result-source") == "chest.png" and page.text_content("#result-label") == p["decision"]
    terms = page.locator("#uncertainty dt").all_text_contents()
    assert terms[:2] == ["决策阈值（在验证时锁定）", "熵"] and "输入检查" in terms
    positive = p["positive_label"]  # named twice in the Chinese sentence, so the page must fill it in twice
    threshold = f"{100 * p['threshold']:.1f} %"
    wanted = f"{positive} 的概率达到 {threshold} 或以上时判为 {positive}"
    assert page.locator("#uncertainty .value").first.text_content() == wanted
    assert any(t.startswith("可能的类别（覆盖率 90 %）") for t in terms)
    assert page.text_content("#map-caption") == f"Grad-CAM：支持“{p['decision']}”的证据"
    assert page.text_content("#status").startswith(f"chest.png 的结果：{p['decision']}")
    leftovers += _no_english_shown(page, "first result")
    _glyphs_drawn_by_the_embedded_font(page)
    page.screenshot(path=str(shots / f"zh_{width}_result.png"), full_page=True)
    original, overlay = (page.locator(".picture .frame").nth(i).bounding_box() for i in (0, 1))
    assert abs(original["width"] - overlay["width"]) < 1 and abs(original["y"] - overlay["y"]) < 1
    assert original["x"] + original["width"] <= overlay["x"]  # side by side at either width

    # 2. A file that is not an image: 415 in Chinese, the service's English detail kept apart, no result left.
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.set_input_files("#file", str(notes))
    page.click("#predict-button")
    page.wait_for_function("document.getElementById('status').textContent.includes('415')")
    status = page.text_content("#status")
    assert status.startswith("未被接受（415）：该文件不是本服务可读取的图像。服务的说明：") and "not a PNG" in status
    assert page.locator("#status [translate=no]").all_text_contents() == [
        "The upload is not a PNG, JPEG or DICOM file (checked by its content).", ]
    _result_is_gone(page)
    leftovers += _no_english_shown(page, "after 415")
    page.screenshot(path=str(shots / f"zh_{width}_after_415.png"), full_page=True)

    # 3. The next image: referred as unusual, the reason in Chinese.
    second = write_png(tmp_path / "second.png", np.full((64, 64), 255, np.uint8))
    body = _predict(page, second)
    assert body["prediction"]["refer"] is True and page.is_visible("#refer-banner")
    assert page.text_content("#result-source") == "second.png"
    assert "输入对本模型而言异常（分布外评分高于其验证阈值）" in page.locator("#refer-reasons li").all_text_contents()
    assert "已转交临床医生复核。" in page.text_content("#status")
    leftovers += _no_english_shown(page, "next result")
    assert leftovers == []
    _glyphs_drawn_by_the_embedded_font(page)

    # What the screenshot shows: the amber referral banner where the page puts it, the overlay in colour.
    shot_path = shots / f"zh_{width}_referred.png"
    page.screenshot(path=str(shot_path), full_page=True)
    shot = _pixels(shot_path.read_bytes())
    assert shot.shape[1] == viewport["width"]
    box = page.locator("#refer-banner").bounding_box()
    scroll = page.evaluate("window.scrollY")
    y0, x0 = int(box["y"] + scroll) + 3, int(box["x"]) + 3
    banner = shot[y0:y0 + 6, x0:x0 + 6].reshape(-1, 3).mean(axis=0)
    assert np.abs(banner - (255, 244, 229)).max() < 12, banner  # #fff4e5, the banner's background
    stack = _pixels(page.locator(".stack").screenshot())
    assert (stack[..., 0] - stack[..., 2]).max() > 60  # warm colours of the heat map over the grey image

    # Every CJK character the page holds (its script's wording included) is in the font it embeds.
    html = page.content()
    cmap = _embedded_cmap(html)
    shown = set(fonts.cjk_characters(re.sub(r"base64,[A-Za-z0-9+/=]+", "", html)))
    assert {c for c in shown if ord(c) not in cmap} == set()
    wording = "".join(translator("zh")(k) for k in [*table_keys("web."), *web_page.ANSWER_TERMS.values()])
    assert {c for c in fonts.cjk_characters(wording) if ord(c) not in cmap} == set()  # messages not shown here too
    assert len(cmap) <= len(shown) + 10  # a subset, not the 65,000-glyph font
    assert errors == []
