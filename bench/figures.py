"""Every figure the benchmark reports, in one table: its unit, what it measures, and its targets
(an absolute limit, or a ratio to another figure of the same run: the median of the per-round
ratios). The report prints them in this order; README "Benchmark" describes the same figures.

``label`` is how a ratio against the figure names it; ``note`` is shown beside a figure without a
target. Both may name ``{threads}``, ``{in_flight}``, ``{concurrency}``, ``{baseline}`` and
``{saturated_window}``, the run's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Target:
    op: Literal[">=", "<="]
    value: float
    vs: str | None = None  # None: a limit on the figure itself; else a ratio to that figure

    def met(self, x: float) -> bool:
        return x >= self.value if self.op == ">=" else x <= self.value

    def text(self, unit: str) -> str:
        return f"{self.op} {self.value:g}" + (f" {unit}" if self.vs is None else "")


@dataclass(frozen=True)
class Figure:
    name: str
    unit: str
    measures: str
    targets: tuple[Target, ...] = ()
    label: str = ""
    note: str = ""


def at_least(value: float, vs: str) -> Target:
    return Target(">=", value, vs)


def at_most(value: float, vs: str | None = None) -> Target:
    return Target("<=", value, vs)


EPS = "events/s"
RPS = "requests/s"
CPU = "ms/event"

# fmt: off
FIGURES: tuple[Figure, ...] = (
    Figure("enqueue", EPS, "one enqueue() per transaction",
           (at_least(0.7, "enqueue_raw"), at_least(0.95, "enqueue_session"))),
    Figure("enqueue_session", EPS, "the same INSERT by hand in a Session, one per transaction",
           label="the INSERT by hand in a Session"),
    Figure("first_enqueue", "ms", "the first enqueue() of a fresh process, minus the first "
           "INSERT by hand in a Session of it (both after the imports, on a warm connection)",
           (at_most(100.0),)),
    Figure("first_enqueue_ms", "ms", "that first enqueue() and its commit"),
    Figure("first_insert_ms", "ms", "that first INSERT by hand and its commit"),
    Figure("enqueue_raw", EPS, "the same rows inserted with raw psycopg, one per transaction",
           label="raw psycopg, 1 per tx"),
    Figure("enqueue_many", EPS, "enqueue_many() in batches of 1,000, a transaction each",
           (at_least(0.5, "enqueue_many_raw"),)),
    Figure("enqueue_many_raw", EPS, "the same batches with raw psycopg executemany",
           label="raw executemany"),
    Figure("enqueue_async", EPS, "one await enqueue_async() per AsyncSession transaction",
           (at_least(0.7, "enqueue_async_raw"),
            # What an AsyncSession transaction costs by itself is the floor: ours adds next to
            # nothing.
            at_least(0.9, "enqueue_async_session"))),
    Figure("enqueue_async_raw", EPS, "the same rows with raw asyncpg, one per transaction",
           label="raw asyncpg, 1 per tx"),
    Figure("enqueue_async_session", EPS, "the same INSERT by hand in an AsyncSession",
           label="the INSERT by hand in an AsyncSession"),
    # bench/ingest.py (issue 24): enqueue from any language, and over HTTP.
    Figure("sql_enqueue", EPS, "SELECT dispatcher_enqueue(queue, body) over psycopg, one per "
           "transaction", (at_least(0.8, "sql_enqueue_raw"),)),
    Figure("sql_enqueue_raw", EPS, "the same rows as a raw INSERT, one per transaction",
           label="a raw INSERT, 1 per tx"),
    Figure("http_events", EPS, "one event per POST /api/events, one keep-alive httpx.Client, "
           "sequential", note="dispatcher web, 1 process"),
    Figure("http_events_batch", EPS, "POST /api/events with 100 events a request",
           note="batch form, 1 client"),
    Figure("drain", EPS, "20,000 pending jobs to all delivered, from `resume` (nginx sink)",
           (at_least(3.0, "naive_celery"), at_least(1.5, "raw_http"),
            # Issue 21: the adaptive window keeps >= 0.95 x the drain of its starting commit.
            at_least(0.95, "drain_baseline"))),
    Figure("drain_ordered", EPS, "drain with an ordering key per job: 10,000 keys (at most jobs / "
           "2), taken in turn, so each key's next job waits for the one before",
           (at_least(0.8, "drain"),)),
    Figure("cpu_per_event", CPU, "worker CPU seconds (main + pool children) / events, drain",
           (at_most(0.5, "cpu_per_event_baseline"),)),
    Figure("drain_baseline", EPS, "drain with the worker code of --baseline-ref",
           label="drain at {baseline}"),
    Figure("cpu_per_event_baseline", CPU, "cpu_per_event of drain_baseline",
           label="the same at {baseline}", note="worker code at {baseline}"),
    Figure("raw_http", RPS, "one httpx.Client posting the same bodies in a loop, one process",
           note="1 process, 1 httpx.Client, sequential"),
    Figure("naive_celery", EPS, "one Celery task per event (bench/naive.py), same sink",
           note="prefork {concurrency}"),
    Figure("naive_celery_enqueue", EPS, "send.delay() of those tasks, producer side",
           note="send.delay(), producer side"),
    Figure("latency_p50", "ms", "enqueue commit to request received, at 100 events/s",
           (at_most(25.0),)),
    Figure("latency_p99", "ms", "the same, 99th percentile",
           (at_most(100.0),)),
    Figure("drain_50ms", EPS, "drain against a sink that answers after 50 ms",
           (at_least(0.9, "drain"), at_least(10.0, "naive_celery_50ms"),
            at_least(0.95, "drain_50ms_baseline"))),
    Figure("drain_50ms_baseline", EPS, "drain_50ms with the worker code of --baseline-ref",
           label="drain_50ms at {baseline}"),
    Figure("cpu_per_event_50ms", CPU, "cpu_per_event of drain_50ms",
           note="worker + pool children, during drain_50ms"),
    Figure("naive_celery_50ms", EPS, "naive_celery against the 50 ms sink"),
    Figure("raw_http_50ms", RPS, "raw_http against the 50 ms sink",
           note="sequential"),
    Figure("raw_http_50ms_threads", RPS, "the same with threads sharing one httpx.Client",
           note="{threads} threads, 1 httpx.Client"),
    Figure("raw_http_50ms_client", RPS, "the dispatcher's EcdpClient, one process",
           note="1 process, EcdpClient, {in_flight} in flight"),
    Figure("drain_big_table", EPS, "drain with 1,000,000 delivered jobs already in the outbox",
           (at_least(0.9, "drain"),)),
    Figure("worker_rss_peak", "MiB", "RSS of the worker's process tree during drain, at its peak",
           note="worker + pool children, during drain"),
    Figure("worker_rss_growth", "B/event", "RSS growth over the second half of a long drain",
           (at_most(100.0),)),
    # bench/saturated.py: the sandbox serving 32 at once, 0.25 s each (the rest wait inside
    # it), request timeout 2 s, 1,000 events, one Deliverer.
    Figure("saturated_served", "req/event", "requests the saturated API served / events, the "
           "most of the adaptive runs (every one beyond 1 is a second trigger)",
           (at_most(1.01),)),
    Figure("saturated", "s", "1,000 events to all delivered there, adaptive window (median)",
           (at_most(1.2, "saturated_best_fixed"),)),
    Figure("saturated_best_fixed", "s", "the same with the quickest fixed window of a sweep",
           label="the best fixed window", note="window {saturated_window}"),
)
# fmt: on

BY_NAME = {f.name: f for f in FIGURES}
