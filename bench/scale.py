"""Scale figures (issue 16): what operators read at 10k and 10M rows, drain with a big outbox,
purge under load, many queues, and scaling out with worker processes.

    python bench/scale.py                   # every figure, 10M rows (20-35 minutes)
    python bench/scale.py --rows 2000000    # smaller history
    python bench/scale.py --only reads,workers
    python bench/scale.py --only backlog    # stats and /metrics with 10M jobs waiting (issue 22)

PostgreSQL from ``DISPATCHER_BENCH_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/
postgres``); every database it makes is named ``dispatcher_scale_<pid>_*`` and dropped at the end.

The API is :class:`dispatcher.testing.StubSender` (a 201 at once, in process), so the drain
figures are the outbox's own ceiling, the database and the worker's Python, not the network's;
the HTTP side is measured by ``bench/run.py``. History is generated with ``generate_series``
at the schema of revision 0004 (secondary indexes dropped while it is written, rebuilt after),
then migrated to head, whose migrations count it (0008: the count triggers' backfill).
Times are the best of 5 after a warm-up (medians beside them); the machine is shared, so compare
the ratios, each measured within one invocation.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # services, sinks

import contextlib

from dispatcher import admin, outbox
from dispatcher.config import Secret, Settings
from dispatcher.db import dispose_engines, get_engine, utcnow
from dispatcher.migrate import upgrade
from dispatcher.schema import JobStatus

BASE = os.environ.get(
    "DISPATCHER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PREFIX = f"dispatcher_scale_{os.getpid()}"  # this run's databases: concurrent runs keep apart
MADE: list[str] = []
RESULTS: list[tuple[str, str, str, str]] = []  # (figure, value, target, verdict)
KEYS = ("figure", "value", "target", "verdict")


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def figure(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
    verdict = "" if ok is None else ("met" if ok else "MISSED")
    RESULTS.append((name, value, target, verdict))
    log(f"{name}: {value} {target} {verdict}")


# --------------------------------------------------------------------------- databases


def url_of(name: str) -> str:
    return sa.make_url(BASE).set(database=name).render_as_string(hide_password=False)


def server() -> sa.Engine:
    return sa.create_engine(BASE, isolation_level="AUTOCOMMIT")


def make_db(name: str, revision: str = "head") -> str:
    MADE.append(name)
    with server().connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = url_of(name)
    upgrade(url, revision)
    return url


def server_settings() -> str:
    """The server's settings that change these figures (autovacuum is off on some machines: then
    nothing but the product's own VACUUMs cleans dead rows)."""
    names = ("server_version", "autovacuum", "shared_buffers", "synchronous_commit")
    with server().connect() as conn:
        return ", ".join(
            f"{name} {conn.exec_driver_sql(f'SHOW {name}').scalar_one()}" for name in names
        )


def drop_all() -> None:
    """Drop the databases this run made (only those: another run may be using its own)."""
    dispose_engines()
    with server().connect() as conn:
        for name in MADE:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def raw(url: str, *statements: str, autocommit: bool = False) -> None:
    """Plain SQL through psycopg without parameters (``%`` is literal)."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=autocommit) as pg:
        for statement in statements:
            pg.execute(statement)


def history(rows: int, *, queues: int = 5, live: int = 10_000, days: int = 30) -> list[str]:
    """The statements writing ``rows`` jobs spread over the last ``days`` (one attempt each; the
    newest ``live`` still waiting), ids 1..rows, and setting the sequences past them."""
    now = utcnow().replace(microsecond=0)
    return [
        f"""
        INSERT INTO dispatcher_jobs (id, queue, endpoint, custom_event_id, customer_email,
            payload, status, attempts, next_attempt_at, created_at, updated_at, delivered_at,
            last_status_code)
        SELECT i, 'q' || (i % {queues}), '/scenariocustomevents', 100 + i % 50,
            'c' || (i % 100000) || '@example.com', '{{"customEventId":101}}',
            CASE WHEN i > {rows - live} THEN (CASE WHEN i % 3 = 0 THEN 'retrying' ELSE 'pending'
                                              END)
                 WHEN i % 50 = 0 THEN 'dead' ELSE 'delivered' END,
            1, t, t, t, CASE WHEN i % 50 <> 0 AND i <= {rows - live} THEN t END,
            CASE WHEN i % 50 = 0 THEN 400 ELSE 201 END
        FROM (SELECT i, TIMESTAMPTZ '{now.isoformat()}'
                        - interval '{days} days' * (1 - i::float8 / {rows}) AS t
              FROM generate_series(1, {rows}) AS i) AS g
        """,
        """
        INSERT INTO dispatcher_attempts (id, job_id, started_at, duration_ms, status_code,
            outcome, counted)
        SELECT id, id, created_at, 20 + id % 180, last_status_code,
            CASE status WHEN 'delivered' THEN 'delivered' WHEN 'dead' THEN 'dead'
                        ELSE 'retry' END, true
        FROM dispatcher_jobs
        """,
        f"SELECT setval(pg_get_serial_sequence('dispatcher_jobs', 'id'), {rows})",
        f"SELECT setval(pg_get_serial_sequence('dispatcher_attempts', 'id'), {rows})",
    ]


def generate(url: str, rows: int, *, queues: int = 5, live: int = 10_000, days: int = 30) -> float:
    """:func:`history` written at revision 0004 with its secondary indexes and foreign key
    dropped and rebuilt after; then head (the count triggers and their backfill, 0008).
    Seconds taken."""
    started = time.perf_counter()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        defs = conn.exec_driver_sql(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN "
            "('dispatcher_jobs', 'dispatcher_attempts') AND indexname NOT LIKE 'pk_%%'"
        ).all()
        fk = conn.exec_driver_sql(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'dispatcher_attempts'::regclass AND contype = 'f'"
        ).all()
    engine.dispose()
    raw(
        url,
        *(f"ALTER TABLE dispatcher_attempts DROP CONSTRAINT {name}" for name, _ in fk),
        *(f"DROP INDEX {name}" for name, _ in defs),
        *history(rows, queues=queues, live=live, days=days),
    )
    raw(
        url,
        "SET maintenance_work_mem = '512MB'",
        *(definition for _, definition in defs),
        *(f"ALTER TABLE dispatcher_attempts ADD CONSTRAINT {n} {d}" for n, d in fk),
    )
    upgrade(url)  # 0005: the counts from the rows just written, and the live index
    raw(url, "VACUUM ANALYZE dispatcher_jobs, dispatcher_attempts", autocommit=True)
    return time.perf_counter() - started


# --------------------------------------------------------------------------- reads


def timed(call: Callable[[], Any], rounds: int = 5) -> tuple[float, float, float]:
    """(best, median, first) in ms: the first call is the cold one (connections, caches, and the
    charts' buckets measured once and kept), the others repeat a page view. A call with a
    ``prepare`` (see :class:`AfterSweep`) has it run, untimed, before each."""
    prepare = getattr(call, "prepare", lambda: None)
    prepare()
    started = time.perf_counter()
    call()
    first = (time.perf_counter() - started) * 1000
    seen = []
    for _ in range(rounds):
        prepare()
        started = time.perf_counter()
        call()
        seen.append((time.perf_counter() - started) * 1000)
    return min(seen), statistics.median(seen), first


class AfterSweep:
    """A view as it is first seen after a sweeper pass: before each (untimed), every kept chart
    bucket is forgotten and the sweeper's ``keep_activity`` keeps every queue's settled ones."""

    def __init__(self, engine: sa.Engine, now: datetime, view: Callable[[], Any]) -> None:
        self.engine, self.now, self.view = engine, now, view

    def prepare(self) -> None:
        with self.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM dispatcher_activity")
            conn.exec_driver_sql("DELETE FROM dispatcher_activity_marks")
        admin.keep_activity(self.engine, self.now)

    def __call__(self) -> Any:
        return self.view()


# Without a sweeper (which every deployment runs: it keeps the chart buckets) the overview measures
# the last hour of attempts: shown for comparison, with no target.
UNSWEPT = "overview page queries, no sweeper running"


def views(url: str) -> dict[str, Callable[[], Any]]:
    from dispatcher.web.metrics import Metrics

    engine = get_engine(url)
    now = utcnow()
    metrics = Metrics(engine, ttl_seconds=0.0)
    day_back = admin.Filter(since=now - timedelta(days=21), until=now - timedelta(days=20))
    return {
        "stats (CLI, /api/queues)": lambda: admin.stats(engine, now),
        "/metrics gauges (refresh)": metrics.refresh,
        UNSWEPT: lambda: (
            admin.stats(engine, now),
            admin.delivered_per_minute(engine, now),
        ),
        "queue page: stats + 1h chart": lambda: (
            admin.stats(engine, now),
            admin.activity(engine, "q1", now, "1h"),
        ),
        "queue page: 24h chart": lambda: admin.activity(engine, "q1", now, "24h"),
        "history by email": lambda: admin.history(
            engine, admin.Filter(customer_email="c42@example.com")
        ),
        "history by event id": lambda: admin.history(engine, admin.Filter(event_id=117)),
        "history of dead jobs": lambda: admin.history(engine, admin.Filter(status=JobStatus.DEAD)),
        "history, a day 20 days back": lambda: admin.history(engine, day_back),
        "overview page queries after a sweeper pass": AfterSweep(
            engine, now, lambda: (admin.stats(engine, now), admin.delivered_per_minute(engine, now))
        ),
        "queue page: 24h chart, first view after a sweeper pass": AfterSweep(
            engine, now, lambda: admin.activity(engine, "q1", now, "24h")
        ),
    }


def bench_reads(rows: int) -> str:
    small = make_db(f"{PREFIX}_small", "0004")
    log("generating 10k rows")
    generate(small, 10_000, live=1_000)
    big = make_db(f"{PREFIX}_big", "0004")
    log(f"generating {rows} rows")
    took = generate(big, rows)
    figure("generate + migrate", f"{rows:,} rows in {took:.0f} s")
    at_small = {name: timed(call) for name, call in views(small).items()}
    at_big = {name: timed(call) for name, call in views(big).items()}
    for name in at_small:
        (s_best, _, _), (b_best, b_median, b_first) = at_small[name], at_big[name]
        figure(
            f"{name} ms",
            f"{s_best:.1f} at 10k, {b_best:.1f} (median {b_median:.1f}, first {b_first:.0f}) "
            f"at {rows / 1e6:g}M",
            "" if name == UNSWEPT else "<= 50 ms at 10M",
            None if name == UNSWEPT else b_best <= 50,
        )
    return big


# --------------------------------------------------------------------------- a backlog


def waiting(url: str, rows: int, queues: int = 5) -> float:
    """``rows`` jobs waiting (an outage's backlog: 80 % pending, 10 % retrying, 10 % in flight),
    written at head by plain SQL, a statement per status and million, so the count triggers see
    them as they see any writer. Seconds taken, with the VACUUM ANALYZE after."""
    started = time.perf_counter()
    now = utcnow().replace(microsecond=0).isoformat()
    step = 1_000_000
    statements = []
    for status, share in (("pending", 8), ("retrying", 1), ("in_flight", 1)):
        total = rows * share // 10
        for low in range(0, total, step):
            lease = "TIMESTAMPTZ '{now}' + interval '1 hour'" if status == "in_flight" else "NULL"
            statements.append(
                f"""
                INSERT INTO dispatcher_jobs (queue, endpoint, custom_event_id, payload, status,
                    attempts, next_attempt_at, lease_expires_at, lease_token, created_at,
                    updated_at)
                SELECT 'q' || (i % {queues}), '/scenariocustomevents', 101,
                    '{{"customEventId":101}}', '{status}', 0,
                    TIMESTAMPTZ '{now}' - interval '1 second' * (i % 3600),
                    {lease.format(now=now)}, {"'lease'" if status == "in_flight" else "NULL"},
                    TIMESTAMPTZ '{now}', TIMESTAMPTZ '{now}'
                FROM generate_series({low + 1}, {min(total, low + step)}) AS i
                """
            )
    raw(url, *statements)
    raw(url, "VACUUM ANALYZE dispatcher_jobs", autocommit=True)
    return time.perf_counter() - started


def bench_backlog(rows: int) -> None:
    """``stats`` and a ``/metrics`` refresh with 1k jobs waiting and with ``rows`` waiting
    (issue 22: at most 100 ms more for stats, a scrape at most 150 ms), the counts' deltas
    folded and not."""
    from dispatcher.web.metrics import Metrics

    small = make_db(f"{PREFIX}_backlog_small")
    waiting(small, 1_000)
    big = make_db(f"{PREFIX}_backlog_big")
    log(f"writing {rows:,} waiting jobs")
    took = waiting(big, rows)
    figure("backlog written (counted by the triggers)", f"{rows:,} jobs in {took:.0f} s")
    seen: dict[tuple[str, str], tuple[float, float, float]] = {}
    for size, url in (("1k", small), ("big", big)):
        engine = get_engine(url)
        with engine.connect() as conn:
            deltas = conn.exec_driver_sql("SELECT count(*) FROM dispatcher_count_deltas").scalar()
            conn.rollback()
        for folded in (False, True):
            if folded:
                with engine.begin() as conn:
                    outbox.fold_counts(conn)
            now = utcnow()
            metrics = Metrics(engine, ttl_seconds=0.0)
            seen[(size, f"stats{folded}")] = timed(functools.partial(admin.stats, engine, now))
            seen[(size, f"metrics{folded}")] = timed(metrics.refresh)
        total = sum(sum(q.counts.values()) for q in admin.stats(engine, utcnow()).values())
        log(f"{size}: {total:,} jobs counted, {deltas} delta rows before the fold")
    for what, label, bound in (
        ("stats", "stats (CLI, /api/queues)", "<= 1k + 100 ms"),
        ("metrics", "/metrics refresh", "<= 150 ms"),
    ):
        for folded in (False, True):
            (s_best, _, _) = seen[("1k", f"{what}{folded}")]
            (b_best, b_median, b_first) = seen[("big", f"{what}{folded}")]
            ok = b_median <= s_best + 100 if what == "stats" else b_median <= 150
            figure(
                f"{label} ms, {'after' if folded else 'before'} a fold",
                f"{s_best:.1f} with 1k waiting, {b_best:.1f} (median {b_median:.1f}, first "
                f"{b_first:.0f}) with {rows / 1e6:g}M waiting",
                bound,
                ok,
            )


# --------------------------------------------------------------------------- draining


class _AnyKey(dict):  # type: ignore[type-arg]
    def get(self, key: object, default: object = None) -> Secret:
        return Secret("bench")


def settings(url: str, **changes: Any) -> Settings:
    import dataclasses

    from dispatcher.config import get_settings

    os.environ["DISPATCHER_DATABASE_URL"] = url
    os.environ["ECDP_API_KEY"] = "bench"
    get_settings.cache_clear()
    return dataclasses.replace(get_settings(), api_keys=_AnyKey(), **changes)


def enqueue(url: str, per_queue: dict[str, int]) -> int:
    """Pending jobs through the product's insert (``outbox.insert_jobs``), 1000 per statement."""
    engine = get_engine(url)
    rows = [
        outbox.NewJob(q, "/scenariocustomevents", 101, f"c{i}@example.com", '{"a":1}')
        for q, n in per_queue.items()
        for i in range(n)
    ]
    with engine.begin() as conn:
        for i in range(0, len(rows), 1000):
            outbox.insert_jobs(conn, rows[i : i + 1000], utcnow())
    return len(rows)


def live(url: str) -> int:
    with get_engine(url).connect() as conn:
        return int(
            conn.exec_driver_sql(
                "SELECT count(*) FROM dispatcher_jobs "
                "WHERE status IN ('pending', 'in_flight', 'retrying')"
            ).scalar_one()
        )


def _worker(
    url: str,
    queues: list[str] | None,
    until: float,
    out: Any,
    k: int = 0,
    of: int = 1,
    api: str | None = None,
) -> None:
    """One worker process: drain what is due (each queue in turn, as signals would ask) until
    nothing is left or ``until`` passes. Reports how many it delivered. Worker ``k`` of ``of``
    starts its round at its own ``k/of`` of the due queues, as Celery hands each queue's signal
    to one worker. ``api``: send over HTTP to that base URL with the product's client; without
    it, the in-process stub answers."""
    from dispatcher.delivery import Deliverer
    from dispatcher.testing import StubSender

    if api is None:
        d = Deliverer(settings(url), client=StubSender())
    else:
        d = Deliverer(settings(url, base_url=api))
    engine = get_engine(url)
    done = 0
    try:
        while time.time() < until:
            with engine.connect() as conn:
                names = queues or outbox.due_queues(conn, utcnow())
            if not names:
                break
            start = len(names) * k // of
            names = names[start:] + names[:start]
            moved = 0
            for name in names:
                summary = d.drain(name, max_seconds=2.0)
                moved += summary.outcomes.get("delivered", 0)
            done += moved
            if not moved and queues:
                break
    finally:
        d.close()
    out.put(done)


def drain(
    url: str,
    processes: int,
    queues: list[str] | None = None,
    limit: float = 120,
    api: str | None = None,
) -> float:
    """Jobs delivered per second by ``processes`` worker processes until the backlog is gone
    (``api``: over HTTP to that base URL, see :func:`_worker`)."""
    with get_engine(url).connect() as conn:
        floor = conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM dispatcher_attempts")
        after = int(floor.scalar_one())
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    until = time.time() + limit
    procs = [
        ctx.Process(target=_worker, args=(url, queues, until, out, k, processes, api))
        for k in range(processes)
    ]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=limit + 60) for _ in procs)
    for p in procs:
        p.join()
    # From the first request to the last (the attempts' own times): process start-up is not
    # the outbox's cost.
    with get_engine(url).connect() as conn:
        first, last = conn.exec_driver_sql(
            f"SELECT min(started_at), max(started_at) FROM dispatcher_attempts WHERE id > {after}"
        ).one()
    return float(total / max((last - first).total_seconds(), 1e-3))


def bench_drain(big: str | None, n: int) -> None:
    """One queue's drain on an empty outbox and on the big one, alternately, twice: the best of
    each (the machine is shared)."""
    empty = make_db(f"{PREFIX}_empty")
    rates: dict[str, list[float]] = {"empty": [], "big": []}
    for _ in range(2):
        enqueue(empty, {"q1": n})
        rates["empty"].append(drain(empty, 1, ["q1"]))
        if big is not None:
            enqueue(big, {"q1": n})
            rates["big"].append(drain(big, 1, ["q1"]))
    on_empty = max(rates["empty"])
    figure(
        "drain, empty outbox (1 process)",
        f"{on_empty:,.0f} jobs/s (runs: {', '.join(f'{r:,.0f}' for r in rates['empty'])})",
    )
    if big is not None:
        on_big = max(rates["big"])
        figure(
            "drain with 10M rows in the outbox",
            f"{on_big:,.0f} jobs/s ({on_big / on_empty:.2f}x empty; runs: "
            f"{', '.join(f'{r:,.0f}' for r in rates['big'])})",
            ">= 0.9x",
            on_big >= 0.9 * on_empty,
        )


def bench_workers(n: int) -> None:
    """Drains by 1, 2 and 4 worker processes: with the in-process stub (the outbox's side
    alone), then over HTTP to nginx on loopback with the product's client (both sides)."""
    url = make_db(f"{PREFIX}_workers")
    for name, api in (("stub API", None), ("HTTP to nginx", "nginx")):
        with sink() if api else contextlib.nullcontext() as base:
            rates = {}
            for processes in (1, 2, 4):
                raw(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs, dispatcher_counts")
                enqueue(url, {"q1": n})
                rates[processes] = drain(url, processes, ["q1"], api=base)
        figure(
            f"drain by 1 / 2 / 4 worker processes ({name})",
            " / ".join(f"{r:,.0f}" for r in rates.values())
            + f" jobs/s ({rates[2] / rates[1]:.2f}x, {rates[4] / rates[1]:.2f}x; "
            f"{os.cpu_count()} cores)",
        )
    statements_per_second(url)


@contextlib.contextmanager
def sink() -> Any:
    """nginx answering 201 at once on loopback (bench/run.py's sink): its base URL."""
    import tempfile

    from services import ensure_nginx
    from sinks import Nginx

    ensure_nginx(install=True)
    with tempfile.TemporaryDirectory(prefix="ecdp-scale-") as tmp:
        nginx = Nginx(Path(tmp), Path(tmp), 0.0, use_echo=False)
        try:
            yield nginx.fast.url
        finally:
            nginx.proc.stop()


def _claim_record(url: str, batch: int, seconds: float, out: Any, queue: str = "q1") -> None:
    """claim + record pairs in a loop for ``seconds`` (after a warm-up pair): (pairs, seconds)."""
    from dispatcher.policy import Decision, Outcome

    engine = get_engine(url)
    ok = Decision(Outcome.DELIVERED, True, None, None)
    pairs = -1  # the first pair warms the connection up and is not counted
    started = until = None
    while until is None or time.perf_counter() < until:
        now = utcnow()
        with engine.begin() as conn:
            claimed = outbox.claim(conn, queue, batch, now, 60.0)
        if not claimed:
            break
        with engine.begin() as conn:
            outbox.record(
                conn, [outbox.AttemptResult(c, now, 1, 201, None, None, ok) for c in claimed], now
            )
        pairs += 1
        if started is None:
            started = time.perf_counter()
            until = started + seconds
    out.put((pairs, time.perf_counter() - (started or time.perf_counter())))


PAIRS = ((1, 1, 1), (1, 4, 1), (1, 4, 4), (100, 1, 1), (100, 4, 1), (100, 4, 4))


def statements_per_second(url: str, seconds: float = 5.0) -> None:
    """claim + record transaction pairs per second one PostgreSQL takes (no HTTP, no delivery
    loop): batches of 1 (the statements' ceiling) and 100 (the default batch), from 1 and 4
    processes, on one queue (they share its counts' rows) or each on its own."""
    ctx = mp.get_context("spawn")
    for batch, processes, spread in PAIRS:
        raw(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs, dispatcher_counts")
        n = 200_000 if batch == 100 else 60_000
        enqueue(url, {f"q{i + 1}": n // spread for i in range(spread)})
        out = ctx.Queue()
        procs = [
            ctx.Process(target=_claim_record, args=(url, batch, seconds, out, f"q{k % spread + 1}"))
            for k in range(processes)
        ]
        for p in procs:
            p.start()
        got = [out.get(timeout=seconds + 60) for _ in procs]
        for p in procs:
            p.join()
        rate = sum(pairs / took for pairs, took in got if took > 0)
        figure(
            f"claim+record pairs/s, batch {batch}, {processes} proc, {spread} queue(s)",
            f"{rate:,.0f} pairs/s = {rate * batch:,.0f} events/s",
        )


def bench_queues(n_queues: int, per_queue: int, processes: int = 2) -> None:
    url = make_db(f"{PREFIX}_queues")
    names = [f"bu{i:03d}" for i in range(n_queues)]
    ones, manys = [], []
    for _ in range(2):  # alternating, the best of each (a shared machine)
        raw(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs, dispatcher_counts")
        enqueue(url, {"q1": n_queues * per_queue})
        ones.append(drain(url, processes, ["q1"]))
        raw(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs, dispatcher_counts")
        enqueue(url, dict.fromkeys(names, per_queue))
        manys.append(drain(url, processes))
    one = max(ones)
    raw(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs, dispatcher_counts")
    enqueue(url, dict.fromkeys(names, per_queue))
    engine = get_engine(url)
    with engine.connect() as conn:
        took, _, _ = timed(lambda: outbox.due_queues(conn, utcnow()))
        found = len(outbox.due_queues(conn, utcnow()))
    from dispatcher.sweeper import sweep_once

    sweep, _, _ = timed(lambda: sweep_once(engine, lambda q: None))
    manys.append(drain(url, processes))
    many = max(manys)
    with engine.connect() as conn:
        firsts = conn.exec_driver_sql(
            "SELECT j.queue, min(a.started_at) FROM dispatcher_attempts a "
            "JOIN dispatcher_jobs j ON j.id = a.job_id GROUP BY j.queue"
        ).all()
    # From the first request of the run (process start-up is not a queue's wait).
    began = min(first for _, first in firsts)
    waits = sorted((first - began).total_seconds() for _, first in firsts)
    figure(f"due_queues at {n_queues} queues", f"{took:.1f} ms ({found} found)")
    figure(f"sweeper pass at {n_queues} queues", f"{sweep:.1f} ms")
    figure(
        f"{n_queues} queues: first delivery per queue",
        f"median {statistics.median(waits):.2f} s, worst {waits[-1]:.2f} s "
        f"({len(waits)} queues served)",
        "within a few seconds",
        len(waits) == n_queues and waits[-1] <= 5.0,
    )
    figure(
        f"{n_queues} queues: total drain ({processes} proc)",
        f"{many:,.0f} jobs/s vs one queue {one:,.0f} ({many / one:.2f}x; runs "
        f"{', '.join(f'{r:,.0f}' for r in manys)} vs {', '.join(f'{r:,.0f}' for r in ones)})",
        ">= 0.8x",
        many >= 0.8 * one,
    )


def _purger(url: str, seconds: float, mode: str, out: Any) -> None:
    """Purge the history for ``seconds``: ``cli`` is ``dispatcher purge`` (admin.purge, batch
    after batch), ``sweeper`` the sweeper's retention (``Retention.run_once`` once a second, as
    the sweeper calls it). Reports how many jobs it removed."""
    from dispatcher.retention import Retention

    engine = get_engine(url)
    removed = [0]
    deadline = time.perf_counter() + seconds

    class Enough(Exception):
        pass

    def progress(jobs: int, _: int) -> None:
        removed[0] = jobs
        if time.perf_counter() > deadline:
            raise Enough

    if mode == "cli":
        with contextlib.suppress(Enough):
            admin.purge(engine, older_than=timedelta(days=1), now=utcnow(), progress=progress)
    else:
        retention = Retention(engine, timedelta(days=1))
        while time.perf_counter() < deadline:
            purged = retention.run_once()
            removed[0] += purged.jobs if purged else 0
            time.sleep(1.0)
    out.put(removed[0])


def bench_purge(big: str, n: int, rounds: int = 3) -> None:
    """A drain alone, and the same drain while the old history is being purged (the CLI's
    ``dispatcher purge``, and the sweeper's retention), alternating for ``rounds``: the best of
    each (the machine is shared; a single pair of runs swings by a third)."""
    ctx = mp.get_context("spawn")
    rates: dict[str, list[float]] = {"alone": [], "cli": [], "sweeper": []}
    removed: dict[str, list[float]] = {"cli": [], "sweeper": []}
    for _ in range(rounds):
        for mode in ("alone", "cli", "sweeper"):
            enqueue(big, {"q1": n})
            if mode == "alone":
                rates[mode].append(drain(big, 1, ["q1"]))
                continue
            out = ctx.Queue()
            purger = ctx.Process(target=_purger, args=(big, 12.0, mode, out))
            purger.start()
            time.sleep(3)  # purging for real before the drain starts
            rates[mode].append(drain(big, 1, ["q1"]))
            removed[mode].append(out.get(timeout=120) / 12.0)
            purger.join()
    alone = max(rates["alone"])
    for mode in ("cli", "sweeper"):
        during = max(rates[mode])
        figure(
            f"drain while purging the history ({mode})",
            f"{during:,.0f} jobs/s vs {alone:,.0f} alone ({during / alone:.2f}x, best of "
            f"{rounds}); purging {statistics.median(removed[mode]):,.0f} jobs/s",
            ">= 0.8x",
            during >= 0.8 * alone,
        )


def _purge_all(url: str, older_than_days: float, out: Any) -> None:
    """``dispatcher purge --older-than`` (admin.purge) to the end: (jobs removed, seconds)."""
    started = time.perf_counter()
    result = admin.purge(get_engine(url), older_than=timedelta(days=older_than_days), now=utcnow())
    out.put((result.jobs, time.perf_counter() - started))


def bench_full_purge(big: str, n: int) -> None:
    """A whole purge of the older half of the history (5M rows at 10M), start to finish, with a
    drain of ``n`` jobs after another beside it for as long as it runs; against the same drain
    alone before it (the target) and after it. Medians, not the best: every drain of the purge
    counts."""
    ctx = mp.get_context("spawn")
    before: list[float] = []
    for _ in range(3):
        enqueue(big, {"q1": n})
        before.append(drain(big, 1, ["q1"]))
    out = ctx.Queue()
    purger = ctx.Process(target=_purge_all, args=(big, 15.0, out))
    purger.start()
    during: list[float] = []
    while purger.is_alive():
        enqueue(big, {"q1": n})
        during.append(drain(big, 1, ["q1"]))
    removed, took = out.get(timeout=60)
    purger.join()
    after: list[float] = []
    for _ in range(3):
        enqueue(big, {"q1": n})
        after.append(drain(big, 1, ["q1"]))
    alone, mid = statistics.median(before), statistics.median(during)
    quartiles = statistics.quantiles(during, n=4) if len(during) > 1 else during * 3
    figure(
        f"whole purge of {removed / 1e6:.1f}M jobs",
        f"{took:.0f} s ({removed / took:,.0f} jobs/s)",
    )
    figure(
        "drain during the whole purge",
        f"median {mid:,.0f} jobs/s over {len(during)} drains (quartiles "
        f"{', '.join(f'{q:,.0f}' for q in quartiles)}; worst {min(during):,.0f}) vs "
        f"{alone:,.0f} alone before it ({mid / alone:.2f}x); after it "
        f"{', '.join(f'{r:,.0f}' for r in after)}",
        ">= 0.8x",
        mid >= 0.8 * alone,
    )


def _drop_months(url: str, out: Any, ready: Any, go: Any) -> None:
    """The partition maintainer's drop pass (what the sweeper runs hourly): (dropped, kept,
    seconds). Imports and connects first, then waits for ``go``: the drains beside it measure
    the drop, not a process starting."""
    from dispatcher import partitions

    get_engine(url).connect().close()
    ready.set()
    go.wait()
    started = time.perf_counter()
    done = partitions.drop_behind(get_engine(url), utcnow(), timedelta(days=1))
    out.put((done.dropped, done.kept, time.perf_counter() - started))


def bench_partitioned(rows: int, n: int) -> None:
    """Retention on the partitioned layout: ``rows`` jobs over the last 60 days in monthly
    partitions (the older month about half of them); the maintainer drops the month while
    drains run and a producer inserts one job per transaction. Drains alone (the producer
    inserting all along) before and after it."""
    import threading

    from dispatcher import partitions

    url = make_db(f"{PREFIX}_parted")
    engine = get_engine(url)
    partitions.convert(engine, say=log)
    partitions.drop_behind(engine, utcnow(), timedelta(days=1))  # the empty legacy partitions
    now = utcnow()
    partitions.create_months(
        engine, [partitions.month_of(now - timedelta(days=d)) for d in (62, 31, 0)]
    )
    log(f"generating {rows:,} rows into month partitions")
    started = time.perf_counter()
    raw(url, *history(rows, days=60))
    with engine.begin() as conn:
        outbox.recount(conn)
    raw(url, "VACUUM ANALYZE dispatcher_jobs, dispatcher_attempts", autocommit=True)
    with engine.connect() as conn:
        sizes: dict[str, int] = dict(
            conn.exec_driver_sql(
                "SELECT tableoid::regclass::text, count(*) FROM dispatcher_jobs GROUP BY 1"
            ).all()
        )
    log(f"written in {time.perf_counter() - started:.0f} s: {sizes}")

    stop, worst, inserted = threading.Event(), [0.0], [0]

    def produce() -> None:
        job = outbox.NewJob("producer", "/scenariocustomevents", 101, "p@example.com", "{}")
        while not stop.is_set():
            began = time.perf_counter()
            with engine.begin() as conn:
                outbox.insert_jobs(conn, [job], utcnow())
            worst[0] = max(worst[0], time.perf_counter() - began)
            inserted[0] += 1
            time.sleep(0.01)

    # The producer runs throughout, so the drains alone and those beside the drop differ by the
    # drop only.
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    alone: list[float] = []
    for _ in range(2):
        enqueue(url, {"q1": n})
        alone.append(drain(url, 1, ["q1"]))
    ctx = mp.get_context("spawn")
    out, ready, go = ctx.Queue(), ctx.Event(), ctx.Event()
    enqueue(url, {"q1": n})
    dropper = ctx.Process(target=_drop_months, args=(url, out, ready, go))
    dropper.start()
    ready.wait(60)
    worst[0], counted = 0.0, inserted[0]  # the producer's figures from the drop's start
    go.set()
    during = [drain(url, 1, ["q1"])]
    while dropper.is_alive():
        enqueue(url, {"q1": n})
        during.append(drain(url, 1, ["q1"]))
    dropped, kept, took = out.get(timeout=60)
    dropper.join()
    worst_during, inserts_during = worst[0], inserted[0] - counted
    for _ in range(2):
        enqueue(url, {"q1": n})
        alone.append(drain(url, 1, ["q1"]))
    stop.set()
    producer.join()
    gone = sum(v for k, v in sizes.items() if k.split(".")[-1] in dropped)
    before = statistics.median(alone)
    mid = statistics.median(during)
    figure(
        "partitioned: retention drops a month",
        f"{', '.join(d.split('.')[-1] for d in dropped) or 'nothing'} ({gone:,} jobs + their "
        f"attempts) in {took:.1f} s; longest producer insert meanwhile {worst_during * 1000:.0f} "
        f"ms ({inserts_during} inserts){'; kept ' + str(kept) if kept else ''}",
    )
    figure(
        "partitioned: drain while the month is dropped",
        f"median {mid:,.0f} jobs/s over {len(during)} drains (worst {min(during):,.0f}) vs "
        f"{before:,.0f} alone ({mid / before:.2f}x)",
        ">= 0.8x",
        mid >= 0.8 * before,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per drain")
    parser.add_argument(
        "--only", default="reads,drain,purge,full_purge,workers,queues,partitioned,backlog"
    )
    parser.add_argument("--json", type=Path, help="also write the figures there")
    args = parser.parse_args()
    only = set(args.only.split(","))
    started = time.perf_counter()
    try:
        needs_big = {"reads", "drain", "purge", "full_purge"}
        big = bench_reads(args.rows) if only & needs_big else None
        if "drain" in only:
            bench_drain(big, args.jobs)
        # The windows first: after a whole purge, drains are slower for a long while (the
        # README's "Retention"), which would spoil the windows' drains alone.
        if "purge" in only and big is not None:
            bench_purge(big, args.jobs)
        if "full_purge" in only and big is not None:  # what is left of the older half goes
            bench_full_purge(big, args.jobs)
        if "workers" in only:
            bench_workers(args.jobs)
        if "queues" in only:
            bench_queues(200, max(1, args.jobs // 200))
        if "partitioned" in only:
            bench_partitioned(args.rows, args.jobs)
        if "backlog" in only:
            bench_backlog(args.rows)
    finally:
        drop_all()
    print(
        f"\nScale figures ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"{time.perf_counter() - started:.0f} s; PostgreSQL {server_settings()})"
    )
    width = max(len(r[0]) for r in RESULTS) if RESULTS else 10
    for name, value, target, verdict in RESULTS:
        print(f"  {name:<{width}}  {value}  {target}  {verdict}".rstrip())
    if args.json:
        args.json.write_text(
            json.dumps(
                [dict(zip(KEYS, r, strict=True)) for r in RESULTS],
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
