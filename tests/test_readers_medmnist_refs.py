"""Tests of medpredict.readers.medmnist_refs: the FILE.npz::KEY/INDEX syntax and the cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fixtures_images import SHARED_DATA, write_npz
from medpredict.errors import DataError
from medpredict.readers import medmnist_refs
from medpredict.readers.medmnist_refs import (
    NpzRef,
    clear_npz_cache,
    format_npz_ref,
    is_npz_ref,
    parse_npz_ref,
    read_npz_ref,
)

IMAGES = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    clear_npz_cache()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "mini.npz", train_images=IMAGES, train_labels=np.array([[0], [1], [1]]))


def test_parse_and_format_round_trip() -> None:
    ref = parse_npz_ref("/data/pneumoniamnist.npz::train_images/17")
    assert ref == NpzRef(Path("/data/pneumoniamnist.npz"), "train_images", 17)
    assert str(ref) == "/data/pneumoniamnist.npz::train_images/17"
    assert format_npz_ref("a.npz", "val_images", 0) == "a.npz::val_images/0"


@pytest.mark.parametrize(
    "text",
    [
        "a.npz::train_images",  # no index
        "a.npz::train_images/x",  # index not a number
        "a.npz::train_images/-1",  # negative index
        "a.npz::/3",  # no key
        "a.png::train_images/3",  # not an npz file
    ],
)
def test_malformed_references_raise_data_error(text: str) -> None:
    with pytest.raises(DataError, match="npz"):
        parse_npz_ref(text)


def test_is_npz_ref_only_looks_at_syntax() -> None:
    assert is_npz_ref("x.NPZ::k/1") and is_npz_ref(Path("dir/x.npz::k/1"))
    assert not is_npz_ref("x.npz") and not is_npz_ref("scan.dcm")


def test_read_returns_the_stored_item_read_only(archive: Path) -> None:
    item = read_npz_ref(f"{archive}::train_images/2")
    np.testing.assert_array_equal(item, IMAGES[2])
    assert item.dtype == np.uint8 and not item.flags.writeable


def test_unknown_key_suggests_the_close_one(archive: Path) -> None:
    with pytest.raises(DataError, match="Did you mean 'train_images'"):
        read_npz_ref(f"{archive}::train_image/0")


def test_index_out_of_range_and_missing_file(archive: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds 3 items"):
        read_npz_ref(f"{archive}::train_images/3")
    with pytest.raises(DataError, match="does not exist"):
        read_npz_ref(f"{tmp_path}/gone.npz::train_images/0")


def test_cache_avoids_reloading_and_notices_rewrites(archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_load = np.load

    def counting_load(path: str, **kwargs: object) -> object:
        calls.append(path)
        return real_load(path, **kwargs)

    monkeypatch.setattr(medmnist_refs.np, "load", counting_load)
    for index in range(3):
        read_npz_ref(f"{archive}::train_images/{index}")
    assert len(calls) == 1
    write_npz(archive, train_images=IMAGES + 1)
    os.utime(archive, ns=(1, 1))  # make sure the modification time differs
    np.testing.assert_array_equal(read_npz_ref(f"{archive}::train_images/0"), IMAGES[0] + 1)
    assert len(calls) == 2


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="not a readable npz archive"):
        read_npz_ref(f"{path}::images/0")


def test_non_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fake.npz"
    path.write_text("hello")
    with pytest.raises(DataError, match=r"fake\.npz"):
        read_npz_ref(f"{path}::images/0")


@pytest.mark.skipif(not (SHARED_DATA / "medmnist").is_dir(), reason="shared MedMNIST data not present")
def test_real_pneumoniamnist_reference() -> None:
    path = SHARED_DATA / "medmnist" / "pneumoniamnist.npz"
    item = read_npz_ref(f"{path}::test_images/17")
    with np.load(path) as data:
        np.testing.assert_array_equal(item, data["test_images"][17])
    assert item.shape == (28, 28)
