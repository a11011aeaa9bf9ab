"""Tests for medpredict.config: YAML loading, dotted overrides and validation at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from medpredict.config import RunConfig, from_dict, load_config, merge_overrides
from medpredict.errors import ConfigError


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_values_and_dotted_overrides(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "name: pneu\n"
        "data: {source: data/x.npz, channels: 3, clinical_columns: [age, sex]}\n"
        "train: {epochs: 5, lr: 1e-3}\n",  # YAML 1.1 reads 1e-3 as a string; it must still become 0.001
    )
    config = load_config(path, {"train.epochs": 2, "augment.strength": 0.5, "preprocess.image_size": "64"})
    assert config.name == "pneu"
    assert config.data.source == "data/x.npz" and config.data.channels == 3
    assert config.data.clinical_columns == ("age", "sex")
    assert config.train.lr == pytest.approx(0.001) and isinstance(config.train.lr, float)
    assert config.train.epochs == 2  # the override wins over the file
    assert config.augment.strength == 0.5
    assert config.preprocess.image_size == 64 and isinstance(config.preprocess.image_size, int)
    assert config.run_dir == Path("runs") / "pneu"


def test_empty_file_and_no_file_give_defaults(tmp_path: Path) -> None:
    assert load_config(write_yaml(tmp_path, "")) == RunConfig()
    assert load_config(None) == RunConfig()


def test_replace_returns_a_new_frozen_config() -> None:
    base = RunConfig()
    changed = base.replace({"train.seed": 7, "model.name": "resnet18"})
    assert (changed.train.seed, changed.model.name) == (7, "resnet18")
    assert base.train.seed == 0  # the original is untouched
    with pytest.raises(AttributeError):
        changed.train.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "named", "suggestion"),
    [
        ({"train.epoch": 3}, "train.epoch", "epochs"),  # typo inside a section
        ({"trian.epochs": 3}, "trian", "train"),  # typo in the section name
        ({"augment.strenght": 0.5}, "augment.strenght", "strength"),  # transposed letters
        ({"preprocess.imagesize": 64}, "preprocess.imagesize", "image_size"),  # missing underscore
    ],
)
def test_unknown_key_is_refused_with_a_suggestion(overrides: dict, named: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match="Did you mean") as info:
        load_config(None, overrides)
    assert f"'{named}'" in str(info.value)
    assert f"'{suggestion}'" in str(info.value)


def test_unknown_key_in_the_yaml_file_is_refused(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "train:\n  batchsize: 8\n")
    with pytest.raises(ConfigError, match=r"train\.batchsize.*Did you mean 'batch_size'"):
        load_config(path)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train.epochs", "many"),  # text for an integer
        ("train.epochs", 2.5),  # fractional integer
        ("train.epochs", True),  # bool is not a number here
        ("train.lr", "fast"),  # text for a float
        ("train.lr", 0.0),  # below the lower bound 1e-7
        ("train.lr", float("nan")),  # NaN is never in range
        ("train.batch_size", 0),  # below 1
        ("train.deterministic", "maybe"),  # not a boolean spelling
        ("data.channels", 2),  # only 1 or 3
        ("data.val_fraction", 0.95),  # above 0.9
        ("data.test_fraction", -0.1),  # negative fraction
        ("data.task", "segmentation"),  # not a task
        ("data.clinical_columns", 5),  # not a list
        ("preprocess.image_size", 4),  # below 8 pixels
        ("preprocess.spatial_dims", 4),  # only 2 or 3
        ("preprocess.normalize", "minmax"),  # not a normalisation
        ("augment.probability", 1.5),  # a probability above 1
        ("augment.strength", -1),  # negative strength
        ("model.dropout", 0.95),  # above 0.9
        ("model.name", ["resnet18"]),  # a list for a name
        ("train.device", "tpu"),  # not a device
        ("train.schedule", "linear"),  # not a schedule
    ],
)
def test_wrong_type_or_out_of_range_is_refused_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {key: value})
    assert key.split(".")[-1] in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("data.max_per_split", -1),  # pandas' sample(n=-1) then fails deep inside training
        ("train.monitor", "auc"),  # early stopping watches the score or the loss
        ("train.threads", 0),  # torch.set_num_threads(0) fails late
        ("train.seed", -1),  # numpy/sklearn refuse negative seeds late
        ("train.max_minutes", -5.0),  # a negative time budget stops training at once
    ],
)
def test_unchecked_numbers_are_refused_at_load(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
        load_config(None, {key: value})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("augment.hflip", "yes", True),  # a --set flag arrives as text
        ("augment.hflip", "false", False),
        ("train.epochs", "3", 3),  # integer text
        ("train.epochs", 4.0, 4),  # a whole float is an integer
        ("data.clinical_columns", "age, sex", ("age", "sex")),  # comma-separated text
        ("data.max_per_split", None, None),  # optional stays None
        ("train.device", "cuda:1", "cuda:1"),  # device index is allowed
    ],
)
def test_values_are_coerced(key: str, value: object, expected: object) -> None:
    section, name = key.split(".")
    got = getattr(getattr(load_config(None, {key: value}), section), name)
    assert got == expected and type(got) is type(expected)


def test_override_into_a_scalar_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a section"):
        merge_overrides(RunConfig().to_dict(), {"train.epochs.value": 3})
    with pytest.raises(ConfigError, match="must be a mapping"):
        from_dict({"train": 5})


def test_to_yaml_round_trips(tmp_path: Path) -> None:
    config = load_config(
        None,
        {
            "name": "x",
            "data.clinical_columns": ["age"],
            "train.max_minutes": 1.5,
            "augment.hflip": True,
            "model.weights": "w.safetensors",
            "train.device": "cpu",
        },
    )
    path = write_yaml(tmp_path, config.to_yaml())
    assert load_config(path) == config
    assert from_dict(config.to_dict()) == config


def test_yaml_is_data_only(tmp_path: Path) -> None:
    # safe_load must refuse tags that construct Python objects (yaml.load would run them).
    path = write_yaml(tmp_path, "name: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    path = write_yaml(tmp_path, "name: !!python/object:pathlib.Path {}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "mapping at the top level"),  # a list, not a mapping
        ("train: [1, 2\n", "not valid YAML"),  # unclosed bracket
    ],
)
def test_malformed_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_yaml(tmp_path, text))


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
