"""Clinical records sent to the service: parsed safely, then checked against the model's own schema.

A record is a flat JSON object of field name to value. Parsing never fails with anything but
a :class:`~medpredict.errors.DataError` (answered 422): malformed JSON, JSON nested deeper than
Python's parser recurses (a 5,000-level array), and the non-standard constants ``NaN``,
``Infinity`` and numbers too large for a float (``1e400``) are kept as :class:`NonFinite`
markers so that the check can name the field they were sent in.

The check (:func:`check_record`) holds a record to what the model's fitted cleaner learned
from the training table (``cleaner.json`` in the bundle), and refuses with 422, naming the
field, rather than guess:

* a field the model does not read, or a field it needs that is absent (send ``null`` for a
  value that was not measured);
* a number field (``numeric``/``ordinal``) given text that is not a number (``"sixty"``), a
  boolean (``true`` is not 1), ``NaN``, an infinity or an overflowing number, or a value
  outside the column's plausibility range (``age`` -50 or 999 with the built-in 0-120);
* a binary or categorical field given a value the training table did not hold
  (the known values are listed).

What the model then does silently is reported instead, in :class:`RecordCheck` (the API's
``record_check``): ``imputed`` lists fields sent as ``null`` (or zero in a "zero means not
measured" column), filled from the training data; ``clipped`` lists values beyond the
training data's outlier fences, pulled back to the fence as the cleaner does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from medpredict.errors import DataError, did_you_mean

_SCALARS = (int, float, str, bool)


@dataclass(frozen=True)
class NonFinite:
    """A JSON number that is not a finite float: ``NaN``, ``Infinity``, ``-Infinity`` or ``1e400``."""

    text: str

    def __str__(self) -> str:
        return self.text


@dataclass
class RecordCheck:
    """What the model will do with a record's values, for the response (JSON via :meth:`to_dict`).

    Attributes:
        imputed: fields with no value (null, or a zero that means "not measured"), filled from
            the training data (median, or the most frequent level).
        clipped: ``{"field", "value", "used"}`` for values beyond the training data's outlier
            fences, pulled back to the fence.
    """

    imputed: list[str] = field(default_factory=list)
    clipped: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"imputed": list(self.imputed), "clipped": [dict(c) for c in self.clipped]}


def load_json(text: str | bytes, what: str) -> Any:
    """Parse JSON ``text``; non-finite numbers become :class:`NonFinite`.

    Raises:
        DataError: not JSON, not UTF-8, or nested too deeply to parse (``what`` names the input).
    """
    try:
        return json.loads(text, parse_constant=NonFinite, parse_float=_float)
    except RecursionError:
        raise DataError(f"The {what} is nested too deeply to read; a record is one flat JSON object.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f'The {what} is not valid JSON ({exc}); send an object such as {{"age": 63}}.') from None


def _float(text: str) -> float | NonFinite:
    value = float(text)
    return value if math.isfinite(value) else NonFinite(text)


def parse_record(value: Any) -> dict[str, Any] | None:
    """A clinical record from JSON text, bytes or an already parsed dict; ``None`` when absent.

    Raises:
        DataError: not a non-empty JSON object of names to numbers, text, booleans or nulls.
    """
    if value is None or value in ("", b""):
        return None
    record = load_json(value, "record") if isinstance(value, str | bytes) else value
    if not isinstance(record, dict) or not record:
        raise DataError("The record must be a non-empty JSON object of column name to value.")
    for key, item in record.items():
        if item is not None and not isinstance(item, _SCALARS + (NonFinite,)):
            raise DataError(
                f"Record field '{key}' must be a number, text, true/false or null; got {type(item).__name__}."
            )
    return record


def record_from_body(raw: str | bytes | None) -> dict[str, Any]:
    """The record of a JSON body ``{"record": {...}}``.

    Raises:
        DataError: the body is not such an object (or nested too deeply, or not JSON).
    """
    payload = load_json(raw or b"null", "body")
    if not isinstance(payload, dict) or "record" not in payload:
        raise DataError('Send a JSON object {"record": {...}}.')
    if not isinstance(payload["record"], dict):
        raise DataError('"record" must be a JSON object of column name to value.')
    record = parse_record(payload["record"])
    if record is None:  # pragma: no cover - parse_record returns a dict for a dict
        raise DataError('"record" must not be empty.')
    return record


def check_record(record: dict[str, Any], cleaner: Any) -> RecordCheck:
    """Hold ``record`` to the fitted ``cleaner``'s columns; see the module docstring for the rules.

    Args:
        record: as returned by :func:`parse_record`.
        cleaner: a fitted :class:`~medpredict.records.cleaning.TableCleaner`.

    Raises:
        DataError: names the first field that breaks a rule, its value and what to send.
    """
    columns: dict[str, dict[str, Any]] = cleaner.columns_
    names = list(columns)
    for key in record:
        if key not in columns:
            raise DataError(
                f"Record field '{key}' is not an input of this model.{did_you_mean(key, names)} "
                f"It reads: {', '.join(names)}."
            )
    absent = [c for c in names if c not in record]
    if absent:
        raise DataError(
            f"The record lacks field(s) the model needs: {', '.join(absent)}. "
            "Send each of them, with null for a value that was not measured."
        )
    check = RecordCheck()
    for column, state in columns.items():
        value = record[column]
        if value is None:
            check.imputed.append(column)
        elif state["kind"] in ("numeric", "ordinal"):
            _check_number(column, value, state, check, clip=cleaner.config.outlier_action == "clip")
        else:
            _check_level(column, value, state, check)
    return check


def _check_number(column: str, value: Any, state: dict[str, Any], check: RecordCheck, *, clip: bool) -> None:
    number = _number(column, value)
    if state.get("range") is not None:
        low, high = state["range"]
        if not low <= number <= high:
            raise DataError(
                f"Record field '{column}' = {value!r} is outside the plausible range {low:g} to {high:g} "
                "this model was built with. Check the value and its unit, or send null if it is unknown."
            )
    if state.get("zero_missing") and number == 0:
        check.imputed.append(column)
        return
    fence = state.get("fence")
    if fence is not None and not fence[0] <= number <= fence[1]:
        if clip:
            used = min(max(number, fence[0]), fence[1])
            check.clipped.append({"field": column, "value": number, "used": round(float(used), 6)})
        else:
            check.imputed.append(column)


def _number(column: str, value: Any) -> float:
    """A finite float from a JSON number or numeric text; refuses booleans, NaN and infinities."""
    if isinstance(value, bool):
        raise DataError(
            f"Record field '{column}' is a number; got {str(value).lower()}. Send 1 or 0 if that is what is meant."
        )
    if isinstance(value, NonFinite):
        raise DataError(f"Record field '{column}' must be a finite number; got {value}. Send null if it is unknown.")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise DataError(
            f"Record field '{column}' must be a number; got {value!r}. Send null if it is unknown."
        ) from None
    except OverflowError:
        raise DataError(f"Record field '{column}' = {value} is too large for a number.") from None
    if not math.isfinite(number):
        raise DataError(f"Record field '{column}' must be a finite number; got {value!r}. Send null if it is unknown.")
    return number


def _check_level(column: str, value: Any, state: dict[str, Any], check: RecordCheck) -> None:
    from medpredict.records.cleaning import canonical_level

    levels = [str(v) for v in state.get("levels", [])]
    shown = "true" if value is True else "false" if value is False else repr(value)
    level = None if isinstance(value, NonFinite) else canonical_level(value)
    if level not in levels:
        raise DataError(
            f"Record field '{column}' must be one of {', '.join(levels)} (the values of the training data); "
            f"got {shown}. Send null if it is unknown."
        )
