"""History by a time window alone (issue 16): the newest-first scan reads the primary-key range
that holds the window (found by a binary search over ``created_at``, see ``_window_ids``), and
the rows it returns are exactly those of a brute-force query, page after page, also when jobs'
``created_at`` is out of id order (within ``CREATED_MARGIN``: producers' clocks and the time
before their INSERT)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher import admin
from dispatcher.admin import Filter, Page
from dispatcher.admin.reads import CREATED_MARGIN
from dispatcher.schema import jobs

START = datetime(2026, 11, 1, tzinfo=UTC)


def add_jobs(conn: sa.Connection, created: list[datetime], queues: int = 1) -> None:
    """One job per time, inserted (numbered) in list order."""
    conn.execute(
        jobs.insert(),
        [
            {
                "queue": f"q{n % queues}",
                "endpoint": "/scenariocustomevents",
                "custom_event_id": 101,
                "payload": "{}",
                "status": "delivered",
                "next_attempt_at": at,
                "created_at": at,
                "updated_at": at,
            }
            for n, at in enumerate(created)
        ],
    )


def brute_force(conn: sa.Connection, f: Filter) -> list[int]:
    rows = conn.execute(sa.select(jobs.c.id, jobs.c.created_at, jobs.c.queue)).all()
    return sorted(
        (
            int(r.id)
            for r in rows
            if (f.since is None or r.created_at >= f.since)
            and (f.until is None or r.created_at < f.until)
            and (f.queue is None or r.queue == f.queue)
        ),
        reverse=True,
    )


def every_page(bind: Any, f: Filter, size: int) -> list[int]:
    seen: list[int] = []
    page = Page(size=size)
    while True:
        found, more = admin.history_page(bind, f, page)
        seen += [int(j.id) for j in found]
        if not more:
            return seen
        page = Page(size=size, before=int(found[-1].id))


def skewed(gaps: list[int], offsets: list[int]) -> list[datetime]:
    """Times in id order ``gaps`` minutes apart, each moved later by up to the margin: two jobs
    whose created_at differ by more than the margin are numbered in that order, others not
    necessarily."""
    at, created = START, []
    for n, gap in enumerate(gaps):
        at += timedelta(minutes=gap)
        created.append(at + timedelta(minutes=offsets[n % len(offsets)]))
    return created


MARGIN_MINUTES = int(CREATED_MARGIN.total_seconds() // 60)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 30), min_size=1, max_size=80),  # minutes between jobs, in id order
    st.lists(st.integers(0, MARGIN_MINUTES), min_size=1, max_size=80),  # each one's skew
    st.one_of(st.none(), st.integers(-120, 3_000)),  # since, minutes after START
    st.one_of(st.none(), st.integers(1, 3_200)),  # until, minutes after since (or START)
    st.integers(1, 7),  # page size
)
def test_a_window_returns_exactly_the_brute_force_rows(
    gaps: list[int], offsets: list[int], since: int | None, until: int | None, size: int
) -> None:
    from dispatcher.schema import metadata

    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as conn:
        add_jobs(conn, skewed(gaps, offsets))
    begin = START + timedelta(minutes=since or 0)
    f = Filter(
        since=None if since is None else begin,
        until=None if until is None else begin + timedelta(minutes=until),
    )
    with engine.connect() as conn:
        assert every_page(conn, f, size) == brute_force(conn, f)


def test_window_pages_on_both_databases(engine: sa.Engine) -> None:
    # 2,000 jobs ten minutes apart, every seventh created up to half the margin late and every
    # eleventh up to half the margin early: rows out of id order around every window's edges.
    created = []
    for n in range(2_000):
        at = START + timedelta(minutes=10 * n)
        if n % 7 == 0:
            at += CREATED_MARGIN * ((n % 5) / 8)
        elif n % 11 == 0:
            at -= CREATED_MARGIN * ((n % 3) / 4)
        created.append(at)
    with engine.begin() as conn:
        add_jobs(conn, created, queues=3)
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "ORDER BY dispatcher_jobs.id DESC" in statement:
            seen.append(statement)

    windows = [
        Filter(since=START + timedelta(days=3), until=START + timedelta(days=4)),
        Filter(since=START + timedelta(days=3, minutes=5), until=START + timedelta(days=3.1)),
        Filter(since=START + timedelta(days=10)),
        Filter(until=START + timedelta(hours=5)),
        Filter(queue="q1", since=START + timedelta(days=1), until=START + timedelta(days=2)),
        Filter(since=START - timedelta(days=1), until=START + timedelta(minutes=1)),
        Filter(since=START + timedelta(days=20), until=START + timedelta(days=21)),  # after all
    ]
    with engine.connect() as conn:
        expected = [brute_force(conn, f) for f in windows]
    assert all(expected[:-1]) and not expected[-1]
    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        for f, rows in zip(windows, expected, strict=True):
            assert every_page(engine, f, 13) == rows, f
            assert every_page(engine, f, 100) == rows, f
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)
    # Each window's scan is bounded by ids: from below by its since, from above by its until
    # (not for windows reaching past the newest job, nor by the cursor alone).
    assert all("dispatcher_jobs.id >" in s for s in seen if "created_at >=" in s)
    assert sum(s.count("dispatcher_jobs.id < ") == 2 for s in seen) >= 5  # and the cursor


@pytest.mark.parametrize(
    ("times", "window"),
    [
        # A job created 0.2 margins after since, numbered before one 0.7 margins before it: a
        # search for the floor that allowed less than a margin would land between them.
        ((-2, 0.2, -0.7, 0.1, 0.2), (0, None)),
        # A job created 0.2 margins before until, numbered after one 0.7 margins after it.
        ((-3, -2, 0.7, -0.2, 3), (None, 0)),
    ],
)
def test_jobs_out_of_order_at_a_window_edge(
    engine: sa.Engine, times: tuple[float, ...], window: tuple[int | None, int | None]
) -> None:
    """Two jobs whose created_at differ by less than the margin, numbered in the other order
    (a producer's clock ahead, or a slow INSERT), where the binary search lands."""
    edge = START + timedelta(days=1)
    with engine.begin() as conn:
        add_jobs(conn, [edge + CREATED_MARGIN * t for t in times])
    since, until = (None if w is None else edge for w in window)
    f = Filter(since=since, until=until)
    with engine.connect() as conn:
        expected = brute_force(conn, f)
    assert every_page(engine, f, 2) == expected == ([4, 2, 1] if since is None else [5, 4, 2])


def test_lookups_by_email_or_event_id_are_not_bounded_by_ids(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        add_jobs(conn, [START + timedelta(hours=n) for n in range(50)])
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("SELECT"):
            seen.append(statement)

    f = Filter(event_id=101, since=START + timedelta(hours=10), until=START + timedelta(hours=20))
    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        found = admin.history(engine, f)
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)
    assert len(found) == 10
    assert len(seen) == 1, "no binary search: the event id's index finds the rows"


@pytest.mark.parametrize("until", [None, 5])
def test_an_empty_outbox(engine: sa.Engine, until: int | None) -> None:
    f = Filter(since=START, until=None if until is None else START + timedelta(hours=until))
    assert admin.history(engine, f) == []
