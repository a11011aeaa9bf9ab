"""bundle.json typed: one schema for image, record and fused bundles, today's and older ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medpredict.bundle.kinds import KINDS, FusedNet, ImageInput, ImageNet, RecordInput, RecordNet, kind_of
from medpredict.bundle.schema import BundleMeta, read_bundle, write_bundle
from medpredict.config import RunConfig, load_config
from medpredict.errors import BundleError

LEGACY = Path(__file__).parent / "fixtures" / "legacy_bundles"
IMAGE_NET = ImageNet("small-cnn", in_channels=1, num_classes=2)
RECORD_NET = RecordNet({"name": "mlp", "n_continuous": 2, "cardinalities": [3], "num_classes": 2, "hidden": [4]})
IMAGE_INPUT = ImageInput(image_size=16, channels=1, mean=0.4, std=0.2)
RECORD_INPUT = RecordInput(input_columns=("age", "sex"), features=("age", "age__missing", "sex"))


def _meta(kind: str, **fields: object) -> BundleMeta:
    parts: dict[str, dict[str, object]] = {  # the model entry and inputs each kind needs
        "image": {"model": IMAGE_NET, "image": IMAGE_INPUT},
        "record": {"model": RECORD_NET, "record": RECORD_INPUT},
        "fused": {"model": FusedNet(IMAGE_NET, RECORD_NET, 2), "image": IMAGE_INPUT, "record": RECORD_INPUT},
    }
    values = {"name": f"{kind}-run", "kind": kind, "task": "binary", "labels": ("no", "yes"),
              "config": RunConfig(kind=kind), **parts[kind], **fields}
    return BundleMeta(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_round_trips_through_bundle_json(kind: str) -> None:
    meta = _meta(kind, threshold={"threshold": 0.3}, input_guard={"ood": 1.5}, extra={"future_field": [1, 2]})
    stored = json.loads(json.dumps(meta.to_dict()))
    assert stored["input_kind"] == KINDS[kind].stored and stored["model"]["kind"] == KINDS[kind].stored
    assert stored["config"]["kind"] == kind and stored["future_field"] == [1, 2]
    assert BundleMeta.from_dict(stored) == meta


@pytest.mark.parametrize(
    ("kind", "shapes"),
    [
        ("image", [(1, 16, 16)]),
        ("record", [(3,)]),  # three cleaner features
        ("fused", [(1, 16, 16), (3,), (2,)]),  # image, record, presence mask
    ],
)
def test_the_kind_table_gives_each_network_input_its_shape(kind: str, shapes: list[tuple[int, ...]]) -> None:
    assert _meta(kind).input_shapes() == shapes


def test_a_kind_without_its_input_description_or_with_the_wrong_network_is_refused() -> None:
    with pytest.raises(BundleError, match="image input"):
        BundleMeta("x", "image", "binary", ("a", "b"), RunConfig(), IMAGE_NET)
    with pytest.raises(BundleError, match="RecordNet"):
        BundleMeta("x", "record", "binary", ("a", "b"), RunConfig(), IMAGE_NET, record=RECORD_INPUT)
    with pytest.raises(BundleError, match="newer medpredict"):
        kind_of("hologram")


def test_write_bundle_needs_a_cleaner_exactly_for_kinds_that_take_records(tmp_path: Path) -> None:
    state = {"w": torch.zeros(1)}
    with pytest.raises(BundleError, match="needs"):
        write_bundle(tmp_path / "a", _meta("record"), state_dict=state)
    with pytest.raises(BundleError, match="takes no"):
        write_bundle(tmp_path / "b", _meta("image"), state_dict=state, cleaner={"columns": {}})
    folder = write_bundle(tmp_path / "c", _meta("fused"), state_dict=state, cleaner={"columns": {}})
    assert (folder / "cleaner.json").is_file()
    assert read_bundle(folder).info == _meta("fused")


@pytest.mark.parametrize(
    ("kind", "section", "expected"),
    [
        # the flat record config of old bundles: target + rule, NetSettings, seed
        ("record", "data.target", "outcome"),
        ("record", "train.epochs", 3),
        ("record", "record_model.name", "mlp"),
        # the flat fused config: image_model, image_size, clinical_columns, mode
        ("fused", "model.name", "brief-cnn"),
        ("fused", "preprocess.image_size", 16),
        ("fused", "data.clinical_columns", ("lab_a", "lab_b", "smoker")),
        ("fused", "fusion.mode", "intermediate"),
        # an image config that still holds the retired train.num_workers
        ("image", "train.epochs", 1),
    ],
)
def test_bundles_written_before_the_schema_read_as_one_config_shape(kind: str, section: str, expected: object) -> None:
    info = read_bundle(LEGACY / kind).info
    assert info.config.kind == kind
    value: object = info.config
    for part in section.split("."):
        value = getattr(value, part)
    assert value == expected


def test_a_damaged_bundle_json_names_the_missing_field() -> None:
    stored = _meta("image").to_dict()
    del stored["labels"]
    with pytest.raises(BundleError, match="labels"):
        BundleMeta.from_dict(stored)


def test_the_saved_config_yaml_is_the_bundle_config(tmp_path: Path) -> None:
    config = RunConfig(kind="fused", name="f", out_dir=str(tmp_path))
    (tmp_path / "config.yaml").write_text(config.to_yaml())
    assert load_config(tmp_path / "config.yaml") == config
