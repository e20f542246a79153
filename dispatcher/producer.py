"""The producer API: ``enqueue`` and ``enqueue_many``.

Given the caller's ``Session`` or ``Connection``, the job row is written inside the caller's
transaction, so an event commits atomically with the business data or not at all. Workers are told
that work is due only after that commit (a Session's ``after_commit`` hook), by a background
thread (:mod:`dispatcher.signals`); if the broker is down at that moment, the sweeper's next pass
finds the job anyway, so a lost signal delays, never loses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from dispatcher.config import DEFAULT_QUEUE, QUEUE_NAME, get_settings
from dispatcher.db import get_engine, utcnow
from dispatcher.events import CustomEvent, Event, SegmentEvent, ValidationError
from dispatcher.outbox import NewJob, insert_jobs
from dispatcher.signals import signaller

_PENDING_KEY = "dispatcher_pending_queues"


class OutboxUnavailable(RuntimeError):
    """The outbox database could not be reached; nothing was written."""

    def __init__(self, url: sa.URL, cause: Exception) -> None:
        reason = str(getattr(cause, "orig", None) or cause).strip().splitlines()[0]
        super().__init__(
            f"could not write to the outbox at {url.render_as_string(hide_password=True)}: "
            f"{reason}; nothing was written"
        )


MAX_DEDUPE_KEY = 255


def check_queue(queue: object, field: str = "queue") -> list[str]:
    if not isinstance(queue, str) or not QUEUE_NAME.match(queue):
        return [
            f"{field}: must be 1-64 characters of a-z, 0-9, '_' or '-', starting with a letter "
            f"or digit (got {queue!r:.80})"
        ]
    return []


def _to_row(event: object, queue: str, dedupe_key: object, field: str) -> NewJob | list[str]:
    errors = check_queue(queue)
    if not isinstance(event, CustomEvent | SegmentEvent):
        errors.append(
            f"{field}: expected a CustomEvent or SegmentEvent (got {type(event).__name__})"
        )
    if dedupe_key is not None and (
        not isinstance(dedupe_key, str) or not 0 < len(dedupe_key) <= MAX_DEDUPE_KEY
    ):
        errors.append(f"dedupe_key: must be a string of 1-{MAX_DEDUPE_KEY} characters")
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
    )


def enqueue(
    event: Event,
    *,
    session: Session | sa.Connection | None = None,
    queue: str = DEFAULT_QUEUE,
    dedupe_key: str | None = None,
) -> str:
    """Write one event to the outbox and return its job id.

    With ``session`` the row joins the caller's transaction; without it, a short transaction of
    our own. ``dedupe_key``: the same key in the same queue returns the existing job's id and
    writes nothing, which makes a producer's retry safe.
    """
    row = _to_row(event, queue, dedupe_key, "event")
    if isinstance(row, list):
        raise ValidationError(row)
    return str(_write([row], session)[0])


def enqueue_many(
    events: Iterable[Event],
    *,
    session: Session | sa.Connection | None = None,
    queue: str = DEFAULT_QUEUE,
    dedupe_keys: Sequence[str | None] | None = None,
) -> list[str]:
    """Write a batch in one statement (all or nothing); return the job ids in order.

    Every event is checked before anything is written; errors name the event's index.
    """
    events = list(events)
    if dedupe_keys is not None and len(dedupe_keys) != len(events):
        raise ValidationError(
            [f"dedupe_keys: expected {len(events)} keys, one per event (got {len(dedupe_keys)})"]
        )
    keys: Sequence[str | None] = dedupe_keys if dedupe_keys is not None else [None] * len(events)
    rows: list[NewJob] = []
    errors: list[str] = []
    for index, (event, key) in enumerate(zip(events, keys, strict=True)):
        row = _to_row(event, queue, key, f"events[{index}]")
        if isinstance(row, list):
            errors.extend(e if e.startswith("events[") else f"events[{index}].{e}" for e in row)
        else:
            rows.append(row)
    if errors:
        raise ValidationError(errors)
    return [str(i) for i in _write(rows, session)]


def _write(rows: Sequence[NewJob], session: Session | sa.Connection | None) -> list[int]:
    if not rows:
        return []
    queues = {r.queue for r in rows}
    now = utcnow()
    if session is None:
        ids = _write_own_transaction(rows, now)
        signal_workers(queues)
        return ids
    if isinstance(session, Session):
        ids = insert_jobs(session.connection(), rows, now)
        _after_commit(session, queues)
        return ids
    if isinstance(session, sa.Connection):
        # A Connection has no after-commit hook; the sweeper's next pass signals these jobs.
        return insert_jobs(session, rows, now)
    raise TypeError(f"session: expected a SQLAlchemy Session or Connection, got {type(session)!r}")


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


def _after_commit(session: Session, queues: set[str]) -> None:
    _listen_once()
    pending: set[str] | None = session.info.get(_PENDING_KEY)
    if pending is None:
        pending = session.info[_PENDING_KEY] = set()
    pending.update(queues)


_listening = False


def _listen_once() -> None:
    """One listener on the Session class (subclasses included), not one per session: adding
    listeners to each new session cost about a tenth of a one-event ``enqueue()``. For sessions
    that enqueued nothing the listeners do one dict lookup."""
    global _listening
    if not _listening:
        sa_event.listen(Session, "after_commit", _flush_signals)
        sa_event.listen(Session, "after_rollback", _drop_signals)
        _listening = True


def _flush_signals(session: Session) -> None:
    pending: set[str] = session.info.get(_PENDING_KEY) or set()
    if pending:
        queues = set(pending)
        pending.clear()
        signal_workers(queues)


def _drop_signals(session: Session) -> None:
    pending: set[str] | None = session.info.get(_PENDING_KEY)
    if pending:
        pending.clear()


def signal_workers(queues: Iterable[str]) -> None:
    """Tell workers that ``queues`` have work due; never raises (see :mod:`dispatcher.signals`)."""
    signaller.request(queues)
