"""Start and stop a real PostgreSQL on loopback, for tests (Debian package ``postgresql``).

Usage::

    with PostgresServer() as pg:
        url = pg.create_database("tune")   # postgresql://medpredict@127.0.0.1:PORT/tune

The cluster lives in a fresh temporary folder (initdb, trust authentication for loopback
only, fsync off) that is deleted on stop. PostgreSQL refuses to run as root; run as root,
the server runs as the ``postgres`` system user the Debian package creates (``runuser``).
``available()`` says whether the binaries are installed, so tests can skip cleanly.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SERVER_USER = "postgres"  # the Debian package's system user
ROLE = "medpredict"


def bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``postgres`` (the newest installed major version), or ``None``."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def available() -> bool:
    folder = bin_dir()
    if folder is None or not (folder / "postgres").is_file():
        return False
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """A throw-away PostgreSQL cluster; a context manager that starts and stops it."""

    def __init__(self, *, start_timeout: float = 60.0) -> None:
        self.start_timeout = start_timeout
        self.port = free_port()
        self.folder: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def _as_server_user(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", SERVER_USER, "--", *argv] if os.geteuid() == 0 else argv

    def start(self) -> PostgresServer:
        folder = bin_dir()
        if folder is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package postgresql).")
        self.folder = Path(tempfile.mkdtemp(prefix="medpredict-pg-"))
        data, sockets = self.folder / "data", self.folder / "sockets"
        sockets.mkdir()
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            for path in (self.folder, sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
        subprocess.run(
            self._as_server_user([str(folder / "initdb"), "-D", str(data), "-U", ROLE, "-A", "trust", "--no-sync",
                                  "-E", "UTF8", "--locale=C"]),
            check=True, capture_output=True,
        )
        log = (self.folder / "postgres.log").open("wb")
        self.process = subprocess.Popen(
            self._as_server_user([str(folder / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(self.port),
                                  "-k", str(sockets), "-F", "-c", "max_connections=50"]),
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}: {self.log_tail()}")
            try:
                self._connect("postgres").close()
                return self
            except Exception:  # not accepting connections yet
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"postgres did not start within {self.start_timeout} s: {self.log_tail()}")

    def _connect(self, database: str):  # noqa: ANN202
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=ROLE, dbname=database, autocommit=True,
                               connect_timeout=2)

    def url(self, database: str) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        with self._connect("postgres") as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def query(self, database: str, sql: str) -> list[tuple]:
        with self._connect(database) as connection:
            return list(connection.execute(sql).fetchall())

    def log_tail(self, lines: int = 20) -> str:
        path = self.folder / "postgres.log" if self.folder else None
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None and self.folder is not None:
            folder = bin_dir()
            # "fast" shutdown: open client connections (a test's connection pool) are closed
            subprocess.run(
                self._as_server_user([str(folder / "pg_ctl"), "stop", "-D", str(self.folder / "data"), "-m", "fast",
                                      "-w", "-t", "30"]),
                capture_output=True,
            )
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
