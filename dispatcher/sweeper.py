"""The sweeper: the safety net that makes lost signals and dead workers harmless.

Every ``DISPATCHER_SWEEP_INTERVAL_SECONDS`` it (1) returns ``in_flight`` jobs whose lease expired
(their worker died between claim and record) to ``pending`` and (2) signals every unpaused queue
that has a job due, which covers retries whose time has come, signals lost in a broker flush, and
jobs enqueued through a bare ``Connection`` (no after-commit hook); (3) applies the retention
(:mod:`dispatcher.retention`). Run exactly one or several: it only issues idempotent statements
and hints.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from dispatcher import health, outbox
from dispatcher.db import utcnow
from dispatcher.retention import Retention

log = logging.getLogger("dispatcher.sweeper")


@dataclass(frozen=True, slots=True)
class SweepResult:
    released: int
    signalled: tuple[str, ...]


def sweep_once(engine: Engine, notify: Callable[[Iterable[str]], None]) -> SweepResult:
    with engine.begin() as conn:
        released = outbox.release_expired(conn, utcnow())
    if released:
        log.warning("returned %d jobs with expired leases to pending", released)
    with engine.connect() as conn:
        queues = outbox.due_queues(conn, utcnow())
        conn.rollback()
    if queues:
        notify(queues)
    return SweepResult(released, tuple(queues))


def run(
    engine: Engine,
    notify: Callable[[Iterable[str]], None],
    interval: float,
    stop: threading.Event | None = None,
    retention: Retention | None = None,
) -> None:
    """Sweep (and apply the retention, if any) until ``stop`` is set; errors (database or broker
    down) are logged and retried."""
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            sweep_once(engine, notify)
            if retention is not None:
                retention.run_once()
        except Exception:
            log.exception("sweep failed; retrying in %.1fs", interval)
        try:
            health.beat("sweeper")  # alive, whether this pass worked or not (see health.py)
        except OSError:
            log.warning("could not write the sweeper's heartbeat to %s", health.heartbeat_dir())
        stop.wait(interval)
