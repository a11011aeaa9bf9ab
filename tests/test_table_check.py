"""medpredict data check for tables: the real problems are found and reported readably."""

from __future__ import annotations

import json
import re

import pytest

from medpredict.records.check import check_table

CSV = """patient_id,age,chol,smoker,outcome
p1,63,233,never,0
p2,?,250,current,1
p3,\t41,204,former,0
p4,57,9999,never,1
p4,57,9999,never,1
p5,44,,never,0
p6,52,211,?,0
p7,60,240,current,1
p8,48,198,never,0
"""


@pytest.fixture
def report_dir(tmp_path):
    path = tmp_path / "records.csv"
    path.write_text(CSV)
    out = tmp_path / "check"
    report = check_table(path, target="outcome", out=out)
    return report, out


def test_files_written_and_json_matches(report_dir):
    report, out = report_dir
    for name in ("table_check.html", "table_check.json", "missingness.png", "distributions.png"):
        assert (out / name).stat().st_size > 200
    saved = json.loads((out / "table_check.json").read_text())
    assert saved["findings"] == report["findings"] and saved["rows"] == 9


def test_real_problems_are_found(report_dir):
    report, _ = report_dir
    cols = {c["column"]: c for c in report["columns_detail"]}
    assert cols["age"]["missing_tokens"] == {"?": 1}
    assert cols["age"]["whitespace"] == 1 and cols["age"]["whitespace_examples"] == ["'\\t41'"]
    assert cols["chol"]["missing_tokens"] == {"(empty)": 1}
    assert cols["chol"]["implausible"] == 2  # 9999 mg/dL is outside the default range
    assert cols["smoker"]["missing"] == 1
    dup = report["duplicates"]
    assert dup["exact_rows"] == 1 and dup["ids_repeated"] == 1
    assert report["target"]["counts"] == {"0": 5, "1": 4}
    text = " ".join(report["findings"])
    assert "exact duplicates" in text and "stray spaces or tabs" in text and "plausible range" in text


def test_html_is_readable_and_hides_ids(report_dir):
    _, out = report_dir
    page = (out / "table_check.html").read_text()
    assert "What to look at" in page and "data:image/png;base64," in page
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "p4" not in text and "p1" not in text  # id values never shown


def test_missing_target_is_a_clear_error(tmp_path):
    from medpredict.errors import DataError

    path = tmp_path / "records.csv"
    path.write_text(CSV)
    with pytest.raises(DataError, match="Did you mean 'outcome'"):
        check_table(path, target="outcomes")


def test_target_words_and_spellings_are_reported(tmp_path):
    # 'Unknown' is no class (the issue: it became one, predicted for everyone); 'Yes'/'yes' would be two.
    rows = ["patient_id,age,outcome"] + [f"p{i},{40 + i},{v}" for i, v in enumerate(
        ["yes", "no", "Unknown", "Yes", "no", "yes", "N/A", "no", "unk", "yes", "no", "yes"])]
    path = tmp_path / "t.csv"
    path.write_text("\n".join(rows) + "\n")
    report = check_table(path, target="outcome")
    assert report["target"]["counts"] == {"yes": 4, "no": 4, "Yes": 1} and report["target"]["missing"] == 3
    assert any(line.startswith("Target values that differ only in case or spaces") and "'Yes' (1 rows)" in line
               for line in report["findings"])
