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

Django has its own entry point, :mod:`dispatcher.contrib.django`. An enqueue goes one way:
validate the events into rows (here), then the session's adapter (:mod:`dispatcher.adapters`)
writes them and arranges the workers' signal for after the commit, sent by a background thread
that never holds up the caller (:mod:`dispatcher.signals`); if the broker is down at that moment,
the sweeper's next pass finds the job anyway, so a lost signal delays, never loses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

import sqlalchemy as sa

from dispatcher import adapters, tracing
from dispatcher.adapters import Adapter, AsyncAdapter, OwnTransaction, OwnTransactionInThread
from dispatcher.config import DEFAULT_QUEUE, QUEUE_NAME
from dispatcher.db import utcnow
from dispatcher.events import (
    CustomEvent,
    Event,
    SegmentEvent,
    ValidationError,
    key_problem,
)
from dispatcher.outbox import NewJob
from dispatcher.problems import OutboxSchemaMissing, OutboxUnavailable, is_schema_missing
from dispatcher.signals import signaller

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_scoped_session
    from sqlalchemy.orm import Session, scoped_session

    SyncTarget: TypeAlias = (
        Session | scoped_session[Any] | sa.Connection | psycopg.Connection[Any] | Adapter
    )
    AsyncTarget: TypeAlias = (
        AsyncSession
        | async_scoped_session[Any]
        | AsyncConnection
        | psycopg.AsyncConnection[Any]
        | AsyncAdapter
    )

__all__ = [
    "OutboxSchemaMissing",  # re-exported: they live in dispatcher.problems
    "OutboxUnavailable",
    "check_queue",
    "enqueue",
    "enqueue_async",
    "enqueue_many",
    "enqueue_many_async",
    "signal_workers",
]

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


def check_deliver_at(value: object, field: str = "deliver_at") -> list[str]:
    """None (at once) or a timezone-aware datetime: a naive one would mean a different moment on
    each machine's clock."""
    if value is None:
        return []
    if not isinstance(value, datetime):
        return [f"{field}: expected a timezone-aware datetime (got {type(value).__name__})"]
    if value.utcoffset() is None:
        return [
            f"{field}: must be timezone-aware (got the naive {value.isoformat()}); "
            "use e.g. datetime.now(UTC) + timedelta(hours=24)"
        ]
    try:
        value.astimezone(UTC)
    except OverflowError:
        return [f"{field}: out of range (got {value.isoformat()})"]
    return []


def _to_row(
    event: object,
    queue: str,
    dedupe_key: object,
    field: str,
    ordering_key: object = None,
    deliver_at: datetime | None = None,
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
        deliver_at=deliver_at.astimezone(UTC) if deliver_at is not None else None,
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
    deliver_at: datetime | None = None,
) -> str:
    """Write one event to the outbox and return its job id.

    With ``session`` (any kind in :data:`SYNC_KINDS`) the row joins the caller's transaction;
    without it, a short transaction of our own. ``dedupe_key``: the same key in the same queue
    returns the existing job's id and writes nothing, which makes a producer's retry safe.
    ``ordering_key`` (a customer's id, say): the queue's jobs with the same key are sent one at
    a time, in the order their transactions committed; a retrying one holds the next ones.
    ``deliver_at`` (a timezone-aware datetime): not sent before then, and within the sweeper's
    interval after it; a time in the past means now. A scheduled job with an ordering key holds
    the key's later jobs until it has gone out, like a retrying one.
    """
    row = _to_row(event, queue, dedupe_key, "event", ordering_key, _deliver_at(deliver_at))
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
    deliver_at: datetime | None = None,
) -> list[str]:
    """Write a batch in one statement (all or nothing); return the job ids in order.

    Every event is checked before anything is written; errors name the event's index.
    ``ordering_key`` puts every event of the batch under one key (sent in the batch's order),
    ``ordering_keys`` gives one key (or None) per event; ``deliver_at`` is the whole batch's.
    """
    rows = _to_rows(events, queue, dedupe_keys, ordering_key, ordering_keys, deliver_at)
    return [str(i) for i in _write(rows, session)]


async def enqueue_async(
    event: Event,
    *,
    session: AsyncTarget | None = None,
    queue: str = DEFAULT_QUEUE,
    dedupe_key: str | None = None,
    ordering_key: str | None = None,
    deliver_at: datetime | None = None,
) -> str:
    """:func:`enqueue` for asyncio code: ``session`` is any kind in :data:`ASYNC_KINDS`. Never
    blocks the event loop (without ``session``, the transaction of our own runs in a thread)."""
    row = _to_row(event, queue, dedupe_key, "event", ordering_key, _deliver_at(deliver_at))
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
    deliver_at: datetime | None = None,
) -> list[str]:
    """:func:`enqueue_many` for asyncio code (see :func:`enqueue_async`)."""
    rows = _to_rows(events, queue, dedupe_keys, ordering_key, ordering_keys, deliver_at)
    return [str(i) for i in await _write_async(rows, session)]


def _deliver_at(value: object) -> datetime | None:
    if errors := check_deliver_at(value):
        raise ValidationError(errors)
    return value if isinstance(value, datetime) else None


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
    deliver_at: object = None,
) -> list[NewJob]:
    when = _deliver_at(deliver_at)
    events = list(events)
    keys = _per_event("dedupe_keys", dedupe_keys, len(events)) or [None] * len(events)
    if ordering_key is not None and ordering_keys is not None:
        raise ValidationError(["ordering_keys: give ordering_key or ordering_keys, not both"])
    orders = _per_event("ordering_keys", ordering_keys, len(events)) or [ordering_key] * len(events)
    rows: list[NewJob] = []
    errors: list[str] = []
    for index, (event, key, order) in enumerate(zip(events, keys, orders, strict=True)):
        row = _to_row(event, queue, key, f"events[{index}]", order, when)
        if isinstance(row, list):
            errors.extend(e if e.startswith("events[") else f"events[{index}].{e}" for e in row)
        else:
            rows.append(row)
    if errors:
        raise ValidationError(errors)
    return rows


# --------------------------------------------------------------------------- writing


def _adapter(session: object) -> Adapter:
    if session is None:
        return OwnTransaction()
    if isinstance(session, Adapter):  # e.g. dispatcher.contrib.django's
        return session
    for kind in adapters.SYNC:
        if kind.accepts(session):
            return kind(session)
    raise _wrong_kind(session, sync=True)


def _async_adapter(session: object) -> AsyncAdapter:
    if session is None:
        return OwnTransactionInThread()
    if isinstance(session, AsyncAdapter):
        return session
    for kind in adapters.ASYNC:
        if kind.accepts(session):
            return kind(session)
    raise _wrong_kind(session, sync=False)


def _schema_checked(exc: Exception, adapter: Adapter | AsyncAdapter) -> Exception:
    """A missing outbox table, from whichever driver and path, as :class:`OutboxSchemaMissing`."""
    if isinstance(exc, OutboxSchemaMissing) or not is_schema_missing(exc):
        return exc
    try:
        where = adapter.where()
    except Exception:
        where = "the database"
    return OutboxSchemaMissing(where, exc, fix=adapter.fix)


def _write(rows: Sequence[NewJob], session: object) -> list[int]:
    """Write the rows through the session's adapter, then have it signal after the commit."""
    adapter = _adapter(session)
    if not rows:
        return []
    now = utcnow()
    try:
        ids = adapter.write(rows, now)
    except Exception as exc:
        checked = _schema_checked(exc, adapter)
        if checked is exc:
            raise
        raise checked from exc
    if queues := _due_queues(rows, now):
        adapter.after_commit(queues, signal_workers)
    return ids


async def _write_async(rows: Sequence[NewJob], session: object) -> list[int]:
    """:func:`_write` for asyncio code."""
    adapter = _async_adapter(session)
    if not rows:
        return []
    now = utcnow()
    try:
        ids = await adapter.write(rows, now)
    except Exception as exc:
        checked = _schema_checked(exc, adapter)
        if checked is exc:
            raise
        raise checked from exc
    if queues := _due_queues(rows, now):
        adapter.after_commit(queues, signal_workers)
    return ids


def _due_queues(rows: Sequence[NewJob], now: datetime) -> set[str]:
    """The queues to signal: a job scheduled for later is found by the sweeper at its time."""
    return {r.queue for r in rows if r.due(now) == now}


def _wrong_kind(session: object, *, sync: bool) -> TypeError:
    name = type(session).__name__
    if sync and any(kind.accepts(session) for kind in adapters.ASYNC):
        return TypeError(
            f"session: got a {name}; use `await enqueue_async(...)` (or "
            f"`enqueue_many_async`), which accepts {ASYNC_KINDS}"
        )
    if not sync and any(kind.accepts(session) for kind in adapters.SYNC):
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


def signal_workers(queues: Iterable[str]) -> None:
    """Tell workers that ``queues`` have work due; never raises (see :mod:`dispatcher.signals`)."""
    signaller.request(queues)
