"""Every kind of caller ``enqueue``/``enqueue_async`` accepts, against a real outbox (PostgreSQL
with psycopg 3 and asyncpg; SQLite with pysqlite and aiosqlite): a rolled-back transaction leaves
no row and sends nothing; a committed one is signalled after its COMMIT and delivered;
``dedupe_key`` works; invalid input writes nothing; anything else is a TypeError naming what is
accepted. The async functions never block the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from dispatcher import (
    CustomEvent,
    ValidationError,
    enqueue,
    enqueue_async,
    enqueue_many,
    enqueue_many_async,
)
from dispatcher.config import Settings
from dispatcher.db import get_engine
from dispatcher.delivery import Deliverer
from dispatcher.sandbox import Sandbox
from dispatcher.schema import jobs
from dispatcher.signals import signaller
from tests.support import settle

pytestmark = pytest.mark.usefixtures("env")

SYNC = ["session", "scoped_session", "connection", "psycopg"]
ASYNC = [
    "async_session",
    "async_scoped_session",
    "async_connection",
    "async_session-psycopg",
    "async_connection-psycopg",
    "psycopg_async",
]


def count(url: str) -> int:
    with get_engine(url).connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one())


def event(n: int) -> CustomEvent:
    return CustomEvent(7, customer_id=n)


def pg_dsn(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def sync_target(kind: str, url: str) -> Iterator[tuple[Any, Callable[[], None], Any]]:
    """(what is passed as ``session``, commit, rollback)"""
    postgres = url.startswith("postgresql")
    if kind == "session":
        with Session(get_engine(url)) as s:
            yield s, s.commit, s.rollback
    elif kind == "scoped_session":  # what Flask-SQLAlchemy's db.session is
        scoped = scoped_session(sessionmaker(get_engine(url)))
        try:
            yield scoped, scoped.commit, scoped.rollback
        finally:
            scoped.remove()
    elif kind == "connection":
        with get_engine(url).connect() as conn:
            yield conn, conn.commit, conn.rollback
    elif kind == "psycopg":
        if not postgres:
            pytest.skip("a psycopg connection is PostgreSQL only")
        with psycopg.connect(pg_dsn(url)) as pg:
            yield pg, pg.commit, pg.rollback
    else:
        raise AssertionError(kind)


def async_url(url: str, driver: str) -> str:
    if url.startswith("sqlite"):
        return url.replace("sqlite://", "sqlite+aiosqlite://", 1)
    return sa.make_url(url).set(drivername=f"postgresql+{driver}").render_as_string(False)


@contextlib.asynccontextmanager
async def async_target(kind: str, url: str) -> AsyncIterator[tuple[Any, Any, Any]]:
    postgres = url.startswith("postgresql")
    base, _, driver = kind.partition("-")
    if kind == "psycopg_async":
        if not postgres:
            pytest.skip("a psycopg connection is PostgreSQL only")
        pg = await psycopg.AsyncConnection.connect(pg_dsn(url))
        try:
            yield pg, pg.commit, pg.rollback
        finally:
            await pg.close()
        return
    if driver and not postgres:
        pytest.skip(f"{driver} is PostgreSQL only")
    engine = create_async_engine(async_url(url, driver or "asyncpg"))
    try:
        if base == "async_session":
            async with AsyncSession(engine) as s:
                yield s, s.commit, s.rollback
        elif base == "async_scoped_session":
            scoped = async_scoped_session(
                async_sessionmaker(engine), scopefunc=asyncio.current_task
            )
            try:
                yield scoped, scoped.commit, scoped.rollback
            finally:
                await scoped.remove()
        elif base == "async_connection":
            async with engine.connect() as conn:
                yield conn, conn.commit, conn.rollback
        else:
            raise AssertionError(kind)
    finally:
        await engine.dispose()


def forget_signals() -> None:
    """Drop what an earlier test left in the (process-wide) signaller."""
    signaller.flush()
    with signaller._lock:
        signaller._pending.clear()
        signaller._watched.clear()


@pytest.fixture
def signals(monkeypatch: pytest.MonkeyPatch, db_url: str) -> Iterator[list[tuple[str, int]]]:
    """Each signal the producer sends, with the number of jobs another connection could see at
    that moment: a signal is sent only once its COMMIT has happened."""
    forget_signals()
    seen: list[tuple[str, int]] = []
    # Its own engine without a pool: a signal counting late never leaves a connection open.
    counter = sa.create_engine(get_engine(db_url).url, poolclass=sa.pool.NullPool)

    def send(queue: str) -> None:
        with counter.connect() as conn:
            jobs_now = conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one()
        seen.append((queue, int(jobs_now)))

    monkeypatch.setattr(signaller, "_send", send)
    monkeypatch.setattr(signaller, "_down_until", 0.0)
    yield seen
    forget_signals()
    counter.dispose()


def wait_for_signals(seen: list[tuple[str, int]], jobs: int) -> None:
    """Until a signal has seen ``jobs`` committed jobs (the signaller's thread runs at its own
    pace, and watched transactions are polled)."""
    deadline = time.monotonic() + 30
    while not any(n >= jobs for _, n in seen) and time.monotonic() < deadline:
        signaller.flush()
        time.sleep(0.02)


@pytest.fixture
def deliverer(settings: Settings, sandbox: Sandbox) -> Iterator[Deliverer]:
    d = Deliverer(dataclasses.replace(settings, base_url=sandbox.url))
    yield d
    d.close()


def delivered_ids(sandbox: Sandbox) -> list[int]:
    return sorted(json.loads(b)["customerId"] for b in sandbox.bodies())


# --------------------------------------------------------------------------- sync


@pytest.mark.parametrize("kind", SYNC)
def test_rolled_back_writes_nothing_and_sends_nothing(
    kind: str, db_url: str, signals: list, deliverer: Deliverer, sandbox: Sandbox
) -> None:
    with sync_target(kind, db_url) as (target, _commit, rollback):
        enqueue(event(1), session=target)
        enqueue_many([event(2), event(3)], session=target)
        rollback()
    signaller.flush()
    assert count(db_url) == 0
    settle(deliverer, get_engine(db_url))
    assert sandbox.requests == []
    # psycopg has no commit hook: its end of transaction is watched and may be signalled (a
    # harmless hint that finds nothing); every other kind drops the signal with the rollback.
    assert all(n == 0 for _, n in signals)
    if kind != "psycopg":
        assert signals == []


@pytest.mark.parametrize("kind", SYNC)
def test_committed_is_signalled_after_commit_and_delivered(
    kind: str, db_url: str, signals: list, deliverer: Deliverer, sandbox: Sandbox
) -> None:
    with sync_target(kind, db_url) as (target, commit, _rollback):
        ids = [enqueue(event(1), session=target)]
        ids += enqueue_many([event(2), event(3)], session=target, queue="default")
        if db_url.startswith("postgresql"):  # (SQLite: a reader would wait for the writer)
            assert count(db_url) == 0  # not visible before the COMMIT
        commit()
    wait_for_signals(signals, 3)
    assert signals[0] == ("default", 3)
    assert len(set(ids)) == 3
    settle(deliverer, get_engine(db_url))
    assert delivered_ids(sandbox) == [1, 2, 3]


@pytest.mark.parametrize("kind", SYNC)
def test_dedupe_key(kind: str, db_url: str, signals: list) -> None:
    with sync_target(kind, db_url) as (target, commit, _rollback):
        first = enqueue(event(1), session=target, dedupe_key="order-1")
        again = enqueue(event(1), session=target, dedupe_key="order-1")
        many = enqueue_many(
            [event(1), event(2), event(2)], session=target, dedupe_keys=["order-1", "b", "b"]
        )
        commit()
    with sync_target(kind, db_url) as (target, commit, _rollback):
        later = enqueue(event(1), session=target, dedupe_key="order-1")
        commit()
    assert first == again == many[0] == later
    assert many[1] == many[2] != first
    assert count(db_url) == 2


@pytest.mark.parametrize("kind", SYNC)
def test_validation_errors_write_nothing(kind: str, db_url: str, signals: list) -> None:
    with sync_target(kind, db_url) as (target, commit, _rollback):
        with pytest.raises(ValidationError, match="queue"):
            enqueue(event(1), session=target, queue="Not A Queue")
        with pytest.raises(ValidationError, match=r"events\[1\]"):
            enqueue_many([event(1), "no event"], session=target)  # type: ignore[list-item]
        with pytest.raises(ValidationError, match="dedupe_key"):
            enqueue(event(1), session=target, dedupe_key="")
        commit()
    assert count(db_url) == 0
    assert signals == []


# --------------------------------------------------------------------------- async


@pytest.mark.parametrize("kind", ASYNC)
def test_async_rolled_back_writes_nothing_and_sends_nothing(
    kind: str, db_url: str, signals: list, deliverer: Deliverer, sandbox: Sandbox
) -> None:
    async def run() -> None:
        async with async_target(kind, db_url) as (target, _commit, rollback):
            await enqueue_async(event(1), session=target)
            await enqueue_many_async([event(2), event(3)], session=target)
            await rollback()

    asyncio.run(run())
    signaller.flush()
    assert count(db_url) == 0
    settle(deliverer, get_engine(db_url))
    assert sandbox.requests == []
    assert all(n == 0 for _, n in signals)
    if kind != "psycopg_async":
        assert signals == []


@pytest.mark.parametrize("kind", ASYNC)
def test_async_committed_is_signalled_after_commit_and_delivered(
    kind: str, db_url: str, signals: list, deliverer: Deliverer, sandbox: Sandbox
) -> None:
    async def run() -> list[str]:
        async with async_target(kind, db_url) as (target, commit, _rollback):
            ids = [await enqueue_async(event(1), session=target)]
            ids += await enqueue_many_async([event(2), event(3)], session=target)
            await commit()
            # A second transaction on the same session/connection: the hot path of a server.
            ids.append(await enqueue_async(event(4), session=target))
            await commit()
        return ids

    ids = asyncio.run(run())
    wait_for_signals(signals, 4)
    assert signals[0][0] == "default" and signals[0][1] >= 3
    assert len(set(ids)) == 4
    settle(deliverer, get_engine(db_url))
    assert delivered_ids(sandbox) == [1, 2, 3, 4]


@pytest.mark.parametrize("kind", ASYNC)
def test_async_dedupe_key(kind: str, db_url: str, signals: list) -> None:
    async def run() -> None:
        async with async_target(kind, db_url) as (target, commit, _rollback):
            first = await enqueue_async(event(1), session=target, dedupe_key="order-1")
            again = await enqueue_async(event(1), session=target, dedupe_key="order-1")
            many = await enqueue_many_async(
                [event(1), event(2), event(2)], session=target, dedupe_keys=["order-1", "b", "b"]
            )
            await commit()
            later = await enqueue_async(event(1), session=target, dedupe_key="order-1")
            await commit()
        assert first == again == many[0] == later
        assert many[1] == many[2] != first

    asyncio.run(run())
    assert count(db_url) == 2


@pytest.mark.parametrize("kind", ASYNC)
def test_async_validation_errors_write_nothing(kind: str, db_url: str, signals: list) -> None:
    async def run() -> None:
        async with async_target(kind, db_url) as (target, commit, _rollback):
            with pytest.raises(ValidationError, match="queue"):
                await enqueue_async(event(1), session=target, queue="Not A Queue")
            with pytest.raises(ValidationError, match=r"events\[1\]"):
                await enqueue_many_async([event(1), 3], session=target)  # type: ignore[list-item]
            await commit()

    asyncio.run(run())
    assert count(db_url) == 0
    assert signals == []


def test_async_without_session_uses_a_transaction_of_its_own(db_url: str, signals: list) -> None:
    async def run() -> list[str]:
        return [await enqueue_async(event(1)), *await enqueue_many_async([event(2)])]

    assert len(set(asyncio.run(run()))) == 2
    assert count(db_url) == 2


# --------------------------------------------------------------------------- deliver_at

LATER = datetime(2099, 6, 1, 12, 0, tzinfo=UTC)


def first_attempts(url: str) -> list[datetime]:
    with get_engine(url).connect() as conn:
        got = conn.execute(sa.select(jobs.c.next_attempt_at).order_by(jobs.c.id)).scalars()
        return [t if t.tzinfo else t.replace(tzinfo=UTC) for t in got]


@pytest.mark.parametrize("kind", SYNC)
def test_deliver_at_through_every_kind(kind: str, db_url: str, signals: list) -> None:
    with sync_target(kind, db_url) as (target, commit, _rollback):
        enqueue(event(1), session=target, deliver_at=LATER)
        enqueue_many([event(2), event(3)], session=target, deliver_at=LATER)
        enqueue(event(4), session=target, deliver_at=LATER, ordering_key="c", dedupe_key="d")
        with pytest.raises(ValidationError, match="deliver_at"):
            enqueue(event(5), session=target, deliver_at=LATER.replace(tzinfo=None))
        commit()
    assert first_attempts(db_url) == [LATER] * 4


@pytest.mark.parametrize("kind", ASYNC)
def test_async_deliver_at_through_every_kind(kind: str, db_url: str, signals: list) -> None:
    async def run() -> None:
        async with async_target(kind, db_url) as (target, commit, _rollback):
            await enqueue_async(event(1), session=target, deliver_at=LATER)  # the hot path
            await enqueue_many_async([event(2), event(3)], session=target, deliver_at=LATER)
            await enqueue_async(
                event(4), session=target, deliver_at=LATER, ordering_key="c", dedupe_key="d"
            )
            with pytest.raises(ValidationError, match="deliver_at"):
                await enqueue_many_async(
                    [event(5)], session=target, deliver_at=LATER.replace(tzinfo=None)
                )
            await commit()

    asyncio.run(run())
    assert first_attempts(db_url) == [LATER] * 4


# --------------------------------------------------------------------------- wrong kinds


def test_anything_else_is_a_type_error_listing_what_is_accepted(db_url: str) -> None:
    for wrong in (object(), "postgresql://", get_engine(db_url), sessionmaker()):
        with pytest.raises(TypeError, match=r"Session, scoped_session .* psycopg 3 Connection"):
            enqueue(event(1), session=wrong)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"AsyncSession, async_scoped_session .* AsyncConn"):
            asyncio.run(enqueue_async(event(1), session=wrong))  # type: ignore[arg-type]
    assert count(db_url) == 0


def test_sync_and_async_kinds_point_at_each_other(db_url: str) -> None:
    with Session(get_engine(db_url)) as s, pytest.raises(TypeError, match="use `enqueue"):
        asyncio.run(enqueue_async(event(1), session=s))  # type: ignore[arg-type]

    async def run() -> None:
        engine = create_async_engine(async_url(db_url, "asyncpg"))
        async with AsyncSession(engine) as s:
            with pytest.raises(TypeError, match="use `await enqueue_async"):
                enqueue(event(1), session=s)  # type: ignore[arg-type]
        await engine.dispose()

    asyncio.run(run())
    assert count(db_url) == 0


# --------------------------------------------------------------------------- the event loop


@pytest.mark.parametrize("kind", [*ASYNC, "none"])
def test_async_never_blocks_the_event_loop(kind: str, db_url: str) -> None:
    """While the outbox table is locked by another transaction for a while, enqueue_async waits
    for it without holding the loop: a ticker keeps ticking."""
    if not db_url.startswith("postgresql"):
        pytest.skip("holds a PostgreSQL table lock")
    url = db_url
    hold = 2.0
    locked, release = threading.Event(), threading.Event()

    def locker() -> None:
        with psycopg.connect(pg_dsn(url)) as pg, pg.transaction():
            pg.execute("LOCK TABLE dispatcher_jobs IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(hold)

    async def run() -> tuple[float, float]:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        started = time.monotonic()
        if kind == "none":
            await enqueue_async(event(1))
            await enqueue_many_async([event(2)])
        else:
            async with async_target(kind, url) as (target, commit, _rollback):
                await enqueue_async(event(1), session=target)
                await enqueue_many_async([event(2)], session=target)
                await commit()
        waited = time.monotonic() - started
        stop.set()
        await tick
        return waited, max(gaps)

    thread = threading.Thread(target=locker)
    thread.start()
    try:
        assert locked.wait(30)
        waited, worst_gap = asyncio.run(run())
    finally:
        release.set()
        thread.join()
    assert waited >= hold * 0.9  # it really waited for the lock ...
    assert worst_gap < hold / 2  # ... and the loop went on meanwhile (generous for a busy box)
    assert count(url) == 2


@pytest.mark.parametrize("kind", ["psycopg", "psycopg_async"])
def test_psycopg_autocommit_connection(kind: str, db_url: str, signals: list) -> None:
    """No transaction of the caller's: a batch gets one of its own (all or nothing), and the
    workers are signalled at once."""
    if not db_url.startswith("postgresql"):
        pytest.skip("a psycopg connection is PostgreSQL only")
    if kind == "psycopg":
        with psycopg.connect(pg_dsn(db_url), autocommit=True) as pg:
            enqueue_many([event(1), event(2)], session=pg)
            enqueue(event(3), session=pg)
    else:

        async def run() -> None:
            pg = await psycopg.AsyncConnection.connect(pg_dsn(db_url), autocommit=True)
            try:
                await enqueue_many_async([event(1), event(2)], session=pg)
                await enqueue_async(event(3), session=pg)
            finally:
                await pg.close()

        asyncio.run(run())
    wait_for_signals(signals, 3)
    assert count(db_url) == 3
    assert signals[0][0] == "default"
