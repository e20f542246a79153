"""The sweeper's listener: jobs written by SQL reach the workers within a moment of their commit.

``dispatcher_enqueue`` (called from psql, a trigger, PHP, Node, Go ...) has no Python producer to
signal the workers after its commit; it sends ``NOTIFY dispatcher_enqueued, '<queue>'`` instead,
which PostgreSQL delivers at commit (never for a rolled-back transaction). This thread of the
sweeper LISTENs on one connection of its own and passes the queues to the sweeper's ``notify``
(the Signaller: never blocks on the broker). The sweeper's pass stays the fallback: whatever is
committed while the listener is disconnected is due, and the next pass signals it.

The connection has a connect timeout and TCP keepalives, so a server that went away without a
word is noticed in seconds; after any failure it reconnects, with a growing pause (at most
:data:`MAX_PAUSE`), and logs one line per outage.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa

from dispatcher.enqueue_sql import NOTIFY_CHANNEL
from dispatcher.scrub import scrub

log = logging.getLogger("dispatcher.listener")

CONNECT_TIMEOUT = 5  # seconds (libpq's connect_timeout)
# TCP keepalives: a silent network failure is noticed after about idle + interval * count.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
WAKE = 0.5  # seconds between checks of the stop event while no notification comes
MAX_PAUSE = 10.0


def conninfo(url: sa.URL | str) -> str:
    """A libpq URI for ``url`` (an SQLAlchemy URL with any PostgreSQL driver)."""
    parsed = sa.make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def listen(
    url: sa.URL | str,
    notify: Callable[[Iterable[str]], None],
    stop: threading.Event,
    ready: threading.Event | None = None,
) -> None:
    """LISTEN until ``stop`` is set, reconnecting after failures; ``ready`` is set each time the
    LISTEN is in place (for tests)."""
    import psycopg

    pause = 0.5
    failing = False
    while not stop.is_set():
        try:
            with psycopg.connect(
                conninfo(url),
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                application_name="dispatcher-listener",
                **KEEPALIVES,  # type: ignore[arg-type]
            ) as conn:
                conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                if failing:
                    log.warning("listening for jobs enqueued in SQL again")
                failing, pause = False, 0.5
                if ready is not None:
                    ready.set()
                _receive(conn, notify, stop)
        except Exception as exc:
            if ready is not None:
                ready.clear()
            if not failing:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                log.warning(
                    "lost the listener's database connection (%s: %s); the sweeper's pass "
                    "signals jobs enqueued in SQL meanwhile; reconnecting",
                    type(exc).__name__,
                    scrub(first),
                )
                failing = True
            stop.wait(pause)
            pause = min(MAX_PAUSE, pause * 2)


def _receive(conn: Any, notify: Callable[[Iterable[str]], None], stop: threading.Event) -> None:
    """Hand each batch of notifications to ``notify`` (one call per wake-up, distinct queues)."""
    while not stop.is_set():
        queues = {n.payload for n in conn.notifies(timeout=WAKE, stop_after=1)}
        if queues:  # and whatever else has arrived by now, without waiting for more
            queues |= {n.payload for n in conn.notifies(timeout=0.0, stop_after=1000)}
            notify(queues)


def start(
    engine: sa.Engine, notify: Callable[[Iterable[str]], None], stop: threading.Event
) -> threading.Thread | None:
    """The listener's daemon thread, on PostgreSQL (None on SQLite: nothing to listen to)."""
    if engine.dialect.name != "postgresql":
        return None
    thread = threading.Thread(
        target=listen, args=(engine.url, notify, stop), name="dispatcher-listener", daemon=True
    )
    thread.start()
    return thread
