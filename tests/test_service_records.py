"""Records sent to the service: checked against the model's schema (422 naming the field), never guessed.

Issue 13, item 8: a record nested 5,000 levels deep answered 500 and was not audited;
``age`` as "sixty", NaN, Infinity, 1e400, -50 or 999 answered 200 with the score of a missing
age, and ``true`` was read as 1.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from medpredict.service.app import ServiceSettings, create_app  # noqa: E402
from medpredict.service.records import NonFinite, check_record, parse_record  # noqa: E402
from test_service import KEY, _png, record_run  # noqa: E402

H = {"X-API-Key": KEY, "Content-Type": "application/json"}
GOOD = '"age": 63, "chol": 220, "sex": "M"'


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from medpredict.inference.predictor import Predictor

    run = record_run(tmp_path_factory)
    audit = tmp_path_factory.mktemp("audit") / "audit.sqlite"
    settings = ServiceSettings(api_key=KEY, audit_path=str(audit))
    with TestClient(create_app(Predictor.from_bundle(run), settings), raise_server_exceptions=False) as test_client:
        yield test_client


def _post(client, body: str | bytes):
    return client.post("/api/v1/predict/record", content=body if isinstance(body, bytes) else body.encode(), headers=H)


def _audited(client, request_status: int) -> list[dict]:
    return [r for r in client.app.state.audit.recent(500) if r["status"] == request_status]


@pytest.mark.parametrize("route", ["body", "form"])
def test_a_record_nested_5000_levels_is_422_and_audited(client, route) -> None:
    nested = "[" * 5000 + "]" * 5000
    before = len(_audited(client, 422))
    if route == "body":
        res = _post(client, '{"record": ' + nested + "}")
    else:
        res = client.post("/api/v1/predict", data={"record": nested}, headers={"X-API-Key": KEY})
    assert res.status_code == 422, res.text[:300]
    assert "nested too deeply" in res.json()["detail"]
    rows = _audited(client, 422)
    assert len(rows) == before + 1 and rows[0]["error"] == "DataError"


@pytest.mark.parametrize(
    ("age", "reason"),
    [
        ('"sixty"', "must be a number; got 'sixty'"),  # text that is not a number
        ("NaN", "must be a finite number; got NaN"),  # JSON's non-standard NaN
        ("Infinity", "must be a finite number; got Infinity"),
        ("-Infinity", "must be a finite number; got -Infinity"),
        ("1e400", "must be a finite number; got 1e400"),  # overflows a float
        ("-50", "outside the plausible range 0 to 120"),  # impossible age
        ("999", "outside the plausible range 0 to 120"),
        ("true", "is a number; got true"),  # a boolean is not 1
        ("[63]", "must be a number, text, true/false or null"),  # not a plain value
        ('"1' + "0" * 400 + '"', "must be a finite number"),  # numeric text too large for a float
        ("1" + "0" * 400, "is too large for a number"),  # a JSON integer too large for a float
    ],
)
def test_bad_values_are_422_naming_the_field(client, age, reason) -> None:
    res = _post(client, '{"record": {"age": ' + age + ', "chol": 220, "sex": "M"}}')
    assert res.status_code == 422, res.text
    detail = res.json()["detail"]
    assert "'age'" in detail and reason in detail, detail


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ('{"agee": 63, "chol": 220, "sex": "M"}', "'agee' is not an input of this model. Did you mean 'age'?"),
        ('{"age": 63, "sex": "M"}', "lacks field(s) the model needs: chol"),  # absent is not null
        ('{"age": 63, "chol": 220, "sex": "female"}', "'sex' must be one of"),  # not a training value
        ('{"age": 63, "chol": 220, "sex": true}', "got true"),  # a boolean is not a category
    ],
)
def test_fields_are_held_to_the_schema(client, record, reason) -> None:
    res = _post(client, '{"record": ' + record + "}")
    assert res.status_code == 422, res.text
    assert reason in res.json()["detail"]


def test_null_is_imputed_and_said_so(client) -> None:
    full = _post(client, '{"record": {' + GOOD + "}}").json()
    assert full["record_check"] == {"imputed": [], "clipped": []}
    res = _post(client, '{"record": {"age": null, "chol": 220, "sex": "M"}}')
    assert res.status_code == 200, res.text
    assert res.json()["record_check"]["imputed"] == ["age"]
    # Numeric text is read as its number (as the cleaner does), and says nothing was imputed.
    text = _post(client, '{"record": {"age": "63", "chol": 220, "sex": "M"}}').json()
    assert text["prediction"]["score"] == pytest.approx(full["prediction"]["score"])


def test_values_beyond_the_training_fences_are_reported_as_clipped(client) -> None:
    fence = client.app.state.predictor.cleaner.columns_["chol"]["fence"]
    beyond = fence[1] + 50  # within chol's plausible range (40-1000) but past the outlier fence
    assert beyond < 1000
    res = _post(client, f'{{"record": {{"age": 63, "chol": {beyond}, "sex": "M"}}}}')
    assert res.status_code == 200, res.text
    assert res.json()["record_check"]["clipped"] == [{"field": "chol", "value": beyond, "used": round(fence[1], 6)}]


def test_the_form_route_checks_records_the_same_way(client) -> None:
    record = '{"age": "sixty", "chol": 220, "sex": "M"}'
    res = client.post("/api/v1/predict", data={"record": record}, headers={"X-API-Key": KEY})
    assert res.status_code == 422 and "'age'" in res.json()["detail"]


def test_parse_record_keeps_non_finite_numbers_for_the_check() -> None:
    record = parse_record('{"a": NaN, "b": 1e400, "c": -Infinity, "d": 2.5}')
    assert record == {"a": NonFinite("NaN"), "b": NonFinite("1e400"), "c": NonFinite("-Infinity"), "d": 2.5}


def test_an_image_model_refuses_records_before_it_looks_at_them(tmp_path_factory) -> None:
    from medpredict.inference.predictor import Predictor
    from test_service import tiny_run

    settings = ServiceSettings(api_key=KEY)
    with TestClient(create_app(Predictor.from_bundle(tiny_run(tmp_path_factory)), settings)) as image_client:
        res = image_client.post(
            "/api/v1/predict", files={"file": ("x.png", _png())}, data={"record": json.dumps({"age": 1})},
            headers={"X-API-Key": KEY},
        )
    assert res.status_code == 422 and "images only" in res.json()["detail"]


def test_check_record_needs_no_service() -> None:
    class Cleaner:
        columns_ = {"age": {"kind": "numeric", "range": [0.0, 120.0], "fence": None, "zero_missing": False}}

        class config:  # noqa: N801 - mimics the cleaner's attribute
            outlier_action = "clip"

    assert check_record({"age": 40}, Cleaner()).to_dict() == {"imputed": [], "clipped": []}
    with pytest.raises(ValueError, match="'age' = 121"):
        check_record({"age": 121}, Cleaner())
