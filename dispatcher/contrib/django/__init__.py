"""Enqueue from a Django project, through Django's own connection and transaction.

Add ``"dispatcher.contrib.django"`` to ``INSTALLED_APPS``; ``python manage.py migrate`` creates
the tables (the same Alembic migrations as ``dispatcher migrate``: see ``outbox_schema``), then::

    from django.db import transaction
    from dispatcher import CustomEvent
    from dispatcher.contrib.django import enqueue

    with transaction.atomic():
        order = Order.objects.create(...)
        enqueue(CustomEvent(101, customer_email=order.email), dedupe_key=f"order-{order.pk}")

The row is written with the connection of ``using`` inside the current ``atomic()`` block (or a
transaction of its own when there is none), so it commits or rolls back with your data; workers
are signalled through ``transaction.on_commit``. PostgreSQL and SQLite (3.35+) are supported.

With ``django.contrib.admin``, the jobs and their attempts appear in the admin (read-only models
of the outbox's tables, ``managed = False``), with an action that replays the selected dead jobs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from dispatcher.config import DEFAULT_QUEUE
from dispatcher.db import utcnow
from dispatcher.events import Event, ValidationError
from dispatcher.outbox import NewJob, insert_jobs_dbapi
from dispatcher.problems import is_schema_missing
from dispatcher.producer import OutboxSchemaMissing, _to_row, _to_rows, signal_workers

__all__ = ["enqueue", "enqueue_many"]


def enqueue(
    event: Event,
    *,
    using: str = "default",
    queue: str = DEFAULT_QUEUE,
    dedupe_key: str | None = None,
    ordering_key: str | None = None,
) -> str:
    """Write one event to the outbox in the current transaction of Django's connection ``using``
    and return its job id (see :func:`dispatcher.enqueue` for ``queue``, ``dedupe_key`` and
    ``ordering_key``)."""
    row = _to_row(event, queue, dedupe_key, "event", ordering_key)
    if isinstance(row, list):
        raise ValidationError(row)
    return str(_write([row], using)[0])


def enqueue_many(
    events: Iterable[Event],
    *,
    using: str = "default",
    queue: str = DEFAULT_QUEUE,
    dedupe_keys: Sequence[str | None] | None = None,
    ordering_key: str | None = None,
    ordering_keys: Sequence[str | None] | None = None,
) -> list[str]:
    """Write a batch (all or nothing) in the current transaction of ``using``; ids in order."""
    rows = _to_rows(events, queue, dedupe_keys, ordering_key, ordering_keys)
    return [str(i) for i in _write(rows, using)]


def _write(rows: Sequence[NewJob], using: str) -> list[int]:
    from django.db import connections, transaction

    if not rows:
        return []
    connection = connections[using]
    if connection.vendor not in ("postgresql", "sqlite"):
        raise TypeError(
            f"using={using!r}: the outbox works with PostgreSQL and SQLite, not {connection.vendor}"
        )
    queues = {r.queue for r in rows}
    # savepoint=False: inside the caller's atomic() block this adds nothing; outside one it makes
    # the rows (and a batch's several statements) one transaction of their own.
    try:
        with transaction.atomic(using=using, savepoint=False), connection.cursor() as cursor:
            ids = insert_jobs_dbapi(cursor, rows, utcnow(), sqlite=connection.vendor == "sqlite")
            _signal_on_commit(connection, queues, using)
    except Exception as exc:
        if is_schema_missing(exc):  # the same exception as dispatcher.enqueue's
            raise OutboxSchemaMissing(
                f"the Django database {using!r}", exc, fix="python manage.py migrate"
            ) from exc
        raise
    return ids


class _Signal:
    """One ``on_commit`` callback per transaction (and savepoint), however many enqueues."""

    def __init__(self) -> None:
        self.queues: set[str] = set()

    def __call__(self) -> None:
        signal_workers(self.queues)


def _signal_on_commit(connection: Any, queues: set[str], using: str) -> None:
    from django.db import transaction

    savepoints = set(connection.savepoint_ids)
    for entry in getattr(connection, "run_on_commit", ()):
        if isinstance(entry[1], _Signal) and entry[0] == savepoints:
            entry[1].queues |= queues
            return
    callback = _Signal()
    callback.queues |= queues
    transaction.on_commit(callback, using=using)
