"""Unit tests for the time parsing behind --since/--until/--older-than (pure: ``now`` is given)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.times import parse_age, parse_when

NOW = datetime(2026, 11, 27, 12, 30, 15, 250000, tzinfo=UTC)


# --------------------------------------------------------------------------- parse_age


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
        ("4w", timedelta(weeks=4)),
        ("0s", timedelta(0)),
        ("0d", timedelta(0)),
        ("90m", timedelta(minutes=90)),
        ("007d", timedelta(days=7)),
        ("1s", timedelta(seconds=1)),
        ("  30d  ", timedelta(days=30)),
        ("999999999d", timedelta(days=999_999_999)),
        ("999999999999s", timedelta(seconds=999_999_999_999)),
    ],
)
def test_age_forms(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "30",  # a bare number: seconds? days? refuse rather than guess
        "d",
        "30x",
        "30D",  # upper case refused, so "M" can never be read as months
        "15M",
        "2H",
        "30 d",
        "-5d",
        "+5d",
        "1.5h",
        "1e3s",
        "30d2h",
        "2h30m",
        "٣d",  # a non-ASCII digit
        "30days",
        "1y",
        "1mo",
        "1000000000d",  # more days than timedelta holds
        "999999999999w",
        "1234567890123s",  # more than 12 digits
        "2026-11-27",  # a time is not an age
        "' OR 1=1 --",
    ],
)
def test_bad_ages_raise_value_error_naming_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"age"):
        parse_age(text)


def test_age_rejects_non_strings() -> None:
    with pytest.raises(ValueError):
        parse_age(30)  # type: ignore[arg-type]


@given(st.integers(0, 10**6), st.sampled_from("smhdw"))
def test_age_round_trip(amount: int, unit: str) -> None:
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_age(f"{amount}{unit}") == timedelta(seconds=amount * seconds)


# --------------------------------------------------------------------------- parse_when


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", NOW - timedelta(seconds=30)),
        ("15m", NOW - timedelta(minutes=15)),
        ("2h", NOW - timedelta(hours=2)),
        ("7d", NOW - timedelta(days=7)),
        ("4w", NOW - timedelta(weeks=4)),
        ("0s", NOW),
        (" 2h ", NOW - timedelta(hours=2)),
    ],
)
def test_relative_times_mean_that_long_ago(text: str, expected: datetime) -> None:
    assert parse_when(text, NOW) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27", datetime(2026, 11, 27, tzinfo=UTC)),
        ("2026-11-27T10:00:00Z", datetime(2026, 11, 27, 10, tzinfo=UTC)),
        ("2026-11-27T10:00:00z", datetime(2026, 11, 27, 10, tzinfo=UTC)),
        ("2026-11-27t10:00:00z", datetime(2026, 11, 27, 10, tzinfo=UTC)),
        ("2026-11-27T10:00:00", datetime(2026, 11, 27, 10, tzinfo=UTC)),  # naive means UTC
        ("2026-11-27 10:00", datetime(2026, 11, 27, 10, tzinfo=UTC)),
        ("2026-11-27T10:00:00.123456Z", datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-27T10:00:00+02:00", datetime(2026, 11, 27, 8, tzinfo=UTC)),
        ("2026-11-27T01:00:00-05:30", datetime(2026, 11, 27, 6, 30, tzinfo=UTC)),
        ("2026-11-27T00:30:00+01:00", datetime(2026, 11, 26, 23, 30, tzinfo=UTC)),  # day before
        ("20261127T100000Z", datetime(2026, 11, 27, 10, tzinfo=UTC)),  # ISO basic format
        ("  2026-11-27  ", datetime(2026, 11, 27, tzinfo=UTC)),
        ("2030-01-01", datetime(2030, 1, 1, tzinfo=UTC)),  # the future is allowed (--until)
    ],
)
def test_iso_8601(text: str, expected: datetime) -> None:
    parsed = parse_when(text, NOW)
    assert parsed == expected
    assert parsed.tzinfo is UTC
    assert parsed.utcoffset() == timedelta(0)


def test_iso_result_does_not_depend_on_now() -> None:
    later = NOW + timedelta(days=100)
    assert parse_when("2026-11-27T10:00:00Z", NOW) == parse_when("2026-11-27T10:00:00Z", later)


def test_now_in_another_zone_gives_utc() -> None:
    local = NOW.astimezone(timezone(timedelta(hours=9)))
    parsed = parse_when("1h", local)
    assert parsed == NOW - timedelta(hours=1)
    assert parsed.tzinfo is UTC


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="now"):
        parse_when("1h", NOW.replace(tzinfo=None))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "yesterday",
        "now",
        "2026-13-01",
        "2026-11-31",
        "2026-11-27T25:00:00",
        "27.11.2026",
        "11/27/2026",
        "2026-11-27T10:00:00+25:00",
        "30",
        "30D",
        "-2h",
        "1.5h",
        "' OR 1=1 --",
        "x'; DROP TABLE dispatcher_jobs; --",
        "2026-11-27'; --",
        "1000000000d",
    ],
)
def test_bad_times_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_when(text, NOW)


def test_error_message_names_both_forms_and_echoes_the_input() -> None:
    with pytest.raises(ValueError) as info:
        parse_when("yesterday", NOW)
    message = str(info.value)
    assert "ISO 8601" in message and "7d" in message and "'yesterday'" in message


def test_long_input_is_cut_in_the_message() -> None:
    with pytest.raises(ValueError) as info:
        parse_when("x" * 10_000, NOW)
    assert len(str(info.value)) < 400


def test_age_further_back_than_year_one_is_an_error_not_an_overflow() -> None:
    with pytest.raises(ValueError, match="past"):
        parse_when("999999999d", NOW)


def test_offset_pushing_before_year_one_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_when("0001-01-01T00:00:00+01:00", NOW)


@given(st.datetimes(timezones=st.just(UTC)))
def test_iso_round_trip(when: datetime) -> None:
    assert parse_when(when.isoformat(), NOW) == when
    assert parse_when(when.replace(tzinfo=None).isoformat(), NOW) == when


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    st.integers(-23 * 60, 23 * 60),
)
def test_any_offset_converts_to_the_same_instant(when: datetime, offset_minutes: int) -> None:
    zone = timezone(timedelta(minutes=offset_minutes))
    assert parse_when(when.astimezone(zone).isoformat(), NOW) == when


@given(st.text(max_size=40))
def test_never_raises_anything_but_value_error(text: str) -> None:
    try:
        parsed = parse_when(text, NOW)
    except ValueError:
        return
    assert parsed.tzinfo is UTC
