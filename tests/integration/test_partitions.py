"""The partitioned layout on a real PostgreSQL: the conversion under a live producer, the product
on the converted tables, dedupe under concurrency, the maintainer's drops, the CLI command.

Each test converts a database of its own (the conversion changes the layout for good)."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from dispatcher import CustomEvent, enqueue, enqueue_async
from dispatcher import partitions as parts
from dispatcher.admin import actions, reads
from dispatcher.admin.forget import forget, parse_customer
from dispatcher.cli import main
from dispatcher.config import get_settings, normalize_database_url
from dispatcher.db import dispose_engines, get_engine, utcnow
from dispatcher.delivery import Deliverer
from dispatcher.migrate import upgrade
from dispatcher.outbox import NewJob, Purged, insert_jobs, job_counts
from dispatcher.retention import Retention
from dispatcher.schema import FINISHED_STATUSES
from dispatcher.testing import StubSender
from tests.conftest import PG_URL, require

pytestmark = pytest.mark.postgres
_ids = itertools.count()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, migrated database for this test alone."""
    base = sa.make_url(normalize_database_url(require(PG_URL, "PostgreSQL")))
    name = f"dispatcher_part_{os.getpid()}_{next(_ids)}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = base.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    dispose_engines()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def env(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", pg_url)
    monkeypatch.setenv("ECDP_API_KEY", "test-key")
    get_settings.cache_clear()
    yield pg_url
    get_settings.cache_clear()


def month_back(now: datetime, n: int) -> datetime:
    return parts.start_of(parts.add_months(parts.month_of(now), -n)) + timedelta(days=14)


def partitioned(url: str, months_back: int = 0) -> sa.Engine:
    """``url`` converted as if ``months_back`` months ago (so month partitions exist from then;
    the database must be empty), with months ahead of today."""
    engine = get_engine(url)
    now = utcnow()
    parts.convert(engine, now=month_back(now, months_back) if months_back else now)
    parts.ensure_ahead(engine, now)
    return engine


def new_job(n: int, key: str | None = None, queue: str = "default") -> NewJob:
    return NewJob(queue, "/scenariocustomevents", 7, None, f'{{"n": {n}}}', dedupe_key=key)


def where(engine: sa.Engine, job_id: int | str) -> str:
    with engine.connect() as conn:
        return str(
            conn.exec_driver_sql(
                "SELECT tableoid::regclass FROM dispatcher_jobs WHERE id = %(i)s",
                {"i": int(job_id)},
            ).scalar_one()
        )


def pg_dsn(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# --------------------------------------------------------------------------- 1. the conversion


def test_conversion_while_a_producer_inserts_keeps_every_row_and_stalls_it_briefly(
    env: str,
) -> None:
    engine = get_engine(env)
    old = utcnow() - timedelta(days=3)
    with engine.begin() as conn:  # some history, and a key that must stay taken
        insert_jobs(conn, [new_job(n) for n in range(20_000)], old)
        keyed_before = insert_jobs(conn, [new_job(0, key="order-1")], old)[0]
    committed: list[int] = []
    stalls: list[float] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def produce() -> None:
        n = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                with Session(engine) as session:
                    job_id = enqueue(CustomEvent(7, customer_id=n), session=session)
                    session.commit()
            except BaseException as exc:
                errors.append(exc)
                return
            stalls.append(time.monotonic() - started)
            committed.append(int(job_id))
            n += 1

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        time.sleep(0.2)
        before = len(committed)
        done = parts.convert(engine, lock_timeout=0.5)
        during = len(committed) - before
        time.sleep(0.3)
    finally:
        stop.set()
        producer.join(10)
    assert done.done and not errors
    assert during > 0  # the producer was writing throughout
    assert committed == sorted(committed) and len(set(committed)) == len(committed)
    assert max(stalls) < 2.0, f"an insert waited {max(stalls):.2f}s"
    with engine.connect() as conn:
        assert parts.is_partitioned(conn)
        stored = set(conn.exec_driver_sql("SELECT id FROM dispatcher_jobs").scalars())
        kinds = dict(
            conn.exec_driver_sql(
                "SELECT relname, relkind FROM pg_class WHERE relname IN "
                "('dispatcher_attempts', 'dispatcher_jobs_legacy', 'dispatcher_attempts_legacy')"
            ).all()
        )
    assert set(committed) <= stored and len(stored) == 20_001 + len(committed)
    assert kinds == {
        "dispatcher_attempts": "p",
        "dispatcher_jobs_legacy": "r",
        "dispatcher_attempts_legacy": "r",
    }
    with engine.begin() as conn:  # ids go on from the old ones; the old key is still taken
        assert insert_jobs(conn, [new_job(1)], utcnow())[0] > max(committed)
        assert insert_jobs(conn, [new_job(1, key="order-1")], utcnow()) == [keyed_before]
    assert parts.convert(engine).done is False  # a second run: nothing to do
    upgrade(env)  # `dispatcher migrate` at head: a no-op on the converted tables


# --------------------------------------------------------------------------- 2. the product


def test_enqueue_deliver_replay_stats_and_purge_on_the_partitioned_layout(env: str) -> None:
    engine = partitioned(env, months_back=1)
    this_month = parts.partition_name("dispatcher_jobs", parts.month_of(utcnow()))
    event = CustomEvent(7, customer_email="anna@example.com")
    with Session(engine) as session:  # SQLAlchemy Session
        plain = enqueue(event, session=session)
        keyed = enqueue(event, session=session, dedupe_key="k-session")
        assert enqueue(event, session=session, dedupe_key="k-session") == keyed
        session.commit()
    with psycopg.connect(pg_dsn(env)) as pg:  # psycopg Connection
        via_pg = enqueue(event, session=pg, dedupe_key="k-psycopg")
        assert enqueue(event, session=pg, dedupe_key="k-psycopg") == via_pg
        assert enqueue(event, session=pg, dedupe_key="k-session") == keyed
        pg.commit()

    async def produce_async() -> tuple[str, str]:
        aengine = create_async_engine(
            sa.make_url(env).set(drivername="postgresql+asyncpg").render_as_string(False)
        )
        try:
            async with AsyncSession(aengine) as session:  # asyncpg AsyncSession
                hot = await enqueue_async(event, session=session)
                first = await enqueue_async(event, session=session, dedupe_key="k-async")
                again = await enqueue_async(event, session=session, dedupe_key="k-async")
                assert again == first
                await session.commit()
            return hot, first
        finally:
            await aengine.dispose()

    hot, via_async = asyncio.run(produce_async())
    ids = [plain, keyed, via_pg, hot, via_async]
    assert len(set(ids)) == 5 and all(where(engine, i) == this_month for i in ids)

    stub = StubSender(lambda endpoint, payload: 400 if b'"k"' in payload else 201)
    settings = get_settings()
    with engine.begin() as conn:  # one job the API will reject, to replay
        bad = insert_jobs(
            conn, [NewJob("default", "/scenariocustomevents", 7, None, '{"k": 1}')], utcnow()
        )[0]
    deliverer = Deliverer(settings, client=stub)
    try:
        deliverer.drain("default")
        with engine.connect() as conn:
            states = dict(conn.exec_driver_sql("SELECT id, status FROM dispatcher_jobs").all())
            attempt_home = set(
                conn.exec_driver_sql(
                    "SELECT DISTINCT tableoid::regclass::text FROM dispatcher_attempts"
                ).scalars()
            )
        assert states == {**{int(i): "delivered" for i in ids}, bad: "dead"}
        assert attempt_home == {this_month.replace("jobs", "attempts")}
        counts = reads.stats(engine, utcnow())["default"].counts
        assert (counts["delivered"], counts["dead"]) == (5, 1)

        assert actions.replay(engine, job_ids=[bad], now=utcnow()).count == 1
        stub.respond = lambda endpoint, payload: 201
        deliverer.drain("default")
    finally:
        deliverer.close()
    counts = reads.stats(engine, utcnow())["default"].counts
    assert (counts["delivered"], counts["dead"], counts["pending"]) == (6, 0, 0)

    purged = actions.purge(engine, older_than=timedelta(0), now=utcnow() + timedelta(seconds=1))
    assert purged.jobs == 6 and purged.attempts == 7
    counts = reads.stats(engine, utcnow()).get("default")
    assert counts is None or (counts.counts["delivered"], counts.counts["dead"]) == (0, 0)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM dispatcher_dedupe").scalar() == 0
    with Session(engine) as session:  # the purged job's key is free again
        assert int(enqueue(event, session=session, dedupe_key="k-session")) > int(keyed)
        session.commit()


# --------------------------------------------------------------------------- 3. dedupe races


def test_concurrent_inserts_of_one_key_make_one_job(env: str) -> None:
    engine = partitioned(env, months_back=1)
    start = threading.Barrier(8)
    got: list[int] = []

    def insert() -> None:
        with psycopg.connect(pg_dsn(env)) as pg:
            start.wait()
            got.append(int(enqueue(CustomEvent(7, customer_id=1), session=pg, dedupe_key="race")))
            time.sleep(0.05)  # hold the key uncommitted while the others try
            pg.commit()

    threads = [threading.Thread(target=insert) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT id FROM dispatcher_jobs WHERE dedupe_key = 'race'"
        ).scalars()
        assert len(got) == 8 and set(got) == set(rows) and len(set(got)) == 1


# --------------------------------------------------------------------------- 4. the maintainer


def finish(conn: sa.Connection, month: datetime, jobs: list[NewJob], status: str) -> list[int]:
    """Jobs created in ``month``'s time, finished there with one attempt each (the triggers
    count them)."""
    ids = insert_jobs(conn, jobs, month)
    conn.exec_driver_sql(
        "UPDATE dispatcher_jobs SET status = %(s)s WHERE id = ANY(%(i)s)", {"s": status, "i": ids}
    )
    for i in ids:
        conn.exec_driver_sql(
            "INSERT INTO dispatcher_attempts (job_id, started_at, duration_ms, outcome, counted) "
            "VALUES (%(i)s, %(t)s, 5, 'delivered', true)",
            {"i": i, "t": month + timedelta(hours=1)},
        )
    return ids


def count_rows(engine: sa.Engine) -> dict[tuple[str, str], int]:
    """The counts of finished jobs (live ones are counted too, and checked against the jobs)."""
    with engine.connect() as conn:
        counted = job_counts(conn)
        real = conn.exec_driver_sql(
            "SELECT queue, status, count(*) FROM dispatcher_jobs GROUP BY 1, 2"
        ).all()
    assert counted == {(q, s): n for q, s, n in real}
    return {k: n for k, n in counted.items() if k[1] in FINISHED_STATUSES}


def test_maintainer_creates_months_ahead_and_drops_old_finished_ones(env: str) -> None:
    now = utcnow()
    engine = partitioned(env, months_back=5)
    old, blocked, recent = month_back(now, 3), month_back(now, 2), now
    with engine.begin() as conn:
        finish(conn, old, [new_job(1, key="a"), new_job(2, key="b"), new_job(3)], "delivered")
        finish(conn, old, [new_job(4, queue="other")], "dead")
        finish(conn, blocked, [new_job(5)], "delivered")
        insert_jobs(conn, [new_job(6)], blocked)  # still pending: its month must stay
        finish(conn, recent, [new_job(7, key="c")], "delivered")
    assert count_rows(engine) == {("default", "delivered"): 5, ("other", "dead"): 1}

    maintainer = parts.Maintainer(engine, timedelta(days=30), clock=lambda: now)
    done = maintainer.run_once()
    assert done is not None
    old_jobs = parts.partition_name("dispatcher_jobs", parts.month_of(old))
    blocked_jobs = parts.partition_name("dispatcher_jobs", parts.month_of(blocked))
    assert old_jobs in done.dropped and old_jobs.replace("jobs", "attempts") in done.dropped
    assert done.kept[blocked_jobs] == "holds a live job"
    assert blocked_jobs.replace("jobs", "attempts") not in done.dropped
    assert "dispatcher_jobs_legacy" in done.dropped  # it was empty
    assert count_rows(engine) == {("default", "delivered"): 2}  # blocked's and recent's
    with engine.connect() as conn:
        have = parts.layout(conn)
        keys = set(conn.exec_driver_sql("SELECT dedupe_key FROM dispatcher_dedupe").scalars())
    assert keys == {"c"}
    ahead = parts.add_months(parts.month_of(now), 2)
    assert ahead in have.job_months and ahead in have.attempt_months
    assert parts.month_of(old) not in have.job_months + have.attempt_months
    assert parts.month_of(blocked) in have.job_months and not have.legacy_jobs
    assert maintainer.run_once() is None  # not time yet


def test_maintainer_does_nothing_on_the_unpartitioned_layout_or_sqlite(
    pg_url: str, tmp_path: Path
) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'outbox.db'}"
    upgrade(sqlite_url)
    for url in (pg_url, sqlite_url):
        engine = get_engine(url)
        done = parts.Maintainer(engine, timedelta(days=1)).run_once()
        assert done == parts.Maintained()
        with engine.connect() as conn:
            assert not parts.is_partitioned(conn)
            assert parts.batched_scope(conn) == (True, None)
    with get_engine(pg_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT to_regclass('dispatcher_dedupe')").scalar() is None


# --------------------------------------------------------------------------- 5. the command


def test_the_partition_command_converts_once_and_refuses_sqlite(
    env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first = CliRunner().invoke(main, ["partition", "--months-ahead", "3"])
    assert first.exit_code == 0, first.output
    assert "partitioned: switched in" in first.output
    second = CliRunner().invoke(main, ["partition"])
    assert second.exit_code == 0 and "already partitioned: nothing to do" in second.output

    sqlite_url = f"sqlite:///{tmp_path / 'outbox.db'}"
    upgrade(sqlite_url)
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    refused = CliRunner().invoke(main, ["partition"])
    assert refused.exit_code == 1
    assert "the partitioned layout needs PostgreSQL; this outbox is on sqlite" in refused.output
    with get_engine(sqlite_url).connect() as conn:  # untouched
        assert not parts.is_partitioned(conn)


def test_batched_retention_keeps_to_the_legacy_partition(pg_url: str) -> None:
    now = utcnow()
    engine = partitioned(pg_url, months_back=3)  # month partitions from two months ago
    with engine.connect() as conn:
        bound = parts.layout(conn).legacy_bound
    assert bound == parts.start_of(parts.add_months(parts.month_of(now), -2))
    with engine.begin() as conn:
        legacy = finish(conn, bound - timedelta(days=20), [new_job(1)], "delivered")
        monthly = finish(conn, bound + timedelta(days=1), [new_job(2)], "delivered")
        assert parts.batched_scope(conn) == (True, bound)
    purged = Retention(engine, timedelta(days=1)).run_once()
    assert purged == Purged(1, 1)
    with engine.connect() as conn:
        left = list(conn.exec_driver_sql("SELECT id FROM dispatcher_jobs").scalars())
    assert left == monthly and legacy[0] not in left  # a month goes whole, by the maintainer
    parts.drop_behind(engine, now, timedelta(days=1))  # the emptied legacy partition goes
    with engine.connect() as conn:
        assert parts.batched_scope(conn) == (False, None)
    assert Retention(engine, timedelta(days=1)).run_once() == Purged(0, 0)


def test_a_month_goes_while_workers_and_producers_keep_writing(env: str) -> None:
    """Under steady traffic (every UPDATE by id locks every month) the drop is not starved and
    holds nobody back: it detaches the month concurrently and drops it detached. Checking or
    dropping it while attached needed a lock that traffic never let through, and each try made
    every producer wait for the lock timeout."""
    now = utcnow()
    engine = partitioned(env, months_back=3)
    old = month_back(now, 2)
    with engine.begin() as conn:
        finish(conn, old, [new_job(1, key="k1"), new_job(2)], "delivered")
        live = insert_jobs(conn, [new_job(3)], now)  # the job the "worker" keeps updating
    stop, errors, worst = threading.Event(), [], [0.0, 0.0]

    def keep(slot: int, work: str) -> None:
        try:
            while not stop.is_set():
                began = time.perf_counter()
                with engine.begin() as conn:
                    if work == "update":
                        conn.exec_driver_sql(
                            "UPDATE dispatcher_jobs SET updated_at = now() WHERE id = %(i)s",
                            {"i": live[0]},
                        )
                        time.sleep(0.02)  # a transaction in progress most of the time
                    else:
                        insert_jobs(conn, [new_job(4)], utcnow())
                worst[slot] = max(worst[slot], time.perf_counter() - began)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=keep, args=(0, "update")),
        threading.Thread(target=keep, args=(1, "update")),
        threading.Thread(target=keep, args=(1, "insert")),
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        done = parts.drop_behind(engine, now, timedelta(days=1), lock_timeout=2.0)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    old_jobs = parts.partition_name("dispatcher_jobs", parts.month_of(old))
    assert old_jobs in done.dropped, done.kept
    assert not errors
    # A waiting lock would have held the producer for the lock timeout (2 s).
    assert worst[1] < 1.0, worst
    assert count_rows(engine) == {}
    with engine.connect() as conn:
        assert list(conn.exec_driver_sql("SELECT dedupe_key FROM dispatcher_dedupe")) == []
        assert parts.month_of(old) not in parts.layout(conn).job_months


def test_a_round_stopped_after_its_detach_is_finished_by_the_next(env: str) -> None:
    """A month detached but not dropped (the sweeper died in between) is dropped by the next
    round if it may go, and attached again, its keys back, if it may not (a job made live)."""
    now = utcnow()
    engine = partitioned(env, months_back=4)
    done_month, live_month = month_back(now, 3), month_back(now, 2)
    with engine.begin() as conn:
        finish(conn, done_month, [new_job(1)], "dead")
        finish(conn, live_month, [new_job(2, key="kept")], "delivered")
        replayed = insert_jobs(conn, [new_job(3)], live_month)  # pending: its month must stay
    names = [
        parts.partition_name("dispatcher_jobs", parts.month_of(m)) for m in (done_month, live_month)
    ]
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM dispatcher_dedupe")  # as the round does before detaching
        for name in names:
            conn.exec_driver_sql(f"ALTER TABLE dispatcher_jobs DETACH PARTITION {name}")
    done = parts.drop_behind(engine, now, timedelta(days=1))
    assert names[0] in done.dropped
    assert done.kept[names[1]] == "holds a live job"
    assert count_rows(engine) == {("default", "delivered"): 1}  # the dead one's count went
    with engine.connect() as conn:
        assert parts.month_of(live_month) in parts.layout(conn).job_months
        ids = set(conn.exec_driver_sql("SELECT id FROM dispatcher_jobs").scalars())
        keys = list(conn.exec_driver_sql("SELECT dedupe_key FROM dispatcher_dedupe").scalars())
    assert replayed[0] in ids and keys == ["kept"]


def test_cancel_and_forget_on_the_partitioned_layout(env: str) -> None:
    """The widened status CHECK holds on every month, and forget clears a dedupe key from
    ``dispatcher_dedupe`` too (the key table the partitioned layout keeps)."""
    engine = partitioned(env, months_back=1)  # this month is a partition of its own
    kept = enqueue(CustomEvent(7, customer_email="bob@example.com"), dedupe_key="k-bob")
    zoe = enqueue(CustomEvent(7, customer_email="zoe@example.com"), dedupe_key="k-zoe@example.com")
    assert actions.cancel(engine, job_ids=[kept], now=utcnow()).count == 1
    assert where(engine, kept) == parts.partition_name("dispatcher_jobs", parts.month_of(utcnow()))
    done = forget(engine, parse_customer({"email": "zoe@example.com"}), now=utcnow())
    assert (done.jobs, done.cancelled) == (1, 1)
    with engine.connect() as conn:
        keys = conn.exec_driver_sql(f"SELECT dedupe_key FROM {parts.DEDUPE}").scalars().all()
        statuses = dict(conn.exec_driver_sql("SELECT id, status FROM dispatcher_jobs").all())
    assert keys == ["k-bob"]
    assert statuses == {int(kept): "cancelled", int(zoe): "cancelled"}
    assert reads.stats(engine, utcnow())["default"].counts["cancelled"] == 2
