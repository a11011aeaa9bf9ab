"""The web page in real headless Chromium against a real uvicorn on loopback.

The flow of issue 15: upload -> result -> a bad file (415) -> the next result, checking that
nothing of an old result survives a new request or an error, that each result names its
file, and what the screenshots show (not only that they are not blank): the original and
the overlay panels are the same size, the opacity slider changes the overlay's pixels, the
referral banner shows for a referred case, and the layout holds at phone width (390 px).

Set ``MEDPREDICT_SCREENSHOT_DIR`` to keep the screenshots somewhere to look at.
"""

from __future__ import annotations

import io
import os
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
from medpredict.service.app import ServiceSettings, create_app  # noqa: E402
from medpredict.service.server import ConnectionLimits, server_config  # noqa: E402
from test_service import tiny_run  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
KEY = "page-key-abcdef"
DESKTOP = {"width": 1200, "height": 900}
PHONE = {"width": 390, "height": 844}

pytestmark = [
    pytest.mark.chromium,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs /usr/bin/chromium"),
]


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
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(
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


def _open(browser, url: str, viewport: dict[str, int]):
    context = browser.new_context(viewport=viewport, http_credentials={"username": "clinician", "password": KEY})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('model-line').textContent.includes('classes')")
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


def test_without_the_key_the_page_is_not_served(server, browser) -> None:
    context = browser.new_context()
    response = context.request.get(server + "/")
    assert response.status == 401 and response.headers["www-authenticate"].startswith("Basic realm=")
    with pytest.raises(playwright_api.Error, match="AUTH"):  # a browser without the key gets no page
        context.new_page().goto(server + "/")
    context.close()


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
