"""The benchmark's outbox databases (``dispatcher_bench``, ``dispatcher_bench_big``): made,
filled, reset and read, through the engine where a producer or an operator would use it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlalchemy as sa

    from dispatcher import CustomEvent

QUEUE = "default"
# The rows enqueue() writes, by hand (psycopg): what the enqueue figures are measured against.
RAW_INSERT = (
    "INSERT INTO dispatcher_jobs (queue, endpoint, custom_event_id, customer_email, payload,"
    " status, attempts, next_attempt_at, created_at, updated_at)"
    " VALUES (%s, %s, %s, %s, %s, 'pending', 0, %s, %s, %s)"
)


def pg_dsn(url: str) -> str:
    import sqlalchemy as sa

    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def make_db(base: str, name: str) -> str:
    import sqlalchemy as sa

    from dispatcher.migrate import upgrade

    url = sa.make_url(base.replace("postgresql://", "postgresql+psycopg://", 1))
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    db_url = url.set(database=name).render_as_string(hide_password=False)
    upgrade(db_url)
    return db_url


def drop_db(base: str, name: str) -> None:
    import psycopg

    with psycopg.connect(pg_dsn(base), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


def events(n: int, tag: str) -> list[CustomEvent]:
    """Bodies like a shop's: an event id, an email (the latency sink's key), two data fields."""
    from dispatcher import CustomEvent, DataField

    return [
        CustomEvent(
            42,
            customer_email=f"{tag}-{i}@example.com",
            data_fields=[DataField("order", "Number", i), DataField("total", "Money", "19.90")],
        )
        for i in range(n)
    ]


def engine(url: str) -> sa.Engine:
    from dispatcher.db import get_engine

    return get_engine(url)


def sql(url: str, statement: str, *, autocommit: bool = False) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(pg_dsn(url), autocommit=autocommit) as conn:
        cur = conn.execute(statement.encode())
        return list(cur.fetchall()) if cur.description else []


def set_paused(url: str, paused: bool) -> None:
    """``dispatcher pause`` / ``dispatcher resume``, through the operator service: a resume tells
    the workers after its commit, and the signal is published at once (the clock is running)."""
    from dispatcher import admin
    from dispatcher.signals import signaller

    if paused:
        admin.pause_queue(engine(url), QUEUE, "bench: held until the worker is ready")
    else:
        admin.resume_queue(engine(url), QUEUE)
        signaller.flush()


def enqueue_all(
    url: str, evs: list[CustomEvent], ordering_keys: Sequence[str | None] | None = None
) -> int:
    """``enqueue_many`` in batches of 1,000, one transaction each, with ``ordering_keys`` (one per
    event) if given; returns the first job id."""
    from sqlalchemy.orm import Session

    from dispatcher import enqueue_many

    first = None
    for start in range(0, len(evs), 1000):
        keys = ordering_keys[start : start + 1000] if ordering_keys is not None else None
        with Session(engine(url)) as session, session.begin():
            ids = enqueue_many(evs[start : start + 1000], session=session, ordering_keys=keys)
        first = first if first is not None else int(ids[0])
    return first or 0


def reset_outbox(url: str, keep_up_to: int = 0) -> None:
    """Empty the outbox but for the jobs with ids up to ``keep_up_to`` (the big table's) and their
    attempts, so that every round (and a redone one) starts from the same state."""
    if not keep_up_to:
        sql(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs")
        return
    sql(url, f"DELETE FROM dispatcher_attempts WHERE job_id > {keep_up_to}")
    sql(url, f"DELETE FROM dispatcher_jobs WHERE id > {keep_up_to}")
    sql(url, "VACUUM dispatcher_jobs", autocommit=True)
    sql(url, "VACUUM dispatcher_attempts", autocommit=True)


def build_big_table(url: str, rows: int) -> float:
    """``rows`` delivered jobs with one attempt each, as a busy outbox has after a while."""
    start = time.perf_counter()
    sql(
        url,
        f"""
        INSERT INTO dispatcher_jobs (queue, endpoint, custom_event_id, customer_email, payload,
            status, attempts, next_attempt_at, created_at, updated_at, delivered_at,
            last_status_code)
        SELECT 'default', '/scenariocustomevents', 42, 'old-' || g || '@example.com',
            '{{"customEventId":42,"customerEmail":"old-' || g || '@example.com","dataFields":'
            || '[{{"name":"order","type":"Number","value":"' || g || '"}},'
            || '{{"name":"total","type":"Money","value":"19.90"}}]}}',
            'delivered', 1, t, t, t, t, 201
        FROM generate_series(1, {rows}) AS g,
            LATERAL (SELECT now() - interval '30 days' + g * interval '2 seconds' AS t) AS x
        """,
    )
    sql(
        url,
        """
        INSERT INTO dispatcher_attempts (job_id, started_at, duration_ms, status_code,
            response_body, outcome, counted)
        SELECT id, created_at, 40, 201, '', 'delivered', true FROM dispatcher_jobs
        """,
    )
    sql(url, "VACUUM ANALYZE dispatcher_jobs", autocommit=True)
    sql(url, "VACUUM ANALYZE dispatcher_attempts", autocommit=True)
    return time.perf_counter() - start


def status_counts(url: str, first_id: int) -> dict[str, int]:
    rows = sql(
        url, f"SELECT status, count(*) FROM dispatcher_jobs WHERE id >= {first_id} GROUP BY 1"
    )
    return {str(s): int(c) for s, c in rows}
