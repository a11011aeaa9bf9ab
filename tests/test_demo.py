"""Tests for medpredict.demo: which data the demo uses, and fetching it on a fresh machine."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fixtures_images import write_npz
from medpredict import demo
from medpredict.cli import main
from medpredict.data import fetch
from medpredict.errors import DataError


def small_pneumoniamnist(path: Path) -> Path:
    """A MedMNIST-shaped stand-in: 28-px images, class 1 with a bright corner (what the demo reads)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 48), ("val", 24), ("test", 24)):
        labels = np.arange(n) % 2
        images = rng.integers(0, 150, (n, 28, 28))
        images[labels == 1, 2:12, 2:12] += 100
        arrays[f"{split}_images"] = images.astype(np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    return write_npz(path, **arrays)


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """A loopback HTTP server serving a small pneumoniamnist.npz, set as the catalogue's source."""
    served = tmp_path / "served"
    served.mkdir()
    payload = small_pneumoniamnist(served / "pneumoniamnist.npz").read_bytes()
    md5 = hashlib.md5(payload).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/pneumoniamnist.npz"
    remote = fetch.Remote(url=url, md5=md5, filename="pneumoniamnist.npz")
    monkeypatch.setitem(fetch.CATALOGUE, "pneumoniamnist", remote)
    try:
        yield url, md5
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def fresh_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No shipped data beside the checkout, no data folder set, an empty cache."""
    monkeypatch.setattr(demo, "shipped_data_dirs", lambda: [tmp_path / "no-checkout-data"])
    monkeypatch.delenv(demo.DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "medpredict" / "data"


def test_a_data_dir_without_the_file_is_refused_not_replaced(tmp_path: Path, capsys) -> None:
    # The issue: --data-dir /nonexistent silently used the shipped data instead.
    code = main(["-q", "demo", "--data-dir", str(tmp_path / "nonexistent"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"--data-dir {tmp_path / 'nonexistent'} holds no medmnist/pneumoniamnist.npz" in err
    assert not (tmp_path / "run").exists()


def test_the_environment_folder_must_hold_the_file_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(demo.DATA_ENV, str(tmp_path))
    with pytest.raises(DataError, match=r"\$MEDPREDICT_DATA_DIR .* holds no medmnist/pneumoniamnist.npz"):
        demo.find_data_dir(fetch_missing=True)


def test_a_fresh_machine_fetches_the_data_md5_verified(mirror, fresh_machine: Path) -> None:
    _, md5 = mirror
    root = demo.find_data_dir(fetch_missing=True)
    assert root == fresh_machine.resolve()
    assert fetch.md5sum(root / demo.NPZ) == md5
    assert demo.find_data_dir() == root  # found in the cache next time, without the network


def test_a_fresh_machine_without_network_says_how_to_get_the_data(fresh_machine: Path, monkeypatch) -> None:
    monkeypatch.setitem(fetch.CATALOGUE, "pneumoniamnist",
                        fetch.Remote(url="http://127.0.0.1:9/x.npz", md5="0" * 32, filename="pneumoniamnist.npz"))
    with pytest.raises(DataError, match="could not be downloaded: .*medpredict data fetch pneumoniamnist"):
        demo.find_data_dir(fetch_missing=True)
    assert not (fresh_machine / demo.NPZ).exists()


@pytest.mark.slow
def test_demo_on_a_fresh_machine_fetches_and_goes_on(mirror, fresh_machine: Path, tmp_path: Path, capsys) -> None:
    code = main(["-q", "demo", "--out", str(tmp_path / "demo"), "--epochs", "1"])
    assert code == 0, capsys.readouterr().err
    assert (fresh_machine / demo.NPZ).is_file()
    assert (tmp_path / "demo" / "model" / "bundle.json").is_file() and (tmp_path / "demo" / "report.html").is_file()
    assert "medpredict demo: PneumoniaMNIST (official test split, n=24)" in capsys.readouterr().out
