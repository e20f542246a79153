"""Which outbox queues have a Celery queue of their own, known to every process from the outbox.

``dispatcher worker --queues eu-shop`` marks ``eu-shop`` dedicated in its row
(:func:`dedicate`); every process that signals (producers, the sweeper, workers re-signalling)
then routes ``eu-shop``'s signals to ``dispatcher.eu-shop`` (:func:`dedicated_queues`), whether
or not its environment lists the queue in ``DISPATCHER_DEDICATED_QUEUES``. Before, a producer
and a sweeper that were not told signalled the shared queue, where no worker of that queue
read, and its jobs waited for ever.

The set is read at most every :data:`REFRESH_SECONDS` per process, off the producer's commit
path (signals are published from a background thread), and any failure to read it keeps the
last known set: routing never fails a signal.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dispatcher.config import DEFAULT_DATABASE_URL, Settings
from dispatcher.db import utcnow
from dispatcher.schema import queues

log = logging.getLogger("dispatcher.routing")

REFRESH_SECONDS = 5.0


def dedicate(conn: sa.Connection, names: Iterable[str]) -> None:
    """Mark ``names`` dedicated (their rows created if need be); in the caller's transaction."""
    now = utcnow()
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    for name in sorted(set(names)):
        conn.execute(
            insert(queues)
            .values(name=name, paused=False, dedicated=True, updated_at=now)
            .on_conflict_do_update(
                index_elements=["name"], set_={"dedicated": True, "updated_at": now}
            )
        )


def undedicate(conn: sa.Connection, name: str) -> bool:
    """Signal ``name`` on the shared Celery queue again; whether it was dedicated."""
    done = conn.execute(
        sa.update(queues)
        .where(queues.c.name == name, queues.c.dedicated)
        .values(dedicated=False, updated_at=utcnow())
    )
    return bool(done.rowcount)


def read_dedicated(conn: sa.Connection) -> frozenset[str]:
    return frozenset(conn.execute(sa.select(queues.c.name).where(queues.c.dedicated)).scalars())


def outbox_url(settings: Settings) -> str | None:
    """Where this process can read the dedications: ``DISPATCHER_DATABASE_URL``; else a Django
    project's database (its producer writes through Django's connection); else the embedded
    SQLite file if it exists. None: nowhere (never create ``./dispatcher.db`` to find out)."""
    if "DISPATCHER_DATABASE_URL" not in settings.defaulted:
        return settings.database_url
    django = sys.modules.get("django.conf")
    if django is not None:
        try:
            if django.settings.configured and "ecdp_dispatcher" in _django_apps():
                from dispatcher.contrib.django.management.commands.dispatcher_migrate import (
                    database_url,
                )

                return database_url()
        except Exception:  # not a project we can read: fall through
            log.debug("no Django database to read the dedicated queues from", exc_info=True)
    if os.path.exists(DEFAULT_DATABASE_URL.removeprefix("sqlite:///")):
        return settings.database_url
    return None


def _django_apps() -> set[str]:
    from django.apps import apps

    return {config.label for config in apps.get_app_configs()} if apps.ready else set()


class Dedicated:
    """The process's view of the dedicated queues: the settings' and the outbox's, the latter
    refreshed every ``refresh`` seconds (read lazily, when a signal needs a route)."""

    def __init__(
        self,
        read: Callable[[], frozenset[str] | None],
        refresh: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._refresh = refresh
        self._clock = clock
        self._lock = threading.Lock()
        self._known: frozenset[str] = frozenset()
        self._next = float("-inf")
        self._failing = False

    def __call__(self) -> frozenset[str]:
        with self._lock:
            if self._clock() >= self._next:
                self._next = self._clock() + self._refresh
                try:
                    found = self._read()
                except Exception as exc:  # the database is down or older: keep what we knew
                    if not self._failing:
                        log.debug("could not read the dedicated queues: %s", exc)
                    self._failing = True
                else:
                    self._failing = False
                    if found is not None:
                        self._known = found
            return self._known


def reader(settings: Settings) -> Callable[[], frozenset[str] | None]:
    """Read the outbox's dedicated queues with the process's engine (None: no outbox known)."""

    def read() -> frozenset[str] | None:
        from dispatcher.db import get_engine

        url = outbox_url(settings)
        if url is None:
            return None
        with get_engine(url).connect() as conn:
            return read_dedicated(conn)

    return read


_views: dict[int, tuple[Settings, Dedicated]] = {}


def dedicated_queues(settings: Settings) -> frozenset[str]:
    """``DISPATCHER_DEDICATED_QUEUES`` and the queues the outbox says are dedicated."""
    view = _views.get(id(settings))
    if view is None or view[0] is not settings:
        view = _views[id(settings)] = (settings, Dedicated(reader(settings)))
    return settings.dedicated_queues | view[1]()
