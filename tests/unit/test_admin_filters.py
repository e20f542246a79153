"""Unit tests for dispatcher.admin.filters: one Filter type, parsed once from text (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.admin import FILTER_FIELDS, AdminError, Filter, Page, parse_filter, parse_page
from dispatcher.admin.filters import INT32, MAX_PER_PAGE, STATUS_CODES, parse_int
from dispatcher.producer import check_queue as enqueue_rule
from dispatcher.schema import JobStatus

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def refused(texts: dict[str, str], **kwargs: object) -> str | None:
    with pytest.raises(AdminError) as caught:
        parse_filter(texts, NOW, **kwargs)  # type: ignore[arg-type]
    return caught.value.field


def test_every_field_from_text() -> None:
    f = parse_filter(
        {
            "status": "dead",
            "queue": "eu-shop",
            "event_id": " 101 ",
            "customer_email": "Anna@Example.com",
            "status_code": "503",
            "since": "2h",
            "until": "2026-11-27T11:30:00Z",
        },
        NOW,
    )
    assert f == Filter(
        status=JobStatus.DEAD,
        queue="eu-shop",
        event_id=101,
        customer_email="Anna@Example.com",
        status_code=503,
        since=NOW - timedelta(hours=2),
        until=datetime(2026, 11, 27, 11, 30, tzinfo=UTC),
    )
    assert f.status is JobStatus.DEAD


def test_only_the_offered_fields_are_read() -> None:
    f = parse_filter({"queue": "a", "status": "lost", "page": "x"}, NOW, fields=("queue",))
    assert f == Filter(queue="a")


@pytest.mark.parametrize(
    ("texts", "field"),
    [
        ({"status": "Dead"}, "status"),
        ({"queue": "A"}, "queue"),
        ({"queue": "x" * 65}, "queue"),
        ({"event_id": "1e3"}, "event_id"),
        ({"event_id": "١٢"}, "event_id"),  # Arabic-Indic digits: int() takes them, we do not
        ({"event_id": str(INT32[1] + 1)}, "event_id"),
        ({"event_id": "9" * 5000}, "event_id"),
        ({"status_code": str(STATUS_CODES[1] + 1)}, "status_code"),
        ({"customer_email": "a" * 321}, "customer_email"),
        ({"customer_email": "a\tb"}, "customer_email"),
        ({"since": "soon"}, "since"),
        ({"until": "2026-02-30"}, "until"),
        ({"since": "1h", "until": "2h"}, "since"),  # since must come first
        ({"queue": ""}, "queue"),
        ({"queue": "   "}, "queue"),
        # Edge dates: the reads widen the window by an hour, past datetime's range (was a 500).
        ({"since": "0001-01-01"}, "since"),
        ({"until": "9999-12-31T23:59:59Z"}, "until"),
        ({"since": "1899-12-31T23:59:59Z"}, "since"),
        ({"until": "9000-01-01"}, "until"),
    ],
)
def test_refused_naming_the_field(texts: dict[str, str], field: str) -> None:
    assert refused(texts) == field


def test_blank_means_not_given_only_when_asked() -> None:
    texts = {k: " " for k in FILTER_FIELDS}
    assert parse_filter(texts, NOW, blank="ignore") == Filter()
    assert refused(texts) == "status"
    with pytest.raises(ValueError):
        parse_filter({}, NOW, blank="sometimes")


def test_a_queue_name_follows_enqueues_rule() -> None:
    for name in ("default", "eu-shop", "a_1", "9" * 64, "A", "-x", "", "x" * 65, "a b", "é"):
        accepted = not enqueue_rule(name)
        try:
            Filter(queue=name)
        except AdminError as exc:
            assert not accepted and exc.field == "queue"
        else:
            assert accepted
    with pytest.raises(AdminError):
        Filter(queue="default\n")  # QUEUE_NAME's $ lets a trailing newline through


def test_typed_values_are_checked_too() -> None:
    """The Python API refuses what the text surfaces refuse."""
    for kwargs, field in (
        ({"status": "lost"}, "status"),
        ({"event_id": True}, "event_id"),
        ({"event_id": 2**40}, "event_id"),
        ({"status_code": 1000}, "status_code"),
        ({"since": datetime(2026, 1, 1)}, "since"),  # naive
        ({"since": NOW, "until": NOW}, "since"),
    ):
        with pytest.raises(AdminError) as caught:
            Filter(**kwargs)  # type: ignore[arg-type]
        assert caught.value.field == field


@given(
    st.builds(
        Filter,
        status=st.none() | st.sampled_from(list(JobStatus)),
        queue=st.none() | st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True),
        event_id=st.none() | st.integers(*INT32),
        customer_email=st.none() | st.emails().filter(lambda e: len(e) <= 320),
        status_code=st.none() | st.integers(*STATUS_CODES),
        since=st.none()
        | st.datetimes(datetime(1900, 1, 1), datetime(8999, 12, 31), timezones=st.just(UTC)),
    )
)
def test_as_text_reads_back_to_the_same_filter(f: Filter) -> None:
    """What a confirmation page pins (ages as times) means exactly what was shown."""
    assert parse_filter(f.as_text(), NOW, blank="ignore") == f


def test_as_text_pins_ages_to_times() -> None:
    f = parse_filter({"since": "2h", "queue": "q"}, NOW)
    assert f.as_text(("queue", "since", "until")) == {
        "queue": "q",
        "since": "2026-11-27T10:00:00Z",
        "until": "",
    }


def test_parse_int() -> None:
    assert parse_int("n", " +7 ", 0, 9) == 7
    assert parse_int("n", "-3", -5, 0) == -3
    for bad in ("", "-", "--1", "1.0", "1_0", "0x1", " ", "10"):
        with pytest.raises(AdminError) as caught:
            parse_int("n", bad, 0, 9)
        assert caught.value.field == "n"


def test_pages() -> None:
    assert parse_page({}) == Page(50, None)
    assert parse_page({"before": "3", "per_page": "10"}) == Page(10, 3)
    assert parse_page({"before": " "}, blank="ignore") == Page()
    assert parse_page({"page": "7"}) == Page()  # no offsets: the surfaces refuse "page"
    for texts, field in (
        ({"before": "0"}, "before"),
        ({"before": str(2**63)}, "before"),
        ({"per_page": str(MAX_PER_PAGE + 1)}, "per_page"),
        ({"before": ""}, "before"),
    ):
        with pytest.raises(AdminError) as caught:
            parse_page(texts)
        assert caught.value.field == field
