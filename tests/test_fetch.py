"""Tests for medpredict.data.fetch: verified downloads from a loopback HTTP server (no internet)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from medpredict.data.fetch import CATALOGUE, fetch, md5sum
from medpredict.errors import ConfigError, DataError

PAYLOAD = bytes(range(256)) * 300  # 75 kB: more than one 64 kB read chunk
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@dataclass
class Server:
    """A running loopback server: its base URL, how many requests it saw, and how to stop it."""

    url: str
    requests: list[str]
    stop: Callable[[], None]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "served"
    root.mkdir()
    (root / "mirror.npz").write_bytes(PAYLOAD)
    requests: list[str] = []

    class Counting(QuietHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    handler = functools.partial(Counting, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)
            stopped = True

    yield Server(url=f"http://127.0.0.1:{httpd.server_address[1]}", requests=requests, stop=stop)
    stop()


def test_download_is_written_and_verified(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    path = fetch("mirror", dest, url=f"{server.url}/mirror.npz", md5=PAYLOAD_MD5.upper(), progress=False)
    assert path == dest / "mirror.npz"
    assert path.read_bytes() == PAYLOAD
    assert md5sum(path) == PAYLOAD_MD5
    assert sorted(p.name for p in dest.iterdir()) == ["mirror.npz"]  # no temporary left


def test_wrong_md5_leaves_nothing(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    with pytest.raises(DataError, match=f"MD5 is {PAYLOAD_MD5}, expected 0+") as info:
        fetch("mirror", dest, url=f"{server.url}/mirror.npz", md5="0" * 32, progress=False)
    assert "discarded" in str(info.value)
    assert list(dest.iterdir()) == []  # neither the file nor a .part


def test_present_verified_file_is_not_downloaded_again(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    url = f"{server.url}/mirror.npz"
    fetch("mirror", dest, url=url, md5=PAYLOAD_MD5, progress=False)
    assert len(server.requests) == 1
    server.stop()  # any new request would now fail
    assert fetch("mirror", dest, url=url, md5=PAYLOAD_MD5, progress=False).read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_present_corrupt_file_is_replaced(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "mirror.npz").write_bytes(b"half a download")
    path = fetch("mirror", dest, url=f"{server.url}/mirror.npz", md5=PAYLOAD_MD5, progress=False)
    assert path.read_bytes() == PAYLOAD and len(server.requests) == 1


def test_404_is_a_data_error(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="Could not download .*404"):
        fetch("mirror", dest, url=f"{server.url}/absent.npz", md5=PAYLOAD_MD5, progress=False)
    assert list(dest.iterdir()) == []


def test_refused_connection_is_a_data_error(server: Server, tmp_path: Path) -> None:
    url = f"{server.url}/mirror.npz"
    server.stop()
    with pytest.raises(DataError, match="Could not download"):
        fetch("mirror", tmp_path, url=url, md5=PAYLOAD_MD5, timeout=5, progress=False)
    assert list(tmp_path.glob("*.part")) == []


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("pneumonimnist", "Did you mean 'pneumoniamnist'?"),  # a typo of a catalogue name
        ("chestxray14", ""),  # nothing close: the list of names still helps
    ],
)
def test_unknown_name_without_url_is_refused(tmp_path: Path, name: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match="Unknown dataset") as info:
        fetch(name, tmp_path, progress=False)
    assert suggestion in str(info.value)
    assert "pneumoniamnist" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_catalogue_entries_are_complete() -> None:
    for name, remote in CATALOGUE.items():
        assert remote.url.startswith("https://"), name
        assert len(remote.md5) == 32 and int(remote.md5, 16) >= 0, name
    assert CATALOGUE["pneumoniamnist"].md5 == "28209eda62fecd6e6a2d98b1501bb15f"  # as the data README says


def test_catalogue_name_with_a_mirror_url_uses_the_catalogue_md5(server: Server, tmp_path: Path) -> None:
    # The mirror serves other bytes than the official file, so the catalogue's MD5 refuses them.
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="28209eda62fecd6e6a2d98b1501bb15f"):
        fetch("pneumoniamnist", dest, url=f"{server.url}/mirror.npz", progress=False)
    assert list(dest.iterdir()) == []
