"""/metrics: gauges from admin.stats (cached), counters and latency from the attempt rows that
every worker writes, so they are right with any number of worker processes and machines."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette

from dispatcher import CustomEvent, admin, enqueue_many
from dispatcher.config import Secret, Settings
from dispatcher.db import utcnow
from dispatcher.delivery import Deliverer
from dispatcher.outbox import pause
from dispatcher.sandbox import Reply, Sandbox
from dispatcher.schema import attempts
from dispatcher.web import create_app
from dispatcher.web.metrics import GRACE_SECONDS, Metrics, code_class
from tests.support import settle

from .conftest import AUTH, TOKEN, Outbox, Samples, scrape, set_circuit


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_code_class() -> None:
    assert [code_class(c) for c in (200, 201, 302, 400, 401, 503, 599)] == [
        "2xx", "2xx", "3xx", "4xx", "4xx", "5xx", "5xx",
    ]  # fmt: skip
    assert [code_class(c) for c in (None, 100, 600, 0)] == ["no_answer", "other", "other", "other"]


def test_gauges(outbox: Outbox, engine: sa.Engine) -> None:
    s = scrape(Metrics(engine))
    assert value(s, "dispatcher_jobs", queue="default", status="delivered") == 3
    assert value(s, "dispatcher_jobs", queue="default", status="dead") == 5
    assert value(s, "dispatcher_jobs", queue="eu-shop", status="pending") == 3
    assert value(s, "dispatcher_queue_paused", queue="default") == 0
    assert value(s, "dispatcher_queue_paused", queue="eu-shop") == 1
    causes = {dict(k[1])["queue"]: dict(k[1])["cause"] for k in s if k[0].endswith("pause_info")}
    assert causes == {"eu-shop": "unauthorized"}  # a bounded word, never the API's text
    assert value(s, "dispatcher_oldest_due_job_age_seconds", queue="default") == 0
    assert value(s, "dispatcher_oldest_due_job_age_seconds", queue="eu-shop") > 0
    # Counters start at 0 for every known queue, so increase() sees their first rise.
    assert value(s, "dispatcher_delivery_attempts_total", queue="eu-shop", code_class="2xx") == 0
    assert value(s, "dispatcher_dead_lettered_total", queue="default") == 0
    assert not any(name.endswith("_created") for name, _ in s)


def test_a_pause_shows_in_the_next_scrape(outbox: Outbox, engine: sa.Engine) -> None:
    clock = Clock()
    metrics = Metrics(engine, ttl_seconds=5.0, clock=clock)
    assert value(scrape(metrics), "dispatcher_queue_paused", queue="default") == 0
    with engine.begin() as conn:  # what a worker does on a 401
        pause(conn, "default", "401 Unauthorized: key revoked", utcnow())
    clock.now += 1
    assert value(scrape(metrics), "dispatcher_queue_paused", queue="default") == 0, "cached"
    clock.now += 4  # Prometheus scrapes every 15 s or so: the next scrape is past the cache
    s = scrape(metrics)
    assert value(s, "dispatcher_queue_paused", queue="default") == 1
    assert value(s, "dispatcher_queue_pause_info", queue="default", cause="unauthorized") == 1


def test_the_circuit_breaker_state(outbox: Outbox, engine: sa.Engine) -> None:
    """dispatcher_queue_circuit_open is 1 while open or half_open; the info metric says why, in a
    word."""
    clock = Clock()
    metrics = Metrics(engine, clock=clock)
    s = scrape(metrics)
    assert value(s, "dispatcher_queue_circuit_open", queue="default") == 0
    assert value(s, "dispatcher_queue_circuit_open", queue="eu-shop") == 0
    assert not [k for k in s if k[0] == "dispatcher_queue_circuit_info"]

    now = utcnow()
    set_circuit(engine, "default", "open", since=now, retry_at=now + timedelta(seconds=4))
    long = "Timeout: no answer within 10 s\n" + "x" * 500
    set_circuit(engine, "idle", "half_open", since=now, reason=long, probes=3)  # no jobs at all
    clock.now += 5
    s = scrape(metrics)
    assert value(s, "dispatcher_queue_circuit_open", queue="default") == 1
    assert value(s, "dispatcher_queue_circuit_open", queue="idle") == 1
    assert value(s, "dispatcher_queue_circuit_open", queue="eu-shop") == 0, "paused, not open"
    assert value(s, "dispatcher_queue_paused", queue="default") == 0, "open is not paused"
    info = {
        dict(k[1])["queue"]: (dict(k[1])["state"], dict(k[1])["cause"], v)
        for k, v in s.items()
        if k[0] == "dispatcher_queue_circuit_info"
    }
    assert info == {"default": ("open", "outage", 1.0), "idle": ("half_open", "outage", 1.0)}

    # A good probe closes it: the next scrape past the cache shows 0 and no reason.
    set_circuit(engine, "default", "closed", since=utcnow(), reason=None)
    clock.now += 5
    s = scrape(metrics)
    assert value(s, "dispatcher_queue_circuit_open", queue="default") == 0
    assert {dict(k[1])["queue"] for k in s if k[0] == "dispatcher_queue_circuit_info"} == {"idle"}


def test_counters_and_latency_count_every_workers_attempts(
    outbox: Outbox, engine: sa.Engine, sandbox: Sandbox, deliverer: Deliverer
) -> None:
    clock = Clock()
    metrics = Metrics(engine, clock=clock)
    before = scrape(metrics)  # counts from here on
    assert value(before, "dispatcher_dead_lettered_total", queue="default") == 0

    sandbox.script(301, Reply(400), Reply(503))
    enqueue_many([CustomEvent(300, customer_id=n) for n in range(4)])
    enqueue_many([CustomEvent(301, customer_id=n) for n in range(2)])
    other = Deliverer(deliverer.settings)  # a second worker, with its own pool and client
    try:
        deliverer.drain("default")
        other.drain("default")
        settle(other, engine)
    finally:
        other.close()
    clock.now += 10
    s = scrape(metrics)
    # 4 + 1 delivered (the 503 retried), one 400 (dead), one 503.
    assert value(s, "dispatcher_delivery_attempts_total", queue="default", code_class="2xx") == 5
    assert value(s, "dispatcher_delivery_attempts_total", queue="default", code_class="4xx") == 1
    assert value(s, "dispatcher_delivery_attempts_total", queue="default", code_class="5xx") == 1
    assert value(s, "dispatcher_dead_lettered_total", queue="default") == 1
    assert value(s, "dispatcher_delivery_duration_seconds_count", queue="default") == 7
    assert value(s, "dispatcher_delivery_duration_seconds_bucket", queue="default", le="+Inf") == 7
    assert value(s, "dispatcher_delivery_duration_seconds_sum", queue="default") >= 0

    # Purging history never makes a counter go backwards.
    assert admin.purge(engine, older_than=timedelta(0), now=utcnow()).attempts > 7
    clock.now += 10
    after = scrape(metrics)
    for key, number in s.items():
        if key[0].endswith(("_total", "_count", "_bucket")):
            assert after.get(key, 0) >= number, key


def test_a_late_commit_with_a_lower_id_is_still_counted(outbox: Outbox, engine: sa.Engine) -> None:
    """PostgreSQL hands out ids before commit: a slow transaction can commit id N after N+1 was
    read. Ids within GRACE_SECONDS of the newest are re-read (and counted once)."""
    clock = Clock()
    metrics = Metrics(engine, clock=clock)
    scrape(metrics)
    with engine.connect() as conn:
        top = int(conn.execute(sa.select(sa.func.max(attempts.c.id))).scalar_one())

    def add(*ids: int) -> None:
        row = {"job_id": int(outbox.anna), "started_at": utcnow(), "duration_ms": 20,
               "status_code": 201, "outcome": "delivered", "counted": True}  # fmt: skip
        with engine.begin() as conn:
            conn.execute(attempts.insert(), [{**row, "id": i} for i in ids])

    def delivered() -> float:
        clock.now += 6
        return value(scrape(metrics), "dispatcher_delivery_attempts_total",
                     queue="default", code_class="2xx")  # fmt: skip

    add(top + 5)
    assert delivered() == 1
    add(top + 2)  # committed late, below an id already counted
    assert delivered() == 2
    assert delivered() == 2, "each attempt is counted once, however often it is re-read"
    clock.now += GRACE_SECONDS
    add(top + 6)
    assert delivered() == 3
    assert metrics._floor is not None and metrics._floor >= top + 5, "the window moved on"
    assert metrics._counted <= {top + 6}


def test_served_by_the_site_with_the_token(client: httpx.Client, outbox: Outbox) -> None:
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert value(scrape(response.text), "dispatcher_queue_paused", queue="eu-shop") == 1
    # The admin page's Resume forgets the cache: the very next scrape shows it.
    assert client.post("/api/queues/eu-shop/resume", headers=AUTH).json()["resumed"] is True
    after = scrape(client.get("/metrics", headers=AUTH).text)
    assert value(after, "dispatcher_queue_paused", queue="eu-shop") == 0


def test_metrics_only_app(
    settings: Settings, engine: sa.Engine, serve: Callable[[Starlette], str]
) -> None:
    """`dispatcher metrics`: /metrics alone."""
    url = serve(create_app(settings, engine=engine, pages_and_api=False))
    with httpx.Client(base_url=url) as c:
        assert c.get("/metrics").status_code == 200  # no token configured, loopback
        assert c.get("/").status_code == 404
        assert c.get("/api/queues").status_code == 404


@pytest.mark.parametrize(
    "down",
    [
        "postgresql+psycopg://nobody@127.0.0.1:1/outbox?connect_timeout=5",  # nothing listens
        "sqlite:///{tmp}/no/such/folder/outbox.db",
        "sqlite:///{tmp}/empty.db",  # a database without the outbox tables
    ],
    ids=["server-down", "sqlite-unreachable", "schema-missing"],
)
def test_metrics_answer_while_the_database_cannot_be_read(
    settings: Settings,
    engine: sa.Engine,
    serve: Callable[[Starlette], str],
    down: str,
    tmp_path: Path,
) -> None:
    """200 with dispatcher_database_up 0 (so the rules can alert), not 503 (which silenced
    every alert during a database outage); 1 again once it is back."""
    url = down.format(tmp=tmp_path)
    if url.endswith("empty.db"):
        sa.create_engine(url).connect().close()
    app = create_app(
        dataclasses.replace(settings, admin_token=Secret(TOKEN), broker_url="memory://"),
        engine=sa.create_engine(url, poolclass=sa.pool.NullPool),
    )
    site = serve(app)
    answer = httpx.get(site + "/metrics", headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    s = scrape(answer.text)
    assert value(s, "dispatcher_database_up") == 0
    assert not [k for k in s if k[0] == "dispatcher_jobs"]  # no guess from before the outage
    # The database is back: the next scrape past the cache says so.
    metrics = app.state.site.metrics
    metrics.engine = engine
    metrics.invalidate()
    s = scrape(httpx.get(site + "/metrics", headers=AUTH, timeout=30).text)
    assert value(s, "dispatcher_database_up") == 1


def test_database_up_is_1_normally(outbox: Outbox, engine: sa.Engine) -> None:
    assert value(scrape(Metrics(engine)), "dispatcher_database_up") == 1
