"""Delivery that holds under a slow API, in process: a Deliverer (what a Celery worker runs)
against the sandbox and a real outbox, with a small in-flight window so that each batch takes
longer than its lease, a pause or a revoked key lands mid-batch, and a shutdown comes mid-drain.

The numbers asserted are the product's promises (no job sent twice, at most the window's
requests after a pause, a drain that ends within the shutdown grace, a request that ends within
its deadline); the margins on the time bounds are generous, for a loaded 2-core machine. Nothing
here asserts a speed.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa

from dispatcher import CustomEvent, enqueue_many, outbox
from dispatcher.admin import pause_queue
from dispatcher.config import Secret, Settings
from dispatcher.db import utcnow
from dispatcher.delivery import Deliverer, DrainSummary
from dispatcher.ecdp import EcdpClient
from dispatcher.policy import RetryPolicy
from dispatcher.sandbox import Reply, Sandbox
from dispatcher.schema import attempts, jobs
from tests.support import wait_until

WINDOW = 2  # max_in_flight in every scenario here


@pytest.fixture
def slow(settings: Settings, sandbox: Sandbox) -> Settings:
    return dataclasses.replace(
        settings,
        base_url=sandbox.url,
        retry=RetryPolicy(base_seconds=0.05, max_seconds=0.2, max_attempts=5),
        max_in_flight=WINDOW,
        batch_size=100,
        http_timeout_seconds=2.0,
        http_connect_timeout_seconds=1.0,
        lease_seconds=10.0,
    )


def add_jobs(n: int) -> None:
    enqueue_many([CustomEvent(1, customer_id=i) for i in range(n)])


def job_rows(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(sa.select(jobs).order_by(jobs.c.id)).all()


def counts(engine: sa.Engine) -> dict[str, int]:
    return dict(Counter(r.status for r in job_rows(engine)))


def sent_per_job(sandbox: Sandbox) -> Counter[int]:
    import json

    return Counter(json.loads(r.body)["customerId"] for r in sandbox.requests)


class Running:
    """``fn`` on a thread; ``join()`` returns its result (or raises its error) and the
    monotonic time it returned."""

    def __init__(self, fn: Callable[[], DrainSummary]) -> None:
        self.result: DrainSummary | None = None
        self.error: BaseException | None = None
        self.returned_at = 0.0
        self._thread = threading.Thread(target=self._run, args=(fn,))
        self._thread.start()

    def _run(self, fn: Callable[[], DrainSummary]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:
            self.error = exc
        finally:
            self.returned_at = time.monotonic()

    def join(self, limit: float = 120.0) -> DrainSummary:
        self._thread.join(limit)
        assert not self._thread.is_alive(), "the drain did not return"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def settle(d: Deliverer, engine: sa.Engine) -> None:
    for _ in range(500):
        if set(counts(engine)) <= {"delivered", "dead"}:
            return
        d.drain("default")
        time.sleep(0.02)
    raise AssertionError(f"jobs did not settle: {counts(engine)}")


# --------------------------------------------------------------------------- leases


def test_a_batch_that_outlives_its_lease_is_renewed_and_sent_once(
    slow: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    """40 jobs, 2 in flight, 0.1 s each: one drain takes about 2 s, twice the 1 s lease. The
    sweeper and a second worker run all along: neither may take a job from the first."""
    settings = dataclasses.replace(slow, lease_seconds=1.0, http_timeout_seconds=0.4)
    sandbox.default_delay = 0.1
    add_jobs(40)
    first, second = Deliverer(settings), Deliverer(settings)
    done = threading.Event()
    released: list[int] = []
    stolen: list[DrainSummary] = []

    def sweeper_and_second_worker() -> None:
        while not done.is_set():
            with engine.begin() as conn:
                released.append(outbox.release_expired(conn, utcnow()))
            stolen.append(second.drain("default", max_seconds=0.5))
            time.sleep(0.05)

    other = threading.Thread(target=sweeper_and_second_worker)
    try:
        started = time.monotonic()
        drain = Running(lambda: first.drain("default", max_seconds=60))
        wait_until(lambda: sandbox.count() > 0, "the first worker's batch", limit=30)
        other.start()  # once the first worker holds the whole batch
        summary = drain.join()
        took = drain.returned_at - started
    finally:
        done.set()
        if other.is_alive():
            other.join()
        first.close()
        second.close()

    assert took > settings.lease_seconds  # the scenario: the batch outlived the lease
    assert summary.batches == 1 and summary.outcomes["delivered"] == 40
    assert sum(released) == 0  # the leases never ran out
    assert sum(s.batches for s in stolen) == 0
    rows = job_rows(engine)
    assert {r.status for r in rows} == {"delivered"}
    assert all(r.attempts == 1 for r in rows)
    assert len(sandbox.requests) == 40
    assert set(sent_per_job(sandbox).values()) == {1}  # no job sent twice
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(attempts)).scalar() == 40


def test_renew_extends_only_the_leases_still_held(engine: sa.Engine, settings: Settings) -> None:
    add_jobs(4)
    now = utcnow()
    with engine.begin() as conn:
        a = outbox.claim(conn, "default", 2, now, 1.0)
        b = outbox.claim(conn, "default", 2, now, 1.0)
        outbox.release(conn, b, now)  # b was given back: its token no longer holds anything
        later = now + timedelta(seconds=0.5)
        assert outbox.renew(conn, [a[0].lease_token, b[0].lease_token], later, 1.0) == 2
        assert outbox.renew(conn, [], later, 1.0) == 0
        # One second after the renewal, not after the claim: nothing has expired yet.
        assert outbox.release_expired(conn, now + timedelta(seconds=1.2)) == 0
        assert outbox.release_expired(conn, now + timedelta(seconds=1.6)) == 2


# --------------------------------------------------------------------------- pause


def test_a_pause_stops_a_claimed_batch_at_once(
    slow: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    sandbox.default_delay = 0.2
    add_jobs(60)
    d = Deliverer(slow)
    try:
        drain = Running(lambda: d.drain("default", max_seconds=60))
        wait_until(lambda: sandbox.count(status=201) >= 4, "a few deliveries", limit=30)
        pause_queue(engine, "default", "test")
        returned_at = time.monotonic()
        summary = drain.join()
    finally:
        d.close()

    after = [r for r in sandbox.requests if r.at > returned_at]
    assert len(after) <= WINDOW, f"{len(after)} requests arrived after pause returned"
    assert summary.paused and not summary.more
    rows = job_rows(engine)
    assert not [r for r in rows if r.status == "in_flight"]
    delivered = [r for r in rows if r.status == "delivered"]
    unsent = [r for r in rows if r.status == "pending"]
    assert len(delivered) + len(unsent) == 60
    assert len(delivered) == len(sandbox.requests)  # every answer was recorded
    assert len(unsent) >= 60 - 20  # the pause came early in the batch
    assert all(r.attempts == 0 and r.last_error is None for r in unsent)

    with engine.begin() as conn:
        outbox.resume(conn, "default", utcnow())
    sandbox.default_delay = 0.0
    d = Deliverer(slow)
    try:
        settle(d, engine)
    finally:
        d.close()
    assert counts(engine) == {"delivered": 60}
    assert len(sandbox.requests) == 60
    assert set(sent_per_job(sandbox).values()) == {1}


def test_a_pause_is_seen_without_state_checks_only_too_late(
    slow: Settings, engine: sa.Engine, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control for the test above: a worker that never re-reads its queue's row sends the
    whole batch after the pause. (If this ever passes without the patch, the test above proves
    nothing.)"""
    monkeypatch.setattr(outbox, "STATE_CHECK_SECONDS", 3600.0)
    sandbox.default_delay = 0.05
    add_jobs(40)
    d = Deliverer(slow)
    try:
        drain = Running(lambda: d.drain("default", max_seconds=60))
        wait_until(lambda: sandbox.count(status=201) >= 2, "a few deliveries", limit=30)
        pause_queue(engine, "default", "test")
        returned_at = time.monotonic()
        drain.join()
    finally:
        d.close()
    assert len([r for r in sandbox.requests if r.at > returned_at]) > WINDOW


def test_a_401_mid_batch_gets_at_most_the_requests_in_flight(
    slow: Settings, engine: sa.Engine, sandbox: Sandbox, api_key: str
) -> None:
    sandbox.default_delay = 0.2
    add_jobs(60)
    d = Deliverer(slow)
    try:
        drain = Running(lambda: d.drain("default", max_seconds=60))
        wait_until(lambda: sandbox.count(status=201) >= 4, "a few deliveries", limit=30)
        sandbox.api_key = "revoked-" + api_key  # the key stops working mid-batch
        summary = drain.join()
    finally:
        d.close()

    assert summary.paused
    assert 1 <= sandbox.count(status=401) <= WINDOW
    rows = job_rows(engine)
    assert not [r for r in rows if r.status == "in_flight"]
    assert len([r for r in rows if r.status == "delivered"]) == sandbox.count(status=201)
    pending = [r for r in rows if r.status == "pending"]
    assert len(pending) == 60 - sandbox.count(status=201)
    assert all(r.attempts == 0 for r in pending)  # a 401 is not counted, unsent ones neither
    with engine.connect() as conn:
        assert outbox.is_paused(conn, "default")

    sandbox.api_key = api_key  # the operator fixes the key and resumes
    with engine.begin() as conn:
        outbox.resume(conn, "default", utcnow())
    sandbox.default_delay = 0.0
    d = Deliverer(slow)
    try:
        settle(d, engine)
    finally:
        d.close()
    assert counts(engine) == {"delivered": 60}
    assert sandbox.count(status=201) == 60
    assert set(Counter(r.body for r in sandbox.requests if r.status == 201).values()) == {1}


# --------------------------------------------------------------------------- shutdown

MARGIN = 3.0  # seconds on top of a promised bound, for a loaded machine


def test_a_shutdown_mid_drain_waits_for_the_answers_in_flight_and_gives_back_the_rest(
    slow: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    settings = dataclasses.replace(slow, shutdown_grace_seconds=2.0)
    sandbox.default_delay = 0.5
    add_jobs(40)
    stop = threading.Event()
    d = Deliverer(settings)
    try:
        drain = Running(lambda: d.drain("default", max_seconds=60, stopping=stop.is_set))
        wait_until(lambda: sandbox.count(status=201) >= 2, "a few deliveries", limit=30)
        stop.set()
        asked_at = time.monotonic()
        summary = drain.join()
    finally:
        d.close()

    assert drain.returned_at - asked_at < settings.shutdown_grace_seconds + MARGIN
    assert summary.shutdown and summary.more
    rows = job_rows(engine)
    assert not [r for r in rows if r.status == "in_flight"]
    delivered = [r for r in rows if r.status == "delivered"]
    # The answers that were in flight came within the grace and were recorded.
    assert len(delivered) == len(sandbox.requests) == sandbox.count(status=201)
    pending = [r for r in rows if r.status == "pending"]
    assert len(pending) == 40 - len(delivered) > 0
    assert all(r.attempts == 0 for r in pending)
    assert summary.released == len(pending)

    # After a restart the rest is delivered, no job twice.
    sandbox.default_delay = 0.0
    d = Deliverer(settings)
    try:
        settle(d, engine)
    finally:
        d.close()
    assert counts(engine) == {"delivered": 40}
    assert len(sandbox.requests) == 40
    assert set(sent_per_job(sandbox).values()) == {1}


@pytest.mark.parametrize("how", ["default_delay", "hang"])
def test_a_shutdown_against_an_api_that_does_not_answer_ends_within_the_grace(
    slow: Settings, engine: sa.Engine, sandbox: Sandbox, how: str
) -> None:
    settings = dataclasses.replace(
        slow, shutdown_grace_seconds=1.5, http_timeout_seconds=30.0, lease_seconds=60.0
    )
    if how == "hang":
        sandbox.script(1, *[Reply(201, hang=True)] * 10)
    else:
        sandbox.default_delay = 20.0
    add_jobs(10)
    stop = threading.Event()
    d = Deliverer(settings)
    try:
        drain = Running(lambda: d.drain("default", max_seconds=60, stopping=stop.is_set))
        wait_until(lambda: sandbox.in_flight == WINDOW, "requests in flight", limit=30)
        stop.set()
        asked_at = time.monotonic()
        summary = drain.join()
    finally:
        d.close()

    assert drain.returned_at - asked_at < settings.shutdown_grace_seconds + MARGIN
    # It did wait for the answers, up to the grace (less a poll interval).
    assert drain.returned_at - asked_at >= settings.shutdown_grace_seconds - 0.2
    assert summary.shutdown
    rows = job_rows(engine)
    assert {r.status for r in rows} == {"pending"}  # the unanswered ones too
    assert all(r.attempts == 0 and r.lease_token is None for r in rows)
    assert summary.released == 10
    assert len(sandbox.requests) == WINDOW
    with engine.connect() as conn:  # nothing was answered, so nothing was recorded as tried
        assert conn.execute(sa.select(sa.func.count()).select_from(attempts)).scalar() == 0


def test_a_drain_asked_to_stop_before_it_starts_sends_nothing(
    slow: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    add_jobs(5)
    d = Deliverer(slow)
    try:
        summary = d.drain("default", stopping=lambda: True)
    finally:
        d.close()
    assert summary.shutdown and sandbox.count() == 0
    assert counts(engine) == {"pending": 5}


# --------------------------------------------------------------------------- the request deadline


def test_a_trickling_answer_ends_at_the_total_deadline(sandbox: Sandbox, api_key: str) -> None:
    """Every byte arrives within the per-read timeout, but the whole answer would take ~4 s: the
    request's total deadline (the HTTP timeout) ends it."""
    sandbox.trickle = 0.1  # ~43 bytes of a 201's head, one every 0.1 s
    client = EcdpClient(sandbox.url, timeout=0.5, connect_timeout=0.5, max_connections=2)
    try:
        started = time.monotonic()
        answer = client.post("/scenariocustomevents", b'{"customEventId":1,"customerId":1}',
                             Secret(api_key))  # fmt: skip
        took = time.monotonic() - started
    finally:
        client.close()
    assert answer.status_code is None
    assert answer.error is not None and answer.error.startswith("timeout")
    assert took < 2.5  # the deadline is 0.5 s; the whole answer would take about 4 s
    assert sandbox.count() == 1


def test_a_trickling_api_gets_its_jobs_retried_not_stuck(
    slow: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    settings = dataclasses.replace(slow, http_timeout_seconds=0.5, lease_seconds=1.0)
    sandbox.trickle = 0.1
    add_jobs(2)
    d = Deliverer(settings)
    try:
        started = time.monotonic()
        d.drain("default", max_seconds=0.1)  # one round: both requests, both time out
        took = time.monotonic() - started
        rows = job_rows(engine)
        assert {r.status for r in rows} == {"retrying"}
        assert all(r.attempts == 1 for r in rows)
        assert all(r.last_error.startswith("timeout") for r in rows)
        assert took < 2.5 + 1.0
        sandbox.trickle = 0.0
        settle(d, engine)
    finally:
        d.close()
    assert counts(engine) == {"delivered": 2}


def test_a_shutdown_while_throttled_ends_within_the_grace(
    slow: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    """A queue at its shared concurrency ceiling (another worker holds the only slot): the drain
    waits for a free slot with nothing in flight, and must still hear the shutdown."""
    settings = dataclasses.replace(slow, concurrency_limits={"": 1}, shutdown_grace_seconds=1.0)
    add_jobs(5)
    with engine.begin() as conn:  # another worker's request, out for a long time
        assert outbox.claim(conn, "default", 1, utcnow(), 60.0)
    stop = threading.Event()
    d = Deliverer(settings)
    try:
        drain = Running(lambda: d.drain("default", max_seconds=30, stopping=stop.is_set))
        time.sleep(0.3)
        stop.set()
        asked_at = time.monotonic()
        summary = drain.join()
    finally:
        d.close()
    assert drain.returned_at - asked_at < settings.shutdown_grace_seconds + MARGIN
    assert summary.shutdown
    assert sandbox.count() == 0
    assert counts(engine) == {"pending": 4, "in_flight": 1}
