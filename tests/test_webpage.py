"""The web page in real headless Chromium against a real uvicorn on loopback."""

from __future__ import annotations

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
from test_service import tiny_run  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
KEY = "page-key-abcdef"

pytestmark = [
    pytest.mark.chromium,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs /usr/bin/chromium"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from medpredict.inference.predictor import Predictor

    root = tmp_path_factory.mktemp("page")
    predictor = Predictor.from_bundle(tiny_run(tmp_path_factory))
    app = create_app(predictor, ServiceSettings(api_key=KEY, audit_path=str(root / "audit.sqlite")))
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert instance.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", root
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


def _xray(path: Path) -> Path:
    rng = np.random.default_rng(5)
    img = (rng.random((224, 224)) * 90).astype(np.uint8)
    img[32:128, 32:128] += 140
    return write_png(path, img)


def test_upload_on_the_page_shows_the_prediction_and_heat_map(server, browser, tmp_path):
    url, root = server
    page = browser.new_page(viewport={"width": 1200, "height": 820})
    page.goto(url + "/")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.getElementById('model-line').textContent.includes('version')")
    assert "normal, pneumonia" in page.text_content("#model-line")
    page.set_input_files("#file", str(_xray(tmp_path / "chest.png")))
    page.click("#predict-button")
    page.wait_for_selector("#result:not([hidden])", timeout=20_000)
    label = page.text_content("#result-label")
    assert label in ("normal", "pneumonia")
    assert "%" in page.text_content("#result-score")
    assert "Entropy" in page.text_content("#result-uncertainty")
    assert page.locator("#probabilities tr").count() == 2
    src = page.get_attribute("#overlay", "src")
    assert src.startswith("data:image/png;base64,")
    assert page.evaluate("document.getElementById('overlay').naturalWidth") > 0
    page.screenshot(path=str(root / "page.png"), full_page=True)
    page.close()


def test_dicom_upload_on_the_page(server, browser, tmp_path):
    url, _ = server
    pixels = (np.random.default_rng(3).random((96, 96)) * 4000).astype(np.uint16)
    dcm = write_dicom(tmp_path / "cr.dcm", pixels, Modality="CR")
    page = browser.new_page()
    page.goto(url + "/")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.set_input_files("#file", str(dcm))
    page.click("#predict-button")
    page.wait_for_selector("#result:not([hidden])", timeout=20_000)
    assert page.text_content("#result-label") in ("normal", "pneumonia")
    page.close()


def test_the_page_reports_refusals(server, browser, tmp_path):
    url, _ = server
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.fill("#api-key", "not-the-key")
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.getElementById('status').textContent.length > 0")
    assert "refused" in page.text_content("#status")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.getElementById('model-line').textContent.includes('version')")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.set_input_files("#file", str(notes))
    page.click("#predict-button")
    page.wait_for_function("document.getElementById('status').textContent.includes('415')")
    assert "not a PNG, JPEG or DICOM" in page.text_content("#status")
    assert page.is_hidden("#result")
    assert errors == []  # no script errors on the page
    page.close()
