"""Event models: the documented JSON shape, validation messages, value serialization, parsing."""

from __future__ import annotations

import dataclasses
import json
import pickle
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from enum import IntEnum
from typing import Any

import pytest

from dispatcher.events import (
    DATA_FIELD_TYPES,
    MAX_BODY_BYTES,
    CustomEvent,
    DataField,
    SegmentEvent,
    ValidationError,
    event_from_body,
    event_from_json,
)

# The two sample request bodies, copied verbatim from the API doc
# (seed/ecdp-scenario-custom-events-api.txt).
SAMPLE_CUSTOM_EVENT_BODY = """
{
  "customEventId": 0,
  "customerId": 0,
  "customerEmail": "string",
  "customerEmailMd5": "string",
  "customerEmailSha256": "string",
  "customerPhone": "string",
  "customerCrmId": "string",
  "dataFields": [
    {
      "name": "string",
      "type": "String",
      "value": "string"
    }
  ]
}
"""
SAMPLE_SEGMENT_EVENT_BODY = """
{
  "customEventId": 0,
  "segments": [
    0
  ],
  "dataFields": [
    {
      "name": "string",
      "type": "String",
      "value": "string"
    }
  ]
}
"""

MD5 = "0123456789abcdef" * 2
SHA256 = "0123456789abcdef" * 4


def full_custom_event(**overrides: Any) -> CustomEvent:
    fields: dict[str, Any] = {
        "custom_event_id": 12,
        "customer_id": 345,
        "customer_email": "jan.kowalski@example.com",
        "customer_email_md5": MD5,
        "customer_email_sha256": SHA256,
        "customer_phone": "+48 (22) 123-45-67",
        "customer_crm_id": "CRM-0001",
        "data_fields": [DataField("orderId", "String", "A-17")],
    }
    fields.update(overrides)
    return CustomEvent(**fields)


def shape(value: Any) -> Any:
    """The JSON structure with every leaf replaced by its JSON type; keys keep their order."""
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [shape(item) for item in value]
    return {bool: "boolean", int: "number", float: "number", str: "string"}[type(value)]


def errors_of(excinfo: pytest.ExceptionInfo[ValidationError]) -> tuple[str, ...]:
    return excinfo.value.errors


# --- the documented shape ---------------------------------------------------------------------


def test_custom_event_json_has_the_sample_keys_order_and_types() -> None:
    produced = json.loads(full_custom_event().to_json())
    assert shape(produced) == shape(json.loads(SAMPLE_CUSTOM_EVENT_BODY))


def test_segment_event_json_has_the_sample_keys_order_and_types() -> None:
    event = SegmentEvent(7, [15], [DataField("source", "String", "newsletter")])
    produced = json.loads(event.to_json())
    assert shape(produced) == shape(json.loads(SAMPLE_SEGMENT_EVENT_BODY))
    assert json.loads(SegmentEvent(7, [1, 5, 15]).to_json())["segments"] == [1, 5, 15]


def test_the_samples_themselves_are_rejected_only_for_their_placeholder_values() -> None:
    # "string" is not an email, an md5 or a phone number: the sample is a shape, not data.
    with pytest.raises(ValidationError) as excinfo:
        event_from_json(SAMPLE_CUSTOM_EVENT_BODY)
    fields = {e.split(":", 1)[0] for e in errors_of(excinfo)}
    assert fields == {"customerEmail", "customerEmailMd5", "customerEmailSha256", "customerPhone"}
    assert event_from_json(SAMPLE_SEGMENT_EVENT_BODY) == SegmentEvent(
        0, (0,), (DataField("string", "String", "string"),)
    )


def test_to_json_is_compact_and_keeps_non_ascii() -> None:
    event = CustomEvent(1, customer_crm_id="zażółć", data_fields=[DataField("ä", "Text", "ß")])
    assert event.to_json() == (
        '{"customEventId":1,"customerCrmId":"zażółć",'
        '"dataFields":[{"name":"ä","type":"Text","value":"ß"}]}'
    )


def test_absent_identifiers_and_empty_data_fields_are_left_out() -> None:
    assert CustomEvent(3, customer_email="a@b.pl").to_body() == {
        "customEventId": 3,
        "customerEmail": "a@b.pl",
    }
    assert SegmentEvent(3, (9,)).to_body() == {"customEventId": 3, "segments": [9]}


def test_endpoints() -> None:
    assert CustomEvent.endpoint == "/scenariocustomevents"
    assert SegmentEvent.endpoint == "/scenariocustomevents/withsegments"
    assert full_custom_event().endpoint == CustomEvent.endpoint


def test_sequences_are_stored_as_tuples_and_events_are_frozen_and_hashable() -> None:
    event = SegmentEvent(1, [3, 2, 3], [{"name": "a", "type": "Number", "value": 1}])
    assert event.segments == (3, 2, 3)  # duplicates are allowed
    assert event.data_fields == (DataField("a", "Number", "1"),)
    assert hash(event) == hash(SegmentEvent(1, (3, 2, 3), (DataField("a", "Number", "1"),)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.custom_event_id = 2  # type: ignore[misc]


def test_replace_revalidates() -> None:
    with pytest.raises(ValidationError, match="customer_phone"):
        dataclasses.replace(full_custom_event(), customer_phone="call me")


def test_int_subclasses_are_stored_as_plain_ints() -> None:
    class Kind(IntEnum):
        SIGNUP = 4

    event = SegmentEvent(Kind.SIGNUP, [Kind.SIGNUP])
    assert type(event.custom_event_id) is int
    assert type(event.segments[0]) is int
    assert event.to_json() == '{"customEventId":4,"segments":[4]}'


# --- field validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("customer_email", "a" * 309 + "@example.com", "at most 320 characters (got 321)"),
        ("customer_email_md5", MD5[:31], "must be 32 hexadecimal characters (got 31)"),
        ("customer_email_md5", MD5 + "0", "must be 32 hexadecimal characters (got 33)"),
        ("customer_email_sha256", SHA256[:63], "must be 64 hexadecimal characters (got 63)"),
        ("customer_phone", "1" * 21, "at most 20 characters (got 21)"),
        ("customer_crm_id", "c" * 129, "at most 128 characters (got 129)"),
    ],
)
def test_over_long_fields_are_named(field: str, value: str, expected: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        full_custom_event(**{field: value})
    assert errors_of(excinfo) == (f"{field}: {expected}",)
    # The same value in a body is named by its JSON key.
    body = full_custom_event().to_body() | {_camel(field): value}
    with pytest.raises(ValidationError) as excinfo:
        event_from_body(body)
    assert errors_of(excinfo) == (f"{_camel(field)}: {expected}",)


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.capitalize() for part in rest)


def test_length_limits_are_inclusive() -> None:
    event = full_custom_event(
        customer_email="a" * 308 + "@example.com",
        customer_phone="1" * 20,
        customer_crm_id="c" * 128,
    )
    assert len(event.customer_email or "") == 320


def test_exact_messages() -> None:
    with pytest.raises(ValidationError) as excinfo:
        full_custom_event(customer_email="a" * 309 + "@example.com", customer_email_md5=MD5[:31])
    assert errors_of(excinfo) == (
        "customer_email: at most 320 characters (got 321)",
        "customer_email_md5: must be 32 hexadecimal characters (got 31)",
    )
    assert str(excinfo.value) == "; ".join(errors_of(excinfo))


def test_lengths_count_utf16_code_units() -> None:
    # 64 emoji are 128 UTF-16 code units: the most a .NET max-length of 128 lets through.
    assert full_custom_event(customer_crm_id="😀" * 64).customer_crm_id == "😀" * 64
    with pytest.raises(ValidationError) as excinfo:
        full_custom_event(customer_crm_id="😀" * 65)
    assert errors_of(excinfo) == ("customer_crm_id: at most 128 characters (got 130)",)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("customer_email", "", "must not be empty"),
        ("customer_email", "no-at-sign.example.com", "local-part@domain"),
        ("customer_email", "two@at@example.com", "local-part@domain"),
        ("customer_email", "@example.com", "local-part@domain"),
        ("customer_email", "jan@", "local-part@domain"),
        ("customer_email", "jan kowalski@example.com", "whitespace"),
        ("customer_email", "jan@example.com\n", "whitespace"),
        ("customer_email", 17, "expected a string (got integer)"),
        ("customer_email_md5", "g" * 32, "non-hexadecimal"),
        ("customer_email_sha256", SHA256[:-1] + " ", "non-hexadecimal"),
        ("customer_phone", "", "must not be empty"),
        ("customer_phone", "+48 600.100.200", "only digits"),
        ("customer_phone", "١٢٣", "only digits"),  # Arabic-Indic digits
        ("customer_phone", "+() -", "at least one digit"),
        ("customer_crm_id", "", "must not be empty"),
        ("customer_crm_id", b"crm", "expected a string (got bytes)"),
        ("customer_id", "17", "expected an integer (got string)"),
        ("customer_id", 2**63, "must be an int64"),
        ("customer_id", True, "expected an integer (got boolean)"),
    ],
)
def test_identifier_rules(field: str, value: object, expected: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        full_custom_event(**{field: value})
    (error,) = errors_of(excinfo)
    assert error.startswith(f"{field}: ")
    assert expected in error


def test_identifier_edge_values_are_accepted() -> None:
    event = full_custom_event(
        customer_id=-(2**63),
        customer_email_md5=MD5.upper(),
        customer_email="zażółć@gęślą.pl",
        customer_phone="600100200",
    )
    assert event.customer_email_md5 == MD5.upper()  # kept as given, not lower-cased


@pytest.mark.parametrize(
    "field", ["customer_email", "customer_phone", "customer_crm_id", "customer_email_md5"]
)
@pytest.mark.parametrize(
    ("bad", "expected"),
    [("a\x00b@example.com", "NUL"), ("a\ud800b@example.com", "lone surrogate")],
)
def test_nul_and_lone_surrogates_are_rejected(field: str, bad: str, expected: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        full_custom_event(**{field: bad})
    (error,) = errors_of(excinfo)
    assert error.startswith(f"{field}: ")
    assert expected in error


@pytest.mark.parametrize("bad_id", [2**31, -(2**31) - 1, True, "5", 1.0, None])
def test_non_int32_custom_event_id(bad_id: object) -> None:
    with pytest.raises(ValidationError) as excinfo:
        full_custom_event(custom_event_id=bad_id)
    assert [e.split(":")[0] for e in errors_of(excinfo)] == ["custom_event_id"]
    with pytest.raises(ValidationError) as excinfo:
        SegmentEvent(bad_id, [1])  # type: ignore[arg-type]
    assert [e.split(":")[0] for e in errors_of(excinfo)] == ["custom_event_id"]


def test_int32_bounds_are_accepted() -> None:
    assert full_custom_event(custom_event_id=2**31 - 1).custom_event_id == 2**31 - 1
    assert SegmentEvent(-(2**31), [2**31 - 1, -(2**31)]).custom_event_id == -(2**31)


def test_int32_message() -> None:
    with pytest.raises(ValidationError) as excinfo:
        full_custom_event(custom_event_id=2**31)
    assert errors_of(excinfo) == ("custom_event_id: must be an int32 (-2147483648..2147483647)",)


def test_no_identifier() -> None:
    with pytest.raises(ValidationError) as excinfo:
        CustomEvent(5, data_fields=[DataField("a", "String", "b")])
    assert errors_of(excinfo) == (
        "customer: at least one identifier is required (customer_id, customer_email, "
        "customer_email_md5, customer_email_sha256, customer_phone, customer_crm_id)",
    )


def test_an_invalid_identifier_still_counts_as_given() -> None:
    with pytest.raises(ValidationError) as excinfo:
        CustomEvent(5, customer_email="")
    assert errors_of(excinfo) == ("customer_email: must not be empty",)


@pytest.mark.parametrize(
    ("segments", "expected"),
    [
        ([], "segments: at least one segment id is required"),
        ((), "segments: at least one segment id is required"),
        ("1,2", "segments: expected a list of segment ids (got string)"),
        (b"\x01", "segments: expected a list of segment ids (got bytes)"),
        ({1: 2}, "segments: expected a list of segment ids (got object)"),
        (None, "segments: expected a list of segment ids (got null)"),
        (7, "segments: expected a list of segment ids (got integer)"),
    ],
)
def test_bad_segment_lists(segments: object, expected: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        SegmentEvent(1, segments)  # type: ignore[arg-type]
    assert errors_of(excinfo) == (expected,)


def test_each_bad_segment_is_named_by_index() -> None:
    with pytest.raises(ValidationError) as excinfo:
        SegmentEvent(1, [1, True, 2, "3", 2**31, 4.0])
    assert errors_of(excinfo) == (
        "segments[1]: expected an integer (got boolean)",
        "segments[3]: expected an integer (got string)",
        "segments[4]: must be an int32 (-2147483648..2147483647)",
        "segments[5]: expected an integer (got float)",
    )


def test_several_errors_are_reported_together() -> None:
    with pytest.raises(ValidationError) as excinfo:
        CustomEvent(
            True,  # type: ignore[arg-type]
            customer_email="x" * 321,
            customer_phone="phone",
            data_fields=[
                {"name": "", "type": "Number", "value": "abc"},
                {"name": "ok", "type": "string", "value": "v", "extra": 1},
                "not a field",
            ],
        )
    assert errors_of(excinfo) == (
        "custom_event_id: expected an integer (got boolean)",
        "customer_email: at most 320 characters (got 321)",
        "customer_phone: may contain only digits, '+', '-', '(', ')' and spaces",
        "data_fields[0].name: must not be empty",
        "data_fields[0].value: must be a plain decimal number such as -12.50 (no exponent)",
        "data_fields[1].extra: unknown field",
        "data_fields[1].type: must be one of String, Text, Number, Money, Date, DateTime, "
        "Boolean, URL (got 'string')",
        "data_fields[2]: expected a data field {name, type, value} (got string)",
    )


def test_only_the_first_hundred_errors_are_listed() -> None:
    with pytest.raises(ValidationError) as excinfo:
        SegmentEvent(1, ["x"] * 250)
    errors = errors_of(excinfo)
    assert len(errors) == 101
    assert errors[99] == "segments[99]: expected an integer (got string)"
    assert errors[100] == "errors: 150 more not shown"


def test_serialized_body_over_the_limit_is_rejected() -> None:
    many = [2**31 - 1] * (MAX_BODY_BYTES // 11 + 1)  # 10 digits and a comma each
    with pytest.raises(ValidationError) as excinfo:
        SegmentEvent(1, many)
    (error,) = errors_of(excinfo)
    assert error.startswith("body: serialized event is ")
    assert f"at most {MAX_BODY_BYTES} allowed" in error


def test_validation_error_survives_pickling() -> None:
    exc = ValidationError(["a: one", "b: two"])
    copy = pickle.loads(pickle.dumps(exc))
    assert copy.errors == ("a: one", "b: two")
    assert str(copy) == "a: one; b: two"
    assert isinstance(copy, ValueError)
    assert ValidationError("body: x").errors == ("body: x",)


# --- data fields ------------------------------------------------------------------------------


UTC_PLUS_2 = timezone(timedelta(hours=2))


@pytest.mark.parametrize(
    ("type_", "value", "expected"),
    [
        ("String", "zażółć gęślą jaźń", "zażółć gęślą jaźń"),
        ("String", "", ""),
        ("Text", "line 1\nline 2\ttab", "line 1\nline 2\ttab"),
        ("Number", 3, "3"),
        ("Number", -17, "-17"),
        ("Number", Decimal("1E+3"), "1000"),
        ("Number", Decimal("12.50"), "12.50"),
        ("Number", Decimal("-0.000001"), "-0.000001"),
        ("Number", 0.1, "0.1"),
        ("Number", 1e16, "10000000000000000"),
        ("Number", 1.5e-7, "0.00000015"),
        ("Number", "42", "42"),
        ("Number", "-12.50", "-12.50"),
        ("Number", "007", "7"),
        ("Money", Decimal("19.99"), "19.99"),
        ("Money", 5, "5"),
        ("Money", "0.10", "0.10"),
        ("Date", date(2024, 2, 29), "2024-02-29"),
        ("Date", "2024-02-29", "2024-02-29"),
        ("DateTime", datetime(2024, 5, 1, 12, 30), "2024-05-01T12:30:00"),
        ("DateTime", datetime(2024, 5, 1, 12, 30, tzinfo=UTC_PLUS_2), "2024-05-01T12:30:00+02:00"),
        ("DateTime", datetime(2024, 5, 1, 12, 30, 0, 5), "2024-05-01T12:30:00.000005"),
        ("DateTime", "2024-05-01T12:30:00+02:00", "2024-05-01T12:30:00+02:00"),
        ("DateTime", "2024-05-01 12:30Z", "2024-05-01T12:30:00+00:00"),
        ("DateTime", "2024-05-01", "2024-05-01T00:00:00"),
        ("Boolean", True, "true"),
        ("Boolean", False, "false"),
        ("Boolean", "TRUE", "true"),
        ("Boolean", "False", "false"),
        ("URL", "https://example.com/a?b=c#d", "https://example.com/a?b=c#d"),
        ("URL", "http://[::1]:8080/", "http://[::1]:8080/"),
        ("URL", "HTTPS://EXAMPLE.COM", "HTTPS://EXAMPLE.COM"),
    ],
)
def test_value_serialization(type_: str, value: object, expected: str) -> None:
    field = DataField("field", type_, value)
    assert field.value == expected
    assert field.to_body() == {"name": "field", "type": type_, "value": expected}
    assert DataField("field", type_, expected) == field  # normalizing twice changes nothing


@pytest.mark.parametrize(
    ("type_", "value", "expected"),
    [
        ("String", 5, "expected a string (got integer)"),
        ("String", "x" * 4001, "at most 4000 characters"),
        ("Text", "x" * 65537, "at most 65536 characters"),
        ("String", "a\x00b", "NUL"),
        ("Text", "a\udc00b", "lone surrogate"),
        ("Number", True, "expected a number (got boolean)"),
        ("Number", float("nan"), "finite"),
        ("Number", float("inf"), "finite"),
        ("Number", Decimal("NaN"), "finite"),
        ("Number", Decimal("sNaN"), "finite"),
        ("Money", Decimal("-Infinity"), "finite"),
        ("Number", "1e3", "plain decimal"),
        ("Number", "1,5", "plain decimal"),
        ("Number", "1.", "plain decimal"),
        ("Number", ".5", "plain decimal"),
        ("Number", "+1", "plain decimal"),
        ("Number", " 1", "plain decimal"),
        ("Number", "١٢", "plain decimal"),
        ("Number", "", "plain decimal"),
        ("Number", Decimal("1E+1000000"), "at most 400 digits"),
        ("Number", Decimal("1E-1000000"), "at most 400 digits"),
        ("Number", 10**400, "at most 400 digits"),
        pytest.param("Number", 10**5000, "at most 400 digits", id="beyond-str-limit"),
        ("Number", [1], "expected a number or a decimal string (got list)"),
        ("Date", datetime(2024, 1, 1), "not a datetime"),
        ("Date", "2024-02-30", "YYYY-MM-DD"),
        ("Date", "20240101", "YYYY-MM-DD"),
        ("Date", "\uff12\uff10\uff12\uff14-01-01", "YYYY-MM-DD"),  # fullwidth digits
        ("Date", 20240101, "got integer"),
        ("DateTime", "yesterday", "ISO 8601"),
        ("DateTime", "2024-05-01T25:00", "ISO 8601"),
        ("DateTime", date(2024, 1, 1), "got date"),
        ("DateTime", datetime(2024, 1, 1, tzinfo=timezone(timedelta(seconds=30))), "minutes"),
        ("DateTime", "2024-01-01T00:00:00+00:00:30", "minutes"),
        ("Boolean", "yes", "'true' or 'false'"),
        ("Boolean", 1, "'true' or 'false'"),
        ("URL", "ftp://example.com/", "http:// or https://"),
        ("URL", "https://", "http:// or https://"),
        ("URL", "example.com", "http:// or https://"),
        ("URL", "https://exa mple.com", "whitespace"),
        ("URL", "https://example.com/\n", "whitespace"),
        ("URL", "http://[::1", "not a valid URL"),
        ("URL", "http://example.com:port/", "not a valid URL"),
        ("URL", "https://example.com/" + "a" * 2029, "at most 2048 characters"),
        ("URL", "", "must not be empty"),
    ],
)
def test_bad_values(type_: str, value: object, expected: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        DataField("field", type_, value)
    (error,) = errors_of(excinfo)
    assert error.startswith("value: ")
    assert expected in error


def test_data_field_name_and_type_rules() -> None:
    with pytest.raises(ValidationError) as excinfo:
        DataField("", "number", 1)
    assert errors_of(excinfo) == (
        "name: must not be empty",
        "type: must be one of String, Text, Number, Money, Date, DateTime, Boolean, URL "
        "(got 'number')",
    )
    with pytest.raises(ValidationError, match=r"^name: at most 255 characters \(got 256\)$"):
        DataField("n" * 256, "String", "v")
    with pytest.raises(ValidationError, match=r"^type: expected a string \(got null\)$"):
        DataField("n", None, "v")  # type: ignore[arg-type]
    assert set(DATA_FIELD_TYPES) == {
        "String",
        "Text",
        "Number",
        "Money",
        "Date",
        "DateTime",
        "Boolean",
        "URL",
    }


def test_data_field_mappings_need_exactly_name_type_value() -> None:
    with pytest.raises(ValidationError) as excinfo:
        CustomEvent(1, customer_id=1, data_fields=[{"name": "a"}, {"type": "URL", "value": 1}])
    assert errors_of(excinfo) == (
        "data_fields[0].type: required",
        "data_fields[1].name: required",
        "data_fields[1].value: expected a string (got integer)",
    )
    with pytest.raises(ValidationError) as excinfo:
        CustomEvent(1, customer_id=1, data_fields=[{"name": "a", "type": "String"}])
    assert errors_of(excinfo) == ("data_fields[0].value: required",)


@pytest.mark.parametrize(
    ("data_fields", "expected"),
    [
        ({}, "data_fields: expected a list of data fields (got object)"),
        ("abc", "data_fields: expected a list of data fields (got string)"),
        (5, "data_fields: expected a list of data fields (got integer)"),
    ],
)
def test_data_fields_must_be_a_sequence(data_fields: object, expected: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        CustomEvent(1, customer_id=1, data_fields=data_fields)  # type: ignore[arg-type]
    assert errors_of(excinfo) == (expected,)


def test_data_fields_none_means_none() -> None:
    assert CustomEvent(1, customer_id=1, data_fields=None).data_fields == ()  # type: ignore[arg-type]


def test_equal_meaning_means_equal_fields() -> None:
    assert DataField("n", "Number", 3) == DataField("n", "Number", "3")
    assert DataField("n", "Number", Decimal("3")) == DataField("n", "Number", 3)
    assert DataField("b", "Boolean", True) == DataField("b", "Boolean", "True")


# --- event_from_body --------------------------------------------------------------------------


def test_from_body_round_trips_a_full_event() -> None:
    event = full_custom_event()
    assert event_from_body(event.to_body()) == event
    segment_event = SegmentEvent(1, [2], [DataField("d", "Date", date(2024, 1, 1))])
    assert event_from_body(json.loads(segment_event.to_json())) == segment_event


def test_from_body_unknown_keys() -> None:
    body = {"customEventId": 1, "customerId": 1, "unknownKey": 1, "custom_event_id": 2}
    with pytest.raises(ValidationError) as excinfo:
        event_from_body(body)
    # snake_case spellings are unknown in a body, and are reported as written.
    assert errors_of(excinfo) == ("unknownKey: unknown field", "custom_event_id: unknown field")


def test_from_body_odd_keys_are_quoted() -> None:
    with pytest.raises(ValidationError) as excinfo:
        event_from_body({"customEventId": 1, "customerId": 1, "a b\ud800": 1, 7: 1})
    assert errors_of(excinfo) == ("'a b\\ud800': unknown field", "7: unknown field")


def test_from_body_wrong_types_are_named_in_camel_case() -> None:
    body = {"customEventId": "5", "segments": "1,2", "dataFields": {}}
    with pytest.raises(ValidationError) as excinfo:
        event_from_body(body)
    assert errors_of(excinfo) == (
        "customEventId: expected an integer (got string)",
        "segments: expected a list of segment ids (got string)",
        "dataFields: expected a list of data fields (got object)",
    )


def test_from_body_nested_paths_are_named_in_camel_case() -> None:
    body = {
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
    with pytest.raises(ValidationError) as excinfo:
        event_from_body(body)
    assert errors_of(excinfo) == (
        "customEventId: expected an integer (got float)",
        "customerEmailMd5: must be 32 hexadecimal characters (got 3)",
        "customerPhone: expected a string (got integer)",
        "dataFields[1].value: expected a string (got integer)",
        "dataFields[2].type: must be one of String, Text, Number, Money, Date, DateTime, "
        "Boolean, URL (got 'Strnig')",
        "dataFields[3].extra: unknown field",
    )


def test_from_body_missing_required_and_no_identifier() -> None:
    with pytest.raises(ValidationError) as excinfo:
        event_from_body({})
    assert errors_of(excinfo) == (
        "customEventId: required",
        "customer: at least one identifier is required (customerId, customerEmail, "
        "customerEmailMd5, customerEmailSha256, customerPhone, customerCrmId)",
    )
    with pytest.raises(ValidationError) as excinfo:
        event_from_body({"segments": [1]})
    assert errors_of(excinfo) == ("customEventId: required",)


def test_from_body_segments_key_selects_segment_event() -> None:
    assert event_from_body({"customEventId": 1, "segments": [1, 5, 15]}) == SegmentEvent(
        1, (1, 5, 15)
    )
    with pytest.raises(ValidationError) as excinfo:
        event_from_body({"customEventId": 1, "segments": [], "customerId": 1})
    assert errors_of(excinfo) == (
        "customerId: unknown field",
        "segments: at least one segment id is required",
    )


def test_from_body_null_means_not_given_for_optional_fields() -> None:
    body = {"customEventId": 1, "customerId": None, "customerEmail": "a@b.pl", "dataFields": None}
    assert event_from_body(body) == CustomEvent(1, customer_email="a@b.pl")
    with pytest.raises(ValidationError) as excinfo:
        event_from_body({"customEventId": None, "segments": None})
    assert errors_of(excinfo) == (
        "customEventId: expected an integer (got null)",
        "segments: expected a list of segment ids (got null)",
    )


@pytest.mark.parametrize(
    ("body", "kind"),
    [([], "list"), ("{}", "string"), (None, "null"), (1, "integer"), (True, "boolean")],
)
def test_from_body_non_object(body: object, kind: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        event_from_body(body)
    assert errors_of(excinfo) == (f"body: expected a JSON object (got {kind})",)


def test_from_body_size_error_keeps_the_body_name() -> None:
    body = {"customEventId": 1, "segments": [2**31 - 1] * (MAX_BODY_BYTES // 11 + 1)}
    with pytest.raises(ValidationError, match=r"^body: serialized event is \d+ bytes"):
        event_from_body(body)


# --- event_from_json --------------------------------------------------------------------------


def test_from_json_accepts_str_and_bytes() -> None:
    event = full_custom_event(customer_crm_id="zażółć")
    assert event_from_json(event.to_json()) == event
    assert event_from_json(event.to_json().encode()) == event
    assert event_from_json(bytearray(event.to_json().encode())) == event


def test_from_json_not_utf8() -> None:
    body = b'{"customEventId": 1, "customerCrmId": "\xff"}'
    with pytest.raises(ValidationError) as excinfo:
        event_from_json(body)
    assert errors_of(excinfo) == (f"body: not valid UTF-8 (at byte {body.index(0xFF)})",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "Expecting value"),
        ("{", "Expecting property name"),
        ('{"customEventId": 1,}', "Expecting property name"),
        ("{'customEventId': 1}", "Expecting property name"),
        ('{"customEventId": NaN}', "NaN is not allowed"),
        ('{"customEventId": 1, "customerId": -Infinity}', "-Infinity is not allowed"),
        ('{"customEventId": 1, "customEventId": 2}', "duplicate key 'customEventId'"),
        ('{"customEventId": 1, "customerId": ' + "9" * 5000 + "}", "4300"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"a": 1} x', "Extra data"),
    ],
)
def test_from_json_invalid_json(text: str, expected: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        event_from_json(text)
    (error,) = errors_of(excinfo)
    assert error.startswith("body: not valid JSON: ")
    assert expected in error


def test_from_json_ten_megabyte_line() -> None:
    line = '{"customEventId": 1, "customerCrmId": "' + "x" * (10 * 1024 * 1024) + '"}'
    for text in (line, line.encode()):
        with pytest.raises(ValidationError) as excinfo:
            event_from_json(text)
        assert errors_of(excinfo) == (f"body: at most {MAX_BODY_BYTES} bytes (got {len(line)})",)


def test_from_json_size_is_counted_in_utf8_bytes() -> None:
    # 600,000 two-byte characters: under the limit in characters, over it in bytes.
    text = '{"customEventId": 1, "customerCrmId": "' + "ż" * 600_000 + '"}'
    size = len(text.encode())
    assert len(text) < MAX_BODY_BYTES < size
    with pytest.raises(ValidationError, match=rf"^body: at most 1048576 bytes \(got {size}\)$"):
        event_from_json(text)


def test_from_json_reports_field_errors_in_camel_case() -> None:
    with pytest.raises(ValidationError) as excinfo:
        event_from_json('{"customEventId": 1, "customerEmail": "a\\u0000b@c.pl"}')
    assert errors_of(excinfo) == ("customerEmail: must not contain NUL characters",)
    with pytest.raises(ValidationError) as excinfo:
        event_from_json('{"customEventId": 1, "customerCrmId": "\\ud800"}')
    assert errors_of(excinfo) == (
        "customerCrmId: must be valid Unicode (contains a lone surrogate, not encodable as UTF-8)",
    )


def test_from_json_wrong_argument_type_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        event_from_json(123)  # type: ignore[arg-type]
