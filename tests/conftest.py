"""Shared test configuration: where the real data is, and skipping for absent servers.

Tests marked ``orthanc``, ``chromium``, ``dciodvfy``, ``cjk_font`` or ``postgres`` skip when the Debian
package is missing, except under CI (``MEDPREDICT_REQUIRE_SERVERS=1``), where a missing server is a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _postgres() -> bool:
    from postgres_server import available

    return available()


_SERVERS = {
    "orthanc": lambda: shutil.which("Orthanc") is not None,
    "chromium": lambda: Path("/usr/bin/chromium").exists(),
    "dciodvfy": lambda: shutil.which("dciodvfy") is not None,
    "cjk_font": lambda: _cjk_font_installed(),
    "postgres": _postgres,
}


def _cjk_font_installed() -> bool:
    from medpredict.report.fonts import find_cjk_font

    return find_cjk_font() is not None


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


def make_square_npz(
    path: Path, *, size: int = 16, n: tuple[int, int, int] = (96, 48, 48), seed: int = 0
) -> Path:
    """A MedMNIST-shaped .npz where class 1 has a faint bright square in the top-left corner.

    Easy enough that a small network learns it in two epochs on a CPU.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        labels = np.arange(count) % 2
        images = rng.integers(0, 160, size=(count, size, size))
        side = size // 3
        # a faint square: learnable, yet noisy enough that validation is not perfect
        images[labels == 1, 1 : 1 + side, 1 : 1 + side] += 25
        images = np.clip(images, 0, 255).astype(np.uint8)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture(scope="session")
def square_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_square_npz(tmp_path_factory.mktemp("npz") / "squaremnist.npz")


def tiny_config(source: Path, out_dir: Path, name: str = "tiny", **overrides: object):  # noqa: ANN201
    """A config that trains small-cnn on 16-px images in a few seconds."""
    from medpredict.config import load_config

    settings = {
        "name": name,
        "out_dir": str(out_dir),
        "data.source": str(source),
        "model.name": "small-cnn",
        "preprocess.image_size": 16,
        "train.epochs": 3,
        "train.batch_size": 32,
        "train.lr": 0.01,
        "train.patience": 10,
        "train.threads": 1,
        # the synthetic validation splits are small: tests of small-data mode turn it on themselves
        "train.small_data": "off",
    }
    settings.update(overrides)
    return load_config(None, settings)


@pytest.fixture(scope="session")
def tiny_run(square_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained run folder (bundle under ``model/``), shared by predictor, evaluation and service tests."""
    from medpredict.training.image import train

    result = train(tiny_config(square_npz, tmp_path_factory.mktemp("runs")), progress=False)
    return result.run_dir
