"""Bundles written by older medpredict code still load and predict exactly as they did.

``tests/fixtures/legacy_bundles/`` holds an image, a record and a fused bundle trained with
the code of commit 49cafce (before the bundle schema), the fixed inputs, and the
probabilities that code predicted for them (``make_legacy_bundles.py`` there wrote them all).
The images are at the models' size and on the 8-bit grid, where today's rounding of inputs to
8-bit steps changes nothing, so what is compared is what the bundle decides.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medpredict.inference.predictor import Predictor

LEGACY = Path(__file__).parent / "fixtures" / "legacy_bundles"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())
RECORDS = json.loads((LEGACY / "records.json").read_text())


def _cases(kind: str) -> dict[str, dict[str, object]]:
    images = dict(np.load(LEGACY / "inputs.npz"))
    square = list(images["square16"])
    if kind == "image":
        return {name: {"images": list(array)} for name, array in images.items()}
    if kind == "record":
        return {"records": {"records": RECORDS["record"]}}
    fused = RECORDS["fused"]
    return {
        "both": {"images": square[:2], "records": fused[:2]},
        "image_only": {"images": square[:2]},
        "record_only": {"records": fused[:2]},
        "mixed": {"images": [square[0], None, square[2]], "records": fused},
    }


@pytest.mark.parametrize("kind", ["image", "record", "fused"])
def test_a_legacy_bundle_predicts_what_the_old_code_predicted(kind: str) -> None:
    predictor = Predictor.from_bundle(LEGACY / kind)
    cases = _cases(kind)
    assert set(cases) == set(EXPECTED[kind])
    for name, inputs in cases.items():
        predictions = predictor.predict(**inputs)  # type: ignore[arg-type]
        got = np.array([[p.probabilities[label] for label in predictor.labels] for p in predictions])
        np.testing.assert_allclose(got, np.array(EXPECTED[kind][name]), rtol=0, atol=1e-6, err_msg=f"{kind}/{name}")
