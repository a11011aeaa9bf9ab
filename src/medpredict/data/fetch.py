"""Download public datasets for users who have internet, verifying their checksums.

Downloads go to a temporary file beside the destination, are checked against the
catalogue's MD5, and only then renamed into place: an interrupted or corrupted download
never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from medpredict.errors import DataError, unknown_choice
from medpredict.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Remote:
    """A downloadable file and its published MD5."""

    url: str
    md5: str
    filename: str


# MedMNIST v2 official files (Zenodo record 10519652); MD5 as listed in medmnist 3.0.2's INFO.
CATALOGUE: dict[str, Remote] = {
    "pneumoniamnist": Remote(
        url="https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1",
        md5="28209eda62fecd6e6a2d98b1501bb15f",
        filename="pneumoniamnist.npz",
    ),
}


def md5sum(path: str | os.PathLike[str]) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    name: str,
    dest_dir: str | os.PathLike[str],
    *,
    url: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download dataset ``name`` into ``dest_dir`` and verify its MD5.

    ``url`` and ``md5`` override the catalogue (a mirror inside the hospital network).
    An existing file with the right MD5 is kept and not downloaded again.

    Raises:
        DataError: unknown name, network failure, or checksum mismatch (nothing is left behind).
    """
    if name not in CATALOGUE and not (url and md5):
        raise unknown_choice("dataset", name, CATALOGUE)
    remote = CATALOGUE.get(name, Remote(url=url or "", md5=md5 or "", filename=f"{name}.npz"))
    source, expected = url or remote.url, (md5 or remote.md5).lower()
    dest = Path(dest_dir) / remote.filename
    if dest.exists() and md5sum(dest) == expected:
        log.info("%s is already present and verified.", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(source, timeout=timeout) as response:  # noqa: S310
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress_bar(
                total=total,
                unit="B",
                unit_scale=True,
                desc=f"downloading {remote.filename}",
                enabled=progress,
            ) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        got = digest.hexdigest()
        if got != expected:
            raise DataError(
                f"Downloaded {source} but its MD5 is {got}, expected {expected}. The file was discarded; "
                "try again, or check the mirror."
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DataError(
            f"Could not download {source}: {exc}. Check the network or give --url for a mirror."
        ) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("Downloaded and verified %s (md5 %s).", dest, expected)
    return dest
