"""Tests for medpredict.bundle.store: verified, optionally signed, atomically written model bundles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medpredict import atomic
from medpredict.bundle.store import (
    CHECKSUMS,
    FORMAT_VERSION,
    KEY_ENV,
    META,
    WEIGHTS,
    add_files,
    load_bundle,
    save_bundle,
    write_checksums,
)
from medpredict.errors import BundleError

STATE = {"conv.weight": torch.arange(12.0).view(3, 4), "conv.bias": torch.tensor([0.5, -1.0, 2.0])}
META_IN = {"labels": ["normal", "pneumonia"], "task": "binary", "threshold": 0.37}


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start unsigned, whatever the engineer's shell exports."""
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return save_bundle(
        tmp_path / "run" / "model", state_dict=STATE, meta=META_IN,
        json_files={"cleaner.json": {"columns": ["age"]}}, text_files={"model_card.md": "# Card\n"},
    )


def test_round_trip(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert bundle.meta["labels"] == META_IN["labels"] and bundle.meta["threshold"] == 0.37
    assert bundle.meta["format_version"] == FORMAT_VERSION
    assert set(bundle.state_dict) == set(STATE)
    assert all(torch.equal(bundle.state_dict[k], STATE[k]) for k in STATE)
    assert bundle.read_json("cleaner.json") == {"columns": ["age"]}
    assert bundle.read_json("absent.json") is None
    sums = json.loads((bundle_dir / CHECKSUMS).read_text())
    assert set(sums["files"]) == {WEIGHTS, META, "cleaner.json", "model_card.md"}
    assert "hmac_sha256" not in sums


def test_run_folder_is_accepted(bundle_dir: Path) -> None:
    assert load_bundle(bundle_dir.parent).path == bundle_dir  # runs/<name> finds runs/<name>/model


def test_weights_are_plain_safetensors(bundle_dir: Path) -> None:
    loaded = load_file(str(bundle_dir / WEIGHTS))
    assert torch.equal(loaded["conv.weight"], STATE["conv.weight"])


@pytest.mark.parametrize(
    ("name", "change"),
    [
        (WEIGHTS, lambda data: data[:-4] + bytes(4)),  # the last weight zeroed
        (META, lambda data: data.replace(b"0.37", b"0.01")),  # the decision threshold lowered
        ("cleaner.json", lambda data: data.replace(b"age", b"sex")),  # an extra file changed
        ("model_card.md", lambda data: data + b"\nAlways correct.\n"),  # the card edited
    ],
)
def test_modified_file_is_refused(bundle_dir: Path, name: str, change) -> None:
    path = bundle_dir / name
    path.write_bytes(change(path.read_bytes()))
    with pytest.raises(BundleError, match="checksum") as info:
        load_bundle(bundle_dir)
    assert name in str(info.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (WEIGHTS, f"missing {WEIGHTS}"),  # the network itself
        (META, "No model bundle"),  # without bundle.json the folder is not recognised as a bundle
        ("cleaner.json", "missing cleaner.json"),  # an optional file that was written is required
    ],
)
def test_missing_file_is_refused(bundle_dir: Path, name: str, message: str) -> None:
    (bundle_dir / name).unlink()
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)


def test_missing_checksums_and_missing_bundle_are_refused(bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="No model bundle"):
        load_bundle(tmp_path / "nowhere")
    (bundle_dir / CHECKSUMS).unlink()
    with pytest.raises(BundleError, match=f"no {CHECKSUMS}"):
        load_bundle(bundle_dir)


def test_garbled_checksums_are_refused(bundle_dir: Path) -> None:
    (bundle_dir / CHECKSUMS).write_text("{not json")
    with pytest.raises(BundleError, match="damaged"):
        load_bundle(bundle_dir)


def test_checksum_entry_cannot_point_outside(bundle_dir: Path) -> None:
    sums = json.loads((bundle_dir / CHECKSUMS).read_text())
    sums["files"]["../escape.json"] = "0" * 64
    (bundle_dir / CHECKSUMS).write_text(json.dumps(sums))
    with pytest.raises(BundleError, match="missing"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("format_version", FORMAT_VERSION + 1, "format version"),  # written by a newer medpredict
        ("format_version", None, "format version"),  # field lost
        ("format", "other-tool", "not a medpredict bundle"),  # someone else's folder
    ],
)
def test_other_format_is_refused(bundle_dir: Path, field: str, value: object, message: str) -> None:
    meta = json.loads((bundle_dir / META).read_text())
    meta[field] = value
    (bundle_dir / META).write_text(json.dumps(meta))
    write_checksums(bundle_dir)  # consistent checksums: only the version check can object
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)


def test_signed_bundle_with_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unsigned = save_bundle(tmp_path / "unsigned", state_dict=STATE, meta=META_IN)
    monkeypatch.setenv(KEY_ENV, "hospital-secret")
    signed = save_bundle(tmp_path / "signed", state_dict=STATE, meta=META_IN)
    assert "hmac_sha256" in json.loads((signed / CHECKSUMS).read_text())
    assert load_bundle(signed).meta["labels"] == META_IN["labels"]
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(unsigned)
    monkeypatch.setenv(KEY_ENV, "another-key")
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(signed)


def test_rewritten_checksums_without_the_key_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "hospital-secret")
    folder = save_bundle(tmp_path / "model", state_dict=STATE, meta=META_IN)
    # A tamperer edits the threshold and rewrites checksums.json, but has no key.
    meta = json.loads((folder / META).read_text())
    meta["threshold"] = 0.01
    (folder / META).write_text(json.dumps(meta))
    monkeypatch.delenv(KEY_ENV)
    write_checksums(folder)
    assert load_bundle(folder).meta["threshold"] == 0.01  # without a key, checksums only catch accidents
    monkeypatch.setenv(KEY_ENV, "hospital-secret")
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(folder)


def test_add_files_re_signs(bundle_dir: Path) -> None:
    add_files(
        bundle_dir, json_files={"model_card.json": {"intended_use": "triage"}}, text_files={"notes.md": "x"}
    )
    bundle = load_bundle(bundle_dir)
    assert bundle.read_json("model_card.json") == {"intended_use": "triage"}
    (bundle_dir / META).write_text("{}")
    with pytest.raises(BundleError, match="checksum"):
        add_files(bundle_dir, text_files={"notes.md": "y"})  # a tampered bundle is not re-signed


def test_file_added_after_signing_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "hospital-secret")
    folder = save_bundle(tmp_path / "model", state_dict=STATE, meta=META_IN)
    (folder / "cleaner.json").write_text(json.dumps({"fill": {"age": 999}}))
    with pytest.raises(BundleError):
        load_bundle(folder).read_json("cleaner.json")


def test_unreadable_weights_are_a_bundle_error(bundle_dir: Path) -> None:
    (bundle_dir / WEIGHTS).write_bytes(b"\x00" * 16)
    write_checksums(bundle_dir)
    with pytest.raises(BundleError, match="Cannot read"):
        load_bundle(bundle_dir)


def test_failed_save_keeps_the_old_bundle(bundle_dir: Path) -> None:
    parent_before = sorted(p.name for p in bundle_dir.parent.iterdir())
    with pytest.raises(TypeError):
        save_bundle(
            bundle_dir, state_dict={"w": torch.zeros(1)}, meta={"labels": ["x"]},
            # tuple keys are not JSON: the save fails after the weights were already written
            json_files={"cleaner.json": {("age", "sex"): 1}},
        )
    bundle = load_bundle(bundle_dir)
    assert bundle.meta["labels"] == META_IN["labels"]
    assert torch.equal(bundle.state_dict["conv.weight"], STATE["conv.weight"])
    assert sorted(p.name for p in bundle_dir.parent.iterdir()) == parent_before  # no temporary left


def test_second_save_replaces_the_bundle_whole(bundle_dir: Path) -> None:
    save_bundle(bundle_dir, state_dict={"w": torch.ones(2)}, meta={"labels": ["a", "b"]})
    bundle = load_bundle(bundle_dir)
    assert set(bundle.state_dict) == {"w"}
    assert not (bundle_dir / "cleaner.json").exists()  # files of the old bundle do not linger
    assert sorted(p.name for p in bundle_dir.parent.iterdir()) == ["model"]


def test_old_bundle_survives_a_failed_final_rename(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = atomic.os.replace

    def replace(src: str, dst: str) -> None:
        if Path(dst) == bundle_dir and Path(src).name.endswith(".tmp"):
            raise OSError("disk full")  # the new folder cannot be moved into place
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(bundle_dir, state_dict={"w": torch.ones(2)}, meta={"labels": ["a", "b"]})
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert load_bundle(bundle_dir).meta["labels"] == META_IN["labels"]
