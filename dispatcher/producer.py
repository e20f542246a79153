"""The producer API: ``enqueue``/``enqueue_many`` and ``enqueue_async``/``enqueue_many_async``.

Given the caller's session or connection, the job row is written inside the caller's transaction
(never outside it), so an event commits atomically with the business data or not at all:

==========================================  ============================================
``enqueue(..., session=)``                  ``await enqueue_async(..., session=)``
==========================================  ============================================
SQLAlchemy ``Session``, ``scoped_session``   ``AsyncSession``, ``async_scoped_session``
(Flask-SQLAlchemy's ``db.session``),         (asyncpg, psycopg or aiosqlite underneath),
``Connection``; a psycopg 3 ``Connection``   ``AsyncConnection``; a psycopg 3
                                             ``AsyncConnection``
==========================================  ============================================

Django has its own entry point, :mod:`dispatcher.contrib.django`. Workers are told that work is
due only after the commit (a Session's ``after_commit`` hook, a Connection's ``commit`` event, or
for a plain psycopg connection once its transaction has ended), by a background thread that never
holds up the caller (:mod:`dispatcher.signals`); if the broker is down at that moment, the
sweeper's next pass finds the job anyway, so a lost signal delays, never loses.
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session, scoped_session

from dispatcher import outbox, tracing
from dispatcher.config import DEFAULT_QUEUE, QUEUE_NAME, get_settings
from dispatcher.db import get_engine, utcnow
from dispatcher.events import (
    CustomEvent,
    Event,
    SegmentEvent,
    ValidationError,
    key_problem,
)
from dispatcher.outbox import NewJob, insert_jobs
from dispatcher.problems import is_schema_missing
from dispatcher.scrub import redact_url, scrub
from dispatcher.signals import signaller

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_scoped_session

    SyncTarget: TypeAlias = Session | scoped_session[Any] | sa.Connection | psycopg.Connection[Any]
    AsyncTarget: TypeAlias = (
        AsyncSession | async_scoped_session[Any] | AsyncConnection | psycopg.AsyncConnection[Any]
    )

_PENDING_KEY = "dispatcher_pending_queues"


class OutboxUnavailable(RuntimeError):
    """The outbox database could not be reached; nothing was written. The message names the
    database with every password form redacted (user-info, ``?password=``)."""

    def __init__(self, url: sa.URL | str, cause: Exception) -> None:
        lines = str(getattr(cause, "orig", None) or cause).strip().splitlines()
        reason = scrub(lines[0]) if lines else type(cause).__name__
        super().__init__(
            f"could not write to the outbox at {redact_url(url)}: {reason}; nothing was written"
        )


class OutboxSchemaMissing(OutboxUnavailable):
    """The outbox tables do not exist in that database (or are older than this version): run
    ``dispatcher migrate``. Raised alike with or without a ``session`` or ``dedupe_key``, whatever
    the driver; in the caller's transaction, that transaction is left failed (roll it back)."""

    def __init__(
        self,
        url: sa.URL | str,
        cause: BaseException | None = None,
        *,
        fix: str = "dispatcher migrate",
    ) -> None:
        RuntimeError.__init__(
            self,
            f"the outbox tables do not exist in {redact_url(url)} (or are older than this "
            f"version): run `{fix}` first; nothing was written",
        )


MAX_DEDUPE_KEY = 255


def check_queue(queue: object, field: str = "queue") -> list[str]:
    """The one rule for a queue name, used by ``enqueue``, every operator command, the admin page
    and its API: 1-64 of ``a-z 0-9 _ -``, starting with a letter or digit, nothing around it."""
    if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
        meant = queue.strip().lower() if isinstance(queue, str) else ""
        hint = f"; did you mean {meant!r}?" if QUEUE_NAME.fullmatch(meant) else ""
        return [
            f"{field}: must be 1-64 characters of a-z, 0-9, '_' or '-', starting with a letter "
            f"or digit (got {queue!r:.80}){hint}"
        ]
    return []


MAX_ORDERING_KEY = 255


def check_key(value: object, field: str, limit: int) -> list[str]:
    """A dedupe or ordering key: None, or 1-``limit`` characters that the database can store
    (see :func:`dispatcher.events.key_problem`)."""
    problem = None if value is None else key_problem(value, limit)
    return [f"{field}: {problem}"] if problem else []


def _to_row(
    event: object, queue: str, dedupe_key: object, field: str, ordering_key: object = None
) -> NewJob | list[str]:
    errors = check_queue(queue)
    if not isinstance(event, CustomEvent | SegmentEvent):
        errors.append(
            f"{field}: expected a CustomEvent or SegmentEvent (got {type(event).__name__})"
        )
    errors += check_key(dedupe_key, "dedupe_key", MAX_DEDUPE_KEY)
    errors += check_key(ordering_key, "ordering_key", MAX_ORDERING_KEY)
    if errors or not isinstance(event, CustomEvent | SegmentEvent):
        return errors
    email = event.customer_email if isinstance(event, CustomEvent) else None
    return NewJob(
        queue=queue,
        endpoint=event.endpoint,
        custom_event_id=event.custom_event_id,
        customer_email=email.lower() if email else None,
        payload=event.to_json(),
        dedupe_key=dedupe_key if isinstance(dedupe_key, str) else None,
        trace_context=tracing.current_context(),
        ordering_key=ordering_key if isinstance(ordering_key, str) else None,
    )


SYNC_KINDS = (
    "a SQLAlchemy Session, scoped_session (e.g. Flask-SQLAlchemy's db.session) or Connection, "
    "or a psycopg 3 Connection"
)
ASYNC_KINDS = (
    "a SQLAlchemy AsyncSession, async_scoped_session or AsyncConnection (asyncpg, psycopg or "
    "aiosqlite), or a psycopg 3 AsyncConnection"
)


def enqueue(
    event: Event,
    *,
    session: SyncTarget | None = None,
    queue: str = DEFAULT_QUEUE,
    dedupe_key: str | None = None,
    ordering_key: str | None = None,
) -> str:
    """Write one event to the outbox and return its job id.

    With ``session`` (any kind in :data:`SYNC_KINDS`) the row joins the caller's transaction;
    without it, a short transaction of our own. ``dedupe_key``: the same key in the same queue
    returns the existing job's id and writes nothing, which makes a producer's retry safe.
    ``ordering_key`` (a customer's id, say): the queue's jobs with the same key are sent one at
    a time, in the order their transactions committed; a retrying one holds the next ones.
    """
    row = _to_row(event, queue, dedupe_key, "event", ordering_key)
    if isinstance(row, list):
        raise ValidationError(row)
    return str(_write([row], session)[0])


def enqueue_many(
    events: Iterable[Event],
    *,
    session: SyncTarget | None = None,
    queue: str = DEFAULT_QUEUE,
    dedupe_keys: Sequence[str | None] | None = None,
    ordering_key: str | None = None,
    ordering_keys: Sequence[str | None] | None = None,
) -> list[str]:
    """Write a batch in one statement (all or nothing); return the job ids in order.

    Every event is checked before anything is written; errors name the event's index.
    ``ordering_key`` puts every event of the batch under one key (sent in the batch's order),
    ``ordering_keys`` gives one key (or None) per event.
    """
    rows = _to_rows(events, queue, dedupe_keys, ordering_key, ordering_keys)
    return [str(i) for i in _write(rows, session)]


async def enqueue_async(
    event: Event,
    *,
    session: AsyncTarget | None = None,
    queue: str = DEFAULT_QUEUE,
    dedupe_key: str | None = None,
    ordering_key: str | None = None,
) -> str:
    """:func:`enqueue` for asyncio code: ``session`` is any kind in :data:`ASYNC_KINDS`. Never
    blocks the event loop (without ``session``, the transaction of our own runs in a thread)."""
    row = _to_row(event, queue, dedupe_key, "event", ordering_key)
    if isinstance(row, list):
        raise ValidationError(row)
    return str((await _write_async([row], session))[0])


async def enqueue_many_async(
    events: Iterable[Event],
    *,
    session: AsyncTarget | None = None,
    queue: str = DEFAULT_QUEUE,
    dedupe_keys: Sequence[str | None] | None = None,
    ordering_key: str | None = None,
    ordering_keys: Sequence[str | None] | None = None,
) -> list[str]:
    """:func:`enqueue_many` for asyncio code (see :func:`enqueue_async`)."""
    rows = _to_rows(events, queue, dedupe_keys, ordering_key, ordering_keys)
    return [str(i) for i in await _write_async(rows, session)]


def _per_event(
    name: str, keys: Sequence[str | None] | None, count: int
) -> Sequence[str | None] | None:
    if keys is not None and (isinstance(keys, str) or len(keys) != count):
        got = "a string" if isinstance(keys, str) else str(len(keys))
        raise ValidationError([f"{name}: expected {count} keys, one per event (got {got})"])
    return keys


def _to_rows(
    events: Iterable[Event],
    queue: str,
    dedupe_keys: Sequence[str | None] | None,
    ordering_key: str | None = None,
    ordering_keys: Sequence[str | None] | None = None,
) -> list[NewJob]:
    events = list(events)
    keys = _per_event("dedupe_keys", dedupe_keys, len(events)) or [None] * len(events)
    if ordering_key is not None and ordering_keys is not None:
        raise ValidationError(["ordering_keys: give ordering_key or ordering_keys, not both"])
    orders = _per_event("ordering_keys", ordering_keys, len(events)) or [ordering_key] * len(events)
    rows: list[NewJob] = []
    errors: list[str] = []
    for index, (event, key, order) in enumerate(zip(events, keys, orders, strict=True)):
        row = _to_row(event, queue, key, f"events[{index}]", order)
        if isinstance(row, list):
            errors.extend(e if e.startswith("events[") else f"events[{index}].{e}" for e in row)
        else:
            rows.append(row)
    if errors:
        raise ValidationError(errors)
    return rows


def _module_attr(module: str, name: str) -> Any:
    """``module.name`` if that module has been imported, else None: an object of a class from a
    module nobody imported cannot exist, so the check costs no import."""
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def _is(obj: object, module: str, name: str) -> bool:
    cls = _module_attr(module, name)
    return cls is not None and isinstance(obj, cls)


def _url_of(target: object) -> object:
    """The database ``target`` writes to (for an error message; passwords are redacted there)."""
    try:
        if target is None:
            return get_settings().database_url
        if isinstance(target, scoped_session):
            target = target()
        if isinstance(target, Session):
            bind = target.get_bind()
            return bind.engine.url
        for path in ("engine", "bind", "sync_engine"):
            found = getattr(target, path, None)
            if found is not None and hasattr(found, "url"):
                return found.url
        dsn = getattr(getattr(target, "info", None), "dsn", None)  # psycopg: no password in it
        if isinstance(dsn, str):
            return dsn
    except Exception:
        pass
    return "the database"


def _schema_checked(exc: Exception, session: object) -> Exception:
    """A missing outbox table, from whichever driver and path, as :class:`OutboxSchemaMissing`."""
    if isinstance(exc, OutboxSchemaMissing) or not is_schema_missing(exc):
        return exc
    return OutboxSchemaMissing(_url_of(session), exc)  # type: ignore[arg-type]


def _write(rows: Sequence[NewJob], session: object) -> list[int]:
    try:
        return _write_rows(rows, session)
    except Exception as exc:
        checked = _schema_checked(exc, session)
        if checked is exc:
            raise
        raise checked from exc


def _write_rows(rows: Sequence[NewJob], session: object) -> list[int]:
    queues = {r.queue for r in rows}
    if session is None:
        if not rows:
            return []
        ids = _write_own_transaction(rows, utcnow())
        signal_workers(queues)
        return ids
    if isinstance(session, scoped_session):  # Flask-SQLAlchemy's db.session
        session = session()
    if isinstance(session, Session):
        if not rows:
            return []
        ids = insert_jobs(session.connection(), rows, utcnow())
        _signal_after_session_commit(session, queues)
        return ids
    if isinstance(session, sa.Connection):
        if not rows:
            return []
        if not session.in_transaction():
            session.begin()  # what the first execute() would do: the caller commits
        ids = insert_jobs(session, rows, utcnow())
        _signal_after_connection_commit(session, queues)
        return ids
    if _is(session, "psycopg", "Connection"):
        if not rows:
            return []
        if session.autocommit and len(rows) > 1:  # type: ignore[attr-defined]
            with session.transaction():  # type: ignore[attr-defined]  # a batch: all or nothing
                ids = outbox.insert_jobs_psycopg(session, rows, utcnow())
        else:
            ids = outbox.insert_jobs_psycopg(session, rows, utcnow())
        _signal_after_psycopg_transaction(session, queues)
        return ids
    raise _wrong_kind(session, sync=True)


async def _write_async(rows: Sequence[NewJob], session: object) -> list[int]:
    try:
        return await _write_rows_async(rows, session)
    except Exception as exc:
        checked = _schema_checked(exc, session)
        if checked is exc:
            raise
        raise checked from exc


async def _write_rows_async(rows: Sequence[NewJob], session: object) -> list[int]:
    if not signaller.prepared:  # its first use imports Celery: not on the event loop
        await asyncio.to_thread(signaller.prepare)
    queues = {r.queue for r in rows}
    if session is None:
        if not rows:
            return []
        ids = await asyncio.to_thread(_write_own_transaction, rows, utcnow())
        signal_workers(queues)
        return ids
    if _is(session, "sqlalchemy.ext.asyncio", "async_scoped_session"):
        session = session()  # type: ignore[operator]
    if _is(session, "sqlalchemy.ext.asyncio", "AsyncSession"):
        if not rows:
            return []
        ids = await _insert_async_connection(await session.connection(), rows)  # type: ignore[attr-defined]
        _signal_after_session_commit(session.sync_session, queues)  # type: ignore[attr-defined]
        return ids
    if _is(session, "sqlalchemy.ext.asyncio", "AsyncConnection"):
        if not rows:
            return []
        if not session.in_transaction():  # type: ignore[attr-defined]
            await session.begin()  # type: ignore[attr-defined]
        ids = await _insert_async_connection(session, rows)
        _signal_after_connection_commit(session.sync_connection, queues)  # type: ignore[attr-defined]
        return ids
    if _is(session, "psycopg", "AsyncConnection"):
        if not rows:
            return []
        if session.autocommit and len(rows) > 1:  # type: ignore[attr-defined]
            async with session.transaction():  # type: ignore[attr-defined]  # all or nothing
                ids = await outbox.insert_jobs_psycopg_async(session, rows, utcnow())
        else:
            ids = await outbox.insert_jobs_psycopg_async(session, rows, utcnow())
        _signal_after_psycopg_transaction(session, queues)
        return ids
    raise _wrong_kind(session, sync=False)


async def _insert_async_connection(conn: Any, rows: Sequence[NewJob]) -> list[int]:
    """Through the async driver itself where we can (no thread, no blocking call)."""
    now = utcnow()
    dialect = conn.dialect
    if dialect.name == "postgresql" and dialect.driver.startswith("psycopg"):
        raw = (await conn.get_raw_connection()).driver_connection
        return await outbox.insert_jobs_psycopg_async(raw, rows, now)
    plain = len(rows) == 1 and rows[0].dedupe_key is None and rows[0].ordering_key is None
    if dialect.driver == "asyncpg" and plain:
        # The hot path: one statement straight on asyncpg, in SQLAlchemy's transaction. Its
        # adapter sends BEGIN lazily, before the first statement it runs itself; if none has
        # run yet, have it begin now (skipped if a SQLAlchemy release changes that adapter).
        pooled = await conn.get_raw_connection()
        raw, adapted = pooled.driver_connection, pooled.dbapi_connection
        if not raw.is_in_transaction() and getattr(adapted, "_transaction", 0) is None:
            start = getattr(adapted, "_start_transaction", None)
            if start is not None:
                await start()
        if raw.is_in_transaction() or getattr(adapted, "autocommit", False):
            return [await raw.fetchval(outbox.ASYNCPG_INSERT, *outbox.pg_params(rows, now)[0])]
    ids: list[int] = await conn.run_sync(insert_jobs, rows, now)
    return ids


def _wrong_kind(session: object, *, sync: bool) -> TypeError:
    name = type(session).__name__
    if sync and (
        _is(session, "sqlalchemy.ext.asyncio", "AsyncSession")
        or _is(session, "sqlalchemy.ext.asyncio", "async_scoped_session")
        or _is(session, "sqlalchemy.ext.asyncio", "AsyncConnection")
        or _is(session, "psycopg", "AsyncConnection")
    ):
        return TypeError(
            f"session: got a {name}; use `await enqueue_async(...)` (or "
            f"`enqueue_many_async`), which accepts {ASYNC_KINDS}"
        )
    if not sync and (
        isinstance(session, Session | scoped_session | sa.Connection)
        or _is(session, "psycopg", "Connection")
    ):
        return TypeError(
            f"session: got a {name}; use `enqueue(...)` (or `enqueue_many`), which accepts "
            f"{SYNC_KINDS}"
        )
    hint = (
        " (Django: use dispatcher.contrib.django.enqueue)"
        if "django" in repr(type(session))
        else ""
    )
    return TypeError(
        f"session: expected {SYNC_KINDS if sync else ASYNC_KINDS}, got {type(session)!r}{hint}"
    )


def _write_own_transaction(rows: Sequence[NewJob], now: datetime) -> list[int]:
    """Insert in a transaction of our own; database trouble becomes :class:`OutboxUnavailable`.

    A pooled connection that a database restart broke fails on first use; SQLAlchemy then drops
    the pool, so one retry of a statement that never reached COMMIT is safe and usually succeeds.
    """
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


# --------------------------------------------------------------------------- after commit


def _signal_after_session_commit(session: Session, queues: set[str]) -> None:
    _listen_once()
    pending: set[str] | None = session.info.get(_PENDING_KEY)
    if pending is None:
        pending = session.info[_PENDING_KEY] = set()
    pending.update(queues)


def _signal_after_connection_commit(conn: sa.Connection, queues: set[str]) -> None:
    """Signalled from the Connection's ``commit`` event, once that transaction is over; dropped on
    its ``rollback``."""
    _listen_once()
    info = conn.info  # the pooled DBAPI connection's: dropped again on rollback
    pending: set[str] | None = info.get(_PENDING_KEY)
    if pending is None:
        pending = info[_PENDING_KEY] = set()
    pending.update(queues)


def _signal_after_psycopg_transaction(pg: Any, queues: set[str]) -> None:
    """psycopg has no commit hook: the signaller watches the connection until its transaction
    has ended (committed or rolled back; a signal after a rollback finds nothing, harmlessly)."""
    idle = _module_attr("psycopg.pq", "TransactionStatus").IDLE
    if pg.info.transaction_status == idle:  # autocommit: already committed
        signal_workers(queues)
        return
    ref = weakref.ref(pg)

    def ended() -> bool:
        conn = ref()
        return conn is None or bool(conn.closed) or conn.info.transaction_status == idle

    signaller.request_when(queues, ended)


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


def _flush_signals(target: Session | sa.Connection) -> None:
    pending: set[str] | None = target.info.get(_PENDING_KEY)
    if pending:
        queues = set(pending)
        pending.clear()
        if isinstance(target, Session):  # after_commit: the COMMIT has happened
            signal_workers(queues)
            return
        # A Connection's commit event fires before the COMMIT is sent: signal once the
        # transaction is over (a signal that beat the COMMIT would find nothing to claim).
        tx = target.get_transaction()
        signaller.request_when(queues, lambda: tx is None or not tx.is_active)


def _drop_signals(target: Session | sa.Connection) -> None:
    pending: set[str] | None = target.info.get(_PENDING_KEY)
    if pending:
        pending.clear()


def signal_workers(queues: Iterable[str]) -> None:
    """Tell workers that ``queues`` have work due; never raises (see :mod:`dispatcher.signals`)."""
    signaller.request(queues)
