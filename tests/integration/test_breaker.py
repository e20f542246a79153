"""The circuit breaker at work: a Deliverer (what a Celery worker runs) against the sandbox, on a
real outbox, with thresholds small enough that each scenario takes a second or two.

What is checked is the issue's promise: an outage opens the queue's circuit after about
``min_requests`` answers, dead-letters nothing (the failures that tripped it and the probes do not
count), sends nothing while open but one probe at a growing interval, and a successful probe lets
the backlog drain. 4xx answers never trip it; timeouts do.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from dispatcher import CustomEvent, enqueue_many, outbox
from dispatcher.breaker import BreakerPolicy, probe_interval
from dispatcher.config import Settings
from dispatcher.db import utcnow
from dispatcher.delivery import Deliverer, DrainSummary
from dispatcher.policy import RetryPolicy
from dispatcher.sandbox import Reply, Sandbox
from dispatcher.schema import attempts, jobs, queues
from tests.support import wait_until

BREAKER = BreakerPolicy(
    min_requests=5,
    failure_ratio=0.8,
    window_seconds=60.0,
    probe_min_seconds=0.2,
    probe_max_seconds=1.0,
)
WINDOW = 2  # max_in_flight: requests that may still be on their way when the circuit trips


@pytest.fixture
def fast(settings: Settings, sandbox: Sandbox) -> Settings:
    return dataclasses.replace(
        settings,
        base_url=sandbox.url,
        retry=RetryPolicy(base_seconds=0.05, max_seconds=0.2, max_attempts=3),
        breaker=BREAKER,
        http_timeout_seconds=1.0,
        http_connect_timeout_seconds=1.0,
        max_in_flight=WINDOW,
        lease_seconds=10.0,
    )


@pytest.fixture
def deliverer(fast: Settings) -> Iterator[Deliverer]:
    d = Deliverer(fast)
    yield d
    d.close()


def add_jobs(n: int, event_id: int = 1) -> list[int]:
    return [int(i) for i in enqueue_many([CustomEvent(event_id, customer_id=i) for i in range(n)])]


def queue_row(engine: sa.Engine, queue: str = "default") -> sa.Row:
    with engine.connect() as conn:
        return conn.execute(sa.select(queues).where(queues.c.name == queue)).one()


def circuit(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        found = conn.execute(sa.select(queues.c.circuit).where(queues.c.name == "default")).scalar()
    return found or "closed"


def counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status))
        return {r[0]: r[1] for r in rows}


def job_rows(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(sa.select(jobs).order_by(jobs.c.id)).all()


def attempt_rows(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(sa.select(attempts).order_by(attempts.c.id)).all()


def set_retry_at(engine: sa.Engine, seconds_from_now: float) -> None:
    """Move the next probe's time (instead of sleeping until it)."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(queues)
            .where(queues.c.name == "default")
            .values(circuit_retry_at=utcnow() + timedelta(seconds=seconds_from_now))
        )


def open_the_circuit(deliverer: Deliverer, engine: sa.Engine, sandbox: Sandbox) -> DrainSummary:
    sandbox.fail_ratio, sandbox.fail_status = 1.0, 503
    summary = deliverer.drain("default")
    assert circuit(engine) == "open", summary
    return summary


# --------------------------------------------------------------------------- opening


def test_an_api_down_opens_the_circuit_after_about_min_requests_and_kills_nothing(
    fast: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    # Every counted failure is a job's last (max_attempts=1) and the batches are recorded as
    # they go (batch_size 3), so the failures before the trip were dead letters for a moment:
    # opening the circuit takes them back.
    settings = dataclasses.replace(
        fast, retry=dataclasses.replace(fast.retry, max_attempts=1), batch_size=3
    )
    ids = add_jobs(30)
    sandbox.fail_ratio, sandbox.fail_status = 1.0, 503
    d = Deliverer(settings)
    try:
        summary = d.drain("default")
    finally:
        d.close()

    assert summary.circuit_open and not summary.more
    sent = sandbox.count()
    assert BREAKER.min_requests <= sent <= BREAKER.min_requests + WINDOW
    row = queue_row(engine)
    assert row.circuit == "open"
    assert row.circuit_reason and "503" in row.circuit_reason
    assert row.circuit_since is not None and row.circuit_probes == 0
    assert row.circuit_retry_at is not None and row.circuit_retry_at > row.circuit_since

    rows = job_rows(engine)
    assert len(rows) == len(ids)
    assert not [r for r in rows if r.status == "dead"]
    assert {r.status for r in rows} <= {"pending", "retrying"}
    assert all(r.attempts == 0 for r in rows)  # the failures that tripped it were refunded
    # Waiting again, each says what the API answered, and is no longer out of attempts.
    errors = {r.last_error for r in rows if r.last_error}
    assert errors and all(e.startswith("503 Service Unavailable") for e in errors), errors
    assert not any(r.exhausted for r in rows)
    tried = attempt_rows(engine)
    assert len(tried) == sent
    assert not any(a.counted for a in tried)
    assert {a.status_code for a in tried} == {503}


def test_the_failures_recorded_in_one_transaction_with_the_trip_are_refunded(
    deliverer: Deliverer, engine: sa.Engine, sandbox: Sandbox
) -> None:
    add_jobs(20)
    open_the_circuit(deliverer, engine, sandbox)
    tried = attempt_rows(engine)
    assert BREAKER.min_requests <= len(tried) <= BREAKER.min_requests + WINDOW
    assert not any(a.counted for a in tried)
    assert all(r.attempts == 0 for r in job_rows(engine))
    assert "dead" not in counts(engine)


def test_a_timeout_only_api_trips_it_too(
    fast: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    settings = dataclasses.replace(fast, http_timeout_seconds=0.3)
    sandbox.default_delay = 3.0  # far beyond the timeout: every request times out
    add_jobs(20)
    d = Deliverer(settings)
    try:
        summary = d.drain("default")
    finally:
        d.close()
    assert summary.circuit_open
    row = queue_row(engine)
    assert row.circuit == "open"
    assert row.circuit_reason and "timeout" in row.circuit_reason
    assert BREAKER.min_requests <= len(sandbox.requests) <= BREAKER.min_requests + WINDOW
    assert all(r.attempts == 0 for r in job_rows(engine))
    assert not any(a.counted for a in attempt_rows(engine))


@pytest.mark.parametrize("status", [400, 404])
def test_4xx_answers_never_trip_it(
    deliverer: Deliverer, engine: sa.Engine, sandbox: Sandbox, status: int
) -> None:
    if status == 400:
        sandbox.fail_ratio, sandbox.fail_status = 1.0, 400
    else:
        sandbox.unknown_event_ids.add(1)
    add_jobs(40)
    summary = deliverer.drain("default")
    assert not summary.circuit_open
    assert circuit(engine) == "closed"
    assert sandbox.count(status=status) == 40
    assert {r.status for r in job_rows(engine)} == {"dead"}


def test_a_disabled_breaker_never_opens(
    fast: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    settings = dataclasses.replace(fast, breaker=dataclasses.replace(BREAKER, enabled=False))
    sandbox.fail_ratio, sandbox.fail_status = 1.0, 503
    add_jobs(10)
    d = Deliverer(settings)
    try:
        for _ in range(200):
            summary = d.drain("default")
            assert not summary.circuit_open
            if set(counts(engine)) == {"dead"}:
                break
            time.sleep(0.05)
    finally:
        d.close()
    assert circuit(engine) == "closed"
    rows = job_rows(engine)
    assert {r.status for r in rows} == {"dead"}  # without a breaker the attempts ran out
    assert all(r.exhausted and r.last_error.startswith("503") for r in rows)
    assert sandbox.count() == 10 * fast.retry.max_attempts


def test_a_mostly_healthy_api_does_not_trip_it(
    deliverer: Deliverer, engine: sa.Engine, sandbox: Sandbox
) -> None:
    # A third of the requests fail (event 7, scripted), well below the 0.8 ratio.
    enqueue_many([CustomEvent(7 if i % 3 == 0 else 1, customer_id=i) for i in range(60)])
    sandbox.script(7, *[Reply(503)] * 20)
    deliverer.drain("default")
    assert sandbox.count(status=503) == 20
    assert circuit(engine) == "closed"


# --------------------------------------------------------------------------- while open


def test_while_open_nothing_is_sent_until_the_probe_is_due_then_exactly_the_probes(
    fast: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    settings = dataclasses.replace(
        fast, breaker=dataclasses.replace(BREAKER, probe_min_seconds=30, probe_max_seconds=60)
    )
    add_jobs(20)
    d = Deliverer(settings)
    other = Deliverer(settings)
    try:
        open_the_circuit(d, engine, sandbox)
        before = sandbox.count()
        for worker in (d, other, d):
            summary = worker.drain("default")
            assert summary.batches == 0 and not summary.more
        assert sandbox.count() == before  # the probe is 30 s away

        set_retry_at(engine, -0.01)  # the probe's time has come
        sandbox.default_delay = 0.5
        probing = threading.Thread(target=d.drain, args=("default",))
        probing.start()
        try:
            wait_until(lambda: sandbox.in_flight >= 1, "the probe", limit=10)
            assert circuit(engine) == "half_open"
            # Another worker sends nothing while the probes are out.
            assert other.drain("default").batches == 0
        finally:
            probing.join()
    finally:
        d.close()
        other.close()
    assert sandbox.count() == before + outbox.PROBES
    row = queue_row(engine)
    assert row.circuit == "open" and row.circuit_probes == 1  # the probes got 503s
    assert not any(a.counted for a in attempt_rows(engine))


def test_failing_probes_reopen_it_further_off_each_time_up_to_the_cap(
    deliverer: Deliverer, engine: sa.Engine, sandbox: Sandbox
) -> None:
    add_jobs(10)
    open_the_circuit(deliverer, engine, sandbox)
    sent = sandbox.count()
    for probes in range(1, 6):
        set_retry_at(engine, -0.01)
        summary = deliverer.drain("default")
        assert summary.batches == 1 and summary.circuit_open
        assert sandbox.count() == sent + probes * outbox.PROBES  # one round of probes a drain
        row = queue_row(engine)
        assert row.circuit == "open"
        assert row.circuit_probes == probes
        assert row.circuit_reason and "503" in row.circuit_reason
        interval = (row.circuit_retry_at - row.updated_at).total_seconds()
        assert interval == pytest.approx(probe_interval(probes, BREAKER), abs=0.002)
        assert deliverer.drain("default").batches == 0  # not due yet
    assert interval == BREAKER.probe_max_seconds  # 0.2 x 2^5 is beyond the 1 s cap
    rows = job_rows(engine)
    assert all(r.attempts == 0 for r in rows)  # probes while open do not count
    assert not [r for r in rows if r.status == "dead"]


def test_a_successful_probe_closes_it_and_the_backlog_drains(
    deliverer: Deliverer, engine: sa.Engine, sandbox: Sandbox
) -> None:
    add_jobs(30)
    open_the_circuit(deliverer, engine, sandbox)
    sandbox.fail_ratio = 0.0  # the API is back
    for _ in range(500):  # until the probe is due (0.2 s)
        summary = deliverer.drain("default")
        if summary.batches:
            break
        time.sleep(0.02)
    # The probes' answers closed the circuit; the drain went on with the backlog.
    assert sandbox.count(status=201) >= outbox.PROBES
    row = queue_row(engine)
    assert row.circuit == "closed"
    assert row.circuit_reason is None and row.circuit_retry_at is None
    assert row.circuit_probes == 0

    for _ in range(100):  # the same drain or the next ones deliver the backlog
        if set(counts(engine)) == {"delivered"}:
            break
        deliverer.drain("default")
        time.sleep(0.02)
    rows = job_rows(engine)
    assert {r.status for r in rows} == {"delivered"}
    assert all(r.attempts == 1 for r in rows)  # the refunded failures left no trace in the count
    assert sandbox.count(status=201) == 30


def test_due_queues_skips_an_open_circuit_until_its_probe_is_due(
    deliverer: Deliverer, engine: sa.Engine, sandbox: Sandbox
) -> None:
    add_jobs(10)
    open_the_circuit(deliverer, engine, sandbox)
    retry_at = queue_row(engine).circuit_retry_at
    with engine.connect() as conn:
        assert "default" not in outbox.due_queues(conn, retry_at - timedelta(milliseconds=50))
        assert outbox.due_queues(conn, retry_at) == ["default"]
        assert outbox.due_queues(conn, retry_at + timedelta(seconds=1)) == ["default"]
    # A paused queue is skipped even when its probe is due.
    with engine.begin() as conn:
        outbox.pause(conn, "default", "test", utcnow())
    with engine.connect() as conn:
        assert outbox.due_queues(conn, retry_at + timedelta(seconds=1)) == []
    with engine.begin() as conn:
        outbox.resume(conn, "default", utcnow())
    # While a probe is out (half-open), the queue is not signalled before the probe's deadline.
    with engine.begin() as conn:
        assert outbox.claim_probe(conn, "default", retry_at, 10.0, 6.0)
    with engine.connect() as conn:
        assert outbox.due_queues(conn, retry_at + timedelta(seconds=5)) == []
        assert outbox.due_queues(conn, retry_at + timedelta(seconds=6)) == ["default"]


def test_a_half_open_circuit_whose_prober_died_is_probed_again(
    deliverer: Deliverer, engine: sa.Engine, sandbox: Sandbox
) -> None:
    add_jobs(10)
    open_the_circuit(deliverer, engine, sandbox)
    set_retry_at(engine, -0.01)
    with engine.begin() as conn:  # a worker takes the probes ... and dies
        dead_probes = outbox.claim_probe(conn, "default", utcnow(), 1.0, 60.0)
    assert len(dead_probes) == outbox.PROBES and all(p.probe for p in dead_probes)
    assert circuit(engine) == "half_open"
    sent = sandbox.count()
    assert deliverer.drain("default").batches == 0  # its probe may still be on its way
    assert sandbox.count() == sent

    set_retry_at(engine, -0.01)  # the probe's deadline passed without an answer
    sandbox.fail_ratio = 0.0
    summary = deliverer.drain("default")
    assert summary.batches >= 1
    assert sandbox.count() > sent  # probed again
    assert circuit(engine) == "closed"

    with engine.begin() as conn:  # the sweeper returns the dead worker's probe jobs
        assert outbox.release_expired(conn, utcnow() + timedelta(seconds=2)) == outbox.PROBES
    for _ in range(100):
        if set(counts(engine)) == {"delivered"}:
            break
        deliverer.drain("default")
        time.sleep(0.02)
    assert {r.status for r in job_rows(engine)} == {"delivered"}


def test_claim_probe_leases_a_round_of_probes_and_only_when_due(
    engine: sa.Engine, settings: Settings
) -> None:
    add_jobs(outbox.PROBES + 1)
    now = utcnow()
    with engine.begin() as conn:
        assert outbox.claim_probe(conn, "default", now, 10.0, 5.0) == []  # closed: no probe
        assert outbox.open_circuit(conn, "default", "test", now, BREAKER)
        assert not outbox.open_circuit(conn, "default", "again", now, BREAKER)  # once
        assert outbox.claim_probe(conn, "default", now, 10.0, 5.0) == []  # not due yet
        later = now + timedelta(seconds=BREAKER.probe_min_seconds)
        probes = outbox.claim_probe(conn, "default", later, 10.0, 5.0)
        assert len(probes) == outbox.PROBES
        assert all(p.probe and p.attempts == 0 for p in probes)
        assert outbox.claim_probe(conn, "default", later, 10.0, 5.0) == []  # a round at a time
        assert outbox.claim(conn, "default", 10, later, 10.0) == []  # nothing else is claimed
    assert queue_row(engine).circuit_reason == "test"


def test_an_outage_dead_letters_nothing_and_everything_is_delivered_after_it(
    fast: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    """The whole story, briefly: 503 to everything for about 1.5 s, a worker draining as the
    sweeper would signal it, then recovery. Max attempts 2: without the breaker every job
    would be dead (see test_a_disabled_breaker_never_opens)."""
    settings = dataclasses.replace(fast, retry=dataclasses.replace(fast.retry, max_attempts=2))
    add_jobs(50)
    sandbox.fail_ratio, sandbox.fail_status = 1.0, 503
    d = Deliverer(settings)
    try:
        outage_ends = time.monotonic() + 1.5
        while time.monotonic() < outage_ends:
            d.drain("default")
            time.sleep(0.02)
        during = sandbox.count()
        sandbox.fail_ratio = 0.0
        for _ in range(500):
            if set(counts(engine)) == {"delivered"}:
                break
            d.drain("default")
            time.sleep(0.02)
    finally:
        d.close()
    assert counts(engine) == {"delivered": 50}
    # Opening (min_requests + the window) and a round of probes per interval (0.2, 0.4, 0.8 s).
    assert during <= BREAKER.min_requests + WINDOW + 5 * outbox.PROBES
    assert sandbox.count(status=201) == 50


def test_a_worker_that_saw_another_open_the_circuit_does_not_reopen_it_on_one_failure(
    fast: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    """Worker A sees a few outage answers (fewer than min_requests), then worker B trips the
    circuit, probes, and closes it: the API is back. A's old answers belong to that outage; one
    failure among A's first answers afterwards must not open the circuit again."""
    a, b = Deliverer(fast), Deliverer(fast)
    try:
        sandbox.fail_ratio, sandbox.fail_status = 1.0, 503
        add_jobs(BREAKER.min_requests - 1)
        assert not a.drain("default").circuit_open  # A: 4 outages, below the threshold
        add_jobs(20)
        wait_until(lambda: b.drain("default").circuit_open, "B opens the circuit", limit=10)
        set_retry_at(engine, 30)  # no probe due yet, however slow the machine
        assert a.drain("default").batches == 0  # A sees it open and sends nothing
        sandbox.fail_ratio = 0.0
        set_retry_at(engine, -0.01)
        b.drain("default")  # B's probe succeeds
        assert circuit(engine) == "closed"
        sandbox.script(1, Reply(503))  # one failure on a healthy API
        a.drain("default")
    finally:
        a.close()
        b.close()
    assert circuit(engine) == "closed"
