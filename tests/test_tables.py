"""Table readers (CSV/TSV, ARFF, Parquet, header-less + names file) and schema inference."""

from __future__ import annotations

import pandas as pd
import pytest

from medpredict.errors import ConfigError, DataError
from medpredict.records.tables import (
    apply_target_rule,
    infer_kind,
    infer_schema,
    load_table,
    normalise_name,
    read_arff,
    read_names_file,
    read_table,
)

ARFF = """@relation kidney
@attribute 'age' numeric
@attribute 'bp'  numeric
@attribute 'sg' {1.005,1.010,1.020}
@attribute 'rbc' {normal,abnormal}
@attribute 'class' {ckd,notckd}
@data
48,80,1.020,?,ckd
7,50,1.010,normal,ckd
62,\t43,1.005,abnormal,notckd,
"""


def test_csv_keeps_cells_as_written(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("Patient ID,Age,Chol\np1,63,?\np2,\t41,233\n")
    frame, declared = read_table(path)
    assert list(frame.columns) == ["patient_id", "age", "chol"]
    assert frame.loc[1, "age"] == "\t41" and frame.loc[0, "chol"] == "?"  # nothing silently lost
    assert declared == {}


def test_tsv_and_parquet(tmp_path):
    tsv = tmp_path / "t.tsv"
    tsv.write_text("a\tb\n1\tx\n2\ty\n")
    assert read_table(tsv)[0].shape == (2, 2)
    pq = tmp_path / "t.parquet"
    pd.DataFrame({"Heart Rate": [70.0, 80.0], "sex": ["F", "M"]}).to_parquet(pq)
    frame, _ = read_table(pq)
    assert list(frame.columns) == ["heart_rate", "sex"] and frame["heart_rate"].iloc[1] == 80.0


def test_headerless_file_takes_names_from_uci_names_file(tmp_path):
    (tmp_path / "x.data").write_text("63.0,1.0,0\n67.0,0.0,2\n")
    (tmp_path / "x.names").write_text(
        "7. Attribute Information:\n -- 1. #3 (age)\n -- 2. #4 (sex)\n -- 3. #58 (num)\n"
    )
    frame, _ = read_table(tmp_path / "x.data")
    assert list(frame.columns) == ["age", "sex", "num"]


def test_numbered_attribute_table_names(tmp_path):
    names = tmp_path / "w.names"
    names.write_text(
        "7. Attribute Information:\n\n   1. Sample code number            id number\n"
        "   2. Clump Thickness               1 - 10\n   3. Class:                        (2 or 4)\n"
    )
    assert read_names_file(names, 3) == ["sample_code_number", "clump_thickness", "class"]


def test_headerless_without_names_gets_placeholders_and_given_names_win(tmp_path):
    path = tmp_path / "y.data"
    path.write_text("1,2\n3,4\n")
    assert list(read_table(path)[0].columns) == ["col_1", "col_2"]
    assert list(read_table(path, names=["a", "b"])[0].columns) == ["a", "b"]
    with pytest.raises(DataError, match="2 columns but 3 names"):
        read_table(path, names=["a", "b", "c"])


def test_arff_with_tabs_and_trailing_comma(tmp_path):
    path = tmp_path / "k.arff"
    path.write_text(ARFF)
    frame, declared = read_arff(path)
    assert frame.shape == (3, 5)
    assert frame.loc[2, "bp"] == "\t43"
    assert declared["rbc"] == ("normal", "abnormal") and declared["age"] == "numeric"
    schema = infer_schema(frame, declared=declared)
    assert schema.target == "class"  # found by name
    assert (
        schema.kinds["rbc"] == "binary"
        and schema.kinds["sg"] == "ordinal"
        and schema.kinds["bp"] == "numeric"
    )


@pytest.mark.parametrize(
    ("name", "values", "kind"),
    [
        ("patient_id", ["a", "b", "c"], "id"),  # id by name, never a feature
        ("sex", ["0", "1", "1", "?"], "binary"),  # two numeric levels
        ("cp", ["1", "2", "3", "4", "2"], "categorical"),  # 3-4 whole-number codes are nominal
        ("grade", [str(v) for v in range(1, 9)], "ordinal"),  # 5-10 whole numbers: a scale
        ("chol", ["233.5", "250", "199", "301", "\t288"], "numeric"),
        ("smoker", ["never", "former", "current"], "categorical"),
        ("visit", ["2021-01-02", "2021-03-04", "2022-05-06"], "date"),
        ("empty", ["?", "", "N/A"], "ignore"),
    ],
)
def test_infer_kind(name, values, kind):
    assert infer_kind(name, pd.Series(values, dtype=object)) == kind


def test_yaml_schema_overrides_inference(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("a,b,num\n1,2,0\n3,4,2\n5,6,1\n")
    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text(
        "target: num>0\ncolumns: {a: categorical}\nzero_means_missing: [b]\nranges: {b: [0, 10]}\n"
    )
    frame, schema = load_table(table, schema=schema_file)
    assert schema.kinds["a"] == "categorical" and schema.target == "num" and schema.target_rule == ">0"
    assert schema.zero_means_missing == ("b",) and schema.ranges["b"] == (0.0, 10.0)
    assert schema.task == "binary"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"colums": {}}, "Did you mean 'columns'"),  # typo in a key
        ({"columns": {"chl": "numeric"}}, "Did you mean 'chol'"),  # unknown column
        ({"columns": {"chol": "numerc"}}, "Did you mean 'numeric'"),  # unknown kind
    ],
)
def test_bad_schema_is_refused_with_suggestion(overrides, message):
    frame = pd.DataFrame({"chol": ["1", "2"], "y": ["0", "1"]}, dtype=object)
    with pytest.raises(ConfigError, match=message):
        infer_schema(frame, target="y", overrides=overrides)


def test_missing_target_column_is_a_clear_error():
    frame = pd.DataFrame({"age": ["1"], "outcome": ["0"]}, dtype=object)
    with pytest.raises(DataError, match="Did you mean 'outcome'"):
        infer_schema(frame, target="outcom")


def test_target_rule_and_name_normalisation():
    values = pd.Series(["0", "2", "?", "1"], dtype=object)
    out = apply_target_rule(values, ">0")
    assert out.iloc[0] == 0 and out.iloc[1] == 1 and pd.isna(out.iloc[2])
    assert normalise_name("'Clump Thickness'") == "clump_thickness"


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "x.xlsx").write_text("x")
    with pytest.raises(DataError, match="Unknown table format"):
        read_table(tmp_path / "x.xlsx")
