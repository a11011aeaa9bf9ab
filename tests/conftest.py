"""Shared test configuration: where the real data is, and skipping for absent servers.

Tests marked ``orthanc`` or ``chromium`` skip when the Debian package is missing, except
under CI (``MEDPREDICT_REQUIRE_SERVERS=1``), where a missing server is a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

_SERVERS = {
    "orthanc": lambda: shutil.which("Orthanc") is not None,
    "chromium": lambda: Path("/usr/bin/chromium").exists(),
}


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, present in _SERVERS.items():
        if marker in item.keywords and not present():
            if os.environ.get("MEDPREDICT_REQUIRE_SERVERS") == "1":
                pytest.fail(f"{marker} is required here (MEDPREDICT_REQUIRE_SERVERS=1) but is not installed")
            pytest.skip(f"{marker} is not installed")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets beside the checkout; tests that need them skip without them."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
