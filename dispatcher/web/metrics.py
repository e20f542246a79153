"""Prometheus metrics read from the outbox, so every worker on every machine is counted.

Workers are separate processes, often on separate machines, so the numbers come from the
database they all write, not from in-process counters:

- Gauges (jobs by queue and status, the oldest due job's age, the pause switch and the circuit
  breaker's state, with their causes: a word of :data:`dispatcher.policy.CAUSES`, never the
  reason's free text, which is unbounded and may hold the API's words) come from
  :func:`dispatcher.admin.stats`, one grouped query, cached for ``ttl_seconds`` so a scrape
  every 15 s (or several Prometheus servers) costs the database next to nothing.
- Counters (HTTP attempts by queue and status-code class, dead letters) and the latency
  histogram are accumulated by this process from the attempt rows written since it started.
  Each refresh reads only rows above an id floor (a range scan on the primary key, joined to
  their jobs by primary key), so the cost follows the delivery rate, not the table size, and a
  purge of old history never makes a counter go backwards. The floor trails the newest id seen
  by ``GRACE_SECONDS``: on PostgreSQL ids are taken before commit, so a slow transaction can
  commit a lower id after a higher one was read; re-reading that window (and skipping ids
  already counted) counts it anyway. Each serving process counts from its own start, like any
  counter after a restart; ``rate()`` and ``increase()`` are made for that.

While the database cannot be read (down, refusing us, or without the outbox tables) a scrape
still answers, with ``dispatcher_database_up 0`` and the counters so far but no gauge read from
the outbox (a number from before the outage would be a guess): the alerts then say "the
dispatcher cannot see" instead of going quiet (``prometheus/alerts.yml``).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from datetime import datetime

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dispatcher import admin
from dispatcher.db import utcnow
from dispatcher.policy import Outcome
from dispatcher.problems import is_schema_missing
from dispatcher.schema import STATUSES, attempts, jobs

__all__ = ["CODE_CLASSES", "CONTENT_TYPE", "Metrics", "code_class"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CODE_CLASSES = ("2xx", "3xx", "4xx", "5xx", "other", "no_answer")
GRACE_SECONDS = 60.0
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# What a database that cannot be read raises (a missing table is a ProgrammingError: checked).
_UNREADABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)

log = logging.getLogger("dispatcher.web")


def code_class(status_code: int | None) -> str:
    """``201`` -> ``2xx``; ``None`` (timeout, connection error) -> ``no_answer``."""
    if status_code is None:
        return "no_answer"
    return f"{status_code // 100}xx" if 200 <= status_code <= 599 else "other"


class Metrics:
    """One per serving process: ``render()`` refreshes from the database and returns the
    exposition text. Thread-safe; ``invalidate()`` makes the next render re-read the gauges
    (the admin page calls it after resuming a queue or replaying jobs)."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        ttl_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._stats: dict[str, admin.QueueStats] = {}
        self._stats_at: float | None = None
        self.database_up = True  # did the last refresh read the database?
        self._floor: int | None = None  # every attempt id <= floor has been counted (or skipped)
        self._counted: set[int] = set()  # ids above the floor already counted
        self._marks: deque[tuple[float, int]] = deque()  # (when, highest id seen then)
        self._attempts: Counter[tuple[str, str]] = Counter()  # (queue, code class) -> count
        self._dead: Counter[str] = Counter()
        self._latency: dict[str, _Histogram] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))

    def render(self) -> bytes:
        self.refresh()
        with self._lock:
            return generate_latest(self.registry)

    def invalidate(self) -> None:
        with self._lock:
            self._stats_at = None

    def refresh(self) -> None:
        with self._lock:
            moment = self._clock()
            if self._stats_at is not None and moment - self._stats_at < self.ttl_seconds:
                return
            try:
                with self.engine.connect() as conn:
                    self._stats = admin.stats(conn, self._now())
                    self._count_new_attempts(conn, moment)
                    conn.rollback()
            except (sa.exc.DBAPIError, sa.exc.TimeoutError) as exc:
                if not self._unreadable(exc):
                    raise
                if self.database_up:
                    log.warning("metrics: cannot read the database: %s", type(exc).__name__)
                self.database_up, self._stats = False, {}
            else:
                self.database_up = True
            self._stats_at = moment  # a failure is cached too: a dead database is not hammered

    @staticmethod
    def _unreadable(exc: sa.exc.DBAPIError | sa.exc.TimeoutError) -> bool:
        return isinstance(exc, _UNREADABLE) or is_schema_missing(exc)

    def _count_new_attempts(self, conn: sa.Connection, moment: float) -> None:
        if self._floor is None:  # count from now: reading the whole history would be a scan
            self._floor = int(conn.execute(sa.select(sa.func.max(attempts.c.id))).scalar() or 0)
        rows = conn.execute(
            sa.select(
                attempts.c.id,
                jobs.c.queue,
                attempts.c.status_code,
                attempts.c.duration_ms,
                attempts.c.outcome,
            )
            .join(jobs, jobs.c.id == attempts.c.job_id)
            .where(attempts.c.id > self._floor)
        ).all()
        for r in rows:
            if r.id in self._counted:
                continue
            self._counted.add(int(r.id))
            self._attempts[r.queue, code_class(r.status_code)] += 1
            self._latency.setdefault(r.queue, _Histogram()).observe(r.duration_ms / 1000)
            if r.outcome == Outcome.DEAD:
                self._dead[r.queue] += 1
        highest = max((int(r.id) for r in rows), default=self._floor)
        self._marks.append((moment, highest))
        # Ids at or below what was seen GRACE_SECONDS ago belong to committed transactions: stop
        # re-reading them.
        while self._marks and moment - self._marks[0][0] >= GRACE_SECONDS:
            self._floor = max(self._floor, self._marks.popleft()[1])
        self._counted = {i for i in self._counted if i > self._floor}


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        bounds = [*(str(b) for b in LATENCY_BUCKETS), "+Inf"]
        return list(zip(bounds, itertools.accumulate(self.counts), strict=True))


class _Collector(Collector):
    """Every family, built at collect time from what the last refresh read (no database here).
    Every known queue gets every series, at 0 if need be, so ``increase()`` sees the first one."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.m
        by_status = GaugeMetricFamily(
            "dispatcher_jobs", "Jobs in the outbox by queue and status.", labels=["queue", "status"]
        )
        oldest = GaugeMetricFamily(
            "dispatcher_oldest_due_job_age_seconds",
            "How long the most overdue due job (pending/retrying) has waited; 0 if none is due.",
            labels=["queue"],
        )
        paused = GaugeMetricFamily(
            "dispatcher_queue_paused", "1 while the queue is paused, else 0.", labels=["queue"]
        )
        reason = InfoMetricFamily(
            "dispatcher_queue_pause",
            "Why a paused queue is paused, in a word (cause: unauthorized, forbidden, no_key, "
            "operator, ...; the reason itself is on the admin page).",
            labels=["queue"],
        )
        circuit = GaugeMetricFamily(
            "dispatcher_queue_circuit_open",
            "1 while the queue's circuit breaker is open or half_open (nothing is sent for it but "
            "probes), else 0.",
            labels=["queue"],
        )
        circuit_reason = InfoMetricFamily(
            "dispatcher_queue_circuit",
            "Why a queue's circuit breaker is open, in a word (cause), and its state (open or "
            "half_open).",
            labels=["queue"],
        )
        window = GaugeMetricFamily(
            "dispatcher_queue_window",
            "Requests a worker process keeps in flight for the queue, as a worker last reported "
            "it (the closed-loop window: it shrinks when the API slows down or fails).",
            labels=["queue"],
        )
        maybe_twice = CounterMetricFamily(
            "dispatcher_maybe_sent_twice",
            "Re-sends after a timeout that came after the request was sent: each may have "
            "reached the API twice.",
            labels=["queue"],
        )
        tries = CounterMetricFamily(
            "dispatcher_delivery_attempts",
            "HTTP requests made to the ECDP API, by queue and status-code class "
            "(no_answer: timeout or connection error), counted from this exporter's start.",
            labels=["queue", "code_class"],
        )
        dead = CounterMetricFamily(
            "dispatcher_dead_lettered",
            "Jobs that became dead letters, counted from this exporter's start.",
            labels=["queue"],
        )
        up = GaugeMetricFamily(
            "dispatcher_database_up",
            "1 if the last scrape could read the outbox database, 0 if not (then the gauges "
            "read from it are missing).",
            value=1.0 if m.database_up else 0.0,
        )
        latency = HistogramMetricFamily(
            "dispatcher_delivery_duration_seconds",
            "Duration of each HTTP request to the ECDP API, from this exporter's start.",
            labels=["queue"],
        )
        for name, q in m._stats.items():
            for status in STATUSES:
                by_status.add_metric([name, status], q.counts[status])
            oldest.add_metric([name], q.oldest_due_age_seconds or 0.0)
            paused.add_metric([name], 1.0 if q.paused else 0.0)
            if q.pause_cause is not None:  # a word of CAUSES: free text is no label
                reason.add_metric([name], {"cause": q.pause_cause})
            circuit.add_metric([name], 1.0 if q.circuit_open else 0.0)
            if q.window is not None:
                window.add_metric([name], q.window)
            maybe_twice.add_metric([name], q.maybe_twice)
            if q.circuit_cause is not None:
                circuit_reason.add_metric([name], {"state": q.circuit, "cause": q.circuit_cause})
        for name in sorted(m._stats.keys() | m._latency.keys()):
            for cls in CODE_CLASSES:
                tries.add_metric([name, cls], m._attempts[name, cls])
            dead.add_metric([name], m._dead[name])
            histogram = m._latency.get(name) or _Histogram()
            latency.add_metric([name], histogram.buckets(), histogram.total)
        return [
            up,
            by_status,
            oldest,
            paused,
            reason,
            circuit,
            circuit_reason,
            window,
            maybe_twice,
            tries,
            dead,
            latency,
        ]
