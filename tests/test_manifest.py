"""Tests for medpredict.data.manifest: every data source turned into the one manifest frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fixtures_images import write_npz, write_png
from medpredict.data.manifest import from_frame, load_manifest
from medpredict.errors import DataError

GREY = np.full((8, 8), 128, dtype=np.uint8)


def write_csv(path: Path, rows: dict[str, list]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_csv_paths_are_resolved_against_the_csv_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    absolute = write_png(tmp_path / "abs.png", GREY).resolve()
    csv = write_csv(
        tmp_path / "manifest.csv",
        {
            "image_path": ["images/a.png", str(absolute), "images/c.png"],
            "patient_id": ["p1", "p2", "p3"],
            "label": ["yes", "no", "yes"],
            "age": [61, 45, 70],  # clinical columns are kept as they were
        },
    )
    frame = load_manifest(csv).frame
    assert frame["image_path"].tolist() == [
        str((tmp_path / "images" / "a.png").resolve()),
        str(absolute),
        str((tmp_path / "images" / "c.png").resolve()),
    ]
    assert frame["age"].tolist() == [61, 45, 70]


def test_column_aliases_and_class_encoding(tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path / "m.csv",
        {
            "Path": ["a.png", "b.png", "c.png", "d.png"],  # 'path', case-insensitive
            "subject_id": [10, 11, 10, 12],
            "label": ["pneumonia", "normal", "pneumonia", "normal"],
        },
    )
    manifest = load_manifest(csv)
    frame = manifest.frame
    assert frame["image_path"].iloc[0] == str((tmp_path / "a.png").resolve())
    assert frame["patient_id"].tolist() == ["10", "11", "10", "12"]
    assert manifest.task == "binary"
    assert manifest.labels == ("normal", "pneumonia")  # sorted names; index = class
    assert frame["target"].tolist() == [1, 0, 1, 0]
    assert frame["label_name"].tolist() == ["pneumonia", "normal", "pneumonia", "normal"]


def test_numeric_labels_sort_naturally(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "m.csv", {"path": ["a", "b", "c"], "label": [10, 2, 1]})
    manifest = load_manifest(csv)
    assert manifest.labels == ("1", "2", "10")  # not "1", "10", "2"
    assert manifest.task == "multiclass"
    assert manifest.frame["target"].tolist() == [2, 1, 0]


def test_within_split_patient_ids_are_scoped_by_split(tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path / "m.csv",
        {
            "path": ["a", "b", "c", "d"],
            "split": ["train", "Test", "training", "valid"],  # aliases normalise
            "patient_key_within_split": ["person1", "person1", "person2", "person1"],
            "label": [0, 1, 0, 1],
        },
    )
    frame = load_manifest(csv).frame
    assert frame["split"].tolist() == ["train", "test", "train", "val"]
    # person1 of train and person1 of test are different children
    assert frame["patient_id"].tolist() == ["train/person1", "test/person1", "train/person2", "val/person1"]


def test_missing_patient_column_makes_one_patient_per_row(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "m.csv", {"path": ["a", "b"], "label": [0, 1]})
    assert load_manifest(csv).frame["patient_id"].nunique() == 2


def test_regression_target_is_detected(tmp_path: Path) -> None:
    values = np.linspace(0.5, 30.3, 25)
    csv = write_csv(tmp_path / "m.csv", {"path": [f"{i}.png" for i in range(25)], "los_days": values})
    manifest = load_manifest(csv, target="los_days")
    assert manifest.task == "regression" and manifest.labels == ()
    assert manifest.frame["target"].dtype == float
    np.testing.assert_allclose(manifest.frame["target"], values)


@pytest.mark.parametrize("split_folders", [False, True], ids=["flat", "train-test"])
def test_folder_per_class(tmp_path: Path, split_folders: bool) -> None:
    tops = ["train", "test"] if split_folders else ["."]
    for top in tops:
        for label in ("NORMAL", "PNEUMONIA"):
            folder = tmp_path / top / label
            folder.mkdir(parents=True)
            write_png(folder / "x1.png", GREY)
            write_png(folder / "x2.jpeg", GREY)
            (folder / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    manifest = load_manifest(tmp_path)
    frame = manifest.frame
    assert len(frame) == 4 * len(tops)
    assert manifest.labels == ("NORMAL", "PNEUMONIA") and manifest.task == "binary"
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in frame["image_path"])
    assert (frame["label_name"] == frame["image_path"].map(lambda p: Path(p).parent.name)).all()
    if split_folders:
        assert frame["split"].value_counts().to_dict() == {"train": 4, "test": 4}
    else:
        assert "split" not in frame.columns


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cats").mkdir()
    with pytest.raises(DataError, match="No images found"):
        load_manifest(tmp_path)


def labels_1col(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    # cycling through the classes puts every class in the largest split
    return rng.permutation(np.arange(n) % classes).astype(np.uint8)[:, None]


@pytest.mark.parametrize(
    ("name", "side", "classes", "task", "labels"),
    [
        ("pneumoniamnist.npz", 28, 2, "binary", ("normal", "pneumonia")),  # known binary file
        ("pneumoniamnist_64.npz", 64, 2, "binary", ("normal", "pneumonia")),  # 64-px variant, same names
        ("bloodmnist.npz", 28, 8, "multiclass", tuple(str(i) for i in range(8))),  # unnamed multi-class
        ("mydata_128.npz", 128, 3, "multiclass", ("0", "1", "2")),  # any size, any name
    ],
)
def test_medmnist_single_label(
    tmp_path: Path, name: str, side: int, classes: int, task: str, labels: tuple
) -> None:
    rng = np.random.default_rng(0)
    sizes = {"train": 12, "val": 4, "test": 5}
    arrays = {}
    for split, n in sizes.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels_1col(n, classes, rng)
    path = write_npz(tmp_path / name, **arrays)
    manifest = load_manifest(path)
    frame = manifest.frame
    assert (manifest.task, manifest.labels) == (task, labels)
    assert frame["split"].value_counts().to_dict() == sizes
    assert frame["image_path"].iloc[0] == f"{path.resolve()}::train_images/0"
    assert frame["image_path"].iloc[-1] == f"{path.resolve()}::test_images/4"
    assert frame["target"].tolist() == [int(v) for s in sizes for v in arrays[f"{s}_labels"][:, 0]]
    assert frame["label_name"].iloc[0] == labels[frame["target"].iloc[0]]
    assert frame["patient_id"].is_unique


def test_medmnist_multilabel(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (6, 5)).astype(np.uint8)
    labels[0] = 0  # an image with no finding
    path = write_npz(
        tmp_path / "custom_multi.npz",
        train_images=rng.integers(0, 256, (6, 28, 28, 3), dtype=np.uint8),  # RGB images
        train_labels=labels,
    )
    manifest = load_manifest(path)
    assert manifest.task == "multilabel"
    assert manifest.labels == tuple(f"label_{i}" for i in range(5))
    assert manifest.frame["target"].tolist() == labels.tolist()
    assert manifest.frame["label_name"].iloc[0] == "none"
    assert set(manifest.frame["label_name"].iloc[1].split("|")) == {
        f"label_{i}" for i in np.flatnonzero(labels[1])
    }


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros(3)}, "no '<split>_images'"),  # not a MedMNIST file
        ({"train_images": np.zeros((2, 4, 4))}, "no 'train_labels'"),  # labels missing
        (
            {"train_images": np.zeros((2, 4, 4)), "train_labels": np.zeros((3, 1))},
            "3 labels",
        ),  # counts differ
    ],
)
def test_medmnist_malformed_files(tmp_path: Path, arrays: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_manifest(write_npz(tmp_path / "bad.npz", **arrays))


def test_missing_target_column_names_columns_and_suggests(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "m.csv", {"path": ["a", "b"], "labels": [0, 1]})
    with pytest.raises(DataError) as info:
        load_manifest(csv)  # target defaults to 'label'
    message = str(info.value)
    assert "'label'" in message and "Did you mean 'labels'?" in message
    assert "['path', 'labels']" in message


def test_given_column_that_is_absent_is_refused(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "m.csv", {"path": ["a", "b"], "label": [0, 1]})
    with pytest.raises(DataError, match="Did you mean 'path'"):
        load_manifest(csv, image_column="paths")


@pytest.mark.parametrize(
    "no_value",
    [
        None,  # an empty cell
        "Unknown",  # the case: it became a class the model predicted for everyone
        "UNKNOWN",  # case does not matter
        "N/A",
        "unk",
        "?",
        " not known ",  # surrounding spaces do not matter either
    ],
)
def test_a_target_without_a_value_drops_its_row_and_counts_it(
    tmp_path: Path, no_value: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    csv = write_csv(
        tmp_path / "m.csv",
        {"path": ["a", "b", "c", "d", "e"], "label": ["normal", no_value, "pneumonia", no_value, "normal"]},
    )
    manifest = load_manifest(csv)
    assert manifest.labels == ("normal", "pneumonia")  # never a class of its own
    assert len(manifest.frame) == 3
    assert manifest.dropped == {"missing_target": 2}
    assert "2 row(s) have no value in the target column 'label'" in caplog.text


def test_a_target_with_no_value_at_all_is_refused(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "m.csv", {"path": ["a", "b"], "label": ["Unknown", "n/a"]})
    with pytest.raises(DataError, match="No row .* has a value in the target column 'label'"):
        load_manifest(csv)


def test_label_map_merges_spellings_and_variants_are_found(tmp_path: Path) -> None:
    from medpredict.records.tables import label_variants

    labels = ["normal", "normal ", "Normal", "pneumonia", "pneumonia"]
    csv = write_csv(tmp_path / "m.csv", {"path": list("abcde"), "label": labels})
    assert label_variants(load_manifest(csv).frame["label_name"]) == {"normal": ["Normal", "normal", "normal "]}
    merged = load_manifest(csv, label_map={"normal ": "normal", "Normal": "normal"})
    assert merged.labels == ("normal", "pneumonia")
    assert label_variants(merged.frame["label_name"]) == {}


@pytest.mark.parametrize("target", ["patient_id", "path"])
def test_an_identifier_as_target_is_refused(tmp_path: Path, target: str) -> None:
    csv = write_csv(tmp_path / "m.csv", {"path": list("abcd"), "patient_id": list("wxyz"), "label": [0, 1, 0, 1]})
    with pytest.raises(DataError, match=f"target column '{target}' .* identifies .* not an outcome"):
        load_manifest(csv, target=target)


def test_single_class_is_refused(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "m.csv", {"path": ["a", "b"], "label": ["x", "x"]})
    with pytest.raises(DataError, match="single class"):
        load_manifest(csv)


def test_unknown_split_value_is_refused(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "m.csv", {"path": ["a", "b"], "split": ["train", "tset"], "label": [0, 1]})
    with pytest.raises(DataError, match="Unknown split value 'tset'. Did you mean 'test'"):
        load_manifest(csv)


def test_task_conflicting_with_the_target_is_refused() -> None:
    frame = pd.DataFrame({"path": ["a", "b", "c"], "label": [0, 1, 2]})
    with pytest.raises(DataError, match="3 classes"):
        from_frame(frame, source="mem", task="binary")


@pytest.mark.parametrize(
    "name",
    [
        "missing.csv",  # does not exist
        "table.xlsx",  # exists, but not a supported kind
    ],
)
def test_unreadable_sources_are_refused(tmp_path: Path, name: str) -> None:
    if name.endswith(".xlsx"):
        (tmp_path / name).write_bytes(b"PK")
    with pytest.raises(DataError, match=name):
        load_manifest(tmp_path / name)


def test_split_lookup() -> None:
    manifest = from_frame(
        pd.DataFrame({"path": ["a", "b"], "split": ["train", "test"], "label": [0, 1]}), source="mem"
    )
    assert manifest.split("test")["path"].tolist() == ["b"]
    with pytest.raises(DataError, match="Did you mean 'test'"):
        manifest.split("tests")


def test_relative_npz_reference_is_resolved_against_the_csv_folder(tmp_path: Path) -> None:
    write_npz(tmp_path / "x.npz", train_images=np.zeros((2, 8, 8), np.uint8), train_labels=np.zeros((2, 1)))
    csv = write_csv(
        tmp_path / "m.csv",
        {"image_path": ["x.npz::train_images/0", "x.npz::train_images/1"], "label": [0, 1]},
    )
    assert (
        load_manifest(csv).frame["image_path"].iloc[0] == f"{(tmp_path / 'x.npz').resolve()}::train_images/0"
    )


def test_real_kermany_manifest(shared_data: Path) -> None:
    csv = shared_data / "chest_xray_kermany_224" / "manifest.csv"
    manifest = load_manifest(csv)
    frame = manifest.frame
    assert len(frame) == 5840
    assert manifest.task == "binary" and manifest.labels == ("NORMAL", "PNEUMONIA")
    assert frame.groupby("split")["label_name"].value_counts().to_dict() == {
        ("test", "NORMAL"): 234,
        ("test", "PNEUMONIA"): 390,
        ("train", "NORMAL"): 1341,
        ("train", "PNEUMONIA"): 3875,
    }
    assert Path(frame["image_path"].iloc[0]).is_file()
    # numbering restarts between splits, so ids are scoped by split
    assert frame["patient_id"].str.match(r"^(train|test)/").all()

    subtypes = load_manifest(csv, target="subtype")
    assert subtypes.task == "multiclass"
    assert subtypes.labels == ("bacteria", "normal", "virus")
    assert subtypes.frame["label_name"].value_counts().to_dict() == {
        "bacteria": 2772,
        "normal": 1575,
        "virus": 1493,
    }
