"""Tests for medpredict.data.splits: patient-level splits and the leakage check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medpredict.data.manifest import Manifest, load_manifest
from medpredict.data.splits import SPLITS, assign_splits, check_leakage, group_ids, require_no_leakage
from medpredict.errors import DataError, LeakageError

# StratifiedGroupKFold warns when a class is rarer than the number of folds; tiny layouts do that.
pytestmark = pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")


def make_manifest(patients: list[str], targets: list[int], split: list[object] | None = None) -> Manifest:
    """A binary manifest; ``split`` defaults to an all-empty (object) column, every row open."""
    frame = pd.DataFrame(
        {
            "image_path": [f"/img/{i}.png" for i in range(len(patients))],
            "patient_id": patients,
            "target": targets,
        }
    )
    # an object column of None: without a split column assign_splits hits a pandas bug (see the xfail below)
    frame["split"] = pd.Series([None] * len(patients) if split is None else split, dtype=object)
    frame["label_name"] = frame["target"].astype(str)
    return Manifest(frame=frame, labels=("0", "1"), task="binary", source="synthetic")


def splits_per(frame: pd.DataFrame, column: str | pd.Series) -> pd.Series:
    keys = frame[column] if isinstance(column, str) else column
    return frame.groupby(keys.to_numpy())["split"].nunique()


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[str], list[int], list[object]]:
    """12-30 patients with 1-4 images each, random labels, and a few images shared across patients."""
    n_patients = draw(st.integers(12, 30))
    patients, targets = [], []
    for p in range(n_patients):
        for _ in range(draw(st.integers(1, 4))):
            patients.append(f"p{p}")
            targets.append(draw(st.integers(0, 1)))
    keys: list[object] = [f"unique-{i}" for i in range(len(patients))]
    for _ in range(draw(st.integers(0, 3))):  # the same image filed under two rows
        a = draw(st.integers(0, len(patients) - 1))
        b = draw(st.integers(0, len(patients) - 1))
        keys[b] = keys[a]
    return patients, targets, keys


@settings(max_examples=30, deadline=None)
@given(layout=layouts(), seed=st.integers(0, 1000))
def test_no_patient_or_identical_image_in_two_splits(
    layout: tuple[list[str], list[int], list[object]], seed: int
) -> None:
    patients, targets, keys = layout
    content = pd.Series(keys)
    frame = assign_splits(
        make_manifest(patients, targets), val_fraction=0.2, test_fraction=0.2, seed=seed, content_keys=content
    ).frame
    assert set(frame["split"]) <= set(SPLITS)
    assert "train" in set(frame["split"])
    assert (splits_per(frame, "patient_id") == 1).all()
    assert (splits_per(frame, content) == 1).all()
    assert check_leakage(frame, content).ok


def test_given_split_is_respected_and_open_rows_filled() -> None:
    n = 60
    patients = [f"p{i // 2}" for i in range(n)]
    given = ["test" if i < 10 else np.nan for i in range(n)]
    manifest = make_manifest(patients, [i % 2 for i in range(n)], given)
    frame = assign_splits(manifest, val_fraction=0.2, test_fraction=0.2, seed=0).frame
    assert (frame["split"].iloc[:10] == "test").all()  # given rows keep their split
    assert set(frame["split"].iloc[10:]) == {"train", "val"}  # test exists, so no more test rows
    assert frame["split"].notna().all()


def test_val_is_carved_from_train_when_absent() -> None:
    n = 200
    patients = [f"p{i // 2}" for i in range(n)]
    given = ["test"] * 40 + ["train"] * 160
    frame = assign_splits(
        make_manifest(patients, [i % 2 for i in range(n)], given),
        val_fraction=0.15,
        test_fraction=0.15,
        seed=3,
    ).frame
    assert (frame["split"].iloc[:40] == "test").all()
    val_patients = frame.loc[frame["split"] == "val", "patient_id"].nunique()
    # 80 training patients, about 15% of them (one fold of seven) become validation
    assert 8 <= val_patients <= 16
    assert set(frame["split"].iloc[40:]) == {"train", "val"}


def test_fractions_without_any_split_column() -> None:
    n = 300
    frame = assign_splits(
        make_manifest([f"p{i}" for i in range(n)], [i % 2 for i in range(n)]),
        val_fraction=0.2,
        test_fraction=0.2,
        seed=1,
    ).frame
    shares = frame["split"].value_counts(normalize=True)
    assert shares["test"] == pytest.approx(0.2, abs=0.03)
    assert shares["val"] == pytest.approx(0.2, abs=0.03)


def test_stratification_keeps_class_ratios() -> None:
    rng = np.random.default_rng(0)
    n = 400
    targets = (rng.random(n) < 0.25).astype(int).tolist()  # a minority class of about 25 %
    frame = assign_splits(
        make_manifest([f"p{i}" for i in range(n)], targets), val_fraction=0.15, test_fraction=0.15, seed=0
    ).frame
    overall = frame["target"].mean()
    for split, rate in frame.groupby("split")["target"].mean().items():
        assert rate == pytest.approx(overall, abs=0.04), split


def test_identical_images_under_different_patients_share_a_split() -> None:
    n = 80
    patients = [f"p{i}" for i in range(n)]
    keys = pd.Series([f"k{i}" for i in range(n)])
    for a, b in [(0, 41), (5, 77), (12, 30), (12, 63)]:  # the same image filed under two or three children
        keys[b] = keys[a]
    for seed in range(5):
        frame = assign_splits(
            make_manifest(patients, [i % 2 for i in range(n)]),
            val_fraction=0.2,
            test_fraction=0.2,
            seed=seed,
            content_keys=keys,
        ).frame
        for group in ([0, 41], [5, 77], [12, 30, 63]):
            assert frame["split"].iloc[group].nunique() == 1, (seed, group)


def test_group_ids_join_patients_and_content_transitively() -> None:
    patients = pd.Series(["a", "a", "b", "c", "d"])
    keys = pd.Series(["x", "y", "y", "z", np.nan])  # b shares an image with a; NaN joins nothing
    groups = group_ids(patients, keys)
    assert groups[0] == groups[1] == groups[2]
    assert len({groups[0], groups[3], groups[4]}) == 3


def test_manifest_without_a_split_column_gets_splits() -> None:
    full = make_manifest([f"p{i}" for i in range(40)], [i % 2 for i in range(40)])
    # a CSV or image folder with no split column
    manifest = Manifest(full.frame.drop(columns="split"), full.labels, full.task, full.source)
    frame = assign_splits(manifest, val_fraction=0.2, test_fraction=0.2, seed=0).frame
    assert set(frame["split"]) == set(SPLITS)


def test_too_few_patients_is_refused() -> None:
    with pytest.raises(DataError, match="Only 3 patients"):
        assign_splits(
            make_manifest(["a", "b", "c"], [0, 1, 0]), val_fraction=0.15, test_fraction=0.15, seed=0
        )


def test_check_leakage_counts() -> None:
    frame = pd.DataFrame(
        {
            "image_path": [f"/d/f{i}.png" for i in range(7)],
            "patient_id": ["a", "a", "b", "c", "d", "e", "f"],
            "split": ["train", "test", "train", "train", "val", "test", "test"],
        }
    )
    keys = pd.Series(["k1", "k2", "k3", "k3", "k3", "k4", "k4"])
    report = check_leakage(frame, keys)
    assert report.patients_across_splits == 1  # patient a
    assert report.duplicate_groups == 2  # k3 (3 files) and k4 (2 files)
    assert report.duplicate_redundant_files == 3  # 2 extra copies of k3, 1 of k4
    assert report.duplicate_groups_across_splits == 1  # k3 spans train and val; k4 stays in test
    assert not report.ok
    crossing = [e for e in report.examples if len(e["splits"]) > 1]
    assert crossing == [{"files": ["f2.png", "f3.png", "f4.png"], "splits": ["train", "val"]}]
    assert report.to_dict()["ok"] is False


def test_check_leakage_without_splits_counts_duplicates_only() -> None:
    frame = pd.DataFrame({"image_path": ["/a", "/b", "/c"], "patient_id": ["x", "y", "z"]})
    report = check_leakage(frame, pd.Series(["h", "h", np.nan]))
    assert (report.duplicate_groups, report.duplicate_redundant_files) == (1, 1)
    assert report.ok


def test_require_no_leakage() -> None:
    clean = pd.DataFrame({"patient_id": ["a", "b"], "split": ["train", "test"]})
    assert require_no_leakage(clean).ok
    leaky = pd.DataFrame({"patient_id": ["a", "a"], "split": ["train", "test"]})
    with pytest.raises(LeakageError, match="1 patients"):
        require_no_leakage(leaky)
    with pytest.raises(LeakageError, match="1 groups of identical images"):
        require_no_leakage(clean, pd.Series(["same", "same"]))


def test_real_kermany_duplicates(shared_data: Path) -> None:
    frame = load_manifest(shared_data / "chest_xray_kermany_224" / "manifest.csv").frame
    report = check_leakage(frame, frame["sha256"])
    assert report.duplicate_groups == 30  # as the data README says
    assert report.duplicate_redundant_files == 32
    assert report.duplicate_groups_across_splits == 0
    assert report.patients_across_splits == 0
    assert report.ok
