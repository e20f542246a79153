"""What the dispatcher does to a customer: no second trigger because the API was slow, one
customer's events in order, a circuit that tells an outage from a bad payload (issue 21).

Real outbox (SQLite and PostgreSQL), the sandbox on loopback, and Deliverers (what a Celery
worker process runs): in forked processes where "four worker processes" is the point.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import multiprocessing
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from dispatcher import (
    CustomEvent,
    DataField,
    ValidationError,
    enqueue,
    enqueue_async,
    enqueue_many,
    enqueue_many_async,
    outbox,
)
from dispatcher.admin import show, stats
from dispatcher.breaker import BreakerPolicy
from dispatcher.config import Settings
from dispatcher.db import dispose_engines, get_engine, utcnow
from dispatcher.delivery import Deliverer
from dispatcher.ecdp import EcdpClient
from dispatcher.policy import RetryPolicy
from dispatcher.sandbox import Reply, Sandbox
from dispatcher.schema import attempts, jobs
from tests.support import settle, side_by_side

LIVE = ("pending", "in_flight", "retrying")


def seq_of(body: bytes) -> tuple[int, int]:
    """(customer id, the event's number in its customer's sequence) of a request body."""
    obj = json.loads(body)
    return obj["customerId"], int(obj["dataFields"][0]["value"])


def statuses(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status))
        return {status: n for status, n in rows}


@pytest.fixture
def fast(settings: Settings, sandbox: Sandbox) -> Settings:
    return dataclasses.replace(
        settings,
        base_url=sandbox.url,
        retry=RetryPolicy(base_seconds=0.02, max_seconds=0.1, max_attempts=50),
        http_timeout_seconds=2.0,
        max_in_flight=8,
    )


# --------------------------------------------------------------------------- ordering keys


def _work(settings: Settings, url: str, until: float) -> None:
    """A worker process: drain until nothing is live (or the hang guard), then leave as Celery's
    pool children do (os._exit: see dispatcher.ecdp)."""
    code = 1
    try:
        dispose_engines(close=False)  # never the parent's pooled connections
        engine = get_engine(url)
        d = Deliverer(settings)
        try:
            while time.monotonic() < until:
                if d.drain("default", max_seconds=2.0).batches:
                    continue
                with engine.connect() as conn:
                    live = conn.execute(
                        sa.select(sa.func.count()).where(jobs.c.status.in_(LIVE))
                    ).scalar()
                if not live:
                    code = 0
                    break
                time.sleep(0.02)
        finally:
            d.close()
    finally:
        os._exit(code)


def test_every_keys_201s_arrive_in_commit_order_across_four_worker_processes(
    fast: Settings, engine: sa.Engine, sandbox: Sandbox, db_url: str
) -> None:
    """20 customers x 6 events, each customer's events under its own ordering key, interleaved
    over 12 transactions; a third of all requests answered 500 (retried): every customer gets
    its 201s in commit order, and no two requests of one key are ever in flight at once."""
    customers, per = 20, 6
    for n in range(per):
        for half in (0, 1):
            batch = range(1 + half * customers // 2, 1 + (half + 1) * customers // 2)
            seq = [DataField("seq", "Number", n)]
            enqueue_many(
                [CustomEvent(17, customer_id=c, data_fields=seq) for c in batch],
                ordering_keys=[f"customer-{c}" for c in batch],
            )
    sandbox.fail_ratio, sandbox.fail_status = 0.33, 500
    ctx = multiprocessing.get_context("fork")
    until = time.monotonic() + 120
    procs = [ctx.Process(target=_work, args=(fast, db_url, until)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(150)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert statuses(engine) == {"delivered": customers * per}
    assert sandbox.count(500) > 0, "retries happened in between"

    received: dict[int, list[int]] = defaultdict(list)
    for r in sorted((r for r in sandbox.requests if r.status == 201), key=lambda r: r.at):
        customer, n = seq_of(r.body)
        received[customer].append(n)
    assert received == {c: list(range(per)) for c in range(1, customers + 1)}

    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(jobs.c.ordering_key, attempts.c.started_at, attempts.c.duration_ms)
            .join(jobs, jobs.c.id == attempts.c.job_id)
            .order_by(jobs.c.ordering_key, attempts.c.started_at)
        ).all()
    by_key: dict[str, list[sa.Row]] = defaultdict(list)
    for row in rows:
        by_key[row.ordering_key].append(row)
    for key, tries in by_key.items():
        for before, after in itertools.pairwise(tries):
            ended = before.started_at.timestamp() + before.duration_ms / 1000
            assert ended <= after.started_at.timestamp() + 0.002, f"{key}: two in flight at once"


def test_a_retrying_job_holds_its_successors_and_a_dead_one_lets_them_go(
    fast: Settings, engine: sa.Engine, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox.script(31, Reply(500), Reply(500))  # the first of key "a" fails twice, then 201
    sandbox.script(33, Reply(400))  # the first of key "b" is rejected: dead
    held = enqueue(CustomEvent(31, customer_id=1), ordering_key="a")
    waits = enqueue(CustomEvent(32, customer_id=1), ordering_key="a")
    enqueue(CustomEvent(33, customer_id=2), ordering_key="b")
    goes_on = enqueue(CustomEvent(34, customer_id=2), ordering_key="b")
    other = enqueue(CustomEvent(35, customer_id=3))  # no key: never waits
    slow = dataclasses.replace(fast, retry=RetryPolicy(base_seconds=0.5, max_seconds=0.5))
    d = Deliverer(slow)
    try:
        with caplog.at_level(logging.WARNING, logger="dispatcher.delivery"):
            d.drain("default")
            d.drain("default")  # b's dead job released its successor
        assert sandbox.count(custom_event_id=32) == 0, "held behind its retrying predecessor"
        with engine.connect() as conn:
            state = dict(conn.execute(sa.select(jobs.c.id, jobs.c.status)).all())
        assert state[int(held)] == "retrying" and state[int(waits)] == "pending"
        assert state[int(goes_on)] == "delivered" and state[int(other)] == "delivered"
        assert "the next jobs of its ordering key go on without it" in caplog.text
        settle(d, engine)
    finally:
        d.close()
    assert statuses(engine) == {"delivered": 4, "dead": 1}
    order = [r.custom_event_id for r in sandbox.requests if r.status == 201]
    assert order.index(31) < order.index(32)


def test_the_second_writer_of_a_key_waits_for_the_first_ones_commit(
    settings: Settings, engine: sa.Engine, db_url: str
) -> None:
    """On PostgreSQL ids are handed out before commit: a transaction-scoped advisory lock per
    (queue, key) makes a key's id order its commit order. Other keys never wait."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: id order is commit order already")
    first = Session(engine)
    first.begin()
    first_id = int(enqueue(CustomEvent(1, customer_id=1), session=first, ordering_key="k"))
    done: dict[str, int] = {}

    def write(key: str) -> None:
        with Session(engine) as s, s.begin():
            done[key] = int(enqueue(CustomEvent(1, customer_id=2), session=s, ordering_key=key))

    same = threading.Thread(target=write, args=("k",))
    other = threading.Thread(target=write, args=("other",))
    same.start()
    other.start()
    other.join(10)
    assert "other" in done, "another key does not wait"
    same.join(0.5)
    assert "k" not in done, "the same key waits for the first transaction"
    first.commit()
    first.close()
    same.join(10)
    assert done["k"] > first_id


def test_ordering_keys_are_checked_like_every_other_field(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="ordering_key: must be a string of 1-255"):
        enqueue(CustomEvent(1, customer_id=1), ordering_key="")
    with pytest.raises(ValidationError, match=r"ordering_key: must not contain NUL"):
        enqueue(CustomEvent(1, customer_id=1), ordering_key="a\x00b")
    with pytest.raises(ValidationError, match=r"events\[1\]\.ordering_key: must be a string"):
        enqueue_many(
            [CustomEvent(1, customer_id=1), CustomEvent(1, customer_id=2)],
            ordering_keys=["a", "x" * 256],
        )
    with pytest.raises(ValidationError, match="ordering_keys: expected 2 keys"):
        enqueue_many(
            [CustomEvent(1, customer_id=1), CustomEvent(1, customer_id=2)], ordering_keys=["a"]
        )
    with pytest.raises(ValidationError, match="ordering_key or ordering_keys, not both"):
        enqueue_many([CustomEvent(1, customer_id=1)], ordering_key="a", ordering_keys=["a"])
    with pytest.raises(ValidationError, match="dedupe_key: must be valid Unicode"):
        enqueue(CustomEvent(1, customer_id=1), dedupe_key="a\ud800")


# --------------------------------------------------------------------------- the circuit

BREAKER = BreakerPolicy(min_requests=10, probe_min_seconds=0.2, probe_max_seconds=1.0)


def run_until(d: Deliverer, done: Callable[[], bool], limit: float) -> float:
    """Drain again and again until ``done()``; the seconds it took (``limit``: a hang guard)."""
    start = time.monotonic()
    while not done():
        assert time.monotonic() - start < limit, "gave up"
        d.drain("default")
        time.sleep(0.02)
    return time.monotonic() - start


def test_a_kind_of_event_that_always_fails_never_stops_the_rest_of_its_queue(
    settings: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    """80 jobs of an event the API answers 500 to, then 20 good ones (MAX_ATTEMPTS=3): the good
    ones are delivered at once, the bad ones go dead after their attempts, with the API's
    reason. (Before: after 30 s none of the good ones was delivered, after 120 s none of the bad
    ones dead: each probe took a bad one, and every re-trip refunded the attempts.)"""
    sandbox.script(66, *[Reply(500, body={"detail": "scenario step failed"})] * 1000)
    enqueue_many([CustomEvent(66, customer_id=c) for c in range(80)])
    enqueue_many([CustomEvent(17, customer_id=c) for c in range(20)])
    s = dataclasses.replace(
        settings,
        base_url=sandbox.url,
        retry=RetryPolicy(base_seconds=0.05, max_seconds=0.2, max_attempts=3),
        breaker=BREAKER,
        max_in_flight=8,
    )
    d = Deliverer(s)

    def good_delivered() -> bool:
        return sandbox.count(201, custom_event_id=17) == 20

    def bad_dead() -> bool:
        return statuses(engine).get("dead", 0) == 80

    try:
        run_until(d, good_delivered, limit=60)
        run_until(d, bad_dead, limit=90)
    finally:
        d.close()
    assert statuses(engine) == {"delivered": 20, "dead": 80}
    assert sandbox.count(201) == 20
    with engine.connect() as conn:
        reasons = set(conn.execute(sa.select(jobs.c.last_error).where(jobs.c.status == "dead")))
    assert all("scenario step failed" in r[0] for r in reasons)
    assert stats(engine, utcnow())["default"].circuit == "closed"


def test_an_outage_across_two_workers_dead_letters_nothing(
    settings: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    """Jobs one attempt from their limit when the outage starts, two workers sending: whichever
    opens the circuit, the failures both recorded are refunded (before: 5-10 dead per run)."""
    ids = enqueue_many([CustomEvent(17, customer_id=c) for c in range(200)])
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).values(attempts=2))  # max_attempts=3: one attempt left
    s = dataclasses.replace(
        settings,
        base_url=sandbox.url,
        retry=RetryPolicy(base_seconds=0.05, max_seconds=0.2, max_attempts=3),
        breaker=dataclasses.replace(BREAKER, probe_min_seconds=30, probe_max_seconds=30),
        max_in_flight=4,
        batch_size=4,
    )
    sandbox.fail_ratio, sandbox.fail_status = 1.0, 503
    workers = [Deliverer(s), Deliverer(s)]
    side_by_side(lambda w: [w.drain("default") for _ in range(3)], workers)
    assert stats(engine, utcnow())["default"].circuit == "open"
    assert sandbox.count(503) >= 2 * BREAKER.min_requests // 2
    assert statuses(engine).get("dead", 0) == 0
    with engine.connect() as conn:
        counted = conn.execute(
            sa.select(sa.func.count()).where(attempts.c.counted.is_(True))
        ).scalar()
        most = conn.execute(sa.select(sa.func.max(jobs.c.attempts))).scalar()
    assert counted == 0 and most == 2, "no outage failure counts toward the limit"
    assert len(ids) == 200


def test_a_minority_of_transient_failures_does_not_hold_the_queue(
    fast: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    """A third of the events meet two 500s before their 201 (before: in one run of two the
    circuit opened and held the last 128 events for over a minute)."""
    for n in range(0, 300, 3):
        sandbox.script(1000 + n, Reply(500), Reply(500))
    enqueue_many([CustomEvent(1000 + n, customer_id=n) for n in range(300)])
    s = dataclasses.replace(fast, breaker=BREAKER, max_in_flight=16)
    d = Deliverer(s)
    try:
        took = run_until(d, lambda: statuses(engine) == {"delivered": 300}, limit=60)
    finally:
        d.close()
    assert took < 30, "not held for long"  # a hang guard with a wide margin, not a speed bar


# --------------------------------------------------------------------------- second triggers


def test_an_api_at_its_capacity_gets_each_event_once(
    settings: Settings, engine: sa.Engine, slow_sandbox: Callable[..., Sandbox]
) -> None:
    """32 served at once in 0.25 s, the rest wait inside the server, a 2 s timeout: the
    closed-loop window never lets a request wait past its timeout, so no event is served twice
    (the open-loop window had 779 second triggers of 1,000 here)."""
    api = slow_sandbox(latency=0.25, capacity=32)
    enqueue_many([CustomEvent(17, customer_id=c) for c in range(300)])
    d = Deliverer(dataclasses.replace(settings, base_url=api.url, http_timeout_seconds=2.0))
    try:
        settle(d, engine)
    finally:
        d.close()
    time.sleep(0.3)  # a request still queued inside the server would be served now
    assert statuses(engine) == {"delivered": 300}
    assert api.served <= 303  # <= 1.01 x events
    with engine.connect() as conn:
        timeouts = conn.execute(
            sa.select(sa.func.count()).where(attempts.c.status_code.is_(None))
        ).scalar()
    assert timeouts == 0
    assert stats(engine, utcnow())["default"].maybe_twice == 0


def test_a_timeout_after_the_body_was_sent_is_counted_as_a_possible_second_trigger(
    settings: Settings, engine: sa.Engine, slow_sandbox: Callable[..., Sandbox]
) -> None:
    api = slow_sandbox(latency=0.6)
    job = enqueue(CustomEvent(17, customer_id=1))
    s = dataclasses.replace(
        settings,
        base_url=api.url,
        http_timeout_seconds=0.3,
        retry=RetryPolicy(base_seconds=0.01, max_seconds=0.01, max_attempts=5),
    )
    d = Deliverer(s)
    try:
        d.drain("default")
    finally:
        d.close()
    with engine.connect() as conn:
        row = conn.execute(sa.select(attempts).where(attempts.c.job_id == int(job))).first()
    assert row is not None and row.status_code is None and row.sent is True and row.counted
    assert stats(engine, utcnow())["default"].maybe_twice == 1
    shown = show(engine, job)
    assert shown is not None
    assert shown.attempt_log[0].answer == "no answer (sent: may have reached the API)"


def test_the_async_calls_take_ordering_keys(env: pytest.MonkeyPatch, engine: sa.Engine) -> None:
    async def produce() -> list[str]:
        one = await enqueue_async(CustomEvent(1, customer_id=1), ordering_key="c1")
        more = await enqueue_many_async(
            [CustomEvent(1, customer_id=2), CustomEvent(1, customer_id=3)],
            ordering_keys=["c2", None],
        )
        return [one, *more]

    ids = asyncio.run(produce())
    with engine.connect() as conn:
        keys = dict(conn.execute(sa.select(jobs.c.id, jobs.c.ordering_key)).all())
    assert [keys[int(i)] for i in ids] == ["c1", "c2", None]


def test_a_request_that_never_got_a_connection_was_not_sent(
    api_key: str, slow_sandbox: Callable[..., Sandbox]
) -> None:
    """One connection, two requests, an API slower than the timeout: the second waits for the
    connection the whole time. Its timeout cannot have reached the API: ``sent`` False."""
    from dispatcher.config import Secret

    api = slow_sandbox(latency=1.0)
    client = EcdpClient(api.url, timeout=0.4, max_connections=1)
    try:
        body = json.dumps({"customEventId": 17, "customerId": 1})
        first = client.submit("/scenariocustomevents", body, Secret(api_key))
        second = client.submit("/scenariocustomevents", body, Secret(api_key))
        a, b = first.result(5), second.result(5)
    finally:
        client.close()
    assert a.status_code is None and a.sent and a.error and a.error.startswith("timeout")
    assert b.status_code is None and not b.sent and "not sent" in (b.error or "")


def test_a_batch_of_thousands_of_keys_takes_a_bounded_number_of_locks(
    env: pytest.MonkeyPatch, engine: sa.Engine, db_url: str
) -> None:
    """One statement locks a batch's keys over ORDERING_SLOTS slots: 10,000 keys never run out
    of PostgreSQL's lock table (about 64 locks per connection by default)."""
    events = [CustomEvent(1, customer_id=c) for c in range(10_000)]
    with Session(engine) as s, s.begin():
        ids = enqueue_many(events, session=s, ordering_keys=[f"c{c}" for c in range(10_000)])
        if db_url.startswith("postgresql"):
            held = s.execute(
                sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            ).scalar()
            assert held is not None and 0 < held <= outbox.ORDERING_SLOTS
    assert len(ids) == 10_000


def test_an_outage_does_not_revive_a_dead_job_whose_key_went_on(
    settings: Settings, engine: sa.Engine
) -> None:
    """A job of a key dead for "max attempts", the key's next job delivered since: a refund
    (the circuit opening) keeps it dead, or it would reach the API after its successor."""
    first = int(enqueue(CustomEvent(1, customer_id=1), ordering_key="k"))
    second = int(enqueue(CustomEvent(1, customer_id=1), ordering_key="k"))
    free = int(enqueue(CustomEvent(1, customer_id=2)))
    started = utcnow()
    with engine.begin() as conn:
        for job, status in ((first, "dead"), (second, "delivered"), (free, "dead")):
            conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == job)
                .values(
                    status=status,
                    attempts=1,
                    last_error=None if status == "delivered" else "503 x",
                    exhausted=status == "dead",
                )
            )
        conn.execute(
            sa.insert(attempts),
            [
                {
                    "job_id": job,
                    "started_at": started,
                    "duration_ms": 5,
                    "status_code": 503,
                    "outcome": "dead",
                    "counted": True,
                }
                for job in (first, free)
            ],
        )
        outbox.open_circuit(conn, "default", "503", utcnow(), BREAKER)
    with engine.connect() as conn:
        state = dict(conn.execute(sa.select(jobs.c.id, jobs.c.status)).all())
    assert state == {first: "dead", second: "delivered", free: "retrying"}
