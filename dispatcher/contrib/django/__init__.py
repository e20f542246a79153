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
from datetime import datetime

from dispatcher import producer
from dispatcher.adapters import Adapter, Signal
from dispatcher.config import DEFAULT_QUEUE
from dispatcher.events import Event
from dispatcher.outbox import NewJob, insert_jobs_dbapi

__all__ = ["DjangoAdapter", "enqueue", "enqueue_many"]


def enqueue(
    event: Event,
    *,
    using: str = "default",
    queue: str = DEFAULT_QUEUE,
    dedupe_key: str | None = None,
    ordering_key: str | None = None,
    deliver_at: datetime | None = None,
) -> str:
    """Write one event to the outbox in the current transaction of Django's connection ``using``
    and return its job id (see :func:`dispatcher.enqueue` for ``queue``, ``dedupe_key``,
    ``ordering_key`` and ``deliver_at``)."""
    return producer.enqueue(
        event,
        session=DjangoAdapter(using),
        queue=queue,
        dedupe_key=dedupe_key,
        ordering_key=ordering_key,
        deliver_at=deliver_at,
    )


def enqueue_many(
    events: Iterable[Event],
    *,
    using: str = "default",
    queue: str = DEFAULT_QUEUE,
    dedupe_keys: Sequence[str | None] | None = None,
    ordering_key: str | None = None,
    ordering_keys: Sequence[str | None] | None = None,
    deliver_at: datetime | None = None,
) -> list[str]:
    """Write a batch (all or nothing) in the current transaction of ``using``; ids in order."""
    return producer.enqueue_many(
        events,
        session=DjangoAdapter(using),
        queue=queue,
        dedupe_keys=dedupe_keys,
        ordering_key=ordering_key,
        ordering_keys=ordering_keys,
        deliver_at=deliver_at,
    )


class DjangoAdapter(Adapter):
    """Django's connection ``using``: the rows go through its cursor, inside the current
    ``atomic()`` block, and the signal through ``transaction.on_commit``."""

    fix = "python manage.py migrate"

    def __init__(self, using: str = "default") -> None:
        from django.db import connections

        self.using = using
        self.connection = connections[using]
        if self.connection.vendor not in ("postgresql", "sqlite"):
            raise TypeError(
                f"using={using!r}: the outbox works with PostgreSQL and SQLite, "
                f"not {self.connection.vendor}"
            )

    def write(self, rows: Sequence[NewJob], now: datetime) -> list[int]:
        from django.db import transaction

        # savepoint=False: inside the caller's atomic() block this adds nothing; outside one it
        # makes the rows (and a batch's several statements) one transaction of their own.
        sqlite = self.connection.vendor == "sqlite"
        with (
            transaction.atomic(using=self.using, savepoint=False),
            self.connection.cursor() as cursor,
        ):
            return insert_jobs_dbapi(cursor, rows, now, sqlite=sqlite)

    def after_commit(self, queues: set[str], signal: Signal) -> None:
        """One ``on_commit`` callback per call (Django drops it with a rolled-back savepoint);
        the signaller coalesces their signals, so many enqueues cost one publish per queue."""
        from django.db import transaction

        transaction.on_commit(lambda: signal(queues), using=self.using)

    def where(self) -> str:
        return f"the Django database {self.using!r}"
