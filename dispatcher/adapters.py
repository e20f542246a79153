"""One small adapter per kind of session a producer hands to ``enqueue``.

An adapter knows two things about its kind: how to write rows in the caller's transaction
(:meth:`Adapter.write`), and how to run the workers' signal once that transaction has committed
(:meth:`Adapter.after_commit`). :mod:`dispatcher.producer` validates, picks the adapter and calls
those two; a new kind of session is one new class here (and its test), listed in :data:`SYNC` or
:data:`ASYNC`. Django's adapter lives in :mod:`dispatcher.contrib.django`.

Classes are matched by module and name (:func:`_is`), so checking a session's kind imports
nothing: an object of a class from a module nobody imported cannot exist.
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from dispatcher import outbox
from dispatcher.config import get_settings
from dispatcher.db import get_engine
from dispatcher.outbox import NewJob, insert_jobs
from dispatcher.problems import OutboxUnavailable
from dispatcher.signals import signaller

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

Signal = Callable[[Iterable[str]], None]  # tells workers that these queues have work due


def _is(obj: object, module: str, name: str) -> bool:
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return isinstance(cls, type) and isinstance(obj, cls)


class Adapter:
    """A sync session kind. ``kind`` = (module, class) of the sessions it takes."""

    kind: ClassVar[tuple[str, str]] = ("", "")
    fix: ClassVar[str] = "dispatcher migrate"  # what creates the tables, for the error

    @classmethod
    def accepts(cls, session: object) -> bool:
        return _is(session, *cls.kind)

    def write(self, rows: Sequence[NewJob], now: datetime) -> list[int]:
        """Insert ``rows`` in the session's transaction; their ids in order."""
        raise NotImplementedError

    def after_commit(self, queues: set[str], signal: Signal) -> None:
        """Arrange ``signal(queues)`` for once the transaction has committed (not on rollback)."""
        raise NotImplementedError

    def where(self) -> sa.URL | str:
        """The database written to, for an error message (passwords are redacted there)."""
        return "the database"


class AsyncAdapter:
    """An asyncio session kind: :class:`Adapter` with an awaitable ``write``."""

    kind: ClassVar[tuple[str, str]] = ("", "")
    fix: ClassVar[str] = "dispatcher migrate"

    @classmethod
    def accepts(cls, session: object) -> bool:
        return _is(session, *cls.kind)

    async def write(self, rows: Sequence[NewJob], now: datetime) -> list[int]:
        raise NotImplementedError

    def after_commit(self, queues: set[str], signal: Signal) -> None:
        raise NotImplementedError

    def where(self) -> sa.URL | str:
        return "the database"


# --------------------------------------------------------------------------- no session


class OwnTransaction(Adapter):
    """No session: a short transaction of our own, so the signal can go at once.

    Database trouble becomes :class:`OutboxUnavailable`. A pooled connection that a database
    restart broke fails on first use; SQLAlchemy then drops the pool, so one retry of a statement
    that never reached COMMIT is safe and usually succeeds.
    """

    def write(self, rows: Sequence[NewJob], now: datetime) -> list[int]:
        engine = get_engine(get_settings().database_url)
        for attempt in (1, 2):
            committing = False
            try:
                with engine.connect() as conn:
                    with conn.begin():
                        ids = insert_jobs(conn, rows, now)
                        committing = True
                    return ids
            except sa.exc.DBAPIError as exc:
                if attempt == 1 and exc.connection_invalidated and not committing:
                    continue
                if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
                    raise OutboxUnavailable(engine.url, exc) from exc
                raise
        raise AssertionError("unreachable")

    def after_commit(self, queues: set[str], signal: Signal) -> None:
        signal(queues)  # committed already

    def where(self) -> sa.URL | str:
        return get_settings().database_url


class OwnTransactionInThread(AsyncAdapter):
    """No session in asyncio code: :class:`OwnTransaction` in a thread, off the event loop."""

    def __init__(self) -> None:
        self.own = OwnTransaction()

    async def write(self, rows: Sequence[NewJob], now: datetime) -> list[int]:
        return await asyncio.to_thread(self.own.write, rows, now)

    def after_commit(self, queues: set[str], signal: Signal) -> None:
        signal(queues)

    def where(self) -> sa.URL | str:
        return self.own.where()


# --------------------------------------------------------------------------- SQLAlchemy


@dataclass
class _Pending:
    queues: set[str] = field(default_factory=set)
    signal: Signal | None = None


_PENDING_KEY = "dispatcher_pending_queues"
_listening = False


def _listen_once() -> None:
    """One listener on the Session and Engine classes (subclasses included), not one per session:
    adding listeners to each new session cost about a tenth of a one-event ``enqueue()``. For
    sessions and connections that enqueued nothing the listeners do one dict lookup."""
    global _listening
    if not _listening:
        sa_event.listen(Session, "after_commit", _flush_signals)
        sa_event.listen(Session, "after_rollback", _drop_signals)
        sa_event.listen(sa.Engine, "commit", _flush_signals)
        sa_event.listen(sa.Engine, "rollback", _drop_signals)
        _listening = True


def _remember(info: dict[Any, Any], queues: set[str], signal: Signal) -> None:
    _listen_once()
    pending: _Pending | None = info.get(_PENDING_KEY)
    if pending is None:
        pending = info[_PENDING_KEY] = _Pending()
    pending.queues |= queues
    pending.signal = signal


def _flush_signals(target: Session | sa.Connection) -> None:
    pending: _Pending | None = target.info.get(_PENDING_KEY)
    if pending is None or not pending.queues or pending.signal is None:
        return
    queues, pending.queues = pending.queues, set()
    if isinstance(target, Session):  # after_commit: the COMMIT has happened
        pending.signal(queues)
        return
    # A Connection's commit event fires before the COMMIT is sent: signal once the transaction
    # is over (a signal that beat the COMMIT would find nothing to claim).
    tx = target.get_transaction()
    signaller.request_when(queues, lambda: tx is None or not tx.is_active)


def _drop_signals(target: Session | sa.Connection) -> None:
    pending: _Pending | None = target.info.get(_PENDING_KEY)
    if pending is not None:
        pending.queues.clear()


class SessionAdapter(Adapter):
    """A SQLAlchemy ``Session``: signalled from its ``after_commit`` hook."""

    kind = ("sqlalchemy.orm", "Session")

    def __init__(self, session: Session) -> None:
        self.session = session

    def write(self, rows: Sequence[NewJob], now: datetime) -> list[int]:
        return insert_jobs(self.session.connection(), rows, now)

    def after_commit(self, queues: set[str], signal: Signal) -> None:
        _remember(self.session.info, queues, signal)

    def where(self) -> sa.URL | str:
        return self.session.get_bind().engine.url


class ScopedSessionAdapter(SessionAdapter):
    """A ``scoped_session`` (Flask-SQLAlchemy's ``db.session``): the current thread's Session."""

    kind = ("sqlalchemy.orm", "scoped_session")

    def __init__(self, scoped: Callable[[], Session]) -> None:
        super().__init__(scoped())


class ConnectionAdapter(Adapter):
    """A SQLAlchemy ``Connection``: signalled after its ``commit`` event, dropped on rollback."""

    kind = ("sqlalchemy", "Connection")

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

    def write(self, rows: Sequence[NewJob], now: datetime) -> list[int]:
        if not self.conn.in_transaction():
            self.conn.begin()  # what the first execute() would do: the caller commits
        return insert_jobs(self.conn, rows, now)

    def after_commit(self, queues: set[str], signal: Signal) -> None:
        _remember(self.conn.info, queues, signal)  # the pooled DBAPI connection's info

    def where(self) -> sa.URL | str:
        return self.conn.engine.url


# --------------------------------------------------------------------------- psycopg


def _after_psycopg_transaction(pg: Any, queues: set[str], signal: Signal) -> None:
    """psycopg has no commit hook: the signaller watches the connection until its transaction
    has ended (committed or rolled back; a signal after a rollback finds nothing, harmlessly)."""
    from psycopg.pq import TransactionStatus

    if pg.info.transaction_status == TransactionStatus.IDLE:  # autocommit: committed already
        signal(queues)
        return
    ref = weakref.ref(pg)

    def ended() -> bool:
        conn = ref()
        return (
            conn is None
            or bool(conn.closed)
            or conn.info.transaction_status == TransactionStatus.IDLE
        )

    signaller.request_when(queues, ended)


class PsycopgAdapter(Adapter):
    """A psycopg 3 ``Connection``: written straight through psycopg, in its transaction (a batch
    on an autocommit connection gets one of its own: all or nothing)."""

    kind = ("psycopg", "Connection")

    def __init__(self, pg: psycopg.Connection[Any]) -> None:
        self.pg = pg

    def write(self, rows: Sequence[NewJob], now: datetime) -> list[int]:
        if self.pg.autocommit and len(rows) > 1:
            with self.pg.transaction():
                return outbox.insert_jobs_psycopg(self.pg, rows, now)
        return outbox.insert_jobs_psycopg(self.pg, rows, now)

    def after_commit(self, queues: set[str], signal: Signal) -> None:
        _after_psycopg_transaction(self.pg, queues, signal)

    def where(self) -> sa.URL | str:
        return self.pg.info.dsn  # psycopg leaves the password out of it


class AsyncPsycopgAdapter(AsyncAdapter):
    """A psycopg 3 ``AsyncConnection`` (see :class:`PsycopgAdapter`)."""

    kind = ("psycopg", "AsyncConnection")

    def __init__(self, pg: psycopg.AsyncConnection[Any]) -> None:
        self.pg = pg

    async def write(self, rows: Sequence[NewJob], now: datetime) -> list[int]:
        if self.pg.autocommit and len(rows) > 1:
            async with self.pg.transaction():
                return await outbox.insert_jobs_psycopg_async(self.pg, rows, now)
        return await outbox.insert_jobs_psycopg_async(self.pg, rows, now)

    def after_commit(self, queues: set[str], signal: Signal) -> None:
        _after_psycopg_transaction(self.pg, queues, signal)

    def where(self) -> sa.URL | str:
        return self.pg.info.dsn


# --------------------------------------------------------------------------- SQLAlchemy asyncio


async def _insert_async(conn: AsyncConnection, rows: Sequence[NewJob], now: datetime) -> list[int]:
    """Through the async driver itself where we can (no thread, no blocking call)."""
    dialect = conn.dialect
    if dialect.name == "postgresql" and dialect.driver.startswith("psycopg"):
        raw = (await conn.get_raw_connection()).driver_connection
        return await outbox.insert_jobs_psycopg_async(raw, rows, now)
    plain = len(rows) == 1 and rows[0].dedupe_key is None and rows[0].ordering_key is None
    if dialect.driver == "asyncpg" and plain:  # the hot path: one statement, nothing to compile
        params = outbox.pg_params(rows, now)[0]
        return [(await conn.exec_driver_sql(outbox.ASYNCPG_INSERT, params)).scalar_one()]
    ids: list[int] = await conn.run_sync(insert_jobs, rows, now)
    return ids


class AsyncSessionAdapter(AsyncAdapter):
    """A SQLAlchemy ``AsyncSession`` (asyncpg, psycopg or aiosqlite underneath)."""

    kind = ("sqlalchemy.ext.asyncio", "AsyncSession")

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def write(self, rows: Sequence[NewJob], now: datetime) -> list[int]:
        return await _insert_async(await self.session.connection(), rows, now)

    def after_commit(self, queues: set[str], signal: Signal) -> None:
        _remember(self.session.sync_session.info, queues, signal)

    def where(self) -> sa.URL | str:
        return self.session.sync_session.get_bind().engine.url


class AsyncScopedSessionAdapter(AsyncSessionAdapter):
    """An ``async_scoped_session``: the current scope's AsyncSession."""

    kind = ("sqlalchemy.ext.asyncio", "async_scoped_session")

    def __init__(self, scoped: Callable[[], AsyncSession]) -> None:
        super().__init__(scoped())


class AsyncConnectionAdapter(AsyncAdapter):
    """A SQLAlchemy ``AsyncConnection``: signalled like its sync ``Connection``."""

    kind = ("sqlalchemy.ext.asyncio", "AsyncConnection")

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def write(self, rows: Sequence[NewJob], now: datetime) -> list[int]:
        if not self.conn.in_transaction():
            await self.conn.begin()
        return await _insert_async(self.conn, rows, now)

    def after_commit(self, queues: set[str], signal: Signal) -> None:
        _remember(self.conn.sync_connection.info, queues, signal)  # type: ignore[union-attr]

    def where(self) -> sa.URL | str:
        return self.conn.engine.url


# Scoped kinds before the kinds they wrap; a new kind is one line here.
SYNC: tuple[type[Adapter], ...] = (
    ScopedSessionAdapter,
    SessionAdapter,
    ConnectionAdapter,
    PsycopgAdapter,
)
ASYNC: tuple[type[AsyncAdapter], ...] = (
    AsyncScopedSessionAdapter,
    AsyncSessionAdapter,
    AsyncConnectionAdapter,
    AsyncPsycopgAdapter,
)
