"""The sweeper's scheduled retention, with a fake clock: finished jobs older than the retention
go in small batches at a quiet rate; live jobs never do."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from dispatcher.config import ConfigError, Settings
from dispatcher.db import utcnow
from dispatcher.retention import Retention
from dispatcher.schema import attempts, jobs

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=utcnow().tzinfo)


def add_job(conn: sa.Connection, status: str, age: timedelta, n_attempts: int = 1) -> int:
    when = NOW - age
    job_id = conn.execute(
        jobs.insert().returning(jobs.c.id),
        {
            "queue": "default",
            "endpoint": "/scenariocustomevents",
            "custom_event_id": 1,
            "customer_email": "anna@example.com",
            "payload": "{}",
            "status": status,
            "attempts": n_attempts,
            "next_attempt_at": when,
            "created_at": when,
            "updated_at": when,
        },
    ).scalar_one()
    for _ in range(n_attempts):
        conn.execute(
            attempts.insert(),
            {
                "job_id": job_id,
                "started_at": when,
                "duration_ms": 5,
                "status_code": 201,
                "outcome": "delivered",
                "counted": True,
            },
        )
    return int(job_id)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def remaining(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status))
        return {r[0]: r[1] for r in rows}


def test_finished_jobs_older_than_the_retention_go_in_batches(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    old, young = timedelta(days=31), timedelta(days=29)
    with engine.begin() as conn:
        for _ in range(7):
            add_job(conn, "delivered", old, n_attempts=2)
        for _ in range(3):
            add_job(conn, "dead", old)
        for status in ("pending", "retrying", "in_flight"):  # live: never purged, however old
            add_job(conn, status, timedelta(days=400))
        add_job(conn, "delivered", young)
        add_job(conn, "dead", young)
    clock = FakeMonotonic()
    retention = Retention(
        engine, timedelta(days=30), batch=4, idle_seconds=60, clock=lambda: NOW, monotonic=clock
    )
    caplog.set_level(logging.INFO, logger="dispatcher.retention")

    first = retention.run_once()
    assert first is not None and first.jobs == 4
    second = retention.run_once()  # a full batch: a backlog, so the next one runs at once
    assert second is not None and second.jobs == 4
    third = retention.run_once()
    assert third is not None and third.jobs == 2  # a short batch: the backlog is gone
    assert retention.run_once() is None  # quiet now, until idle_seconds have passed
    clock.now += 59
    assert retention.run_once() is None
    clock.now += 2
    last = retention.run_once()
    assert last is not None and last.jobs == 0

    assert remaining(engine) == {
        "pending": 1,
        "retrying": 1,
        "in_flight": 1,
        "delivered": 1,
        "dead": 1,
    }
    with engine.connect() as conn:
        orphans = conn.execute(
            sa.select(sa.func.count())
            .select_from(attempts)
            .where(~attempts.c.job_id.in_(sa.select(jobs.c.id)))
        ).scalar_one()
    assert orphans == 0
    assert first.attempts + second.attempts + third.attempts == 7 * 2 + 3
    lines = [r.getMessage() for r in caplog.records if r.name == "dispatcher.retention"]
    assert len(lines) == 3 and all("removed" in line for line in lines)
    assert not any("anna" in line for line in lines)


def test_a_later_clock_ages_out_more(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        add_job(conn, "delivered", timedelta(days=10))
    now = [NOW]
    retention = Retention(engine, timedelta(days=30), clock=lambda: now[0], idle_seconds=0)
    assert retention.run_once() == retention.run_once()  # nothing old enough yet
    assert remaining(engine) == {"delivered": 1}
    now[0] = NOW + timedelta(days=21)
    purged = retention.run_once()
    assert purged is not None and purged.jobs == 1
    assert remaining(engine) == {}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, timedelta(days=30)),
        ("", timedelta(days=30)),
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("4w", timedelta(weeks=4)),
        ("off", None),
        ("0", None),
    ],
)
def test_retention_setting(raw: str | None, expected: timedelta | None) -> None:
    env = {} if raw is None else {"DISPATCHER_RETENTION": raw}
    assert Settings.from_env(env).retention == expected


@pytest.mark.parametrize("raw", ["30", "30 days", "-1d", "10m", "1M"])
def test_bad_retention_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="DISPATCHER_RETENTION"):
        Settings.from_env({"DISPATCHER_RETENTION": raw})
