"""Start and stop a real Orthanc (with the DICOMweb plugin) on loopback, for tests.

Usage::

    with OrthancServer(tmp_path) as orthanc:
        client = DICOMwebClient(orthanc.dicomweb_url)

Everything Orthanc writes (storage, index, config, log) stays under the given folder.
Remote access is off and Orthanc binds to 127.0.0.1 only. ``available()`` says whether the
binary and the plugin are installed, so tests can skip cleanly where they are not.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

PLUGIN_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)


def binary() -> str | None:
    """Path of the Orthanc executable, or ``None``."""
    return shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)


def plugin() -> Path | None:
    """Path of the DICOMweb plugin shared library, or ``None``."""
    for candidate in PLUGIN_CANDIDATES:
        if candidate.is_file():
            return candidate
    matches = (
        sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*"))
        if Path("/usr/lib/orthanc").is_dir()
        else []
    )
    return matches[0] if matches else None


def available() -> bool:
    return binary() is not None and plugin() is not None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OrthancServer:
    """A throw-away Orthanc in ``folder``; a context manager that starts and stops it."""

    def __init__(self, folder: Path, *, start_timeout: float = 30.0) -> None:
        self.folder = Path(folder)
        self.start_timeout = start_timeout
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def _config(self) -> dict:
        return {
            "Name": "medpredict-test",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "MPTEST",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpBindAddress": "127.0.0.1",  # ignored by older Orthanc; RemoteAccessAllowed guards it
            "DicomBindAddress": "127.0.0.1",
            "Plugins": [str(plugin())],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": False,
                "Ssl": False,
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            },
            "StableAge": 1,
            "HttpTimeout": 30,
            "ConcurrentJobs": 1,
            "OverwriteInstances": True,
        }

    def start(self) -> OrthancServer:
        exe = binary()
        if exe is None or plugin() is None:
            raise RuntimeError("Orthanc or its DICOMweb plugin is not installed.")
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self._config(), indent=2))
        log = (self.folder / "orthanc.log").open("wb")
        self.process = subprocess.Popen(
            [exe, str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=self.folder
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/system", timeout=1) as resp:
                    if resp.status == 200 and self._dicomweb_ready():
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {self.start_timeout} s: {self.log_tail()}")

    def _dicomweb_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.dicomweb_url}/studies", timeout=1) as resp:
                return resp.status in (200, 204)
        except urllib.error.HTTPError as exc:
            return exc.code == 204
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def log_tail(self, lines: int = 20) -> str:
        path = self.folder / "orthanc.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def upload(self, data: bytes) -> dict:
        """Store one DICOM file through Orthanc's own REST API (``POST /instances``)."""
        request = urllib.request.Request(
            f"{self.url}/instances", data=data, method="POST", headers={"Content-Type": "application/dicom"}
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
