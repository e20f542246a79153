"""A queue's page and pausing: the operator service's activity query (exact counts and
percentiles per bucket on both databases, bounded by a primary-key range), the charts drawn
from it, the overview's sparklines, and Pause from the page (confirm, CSRF) and from /api."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher import admin
from dispatcher.admin.activity import _id_floor, _percentile
from dispatcher.schema import attempts, jobs
from dispatcher.web.charts import counts_chart, sparkline, times_chart

from .conftest import AUTH, Outbox, log_in

NOW = datetime(2026, 11, 30, 12, 0, 30, tzinfo=UTC)


def add_job(conn: sa.Connection, queue: str, at: datetime) -> int:
    return int(
        conn.execute(
            jobs.insert().values(
                queue=queue,
                endpoint="/scenariocustomevents",
                custom_event_id=101,
                payload="{}",
                status="delivered",
                next_attempt_at=at,
                created_at=at,
                updated_at=at,
            )
        ).inserted_primary_key[0]
    )


def add_attempts(conn: sa.Connection, job: int, at: datetime, *tries: tuple[str, int]) -> None:
    for outcome, duration in tries:
        conn.execute(
            attempts.insert().values(
                job_id=job, started_at=at, duration_ms=duration, outcome=outcome, counted=True
            )
        )


@pytest.fixture
def history(engine: sa.Engine) -> None:
    """Attempts of queue ``shop`` (and of ``other``) at known times and durations."""
    with engine.begin() as conn:
        old = add_job(conn, "shop", NOW - timedelta(days=3))
        for _ in range(40):  # long before any window: the id floor skips them
            add_attempts(conn, old, NOW - timedelta(days=3), ("delivered", 5))
        job = add_job(conn, "shop", NOW - timedelta(hours=2))
        add_attempts(conn, job, NOW - timedelta(hours=2), ("retry", 300), ("delivered", 100))
        add_attempts(
            conn,
            job,
            datetime(2026, 11, 30, 11, 59, 10, tzinfo=UTC),
            *[("delivered", ms) for ms in (10, 20, 30, 40)],
            ("retry", 100),
            ("dead", 1000),
        )
        add_attempts(conn, job, datetime(2026, 11, 30, 11, 1, 0, tzinfo=UTC), ("pause", 7))
        add_attempts(conn, job, datetime(2026, 11, 30, 12, 0, 29, tzinfo=UTC), ("delivered", 50))
        add_attempts(conn, job, datetime(2026, 11, 30, 12, 1, 0, tzinfo=UTC), ("delivered", 1))
        other = add_job(conn, "other", NOW)
        add_attempts(conn, other, NOW - timedelta(minutes=1), ("dead", 9999), ("delivered", 1))


def test_the_last_hour_per_minute(engine: sa.Engine, history: None) -> None:
    a = admin.activity(engine, "shop", NOW, "1h")
    assert (a.step_seconds, len(a.buckets)) == (60, 60)
    assert a.start == datetime(2026, 11, 30, 11, 1, tzinfo=UTC)
    assert a.end == datetime(2026, 11, 30, 12, 1, tzinfo=UTC), "the minute holding now is last"
    busy = {b.start.strftime("%H:%M"): b for b in a.buckets if b.attempts}
    assert set(busy) == {"11:01", "11:59", "12:00"}, "12:01 is the future, 10:00 too old"
    minute = busy["11:59"]
    assert (minute.delivered, minute.retried, minute.dead, minute.paused) == (4, 1, 1, 0)
    # percentile_cont over 10, 20, 30, 40, 100, 1000: positions 2.5 and 4.95.
    assert (minute.p50_ms, minute.p99_ms) == (35.0, 955.0)
    assert busy["11:01"].paused == 1 and busy["11:01"].p50_ms == 7.0
    assert (busy["12:00"].delivered, busy["12:00"].p99_ms) == (1, 50.0)
    assert all(b.p50_ms is None for b in a.buckets if not b.attempts)
    assert a.as_dict()["buckets"][58]["p99_ms"] == 955.0


def test_the_last_day_per_quarter_hour(engine: sa.Engine, history: None) -> None:
    a = admin.activity(engine, "shop", NOW, "24h")
    assert (a.step_seconds, len(a.buckets)) == (900, 96)
    assert a.end == datetime(2026, 11, 30, 12, 15, tzinfo=UTC)
    busy = {b.start.strftime("%H:%M"): b for b in a.buckets if b.attempts}
    assert set(busy) == {"10:00", "11:00", "11:45", "12:00"}
    assert (busy["10:00"].delivered, busy["10:00"].retried) == (1, 1)
    assert busy["10:00"].p50_ms == 200.0 and busy["10:00"].p99_ms == 298.0
    quarter = busy["11:45"]
    assert (quarter.delivered, quarter.dead, quarter.p50_ms) == (4, 1, 35.0)
    assert busy["12:00"].delivered == 2, "12:00:29 and 12:01:00 are in the window now"


def test_queries_are_bounded_and_checked(engine: sa.Engine, history: None) -> None:
    with engine.connect() as conn:
        floor = _id_floor(conn, NOW - timedelta(hours=1))

        def first_since(at: datetime) -> int:
            query = sa.select(sa.func.min(attempts.c.id)).where(attempts.c.started_at >= at)
            return int(conn.execute(query).scalar_one())

        # Everything started before the window and its margin is skipped by its id (the 40 of
        # three days ago and the two of two hours ago); nothing of the window is.
        assert floor == first_since(NOW - timedelta(hours=1, minutes=15)) - 1
        assert floor == first_since(NOW - timedelta(hours=1)) - 1
        assert (
            _id_floor(conn, NOW - timedelta(hours=3)) == first_since(NOW - timedelta(hours=3)) - 1
        )
    with engine.connect() as conn:
        assert _id_floor(conn, NOW - timedelta(days=30)) == 0
    assert admin.delivered_per_minute(engine, NOW) == {
        "other": tuple(1 if i == 58 else 0 for i in range(60)),
        "shop": tuple({58: 4, 59: 1}.get(i, 0) for i in range(60)),
    }
    with pytest.raises(admin.AdminError, match="expected one of 1h, 24h") as refused:
        admin.activity(engine, "shop", NOW, "7d")
    assert refused.value.field == "window"
    with pytest.raises(admin.AdminError) as refused:
        admin.activity(engine, "Not a queue", NOW)
    assert refused.value.field == "queue"
    empty = admin.activity(engine, "nothing-here", NOW)
    assert not any(b.attempts for b in empty.buckets)


def test_the_queue_page_draws_its_charts(client: httpx.Client, outbox: Outbox) -> None:
    page = client.get("/queues/default", headers=AUTH)
    assert page.status_code == 200
    text = page.text
    for chart in ("counts-1h", "times-1h", "counts-24h", "times-24h"):
        svg = re.search(rf'<svg class="chart" id="{chart}" role="img"[^>]*>', text)
        assert svg is not None, chart
        assert f'aria-labelledby="{chart}-title {chart}-desc"' in svg.group(0)
        assert f'<title id="{chart}-title">' in text and f'<desc id="{chart}-desc">' in text
    # The outbox's attempts: 3 delivered, 4 retried (three 503s, a 500), 5 dead-lettered.
    assert "3 delivered, 4 retried, 5 dead-lettered in all" in text
    assert 'class="bar-delivered"' in text and 'class="line-p99"' in text
    assert re.search(r'<details id="numbers-1h">\s*<summary>The numbers \(1 of 60', text)
    assert "<script" not in text and " src=" not in text, "nothing runs, nothing is fetched"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert client.get("/queues/eu-shop", headers=AUTH).text.count('id="resume-eu-shop"') == 1
    assert client.get("/queues/nowhere", headers=AUTH).status_code == 404
    assert client.get("/queues/Not%20a%20queue", headers=AUTH).status_code == 404
    assert client.get("/queues/default").status_code == 303, "the token is needed"


def test_the_overview_links_a_sparkline_per_queue(client: httpx.Client, outbox: Outbox) -> None:
    text = client.get("/", headers=AUTH).text
    for name, delivered in (("default", 3), ("eu-shop", 0)):
        link = re.search(
            rf'<a href="/queues/{name}" id="spark-{name}" class="spark">(.*?)</a>', text
        )
        assert link is not None, name
        assert 'class="sparkline" role="img"' in link.group(1)
        assert f"Queue {name}: {delivered} delivered in the last hour" in link.group(1)


def test_pause_from_the_page(client: httpx.Client, outbox: Outbox, engine: sa.Engine) -> None:
    csrf = log_in(client)
    overview = client.get("/").text
    assert 'id="pause-default"' in overview and 'id="pause-eu-shop"' not in overview
    confirm = client.get("/queues/default/pause", params={"reason": "key rotation"})
    assert confirm.status_code == 200
    assert "<h1>Pause queue default?</h1>" in confirm.text
    assert 'value="key rotation"' in confirm.text and 'name="csrf"' in confirm.text
    assert not admin.stats(engine, NOW)["default"].paused, "asking to confirm changes nothing"

    form = {"reason": "key rotation"}
    assert client.post("/queues/default/pause", data=form).status_code == 403
    assert client.post("/queues/default/pause", data={**form, "csrf": "0" * 64}).status_code == 403
    refused = client.post("/queues/default/pause", data={"reason": "  ", "csrf": csrf})
    assert refused.status_code == 400 and 'data-field="reason"' in refused.text
    long = client.post("/queues/default/pause", data={"reason": "x" * 501, "csrf": csrf})
    assert long.status_code == 400 and 'data-field="reason"' in long.text
    assert "at most 500 characters" in long.text
    assert not admin.stats(engine, NOW)["default"].paused
    assert (
        client.post("/queues/Not%20a%20queue/pause", data={**form, "csrf": csrf}).status_code == 404
    )

    done = client.post("/queues/default/pause", data={**form, "csrf": csrf})
    assert done.status_code == 303 and done.headers["location"] == "/?paused=default"
    state = admin.stats(engine, NOW)["default"]
    assert state.paused and state.pause_reason == "key rotation"
    assert "Queue default paused" in client.get("/?paused=default").text
    # From the queue's page, back to it.
    client.post("/queues/default/resume", data={"csrf": csrf, "back": "queue"})
    back = client.post("/queues/default/pause", data={**form, "csrf": csrf, "back": "queue"})
    assert back.headers["location"] == "/queues/default?paused=default"
    # The API with the cookie needs the CSRF header too.
    api = "/api/queues/eu-shop/pause"
    assert client.post(api, json=form).status_code == 403
    assert client.post(api, json=form, headers={"X-CSRF-Token": csrf}).status_code == 200


def test_pause_through_the_api(client: httpx.Client, outbox: Outbox, engine: sa.Engine) -> None:
    def pause(queue: str, **body: object) -> httpx.Response:
        return client.post(f"/api/queues/{queue}/pause", json=body, headers=AUTH)

    assert pause("default", reason="key rotation").json() == {"queue": "default", "paused": True}
    again = pause("default", reason="again").json()
    assert again == {"queue": "default", "paused": False}, "already paused: nothing changed"
    assert admin.stats(engine, NOW)["default"].pause_reason == "key rotation", "the first is kept"
    for queue, body, field in (
        ("Not%20a%20queue", {"reason": "x"}, "queue"),
        ("default", {}, "reason"),
        ("default", {"reason": " "}, "reason"),
        ("default", {"reason": 7}, "reason"),
        ("default", {"reason": "x" * 501}, "reason"),  # at most 500 characters
        ("default", {"reason": "x", "why": "y"}, "why"),
    ):
        response = pause(queue, **body)
        assert response.status_code == 400 and response.json()["field"] == field, body
    for raw in (b"[]", b"{", b'"x"'):
        response = client.post("/api/queues/idle/pause", content=raw, headers=AUTH)
        assert response.status_code == 400
    assert client.post("/api/queues/idle/pause", json={"reason": "x"}).status_code == 401
    assert "idle" not in admin.stats(engine, NOW)


@given(st.lists(st.integers(0, 30_000), min_size=1, max_size=60), st.sampled_from([0.5, 0.99]))
def test_percentiles_from_a_frequency_table_are_percentile_cont(
    durations: list[int], fraction: float
) -> None:
    """SQLite's path: the same linear interpolation as PostgreSQL's percentile_cont."""
    ordered = sorted(durations)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    expected = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    table = sorted(Counter(durations).items())
    assert _percentile(table, fraction) == pytest.approx(expected)


def test_the_charts_escape_and_label_everything() -> None:
    a = admin.Activity(
        "shop",
        "1h",
        60,
        NOW,
        NOW + timedelta(minutes=2),
        (
            admin.ActivityBucket(NOW, 2, 1, 0, 0, 12.5, 1500.0),
            admin.ActivityBucket(NOW + timedelta(minutes=1), 0, 0, 0, 0, None, None),
        ),
    )
    svg = str(counts_chart(a, 'x"><script>'))
    assert "<script>" not in svg and 'id="x&#34;&gt;&lt;script&gt;"' in svg
    assert "<title>12:00\u201312:01 UTC: 2 delivered, 1 retried, 0 dead-lettered</title>" in svg
    times = str(times_chart(a, "t"))
    assert "p50 12.5 ms, p99 1500 ms (3 attempts)" in times and ">2 s</text>" in times
    spark = str(sparkline([0, 3, 1], "shop"))
    assert 'aria-label="Queue shop: 4 delivered in the last hour, at most 3 in one minute"' in spark


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 15 * 60), min_size=1, max_size=40),  # each row's insertion lag, s
    st.lists(st.integers(0, 120), min_size=1, max_size=40),  # seconds between requests
    st.integers(0, 3_000),  # where the window starts, s after the first request
)
def test_the_id_floor_never_skips_a_row_of_the_window(
    lags: list[int], gaps: list[int], since_offset: int
) -> None:
    """Rows inserted in the order they finished (started + lag, lag within the margin): every
    row started at or after ``since`` has an id above the floor, whatever the interleaving."""
    from dispatcher.schema import metadata

    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    start = NOW - timedelta(days=1)
    started, at = [], start
    for gap in gaps:
        at += timedelta(seconds=gap)
        started.append(at)
    rows = sorted(
        zip(started, (lags * len(started))[: len(started)], strict=True),
        key=lambda r: r[0] + timedelta(seconds=r[1]),
    )
    since = start + timedelta(seconds=since_offset)
    with engine.begin() as conn:
        job = add_job(conn, "shop", start)
        for began, _ in rows:
            add_attempts(conn, job, began, ("delivered", 1))
        floor = _id_floor(conn, since)
        inside = conn.execute(sa.select(attempts.c.id).where(attempts.c.started_at >= since))
        assert all(row.id > floor for row in inside)
