"""One run of each figure group: drains (the Procfile's worker and sweeper against a sink), the
naive Celery alternative, raw HTTP loops, latency, and the producer's enqueue rounds. Each returns
its whole result as a dict; ``run.py`` decides what goes into the table."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from databases import (
    QUEUE,
    RAW_INSERT,
    engine,
    enqueue_all,
    events,
    pg_dsn,
    reset_outbox,
    set_paused,
    sql,
    status_counts,
)
from services import BENCH, POLL, REPO, BenchError, Code, Proc
from sinks import PySink, Sink
from spy import start_py_spy, stop_py_spy
from usage import RssSampler, cpu_seconds, tree_pids

if TYPE_CHECKING:
    import redis as redis_mod

    from dispatcher import CustomEvent

API_KEY = "bench"
NAIVE_QUEUE = "naive"
NAIVE_STAGING = "naive_staging"  # tasks wait here until the naive worker is ready (see naive_run)
WARM_UP = 200  # jobs delivered before the clock starts: connections, pools, lazy imports
NAIVE_WARM_UP = 20  # tasks, likewise (enough for every pool process with prefetch 4)


# --------------------------------------------------------------------------- the workers


@dataclass
class Ctx:
    """What every run needs: the settings, the services, the sinks and the engine's code."""

    args: argparse.Namespace
    logdir: Path
    redis_url: str
    redis: redis_mod.Redis
    small_url: str
    big_url: str | None
    fast: Sink
    slow: Sink
    latency_sink: PySink | None
    code: Code  # the checkout's dispatcher/, copied at the start
    baseline: Code | None = None  # --baseline-ref's, for drain_baseline
    procfile: dict[str, str] = field(default_factory=dict)

    def env(self, db_url: str, base_url: str, code: Code | None = None) -> dict[str, str]:
        env = dict(os.environ)
        src = (code or self.code).src
        env.update(
            DISPATCHER_DATABASE_URL=db_url,
            DISPATCHER_BROKER_URL=self.redis_url,
            ECDP_BASE_URL=base_url,
            ECDP_API_KEY=API_KEY,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join([str(src), str(BENCH), env.get("PYTHONPATH", "")]),
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        )
        return env

    def start(self, proc: str, db_url: str, base_url: str, code: Code | None = None) -> Proc:
        env = self.env(db_url, base_url, code)
        argv = (code or self.code).argv(shlex.split(self.procfile[proc]), env["PATH"])
        return Proc(proc, argv, env, self.logdir)

    def start_workers(
        self, db_url: str, base_url: str, code: Code | None = None
    ) -> tuple[Proc, Proc]:
        worker = self.start("worker", db_url, base_url, code)
        sweeper = self.start("sweeper", db_url, base_url, code)
        worker.wait_for(self.args.ready_pattern, 90)
        sweeper.wait_for(r"sweep", 60)
        return worker, sweeper


def read_procfile() -> dict[str, str]:
    procs = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and not line.lstrip().startswith("#"):
            procs[name.strip()] = command.strip()
    for needed in ("worker", "sweeper"):
        if needed not in procs:
            raise BenchError(f"the Procfile has no `{needed}:` line")
    return procs


def worker_concurrency(command: str) -> int:
    m = re.search(r"--concurrency[= ](\d+)|-c\s*(\d+)", command)
    return int(m.group(1) or m.group(2)) if m else os.cpu_count() or 2


# --------------------------------------------------------------------------- drains

REMAINING = (
    "SELECT count(*) FROM dispatcher_jobs WHERE status IN ('pending', 'retrying', 'in_flight')"
)


def drain_run(
    ctx: Ctx,
    db_url: str,
    sink: Sink,
    n: int,
    tag: str,
    *,
    keep_up_to: int = 0,
    profile: Path | None = None,
    code: Code | None = None,
    ordering_keys: int = 0,
) -> dict[str, Any]:
    """n pending jobs -> all delivered, with the Procfile's worker and sweeper (running ``code``,
    by default the checkout's). ``ordering_keys``: every job gets one of that many ordering keys,
    in turn (job i the key i mod ordering_keys), so a key's next job waits for the one before.

    As a backlog after an outage: the worker and sweeper are started and warmed up on a few jobs,
    the queue is paused while the n jobs are written, and the clock starts at ``resume`` (plus
    the signal ``dispatcher resume`` sends) and stops when no job is pending, retrying or in
    flight, that is when every outcome is recorded. The worker's process tree is read for its
    RSS throughout and its CPU time at both ends.
    """
    import psycopg

    reset_outbox(db_url, keep_up_to)
    set_paused(db_url, False)
    ctx.redis.flushdb()
    enqueue_all(db_url, events(WARM_UP, f"{tag}-warm"))
    worker, sweeper = ctx.start_workers(db_url, sink.url, code)
    poll = psycopg.connect(pg_dsn(db_url), autocommit=True)

    def remaining() -> int:
        row = poll.execute(REMAINING).fetchone()
        return int(row[0]) if row else 0

    try:
        _wait_warm_up(remaining, worker, tag)
        set_paused(db_url, True)
        keys = [f"{tag}-{i % ordering_keys}" for i in range(n)] if ordering_keys else None
        first_id = enqueue_all(db_url, events(n, tag), keys)
        sql(db_url, "ANALYZE dispatcher_jobs", autocommit=True)
        time.sleep(0.5)  # the signals for the paused queue come and go
        sampler = RssSampler(worker.pid)
        rss_ready = sampler.sample(tree_pids(worker.pid))
        sampler.start()
        spy = start_py_spy(ctx.env("", "")["PATH"], worker.pid, profile, ctx.logdir)
        sink.mark()
        cpu_start = cpu_seconds(worker.pid)
        start = time.perf_counter()
        set_paused(db_url, False)
        clock = _wait_drained(
            remaining, sink, n, start, partial(_stuck, tag, db_url, first_id, worker)
        )
        cpu = cpu_seconds(worker.pid) - cpu_start
        if spy:
            stop_py_spy(spy)
        sampler.finish()
        time.sleep(0.2)
        counts = status_counts(db_url, first_id)
        attempts = sql(
            db_url, f"SELECT count(*) FROM dispatcher_attempts WHERE job_id >= {first_id}"
        )[0][0]
        delivered = counts.get("delivered", 0)
        return {
            "n": n,
            "code": (code or ctx.code).label,
            "ordering_keys": ordering_keys,
            "seconds": clock.elapsed,
            "rate": n / clock.elapsed,
            "statuses": counts,
            "attempts": int(attempts),
            "sink_requests": sink.count(),
            "first_request_s": clock.first,
            "worker_cpu_s": cpu,
            "cpu_ms_per_event": cpu * 1000 / delivered if delivered else None,
            **_rss(sampler, rss_ready, start, clock, n),
        }
    finally:
        poll.close()
        worker.stop()
        sweeper.stop()


@dataclass(frozen=True)
class Clock:
    elapsed: float  # resume -> nothing left
    first: float | None  # resume -> the sink's first request
    mid: float | None  # perf_counter when half the jobs were done


def _wait_warm_up(remaining: Callable[[], int], worker: Proc, tag: str) -> None:
    deadline = time.monotonic() + 60
    while remaining():
        if time.monotonic() > deadline:
            raise BenchError(
                f"drain ({tag}): {WARM_UP} warm-up jobs not delivered in 60 s; worker log "
                f"{worker.log_path}:\n{worker.tail()}"
            )
        time.sleep(POLL)


def _stuck(tag: str, db_url: str, first_id: int, worker: Proc) -> str:
    return (
        f"drain ({tag}): {status_counts(db_url, first_id)}; worker log {worker.log_path}:\n"
        f"{worker.tail()}"
    )


def _wait_drained(
    remaining: Callable[[], int], sink: Sink, n: int, start: float, stuck: Callable[[], str]
) -> Clock:
    mid = first = None
    deadline = start + 60 + n / 50
    while True:
        left = remaining()
        now = time.perf_counter()
        if first is None and sink.count():
            first = now - start
        if mid is None and left <= n // 2:
            mid = now
        if left == 0:
            return Clock(time.perf_counter() - start, first, mid)
        if now > deadline:
            raise BenchError(f"not done after {now - start:.0f} s: {stuck()}")
        time.sleep(POLL)


def _rss(sampler: RssSampler, ready: int, start: float, clock: Clock, n: int) -> dict[str, Any]:
    half = [(t, k) for t, k in sampler.samples if t >= (clock.mid or start)]
    growth = None
    if len(half) >= 3 and half[-1][0] > half[0][0]:
        # Least squares over the second half: RSS steps (allocator arenas) average out.
        slope = statistics.linear_regression([t for t, _ in half], [k for _, k in half]).slope
        growth = slope * 1024 / (n / clock.elapsed)
    return {
        "rss_kib": {
            "ready": ready,
            "mid": sampler.at(clock.mid or start),
            "peak": max(k for _, k in sampler.samples),
            "end": sampler.samples[-1][1],
        },
        "rss_growth_bytes_per_event": growth,
        # (seconds since the start, KiB), one per second: enough to see a plateau or a leak.
        "rss_series": [
            (round(t - start, 1), k)
            for i, (t, k) in enumerate(sampler.samples)
            if t >= start and i % 10 == 0
        ],
    }


def naive_run(ctx: Ctx, sink: Sink, n: int, tag: str) -> dict[str, Any]:
    """n ``send.delay(body)`` tasks -> n requests at the sink, one Celery task per event.

    The tasks are published to a staging list while the worker starts; the clock starts when
    that list is renamed to the worker's queue (one atomic Redis command) and stops when the
    sink has counted n requests.
    """
    import naive

    ctx.redis.flushdb()
    for e in events(NAIVE_WARM_UP, f"{tag}-warm"):  # straight to the worker's queue, untimed
        naive.send.apply_async((e.endpoint, e.to_json()), queue=NAIVE_QUEUE)
    evs = events(n, tag)
    start = time.perf_counter()
    with naive.app.producer_or_acquire() as producer:
        for e in evs:
            args = (e.endpoint, e.to_json())
            naive.send.apply_async(args, queue=NAIVE_STAGING, producer=producer)
    produce = n / (time.perf_counter() - start)
    concurrency = worker_concurrency(ctx.procfile["worker"])
    argv = [
        sys.executable, "-m", "celery", "-A", "naive", "worker", "--pool=prefork",
        f"--concurrency={concurrency}", "-Q", NAIVE_QUEUE, "--loglevel=WARNING", "-n", "naive@%h",
    ]  # fmt: skip
    sink.mark()
    worker = Proc("naive-worker", argv, ctx.env(ctx.small_url, sink.url), ctx.logdir, cwd=BENCH)
    try:
        worker.wait_for("naive worker ready", 90)
        deadline = time.monotonic() + 60
        while sink.count() < NAIVE_WARM_UP:
            if time.monotonic() > deadline:
                raise BenchError(f"naive celery ({tag}): warm-up tasks not done in 60 s")
            time.sleep(POLL)
        time.sleep(0.2)
        sink.mark()
        start = time.perf_counter()
        ctx.redis.rename(NAIVE_STAGING, NAIVE_QUEUE)
        deadline = start + 60 + n / 10
        first = None
        while (got := sink.count()) < n:
            if first is None and got:
                first = time.perf_counter() - start
            if time.perf_counter() > deadline:
                raise BenchError(
                    f"naive celery ({tag}): {got} of {n} requests after "
                    f"{time.perf_counter() - start:.0f} s; log {worker.log_path}:\n{worker.tail()}"
                )
            time.sleep(POLL)
        elapsed = time.perf_counter() - start
        return {
            "n": n,
            "seconds": elapsed,
            "rate": n / elapsed,
            "produce_rate": produce,
            "first_request_s": first,
        }
    finally:
        worker.stop()


def raw_http_run(sink: Sink, n: int, threads: int, tag: str) -> dict[str, Any]:
    """One process, one ``httpx.Client``, the same bodies and headers: a loop (threads=1) or a
    thread pool sharing the client."""
    import httpx

    bodies = [(e.endpoint, e.to_json().encode()) for e in events(n, tag)]
    headers = {"x-api-key": API_KEY, "content-type": "application/json"}
    limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
    with httpx.Client(timeout=10, limits=limits) as client:
        client.post(sink.url + bodies[0][0], content=bodies[0][1], headers=headers)

        def post(item: tuple[str, bytes]) -> int:
            return client.post(sink.url + item[0], content=item[1], headers=headers).status_code

        start = time.perf_counter()
        if threads == 1:
            codes = [post(b) for b in bodies]
        else:
            with ThreadPoolExecutor(threads) as pool:
                codes = list(pool.map(post, bodies))
        elapsed = time.perf_counter() - start
    bad = sum(1 for c in codes if c != 201)
    if bad:
        raise BenchError(f"raw_http ({tag}): {bad} of {n} answers were not 201")
    return {"n": n, "threads": threads, "seconds": elapsed, "rate": n / elapsed}


def client_run(sink: Sink, n: int, in_flight: int, tag: str) -> dict[str, Any]:
    """One process, the dispatcher's own ``EcdpClient`` (aiohttp on the process's loop thread),
    the same bodies: what a worker's sending side does without the outbox."""
    from dispatcher.config import Secret
    from dispatcher.ecdp import EcdpClient

    bodies = [(e.endpoint, e.to_json().encode()) for e in events(n, tag)]
    key = Secret(API_KEY)
    client = EcdpClient(sink.url, max_connections=in_flight)
    try:
        client.post(bodies[0][0], bodies[0][1], key)
        start = time.perf_counter()
        futures = [client.submit(endpoint, body, key) for endpoint, body in bodies]
        codes = [f.result().status_code for f in futures]
        elapsed = time.perf_counter() - start
    finally:
        client.close()
    bad = sum(1 for c in codes if c != 201)
    if bad:
        raise BenchError(f"EcdpClient ({tag}): {bad} of {n} answers were not 201")
    return {"n": n, "in_flight": in_flight, "seconds": elapsed, "rate": n / elapsed}


def latency_run(ctx: Ctx, seconds: float, rate: float, tag: str) -> dict[str, Any]:
    """enqueue-commit -> request received, at a steady ``rate`` of single-event transactions."""
    from sqlalchemy.orm import Session

    from dispatcher import enqueue

    sink = ctx.latency_sink
    assert sink is not None
    url = ctx.small_url
    sql(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs")
    set_paused(url, False)
    ctx.redis.flushdb()
    eng = engine(url)
    worker, sweeper = ctx.start_workers(url, sink.url)
    try:

        def produce(evs: list[CustomEvent]) -> dict[str, float]:
            committed: dict[str, float] = {}
            begin = time.perf_counter()
            for i, e in enumerate(evs):
                delay = begin + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                with Session(eng) as session, session.begin():
                    enqueue(e, session=session)
                committed[str(e.customer_email)] = time.time()
            return committed

        def collect(committed: dict[str, float]) -> dict[str, float]:
            deadline = time.monotonic() + 30
            while True:
                arrived = sink.arrivals()
                if all(k in arrived for k in committed) or time.monotonic() > deadline:
                    return arrived
                time.sleep(0.2)

        warm = produce(events(int(rate), f"{tag}-warm"))  # one second of warm-up, not counted
        if not any(k in warm for k in collect(warm)):
            raise BenchError(
                f"latency ({tag}): no warm-up event reached the sink in 30 s; worker log "
                f"{worker.log_path}:\n{worker.tail()}"
            )
        sink.reset()
        committed = produce(events(int(seconds * rate), tag))
        arrived = collect(committed)
        lat = sorted((arrived[k] - t) * 1000 for k, t in committed.items() if k in arrived)
        if len(lat) < 2:
            raise BenchError(
                f"latency ({tag}): only {len(lat)} of {len(committed)} arrived; worker log "
                f"{worker.log_path}:\n{worker.tail()}"
            )
        q = statistics.quantiles(lat, n=100, method="inclusive")
        return {
            "n": len(committed),
            "missing": len(committed) - len(lat),
            "p50_ms": q[49],
            "p99_ms": q[98],
            "max_ms": lat[-1],
        }
    finally:
        worker.stop()
        sweeper.stop()


# --------------------------------------------------------------------------- enqueue


def enqueue_round(
    url: str, single_n: int, batch_n: int, tag: str, *, raw_first: bool = False
) -> dict[str, float]:
    """``enqueue`` / ``enqueue_many`` beside raw psycopg doing the same inserts (as
    ``bench/enqueue.py``, but each batch of 1,000 is a transaction of its own on both sides).
    Both sides are warmed up first (the first ``enqueue()`` of a process starts the signal thread
    and connects to the broker), and which goes first alternates by round."""
    import psycopg
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from dispatcher import enqueue, enqueue_many
    from dispatcher.db import utcnow

    single, batch = events(single_n, f"{tag}-s"), events(batch_n, f"{tag}-b")
    eng = engine(url)
    out: dict[str, float] = {}

    def row(e: CustomEvent) -> tuple[Any, ...]:
        now = utcnow()
        return (QUEUE, e.endpoint, e.custom_event_id, e.customer_email, e.to_json(), now, now, now)

    def ours_single(evs: list[CustomEvent]) -> None:
        for e in evs:
            with Session(eng) as session, session.begin():
                enqueue(e, session=session)

    def raw_single(evs: list[CustomEvent]) -> None:
        with psycopg.connect(pg_dsn(url)) as conn:
            for e in evs:
                with conn.transaction():
                    conn.execute(RAW_INSERT + " RETURNING id", row(e))

    parts = RAW_INSERT.split("%s")  # psycopg's placeholders, as SQLAlchemy's named ones
    by_hand = sa.text(
        "".join(f"{p}:p{i}" for i, p in enumerate(parts[:-1], 1)) + parts[-1] + " RETURNING id"
    )

    def hand_single(evs: list[CustomEvent]) -> None:  # the floor: any Session transaction
        for e in evs:
            with Session(eng) as session, session.begin():
                session.execute(by_hand, {f"p{i}": v for i, v in enumerate(row(e), 1)})

    def ours_many(evs: list[CustomEvent]) -> None:
        for start in range(0, len(evs), 1000):
            with Session(eng) as session, session.begin():
                enqueue_many(evs[start : start + 1000], session=session)

    def raw_many(evs: list[CustomEvent]) -> None:
        with psycopg.connect(pg_dsn(url)) as conn:
            for start in range(0, len(evs), 1000):
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(RAW_INSERT, [row(e) for e in evs[start : start + 1000]])

    steps = [
        ("enqueue", single, ours_single),
        ("enqueue_raw", single, raw_single),
        ("enqueue_many", batch, ours_many),
        ("enqueue_many_raw", batch, raw_many),
        ("enqueue_session", single, hand_single),
    ]
    for _, evs, fn in steps:  # warm-up, not counted
        fn(evs[:100])
    if raw_first:
        steps = [steps[4], steps[1], steps[0], steps[3], steps[2]]
    for name, evs, fn in steps:
        sql(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs")
        start = time.perf_counter()
        fn(evs)
        out[name] = len(evs) / (time.perf_counter() - start)
    sql(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs")
    return out


FIRST_ENQUEUE = """
import json, os, sys, time
import sqlalchemy as sa
from sqlalchemy.orm import Session
from dispatcher import CustomEvent, enqueue  # the application imports it at start-up
engine = sa.create_engine(sys.argv[1])
with engine.connect() as conn:  # connected and the driver warm, as a web worker's pool is
    conn.exec_driver_sql("SELECT 1")
insert = sa.text(sys.argv[2])
now = sa.func.now()
started = time.perf_counter()
with Session(engine) as session, session.begin():
    session.execute(insert, {"q": "first", "e": "/scenariocustomevents", "i": 1, "p": "{}"})
hand = time.perf_counter() - started
started = time.perf_counter()
with Session(engine) as session, session.begin():
    enqueue(CustomEvent(1, customer_id=1), session=session, queue="first")
ours = time.perf_counter() - started
print(json.dumps({"hand": hand, "ours": ours, "celery_on_return": "celery" in sys.modules}))
"""
FIRST_INSERT = (
    "INSERT INTO dispatcher_jobs (queue, endpoint, custom_event_id, payload, status, attempts,"
    " next_attempt_at, created_at, updated_at) VALUES (:q, :e, :i, :p, 'pending', 0, now(),"
    " now(), now())"
)


def first_enqueue_round(url: str) -> dict[str, float]:
    """Issue 25: the first ``enqueue`` of a fresh process (a web worker's first request after a
    deploy) against the first INSERT written by hand in a ``Session`` of the same process, after
    both the application's imports and a warm connection: ms more (``first_enqueue``)."""
    import json
    import subprocess

    got = json.loads(
        subprocess.run(
            [sys.executable, "-c", FIRST_ENQUEUE, engine(url).url.render_as_string(False),
             FIRST_INSERT],
            check=True, capture_output=True, text=True, timeout=120, env=dict(os.environ),
        ).stdout
    )  # fmt: skip
    return {
        "first_enqueue": (got["ours"] - got["hand"]) * 1000,
        "first_enqueue_ms": got["ours"] * 1000,
        "first_insert_ms": got["hand"] * 1000,
    }


ASYNCPG_INSERT = (
    "INSERT INTO dispatcher_jobs (queue, endpoint, custom_event_id, customer_email, payload,"
    " status, attempts, next_attempt_at, created_at, updated_at)"
    " VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $7, $8) RETURNING id"
)


def enqueue_async_round(url: str, n: int, tag: str, *, raw_first: bool = False) -> dict[str, float]:
    """``await enqueue_async()``, one event per ``AsyncSession`` transaction (asyncpg), beside raw
    asyncpg doing the same inserts one per transaction, and beside the same INSERT written by hand
    through an ``AsyncSession`` (what any AsyncSession transaction costs: the floor for ours)."""
    import asyncio

    import asyncpg
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from dispatcher import enqueue_async
    from dispatcher.db import utcnow

    evs = events(n, f"{tag}-a")
    by_hand = sa.text(
        re.sub(r"\$(\d)", lambda m: f":p{m.group(1)}", ASYNCPG_INSERT)  # $1 -> :p1
    )

    def row(e: CustomEvent) -> tuple[Any, ...]:
        now = utcnow()
        return (QUEUE, e.endpoint, e.custom_event_id, e.customer_email, e.to_json(), now, now, now)

    async def run() -> dict[str, float]:
        eng = create_async_engine(sa.make_url(engine(url).url).set(drivername="postgresql+asyncpg"))
        conn = await asyncpg.connect(pg_dsn(url))

        async def ours(evs: list[CustomEvent]) -> None:
            for e in evs:
                async with AsyncSession(eng) as session, session.begin():
                    await enqueue_async(e, session=session, queue=QUEUE)

        async def raw(evs: list[CustomEvent]) -> None:
            for e in evs:
                async with conn.transaction():
                    await conn.fetchval(ASYNCPG_INSERT, *row(e))

        async def hand(evs: list[CustomEvent]) -> None:
            for e in evs:
                async with AsyncSession(eng) as session, session.begin():
                    params = {f"p{i}": v for i, v in enumerate(row(e), 1)}
                    await session.execute(by_hand, params)

        steps = [
            ("enqueue_async", ours),
            ("enqueue_async_raw", raw),
            ("enqueue_async_session", hand),
        ]
        for _, fn in steps:  # warm-up, not counted
            await fn(evs[:100])
        out: dict[str, float] = {}
        for name, fn in steps[::-1] if raw_first else steps:
            sql(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs")
            start = time.perf_counter()
            await fn(evs)
            out[name] = len(evs) / (time.perf_counter() - start)
        await conn.close()
        await eng.dispose()
        return out

    try:
        return asyncio.run(run())
    finally:
        sql(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs")
