"""Tests for medpredict.training.checkpoint: nested training state in safetensors, never pickle."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from medpredict.errors import BundleError
from medpredict.training.checkpoint import load_state, save_state


def assert_same(a: object, b: object) -> None:
    """Deep equality that compares tensors by value and keeps tuple/list and key types apart.

    An ``OrderedDict`` (what ``state_dict()`` returns) may come back as a plain dict.
    """
    if isinstance(a, dict):
        assert isinstance(b, dict), (a, b)
    else:
        assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


@pytest.fixture
def training_state() -> dict[str, object]:
    """A real model, AdamW and OneCycle scheduler after two steps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(64, 2))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=0.01, total_steps=10)
    for _ in range(2):
        model(torch.rand(2, 1, 6, 6)).sum().backward()
        optimiser.step()
        scheduler.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimiser.state_dict(),  # int keys in 'state', tuples in 'betas'
        "scheduler": scheduler.state_dict(),
        "epoch": 2,
        "best": {"auc": 0.75, "epoch": None, "history": [0.5, float("inf")]},
        "rng": torch.random.get_rng_state(),  # a uint8 tensor
    }


def test_round_trip_of_real_training_state(tmp_path: Path, training_state: dict) -> None:
    path = tmp_path / "checkpoint.safetensors"
    save_state(path, training_state)
    loaded = load_state(path)
    assert_same(loaded, training_state)
    assert set(loaded["optimizer"]["state"]) == {0, 1, 2, 3, 4, 5}  # int keys stay int
    assert isinstance(loaded["optimizer"]["param_groups"][0]["betas"], tuple)  # tuples stay tuples
    # and the state is usable by PyTorch again
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(64, 2))
    model.load_state_dict(loaded["model"])
    torch.optim.AdamW(model.parameters()).load_state_dict(loaded["optimizer"])


def test_plain_values_survive(tmp_path: Path) -> None:
    state = {
        "nan": float("nan"), "text": "ünïcode", "flag": False, "none": None,
        "empty": {}, "nested": [[1, (2,)]],
    }
    save_state(tmp_path / "s.safetensors", state)
    loaded = load_state(tmp_path / "s.safetensors")
    assert math.isnan(loaded.pop("nan"))
    state.pop("nan")
    assert_same(loaded, state)


def test_file_is_safetensors_without_pickle(tmp_path: Path, training_state: dict) -> None:
    path = tmp_path / "checkpoint.safetensors"
    save_state(path, training_state)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        names = list(handle.keys())
    skeleton = json.loads(metadata["medpredict_state"])  # the structure is plain JSON
    assert "__dict__" in skeleton
    assert len(names) == len(training_state["model"]) + 1 + sum(
        len(s) for s in training_state["optimizer"]["state"].values()
    )
    raw = path.read_bytes()
    # safetensors layout: 8-byte little-endian header length, then the JSON header; no pickle opcodes
    header_length = int.from_bytes(raw[:8], "little")
    assert raw[8:9] == b"{" and json.loads(raw[8 : 8 + header_length])["__metadata__"]
    assert not raw.startswith((b"\x80", b"PK\x03\x04"))  # neither a pickle nor torch's zip archive


def test_unsupported_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="set"):
        save_state(tmp_path / "s.safetensors", {"bad": {1, 2}})
    assert not (tmp_path / "s.safetensors").exists()


def test_foreign_safetensors_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.ones(2)}, str(path))  # valid safetensors, but no medpredict structure
    with pytest.raises(BundleError, match="Cannot read the checkpoint"):
        load_state(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="absent"):
        load_state(tmp_path / "absent.safetensors")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),  # a crash mid-copy
        pytest.param(lambda data: b"", id="empty"),  # a zero-length file
        pytest.param(lambda data: b"\xff" * 64 + data[64:], id="header-overwritten"),  # garbled header
    ],
)
def test_corrupt_file_is_a_bundle_error(tmp_path: Path, training_state: dict, damage) -> None:
    path = tmp_path / "checkpoint.safetensors"
    save_state(path, training_state)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(BundleError, match="Cannot read the checkpoint"):
        load_state(path)


def test_corrupt_metadata_is_a_bundle_error(tmp_path: Path) -> None:
    # A readable safetensors file whose structure is not JSON: the part load_state does catch.
    path = tmp_path / "checkpoint.safetensors"
    save_file({"t0": torch.ones(1)}, str(path), metadata={"medpredict_state": "{not json"})
    with pytest.raises(BundleError, match="Cannot read the checkpoint"):
        load_state(path)


def test_tied_weights_round_trip(tmp_path: Path) -> None:
    shared = torch.arange(4.0)
    save_state(tmp_path / "s.safetensors", {"encoder.weight": shared, "decoder.weight": shared})
    loaded = load_state(tmp_path / "s.safetensors")
    assert torch.equal(loaded["encoder.weight"], shared)
    assert loaded["encoder.weight"] is loaded["decoder.weight"]  # stored once, still tied


def test_tied_module_and_views_of_one_memory_round_trip(tmp_path: Path) -> None:
    embed = torch.nn.Embedding(5, 3)
    head = torch.nn.Linear(3, 5, bias=False)
    head.weight = embed.weight  # tied as in language models: state_dict gives two tensors, one memory
    base = torch.arange(6.0)
    save_state(tmp_path / "m.safetensors", {"model": torch.nn.Sequential(embed, head).state_dict(),
                                            "whole": base, "tail": base[2:], "strided": base[::2],
                                            "transposed": base.view(2, 3).t()})
    loaded = load_state(tmp_path / "m.safetensors")
    restored = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    restored.load_state_dict(loaded["model"])
    assert torch.equal(restored[0].weight, embed.weight) and torch.equal(restored[1].weight, embed.weight)
    assert loaded["tail"].tolist() == [2.0, 3.0, 4.0, 5.0] and loaded["strided"].tolist() == [0.0, 2.0, 4.0]
    assert torch.equal(loaded["transposed"], base.view(2, 3).t()) and torch.equal(loaded["whole"], base)
