"""Property tests: no input makes the event layer raise anything but ValidationError, and every
valid event survives the trip through its own JSON."""

from __future__ import annotations

from datetime import timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.events import (
    DATA_FIELD_TYPES,
    CustomEvent,
    DataField,
    Event,
    SegmentEvent,
    ValidationError,
    event_from_body,
    event_from_json,
)

# Big inputs are part of the point; a slow example is not a failure.
PROFILE = settings(deadline=None, max_examples=200)

INT32 = st.integers(-(2**31), 2**31 - 1)
BODY_KEYS = (
    "customEventId",
    "customerId",
    "customerEmail",
    "customerEmailMd5",
    "customerEmailSha256",
    "customerPhone",
    "customerCrmId",
    "dataFields",
    "segments",
    "name",
    "type",
    "value",
)

# --- anything at all --------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(DATA_FIELD_TYPES)
    | st.sampled_from(["true", "2024-01-01", "2024-01-01T10:00+01:00", "https://x.pl", "1.5"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(BODY_KEYS) | st.text(max_size=10), inner, max_size=6)
    ),
    max_leaves=30,
)
python_values = (
    json_values
    | st.decimals()
    | st.dates()
    | st.datetimes()
    | st.binary(max_size=10)
    | st.tuples(st.integers(), st.integers())
    | st.sets(st.integers(), max_size=3)
    | st.builds(object)
)


def only_validation_errors(make: Any, *args: Any, **kwargs: Any) -> Event | DataField | None:
    try:
        return make(*args, **kwargs)  # type: ignore[no-any-return]
    except ValidationError as exc:
        assert exc.errors
        assert all(": " in error for error in exc.errors)
        assert str(exc) == "; ".join(exc.errors)
        return None


@PROFILE
@given(json_values)
def test_any_json_value_as_body(body: Any) -> None:
    only_validation_errors(event_from_body, body)


body_like = st.dictionaries(st.sampled_from(BODY_KEYS), json_values, max_size=8)
data_field_like = st.dictionaries(st.sampled_from(["name", "type", "value"]), json_values)


@PROFILE
@given(body_like, st.lists(data_field_like, max_size=4), st.booleans())
def test_body_shaped_dicts(body: dict[str, Any], fields: list[Any], with_fields: bool) -> None:
    if with_fields:
        body["dataFields"] = fields
    event = only_validation_errors(event_from_body, body)
    if event is not None:
        assert isinstance(event, CustomEvent | SegmentEvent)
        assert event_from_json(event.to_json()) == event


@PROFILE
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_any_text_as_json(text: str | bytes) -> None:
    only_validation_errors(event_from_json, text)


@PROFILE
@given(python_values, python_values, python_values)
def test_any_data_field(name: Any, type_: Any, value: Any) -> None:
    only_validation_errors(DataField, name, type_, value)


@PROFILE
@given(st.sampled_from(DATA_FIELD_TYPES), python_values)
def test_any_value_for_a_valid_type(type_: str, value: Any) -> None:
    field = only_validation_errors(DataField, "f", type_, value)
    if field is not None:
        assert isinstance(field, DataField)
        assert isinstance(field.value, str)
        assert DataField("f", type_, field.value) == field  # normalizing is idempotent


custom_event_kwargs = st.fixed_dictionaries(
    {"custom_event_id": python_values},
    optional={
        "customer_id": python_values,
        "customer_email": python_values,
        "customer_email_md5": python_values,
        "customer_email_sha256": python_values,
        "customer_phone": python_values,
        "customer_crm_id": python_values,
        "data_fields": python_values | st.lists(data_field_like | python_values, max_size=3),
    },
)


@PROFILE
@given(custom_event_kwargs)
def test_any_custom_event_arguments(kwargs: dict[str, Any]) -> None:
    only_validation_errors(CustomEvent, **kwargs)


@PROFILE
@given(python_values, python_values | st.lists(python_values, max_size=4), python_values)
def test_any_segment_event_arguments(event_id: Any, segments: Any, data_fields: Any) -> None:
    only_validation_errors(SegmentEvent, event_id, segments, data_fields)


# --- valid events round-trip ------------------------------------------------------------------

# Text the API can carry: no NUL, no lone surrogates.
safe_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
no_space = st.characters(
    blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="@"
)
offsets = st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)).map(
    lambda d: timezone(timedelta(minutes=d // timedelta(minutes=1)))
)
numbers = (
    st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.decimals(-(10**20), 10**20, places=4)
    | st.decimals(-(10**50), 10**50, places=0)
    | st.from_regex(r"-?[0-9]{1,30}(\.[0-9]{1,30})?", fullmatch=True)
)
values_by_type: dict[str, st.SearchStrategy[Any]] = {
    "String": safe_text.filter(lambda s: len(s) <= 1000),
    "Text": safe_text,
    "Number": numbers,
    "Money": numbers,
    "Date": st.dates() | st.dates().map(lambda d: d.isoformat()),
    "DateTime": st.datetimes(timezones=st.none() | offsets)
    | st.datetimes(timezones=st.none() | offsets).map(lambda d: d.isoformat()),
    "Boolean": st.booleans() | st.sampled_from(["true", "false", "TRUE", "False"]),
    "URL": st.from_regex(
        r"https?://[a-z0-9-]{1,20}(\.[a-z]{2,6})?(:[0-9]{2,4})?(/[\w~%.-]{0,10}){0,3}",
        fullmatch=True,
    ),
}
data_fields = st.sampled_from(DATA_FIELD_TYPES).flatmap(
    lambda type_: st.builds(
        DataField,
        safe_text.filter(lambda s: 0 < len(s) <= 100),
        st.just(type_),
        values_by_type[type_],
    )
)
identifiers = st.fixed_dictionaries(
    {},
    optional={
        "customer_id": st.integers(-(2**63), 2**63 - 1),
        "customer_email": st.builds(
            "{}@{}".format,
            st.text(no_space, min_size=1, max_size=64),
            st.text(no_space, min_size=1, max_size=64),
        ),
        "customer_email_md5": st.text("0123456789abcdefABCDEF", min_size=32, max_size=32),
        "customer_email_sha256": st.text("0123456789abcdef", min_size=64, max_size=64),
        "customer_phone": st.from_regex(r"\+?[0-9][0-9 ()-]{0,18}", fullmatch=True),
        "customer_crm_id": safe_text.filter(lambda s: 0 < len(s) <= 64),
    },
).filter(bool)
custom_events = st.builds(
    lambda event_id, ids, fields: CustomEvent(event_id, **ids, data_fields=fields),
    INT32,
    identifiers,
    st.lists(data_fields, max_size=4),
)
segment_events = st.builds(
    SegmentEvent, INT32, st.lists(INT32, min_size=1, max_size=20), st.lists(data_fields, max_size=4)
)


@PROFILE
@given(custom_events | segment_events)
def test_valid_events_round_trip(event: Event) -> None:
    text = event.to_json()
    assert event_from_json(text) == event
    assert event_from_json(text.encode("utf-8")) == event
    assert event_from_body(event.to_body()) == event
    assert event_from_json(text).to_json() == text
