"""The counts are kept by the database: whoever writes the jobs table, ``dispatcher_counts`` (with
the deltas not folded yet) says exactly how many jobs each queue has in each status, and no
producer waits on another for it (issue 22: operator reads flat with a backlog)."""

from __future__ import annotations

import importlib.util
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
import sqlalchemy as sa

import dispatcher
from dispatcher import outbox, schema
from dispatcher.schema import count_deltas, jobs
from dispatcher.sweeper import sweep_once

from ..conftest import EMPTY_OUTBOX

NOW = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)


def job(queue: str = "q", key: str | None = None) -> outbox.NewJob:
    return outbox.NewJob(queue, "/scenariocustomevents", 1, None, "{}", dedupe_key=key)


def real(conn: sa.Connection) -> dict[tuple[str, str], int]:
    rows = conn.execute(
        sa.select(jobs.c.queue, jobs.c.status, sa.func.count().label("n")).group_by(
            jobs.c.queue, jobs.c.status
        )
    )
    return {(r.queue, r.status): int(r.n) for r in rows}


def migration(name: str) -> ModuleType:
    path = Path(dispatcher.__file__).parent / "migrations" / "versions" / name
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_the_migration_holds_todays_trigger_sql(dialect: str) -> None:
    """A change to the triggers (``schema.count_triggers``) needs a migration that makes them."""
    assert migration("0008_counted_by_triggers.py").triggers(dialect) == schema.count_triggers(
        dialect
    )


def test_any_writer_is_counted(engine: sa.Engine) -> None:
    """Hand-written SQL, a duplicate skipped by its dedupe key, a status change, a queue change
    and a delete: the counts follow each, and a statement that moves nothing adds nothing."""
    with engine.begin() as conn:
        outbox.insert_jobs(conn, [job("a", "k1"), job("a"), job("b")], NOW)
        outbox.insert_jobs(conn, [job("a", "k1")], NOW)  # the same key: not a new job
        conn.execute(sa.update(jobs).where(jobs.c.queue == "b").values(status="dead"))
        conn.execute(sa.update(jobs).where(jobs.c.dedupe_key == "k1").values(queue="c"))
    with engine.connect() as conn:
        assert (
            outbox.job_counts(conn)
            == real(conn)
            == {
                ("a", "pending"): 1,
                ("b", "dead"): 1,
                ("c", "pending"): 1,
            }
        )
        before = conn.execute(sa.select(sa.func.count()).select_from(count_deltas)).scalar_one()
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).values(payload='{"erased": true}'))  # no job moves
    with engine.connect() as conn:
        after = conn.execute(sa.select(sa.func.count()).select_from(count_deltas)).scalar_one()
        assert after == before
    with engine.begin() as conn:
        conn.execute(sa.delete(jobs).where(jobs.c.queue == "a"))
    with engine.connect() as conn:
        assert outbox.job_counts(conn) == real(conn) == {("b", "dead"): 1, ("c", "pending"): 1}


def test_a_sweeper_pass_folds_the_deltas(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for _ in range(3):
            outbox.insert_jobs(conn, [job("a"), job("b")], NOW)
    sweep_once(engine, lambda queues: None)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(count_deltas)).scalar_one() == 0
        assert outbox.job_counts(conn) == real(conn) == {("a", "pending"): 3, ("b", "pending"): 3}


@pytest.mark.postgres
def test_producers_never_wait_on_each_other_for_the_counts(pg_test_url: str) -> None:
    """A producer's transaction still open does not hold back another producer of the same
    queue: a shared counter row would (its lock lasts until the commit)."""
    engine = sa.create_engine(pg_test_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(EMPTY_OUTBOX)
    try:
        with engine.begin() as first:
            outbox.insert_jobs(first, [job("hot")], NOW)  # open: not committed yet
            with engine.begin() as second:
                second.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
                outbox.insert_jobs(second, [job("hot")], NOW)  # fails if it waits for `first`
        with engine.connect() as conn:
            assert outbox.job_counts(conn)[("hot", "pending")] == 2
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_folds_beside_writers_lose_nothing(pg_test_url: str) -> None:
    """Producers and two folders at once: every job is counted once."""
    engine = sa.create_engine(pg_test_url, pool_size=6)
    with engine.begin() as conn:
        conn.exec_driver_sql(EMPTY_OUTBOX)
    stop = threading.Event()
    errors: list[BaseException] = []

    def produce(queue: str) -> None:
        try:
            for _ in range(60):
                with engine.begin() as conn:
                    ids = outbox.insert_jobs(conn, [job(queue), job(queue)], NOW)
                    conn.execute(sa.update(jobs).where(jobs.c.id == ids[0]).values(status="dead"))
        except BaseException as exc:
            errors.append(exc)

    def fold() -> None:
        try:
            while not stop.is_set():
                with engine.begin() as conn:
                    outbox.fold_counts(conn)
        except BaseException as exc:
            errors.append(exc)

    try:
        folders = [threading.Thread(target=fold) for _ in range(2)]
        producers = [threading.Thread(target=produce, args=(q,)) for q in ("a", "b", "a")]
        for t in folders + producers:
            t.start()
        for t in producers:
            t.join(60)
        stop.set()
        for t in folders:
            t.join(10)
        assert not errors, errors
        with engine.connect() as conn:
            assert (
                outbox.job_counts(conn)
                == real(conn)
                == {
                    ("a", "pending"): 120,
                    ("a", "dead"): 120,
                    ("b", "pending"): 60,
                    ("b", "dead"): 60,
                }
            )
    finally:
        engine.dispose()
