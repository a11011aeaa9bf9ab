"""TableCleaner: fitted on training rows only, JSON round trip, predict-time edge cases."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medpredict.errors import ConfigError, DataError
from medpredict.records.cleaning import CleaningConfig, TableCleaner, default_range, drop_duplicate_rows
from medpredict.records.tables import infer_schema


def make_raw_table(n: int = 50, seed: int = 0) -> pd.DataFrame:
    """A 50-row clinical table as read from a file: strings, '?', a tab-corrupted number, an outlier."""
    rng = np.random.default_rng(seed)
    age = rng.integers(30, 80, n).astype(float)
    chol = rng.normal(240, 40, n).round()
    chol[3] = 5000  # implausible (default range 40-1000 mg/dL)
    bmi = rng.normal(27, 3, n).round(1)
    bmi[7] = 95  # plausible, but far outside the IQR fences
    frame = pd.DataFrame(
        {
            "patient_id": [f"p{i:03d}" for i in range(n)],
            "age": [f"{v:g}" for v in age],
            "chol": [f"{v:g}" for v in chol],
            "bmi": [f"{v:g}" for v in bmi],
            "sex": rng.choice(["M", "F"], n),
            "smoker": rng.choice(["never", "former", "current"], n),
            "bp": [f"{v:g}" for v in rng.integers(60, 100, n)],
            "outcome": rng.choice(["0", "1"], n),
        },
        dtype=object,
    )
    frame.loc[[1, 2], "age"] = "?"
    frame.loc[4, "chol"] = "\t243"  # the tab-corrupted token of the kidney data
    frame.loc[5, "bmi"] = ""
    frame.loc[6, "smoker"] = "N/A"
    frame.loc[8, "bp"] = "0"
    return frame


@pytest.fixture
def raw() -> pd.DataFrame:
    return make_raw_table()


@pytest.fixture
def schema(raw: pd.DataFrame):
    return infer_schema(raw, target="outcome", overrides={"zero_means_missing": ["bp"]})


def test_transform_is_float32_finite_and_named(raw, schema):
    cleaner = TableCleaner(schema).fit(raw)
    x = cleaner.transform(raw)
    assert x.dtype == np.float32 and np.isfinite(x).all()
    assert x.shape == (50, len(cleaner.feature_names_))
    assert "patient_id" not in cleaner.feature_names_ and "outcome" not in cleaner.feature_names_
    assert cleaner.categorical_ == ["smoker"] and cleaner.cardinalities_ == [4]  # 3 levels + unknown
    assert {"age__missing", "chol__missing", "bmi__missing", "bp__missing"} <= set(cleaner.feature_names_)


def test_report_counts_the_real_problems(raw, schema):
    cleaner = TableCleaner(schema).fit(raw)
    cols = cleaner.report_.columns
    assert cols["age"]["sentinel"] == 2  # the two '?'
    assert cols["chol"]["whitespace"] == 1  # '\t243' kept as 243, not lost
    assert cols["chol"]["implausible"] == 1  # 5000 mg/dL
    assert cols["bmi"]["outliers"] == 1  # 95 clipped to the fence
    assert cols["bp"]["zero_as_missing"] == 1
    assert cols["smoker"]["sentinel"] == 1
    assert any("tabs" in line for line in cleaner.report_.summary())


def test_tab_corrupted_number_is_parsed_not_missing(raw, schema):
    cleaner = TableCleaner(schema).fit(raw)
    row = cleaner.transform(raw.iloc[[4]])
    state = cleaner.columns_["chol"]
    chol = row[0, cleaner.feature_names_.index("chol")]
    assert chol * state["scale"] + state["centre"] == pytest.approx(243, abs=1e-3)
    assert row[0, cleaner.feature_names_.index("chol__missing")] == 0


def test_outlier_set_missing_instead_of_clipped(raw, schema):
    cleaner = TableCleaner(schema, CleaningConfig(outlier_action="missing")).fit(raw)
    x = cleaner.transform(raw.iloc[[7]])
    assert x[0, cleaner.feature_names_.index("bmi__missing")] == 1.0


def test_statistics_come_from_training_rows_only(raw, schema):
    train, test = raw.iloc[:30], raw.iloc[30:].copy()
    cleaner = TableCleaner(schema).fit(train)
    before = json.dumps(cleaner.to_dict(), sort_keys=True)
    test["age"] = "119"  # a very different test set must not move the learned state
    cleaner.transform(test)
    assert json.dumps(cleaner.to_dict(), sort_keys=True) == before
    ages = pd.to_numeric(train["age"], errors="coerce")
    assert cleaner.columns_["age"]["median"] == pytest.approx(float(ages.median()))


def test_json_round_trip_gives_identical_output(raw, schema):
    cleaner = TableCleaner(schema).fit(raw)
    rebuilt = TableCleaner.from_dict(json.loads(json.dumps(cleaner.to_dict())))
    np.testing.assert_array_equal(rebuilt.transform(raw), cleaner.transform(raw))
    assert rebuilt.feature_names_ == cleaner.feature_names_


def test_from_dict_refuses_other_formats():
    with pytest.raises(DataError, match="format"):
        TableCleaner.from_dict({"format": "pickle"})


def test_unfitted_use_is_refused(schema, raw):
    with pytest.raises(DataError, match="not fitted"):
        TableCleaner(schema).transform(raw)


def test_unseen_category_maps_to_unknown_code(raw, schema):
    cleaner = TableCleaner(schema).fit(raw)
    new = raw.iloc[:2].copy()
    new["smoker"] = ["vaper", "never"]
    x, report = cleaner.transform_with_report(new)
    codes = x[:, cleaner.feature_names_.index("smoker")]
    assert codes[0] == 0 and codes[1] > 0
    assert report.columns["smoker"]["unseen"] == 1


def test_missing_feature_column_is_a_clear_error(raw, schema):
    cleaner = TableCleaner(schema).fit(raw)
    renamed = raw.rename(columns={"chol": "cholesterol"})
    with pytest.raises(DataError, match="chol.*Did you mean 'cholesterol'"):
        cleaner.transform(renamed)
    x = cleaner.transform(renamed, missing_columns="impute")  # documented alternative
    assert x[0, cleaner.feature_names_.index("chol__missing")] == 1.0


def test_all_missing_column_at_predict_is_imputed_and_reported(raw, schema):
    cleaner = TableCleaner(schema).fit(raw)
    new = raw.iloc[:5].copy()
    new["bmi"] = "?"
    x, report = cleaner.transform_with_report(new)
    assert "bmi" in report.all_missing
    state = cleaner.columns_["bmi"]
    expected = (state["median"] - state["centre"]) / state["scale"]
    np.testing.assert_allclose(x[:, cleaner.feature_names_.index("bmi")], expected, rtol=1e-5)


def test_unknown_extra_columns_are_ignored_and_listed(raw, schema):
    cleaner = TableCleaner(schema).fit(raw)
    x, report = cleaner.transform_with_report(raw.assign(shoe_size="42"))
    assert report.unknown_columns == ["shoe_size"]
    np.testing.assert_array_equal(x, cleaner.transform(raw))


def test_column_empty_in_training_is_dropped(raw, schema):
    empty = raw.assign(chol="?")
    cleaner = TableCleaner(schema).fit(empty)
    assert "chol" not in cleaner.feature_names_ and "chol" in cleaner.report_.dropped


def test_bad_option_is_refused_with_suggestion():
    with pytest.raises(ConfigError, match="Did you mean 'iqr'"):
        CleaningConfig(outliers="iq")


def test_default_ranges_and_duplicates():
    assert default_range("trestbps") == (40.0, 300.0) and default_range("shoe_size") is None
    frame = pd.DataFrame({"a": ["1", " 1", "2"], "b": ["x", "x", "y"]})
    kept, removed = drop_duplicate_rows(frame)
    assert removed == 1 and len(kept) == 2  # ' 1' equals '1' once whitespace is stripped
