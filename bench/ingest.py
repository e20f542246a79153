"""Enqueue from anywhere (issue 24): the SQL function and ``POST /api/events``.

- ``sql_enqueue``: ``SELECT dispatcher_enqueue(queue, body)`` one per transaction over psycopg (what
  a PHP, Node or Go producer does), beside ``sql_enqueue_raw``, the same rows as a raw INSERT one
  per transaction (the order alternates by round);
- ``http_events``: one event per ``POST /api/events`` from one httpx.Client (keep-alive,
  sequential) to ``dispatcher web`` in a process of its own; ``http_events_batch``: the batch form,
  100 events a request.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from databases import QUEUE, RAW_INSERT, events, pg_dsn, sql
from services import Proc, free_port, wait_port

if TYPE_CHECKING:
    from rounds import Ctx

TOKEN = "bench-ingest-token-0123456789"
BATCH = 100


def sql_round(url: str, n: int, tag: str, *, raw_first: bool = False) -> dict[str, float]:
    import psycopg

    from dispatcher.db import utcnow

    evs = events(n, tag)
    bodies = [e.to_json() for e in evs]

    def function(count: int) -> None:
        with psycopg.connect(pg_dsn(url)) as conn:
            for body in bodies[:count]:
                with conn.transaction():
                    conn.execute("SELECT dispatcher_enqueue(%s, %s::jsonb)", (QUEUE, body))

    def raw(count: int) -> None:
        with psycopg.connect(pg_dsn(url)) as conn:
            for e in evs[:count]:
                now = utcnow()
                row = (QUEUE, e.endpoint, e.custom_event_id, e.customer_email, e.to_json())
                with conn.transaction():
                    conn.execute(RAW_INSERT + " RETURNING id", (*row, now, now, now))

    steps = [("sql_enqueue", function), ("sql_enqueue_raw", raw)]
    for _, fn in steps:  # warm-up: connections, prepared statements, the function's plan
        fn(100)
    if raw_first:
        steps.reverse()
    out: dict[str, float] = {}
    for name, fn in steps:
        sql(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs")
        start = time.perf_counter()
        fn(n)
        out[name] = n / (time.perf_counter() - start)
    sql(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs")
    return out


def http_round(ctx: Ctx, n: int, batch_n: int, tag: str) -> dict[str, Any]:
    """``dispatcher web`` in a process of its own (its signals go to the bench's Redis db, where no
    worker takes them; the outbox is truncated after)."""
    import httpx

    url = ctx.small_url
    port = free_port()
    env = ctx.env(url, ctx.fast.url)
    env.update(DISPATCHER_INGEST_TOKENS=TOKEN, DISPATCHER_LOG_LEVEL="WARNING")
    argv = ctx.code.argv(["dispatcher", "web", "--port", str(port)], env["PATH"])
    web = Proc("web", argv, env, ctx.logdir)
    try:
        wait_port(port, 60)
        single = [{"event": e.to_body()} for e in events(n, f"{tag}-h")]
        batch = [{"event": e.to_body()} for e in events(batch_n, f"{tag}-hb")]
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
            for item in single[:50]:  # warm-up: the app's first requests, its pool
                client.post("/api/events", json=item).raise_for_status()
            sql(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs")
            start = time.perf_counter()
            for item in single:
                client.post("/api/events", json=item).raise_for_status()
            one = n / (time.perf_counter() - start)
            start = time.perf_counter()
            for i in range(0, len(batch), BATCH):
                client.post("/api/events", json={"events": batch[i : i + BATCH]}).raise_for_status()
            many = batch_n / (time.perf_counter() - start)
        written = int(sql(url, "SELECT count(*) FROM dispatcher_jobs")[0][0])
        if written != n + batch_n:
            raise RuntimeError(f"http_events: {written} jobs written, {n + batch_n} sent")
    finally:
        web.stop()
        sql(url, "TRUNCATE dispatcher_attempts, dispatcher_jobs")  # (run.py flushes its Redis db)
    return {"http_events": one, "http_events_batch": many}
