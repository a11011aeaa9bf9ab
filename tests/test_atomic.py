"""atomic.write_json writes valid JSON whatever NumPy or float values it is given."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medpredict.atomic import write_json


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.float32(0.5), 0.5),  # was written as the string "0.5"
        (np.float64(0.25), 0.25),
        (np.int64(3), 3),
        (np.bool_(True), True),
        (np.array([[1, 2], [3, 4]], dtype=np.uint8), [[1, 2], [3, 4]]),
        (float("nan"), None),  # NaN is not JSON
        (float("inf"), None),  # neither is Infinity
        (np.float32("-inf"), None),
        ((1.0, np.nan), [1.0, None]),
        (Path("runs/x"), "runs/x"),  # what JSON does not know goes as its str()
    ],
)
def test_values_become_plain_json(tmp_path: Path, value: object, expected: object) -> None:
    path = write_json(tmp_path / "out.json", {"value": value})
    text = path.read_text()
    loaded = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))
    assert loaded == {"value": expected}
    assert type(loaded["value"]) is type(expected)


def test_numpy_keys_and_nested_values(tmp_path: Path) -> None:
    path = write_json(tmp_path / "out.json", {np.int64(1): {"auc": np.float32(0.75), "ci": [np.nan, math.inf]}})
    assert json.loads(path.read_text()) == {"1": {"auc": 0.75, "ci": [None, None]}}
