"""One source of truth: the SQL function validates an ECDP body exactly as dispatcher.events does.

The validation cases of ``tests/unit/test_events.py`` (read from its parametrize marks, so a case
added there is fed here too) and the event_from_body cases written inside its tests go to both
``event_from_body`` and ``dispatcher_event_check``: they must accept the same bodies with the same
stored payload, and refuse the others with the same errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from dispatcher.db import get_engine
from dispatcher.events import ValidationError, event_from_body
from tests.unit import test_events as cases

pytestmark = pytest.mark.postgres

FULL = cases.full_custom_event().to_body()


def _camel(name: str) -> str:
    return cases._camel(name)


def _marked(test: Any) -> list[Any]:
    """The arguments of ``test``'s parametrize mark (a tuple each, for more than one name)."""
    (mark,) = [m for m in test.pytestmark if m.name == "parametrize"]
    return [tuple(p.values) if hasattr(p, "values") else p for p in mark.args[1]]


def _field(type_: str, value: object) -> dict[str, Any]:
    return {
        "customEventId": 1,
        "customerId": 1,
        "dataFields": [{"name": "field", "type": type_, "value": value}],
    }


def _bodies() -> Iterator[object]:
    for field, value, _ in _marked(cases.test_over_long_fields_are_named):
        yield FULL | {_camel(field): value}
    for field, value, _ in _marked(cases.test_identifier_rules):
        yield FULL | {_camel(field): value}
    for bad in _marked(cases.test_non_int32_custom_event_id):  # one argument: plain values
        yield FULL | {"customEventId": bad}
        yield {"customEventId": bad, "segments": [1]}
    for segments, _ in _marked(cases.test_bad_segment_lists):
        yield {"customEventId": 1, "segments": segments}
    for type_, value, _ in _marked(cases.test_value_serialization):
        yield _field(type_, value)
        yield _field(type_, _ if isinstance(_, str) else value)
    for type_, value, _ in _marked(cases.test_bad_values):
        yield _field(type_, value)
    # The bodies written inside test_events.py's tests (event_from_body and friends).
    yield FULL
    yield json.loads(cases.SAMPLE_CUSTOM_EVENT_BODY)
    yield json.loads(cases.SAMPLE_SEGMENT_EVENT_BODY)
    yield {"customEventId": 1, "segments": [1, True, 2, "3", 2**31, 4.0]}
    yield {"customEventId": 1, "segments": ["x"] * 250}
    yield {
        "customEventId": True,
        "customerEmail": "x" * 321,
        "customerPhone": "phone",
        "dataFields": [
            {"name": "", "type": "Number", "value": "abc"},
            {"name": "ok", "type": "string", "value": "v", "extra": 1},
            "not a field",
        ],
    }
    yield {"customEventId": 5, "dataFields": [{"name": "a", "type": "String", "value": "b"}]}
    yield {"customEventId": 5, "customerEmail": ""}
    yield {
        "customEventId": 1,
        "customerId": 1,
        "dataFields": [{"name": "a"}, {"type": "URL", "value": 1}],
    }
    yield {"customEventId": 1, "customerId": 1, "dataFields": [{"name": "a", "type": "String"}]}
    yield {"customEventId": 1, "customerId": 1, "unknownKey": 1, "custom_event_id": 2}
    yield {"customEventId": 1, "customerId": 1, "a b'\u00e9\U0001f600": 1, "7": 1, "it's": 1}
    yield {"customEventId": "5", "segments": "1,2", "dataFields": {}}
    yield {
        "customEventId": 1.0,
        "customerEmailMd5": "abc",
        "customerPhone": 600100200,
        "dataFields": [
            {"name": "a", "type": "String", "value": "ok"},
            {"name": "b", "type": "Number", "value": 3},
            {"name": "c", "type": "Strnig", "value": "x"},
            {"name": "d", "type": "Number", "value": "3", "extra": True},
        ],
    }
    yield {}
    yield {"segments": [1]}
    yield {"customEventId": 1, "segments": [1, 5, 15]}
    yield {"customEventId": 1, "segments": [], "customerId": 1}
    yield {"customEventId": 1, "customerId": None, "customerEmail": "a@b.pl", "dataFields": None}
    yield {"customEventId": None, "segments": None}
    yield from ([], "{}", None, 1, True)
    yield {"customEventId": 1, "segments": [2**31 - 1] * (cases.MAX_BODY_BYTES // 11 + 1)}
    yield {"customEventId": 1, "customerCrmId": "\U0001f600" * 64}
    yield {"customEventId": 1, "customerCrmId": "\U0001f600" * 65}
    # Ours: JSON escapes, and the forms of the DateTime, Date, Number and URL rules.
    yield {"customEventId": 1, "customerCrmId": 'q"\\\n\t\x01\x1f\x7f\u2028\u00e9\U0001f600/'}
    for value in (
        "2024-05-01T12:30:00.5+02:00",
        "2024-05-01T12:30:00,123456789",
        "2024-05-01T12",
        "2024-05-01x12:30",
        "2024-05-01T12:30-00:00",
        "2024-05-01T12:30+02",
        "2024-05-01T12:30:00+02:00:00",
        "2024-05-01T12:30:00+02:00:00.000001",
        "2024-05-01T24:00",
        "2024-05-01T12:60",
        "2024-05-01T12:30+24:00",
        "2024-02-30T00:00",
        "0000-01-01T00:00",
        "2024-05-01T12:30z",
        "2024-05-01T12:30 ",
        "2024-05-01T12:30:00.000Z",
        *NARROWER_IN_SQL,
    ):
        yield _field("DateTime", value)
    for value in ("2023-02-29", "2024-13-01", "0001-01-01", "2024-00-10", "2024-04-31"):
        yield _field("Date", value)
    for value in ("-0", "-0.0", "000", "0.000", "-007.50", "1" * 400, "1" * 401, "0" * 401 + ".1"):
        yield _field("Number", value)
    for value in ("tRuE", "true ", "\u0130rue"):
        yield _field("Boolean", value)
    for value in (
        "http://a",
        "http://user:pw@host:8080/p",
        "http://host:65536/",
        "http://host:/",
        "http://[v1.x]/",
        "http://[1.2.3.4]/",
        "http://a]b/",
        "mailto:a@b",
        "http:/a",
        "//host/path",
        "HTTP://Host",
        "https://:80/",
        "http://host:0/",
    ):
        yield _field("URL", value)


def _cases() -> list[Any]:
    found = []
    for body in _bodies():
        try:
            text = json.dumps(body, allow_nan=False)
        except (TypeError, ValueError):
            continue  # not JSON (bytes, Decimal, a date, NaN, a 5,000-digit int): Python only
        found.append(pytest.param(text, id=text[:60]))
    return found


@pytest.fixture(scope="module")
def pg(pg_test_url: str) -> sa.Engine:
    return get_engine(pg_test_url)


def _python(text: str) -> tuple[str | None, list[str]]:
    try:
        event = event_from_body(json.loads(text))
    except ValidationError as exc:
        return None, sorted(exc.errors)
    return event.to_json(), []


def _sql(pg: sa.Engine, text: str) -> tuple[str | None, list[str]] | None:
    """None: PostgreSQL refuses the text as jsonb (a NUL or a lone surrogate in a string)."""
    with pg.connect() as conn:
        try:
            row = conn.execute(
                sa.text("SELECT payload, problems FROM dispatcher_event_check(CAST(:b AS jsonb))"),
                {"b": text},
            ).one()
        except sa.exc.DataError:
            return None
    return row.payload, sorted(row.problems)


# Known and documented differences (see dispatcher.enqueue_sql): forms of DateTime that Python's
# fromisoformat reads and the SQL function does not.
NARROWER_IN_SQL = (
    "20240501T1230",
    "2024-05-01T1230",
    "2024-W18-3",
    "2024-05-01T12:30+0230",
    "2024-05-01T12:30+02:60",
)


@pytest.mark.parametrize("text", _cases())
def test_sql_and_python_agree(pg: sa.Engine, text: str) -> None:
    python = _python(text)
    sql = _sql(pg, text)
    if sql is None:  # jsonb cannot hold it; Python refuses it too
        assert python[0] is None
        return
    if any(form in text for form in NARROWER_IN_SQL):
        assert python[0] is not None, "no longer a difference: drop it from NARROWER_IN_SQL"
        assert sql[0] is None and sql[1] == [f"dataFields[0].value: {_iso_message()}"]
        return
    if re.search(r"[0-9][eE][+-]?[0-9]", text):  # jsonb reads 1e+16 as the integer it equals
        number = re.compile(r"\(got (integer|float)\)")
        python = (python[0], [number.sub("(got number)", e) for e in python[1]])
        sql = (sql[0], [number.sub("(got number)", e) for e in sql[1]])
    assert sql == python


def _iso_message() -> str:
    return "must be an ISO 8601 date-time such as 2024-05-01T12:30:00+02:00"


def test_enough_cases_were_fed() -> None:
    """A change in test_events.py's layout must not silently empty this comparison."""
    assert len(_cases()) > 150


def test_python_rejects_what_jsonb_cannot_hold(pg: sa.Engine) -> None:
    for text in (
        '{"customEventId": 1, "customerCrmId": "a\\u0000"}',
        '{"customEventId": 1, "customerCrmId": "\\ud800"}',
    ):
        assert _sql(pg, text) is None
        assert _python(text)[0] is None


def test_number_spellings_jsonb_loses_are_the_only_number_difference(pg: sa.Engine) -> None:
    """jsonb keeps 1.0 (a float: refused as an id) but reads 1e2 as 100 (then an integer)."""
    assert _sql(pg, '{"customEventId": 1.0, "customerId": 1}') == _python(
        '{"customEventId": 1.0, "customerId": 1}'
    )
    payload, problems = _sql(pg, '{"customEventId": 1e2, "customerId": 1}') or (None, [])
    assert problems == [] and payload == '{"customEventId":100,"customerId":1}'
