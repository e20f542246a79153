"""The sweeper: the safety net that makes lost signals and dead workers harmless.

Every ``DISPATCHER_SWEEP_INTERVAL_SECONDS`` it (1) returns ``in_flight`` jobs whose lease expired
(their worker died between claim and record) to ``pending``, folds the counts' deltas, and (2)
signals every unpaused queue
that has a job due, which covers retries whose time has come, signals lost in a broker flush, and
jobs enqueued through a bare ``Connection`` (no after-commit hook); (3) applies the retention
(:mod:`dispatcher.retention`) and (4) on the partitioned layout, keeps the months
(:mod:`dispatcher.partitions`); it also keeps the admin charts' settled buckets. Each job has one
shape (:class:`Periodic`: ``run_once``). Run exactly one or several: it only issues idempotent
statements and hints.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.engine import Engine

from dispatcher import health, listener, outbox
from dispatcher.admin.activity import keep_activity
from dispatcher.db import utcnow
from dispatcher.partitions import Maintainer
from dispatcher.problems import EXIT_BROKER, EXIT_DATABASE, EXIT_SCHEMA, explain
from dispatcher.retention import Retention
from dispatcher.scrub import scrub

log = logging.getLogger("dispatcher.sweeper")


@dataclass(frozen=True, slots=True)
class SweepResult:
    released: int
    signalled: tuple[str, ...]


class Health:
    """One log line per change of state, not one per pass: the first failure of a kind (broker
    down, database down, anything else) is logged once (with its traceback at DEBUG), a
    different failure once more, and the recovery once. A sweeper whose broker is down for an
    hour writes two lines, not 3,600 tracebacks."""

    def __init__(self) -> None:
        self.failing: str | None = None  # what is down, while it is

    @staticmethod
    def kind(exc: BaseException) -> str:
        problem = explain(exc)
        code = problem.code if problem is not None else None
        if code == EXIT_BROKER or _is_connection_error(exc):
            return "broker"
        if code == EXIT_SCHEMA:
            return "schema"
        if code == EXIT_DATABASE:
            return "database"
        return type(exc).__name__

    def failed(self, exc: BaseException, interval: float) -> None:
        kind = self.kind(exc)
        if kind != self.failing:
            what = {
                "broker": "the broker is unreachable",
                "database": "the outbox database is unavailable",
                "schema": "the outbox tables do not exist (run `dispatcher migrate`)",
            }.get(kind, "sweep failed")
            log.error(
                "%s: %s; retrying every %gs quietly until it is back",
                what,
                scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else kind),
                interval,
                exc_info=log.isEnabledFor(logging.DEBUG)
                or kind not in ("broker", "database", "schema"),
            )
            self.failing = kind
        else:
            log.debug("sweep still failing (%s)", kind, exc_info=True)

    def ok(self) -> None:
        if self.failing is not None:
            what = {
                "broker": "the broker",
                "database": "the outbox database",
                "schema": "the outbox schema",
            }.get(self.failing, "sweeping")
            log.warning("%s is back: sweeping again", what)
            self.failing = None


def _is_connection_error(exc: BaseException) -> bool:
    """kombu/redis/amqp connection trouble while publishing a signal."""
    module = type(exc).__module__ or ""
    return isinstance(exc, ConnectionError | TimeoutError) or module.startswith(
        ("kombu", "redis", "amqp")
    )


class Periodic(Protocol):
    """One of the sweeper's jobs (River's maintenance services have this shape): each pass calls
    ``run_once``, which does its work if its time has come and says what it did (None: not
    time yet)."""

    def run_once(self) -> object: ...


def sweep_once(engine: Engine, notify: Callable[[Iterable[str]], None]) -> SweepResult:
    """Return expired leases, make scheduled jobs whose time has come pending, then signal
    every queue with a job due."""
    with engine.begin() as conn:
        released = outbox.release_expired(conn, utcnow())
    while True:  # a batch per transaction: a week of reminders due at once takes a few
        with engine.begin() as conn:
            if outbox.promote_scheduled(conn, utcnow()) < outbox.PROMOTE_BATCH:
                break
    with engine.begin() as conn:
        outbox.fold_counts(conn)  # the counts' deltas (see dispatcher.schema), kept few
    if released:
        log.warning("returned %d jobs with expired leases to pending", released)
    with engine.connect() as conn:
        queues = outbox.due_queues(conn, utcnow())
        conn.rollback()
    if queues:
        notify(queues)
    return SweepResult(released, tuple(queues))


class Sweep:
    """:func:`sweep_once` at every pass: the safety net itself."""

    def __init__(self, engine: Engine, notify: Callable[[Iterable[str]], None]) -> None:
        self.engine = engine
        self.notify = notify

    def run_once(self) -> SweepResult:
        return sweep_once(self.engine, self.notify)


CHARTS_SECONDS = 300.0  # how often the charts' settled buckets are kept (see Charts)


class Charts:
    """Every ``interval`` seconds, keep every queue's settled chart buckets
    (:func:`dispatcher.admin.activity.keep_activity`), so that the queue page's first view of the
    day and the overview's sparklines measure only the newest half hour of attempts."""

    def __init__(
        self,
        engine: Engine,
        *,
        interval: float = CHARTS_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.interval = interval
        self._monotonic = monotonic
        self._next_at = float("-inf")

    def run_once(self) -> int | None:
        """How many queues' buckets were kept (None: not time yet)."""
        if self._monotonic() < self._next_at:
            return None
        kept = keep_activity(self.engine, utcnow())
        self._next_at = self._monotonic() + self.interval
        return kept


def run(
    engine: Engine,
    notify: Callable[[Iterable[str]], None],
    interval: float,
    stop: threading.Event | None = None,
    retention: Retention | None = None,
    partitions: Maintainer | None = None,
) -> None:
    """Sweep, keep the charts (and apply the retention, if any, and keep the partitions) until
    ``stop`` is set; errors (database or broker down) are logged and retried."""
    stop = stop or threading.Event()
    listener.start(engine, notify, stop)  # jobs enqueued in SQL: signalled at their commit
    health_state = Health()
    jobs: list[Periodic] = [Sweep(engine, notify), Charts(engine)]
    jobs += [job for job in (retention, partitions) if job is not None]
    while not stop.is_set():
        try:
            for job in jobs:
                job.run_once()
        except Exception as exc:
            health_state.failed(exc, interval)
        else:
            health_state.ok()
        try:
            health.beat("sweeper")  # alive, whether this pass worked or not (see health.py)
        except OSError:
            log.warning("could not write the sweeper's heartbeat to %s", health.heartbeat_dir())
        stop.wait(interval)
