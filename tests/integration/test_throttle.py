"""Per-queue ceilings shared by every worker: requests per second, requests in flight, and a 429
that slows the whole queue down."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
import sqlalchemy as sa

from dispatcher import CustomEvent, enqueue_many
from dispatcher.config import Settings
from dispatcher.db import utcnow
from dispatcher.delivery import Deliverer
from dispatcher.outbox import admit, claim
from dispatcher.policy import RetryPolicy
from dispatcher.sandbox import Reply, Sandbox
from dispatcher.schema import jobs, queues
from tests.support import side_by_side

pytestmark = pytest.mark.usefixtures("env")


def run_workers(settings: Settings, n: int, engine: sa.Engine) -> None:
    """``n`` workers drain until nothing is pending (bounded)."""
    workers = [Deliverer(settings) for _ in range(n)]

    def run(d: Deliverer) -> None:
        for _ in range(200):
            d.drain("default", max_seconds=2.0)
            with engine.connect() as conn:
                left = conn.execute(
                    sa.select(sa.func.count()).where(jobs.c.status != "delivered")
                ).scalar_one()
            if not left:
                return

    side_by_side(run, workers)


def most_in_any_window(times: list[float], width: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_rate_ceiling_holds_across_workers(
    settings: Settings, sandbox: Sandbox, engine: sa.Engine
) -> None:
    rate = 40.0
    limited = dataclasses.replace(
        settings, base_url=sandbox.url, rate_limits={"": rate}, max_in_flight=8
    )
    enqueue_many([CustomEvent(1, customer_id=n) for n in range(1, 121)])
    run_workers(limited, 3, engine)
    times = [r.at for r in sandbox.requests]
    assert len(times) == 120
    # A token bucket lets one second's worth out at once, then `rate` per second: a window of
    # w seconds holds at most rate * (1 + w), give or take the few requests whose arrival lags
    # their grant.
    assert most_in_any_window(times, 1.0) <= 2 * rate + 4
    assert most_in_any_window(times, 2.0) <= 3 * rate + 4


def test_concurrency_ceiling_holds_across_workers(
    settings: Settings, sandbox: Sandbox, engine: sa.Engine
) -> None:
    sandbox.default_delay = 0.02  # so that requests overlap
    limited = dataclasses.replace(
        settings, base_url=sandbox.url, concurrency_limits={"": 5}, max_in_flight=8
    )
    enqueue_many([CustomEvent(1, customer_id=n) for n in range(1, 201)])
    run_workers(limited, 3, engine)
    assert sandbox.count(status=201) == 200
    assert 1 <= sandbox.max_in_flight <= 5


def test_admit_hands_out_each_token_once(settings: Settings, engine: sa.Engine) -> None:
    limits = dataclasses.replace(settings, rate_limits={"": 10.0}).limits("default")
    now = utcnow()
    granted = []
    with engine.begin() as conn:
        for _ in range(5):
            granted.append(admit(conn, "default", 4, now, limits)[0])
    assert sum(granted) == 10  # the burst, no more, however it is asked for
    with engine.begin() as conn:
        allowed, wait = admit(conn, "default", 4, now + timedelta(seconds=0.5), limits)
    assert allowed == 4 and wait == 0.0  # half a second refilled five tokens
    with engine.begin() as conn:
        allowed, wait = admit(conn, "default", 4, now + timedelta(seconds=0.5), limits)
    assert allowed == 1 and wait == 0.0


def test_429_cools_the_whole_queue_down(
    settings: Settings, sandbox: Sandbox, engine: sa.Engine
) -> None:
    sandbox.script(1, Reply(429, headers={"Retry-After": "30"}))
    d = Deliverer(
        dataclasses.replace(
            settings,
            base_url=sandbox.url,
            max_in_flight=1,
            batch_size=10,
            retry=RetryPolicy(base_seconds=0.01, max_seconds=60),
        )
    )
    try:
        enqueue_many(
            [CustomEvent(1, customer_id=1)] + [CustomEvent(2, customer_id=n) for n in range(2, 11)]
        )
        summary = d.drain("default")
    finally:
        d.close()
    assert summary.cooling
    assert sandbox.count() == 1, "the rest of the batch was not sent after the 429"
    with engine.connect() as conn:
        until = conn.execute(sa.select(queues.c.cooldown_until)).scalar_one()
        waiting = conn.execute(
            sa.select(sa.func.count()).where(jobs.c.status == "pending")
        ).scalar_one()
    assert until >= utcnow() + timedelta(seconds=25)
    assert waiting == 9  # given back unsent, uncounted
    with engine.begin() as conn:
        assert claim(conn, "default", 10, utcnow(), 60) == [], "no worker claims while cooling"
