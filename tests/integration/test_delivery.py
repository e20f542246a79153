"""The delivery engine against a real HTTP server on loopback and a real outbox.

Each test drives :class:`Deliverer` (what a Celery worker runs) and the sweeper directly, so the
scenarios are deterministic; ``test_celery.py`` runs the same path through real Celery workers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from dispatcher import CustomEvent, DataField, SegmentEvent, enqueue, enqueue_many
from dispatcher.config import Settings
from dispatcher.db import utcnow
from dispatcher.delivery import Deliverer
from dispatcher.outbox import claim, is_paused, resume
from dispatcher.policy import RetryPolicy
from dispatcher.sandbox import Reply, Sandbox
from dispatcher.schema import attempts, jobs
from dispatcher.sweeper import sweep_once
from dispatcher.testing import StubSender
from tests.support import settle as drain_until_settled
from tests.support import side_by_side


@pytest.fixture
def sandbox(api_key: str) -> Iterator[Sandbox]:
    with Sandbox(api_key=api_key, unknown_event_ids={404404}) as server:
        yield server


@pytest.fixture
def delivery_settings(settings: Settings, sandbox: Sandbox) -> Settings:
    """Fast retries so backoff scenarios finish in well under a second of waiting."""
    return dataclasses.replace(
        settings,
        base_url=sandbox.url,
        retry=RetryPolicy(base_seconds=0.05, max_seconds=0.2, max_attempts=4),
        http_timeout_seconds=2.0,
        max_in_flight=4,
    )


@pytest.fixture
def deliverer(delivery_settings: Settings) -> Iterator[Deliverer]:
    d = Deliverer(delivery_settings)
    yield d
    d.close()


def job(engine: sa.Engine, job_id: str) -> sa.Row:
    with engine.connect() as conn:
        return conn.execute(sa.select(jobs).where(jobs.c.id == int(job_id))).one()


def attempt_rows(engine: sa.Engine, job_id: str) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(attempts).where(attempts.c.job_id == int(job_id)).order_by(attempts.c.id)
        ).all()


def test_201_delivered_once_with_the_documented_bytes(
    deliverer: Deliverer, engine: sa.Engine, sandbox: Sandbox, api_key: str
) -> None:
    event = CustomEvent(
        7,
        customer_email="anna@example.com",
        data_fields=[DataField("total", "Money", "12.50"), DataField("vip", "Boolean", True)],
    )
    segment_event = SegmentEvent(8, [1, 5, 15])
    job_id = enqueue(event)
    segment_id = enqueue(segment_event)
    deliverer.drain("default")

    assert job(engine, job_id).status == "delivered"
    assert job(engine, segment_id).status == "delivered"
    assert sandbox.count() == 2
    first, second = sorted(sandbox.requests, key=lambda r: r.path)  # sent concurrently
    assert first.path == "/scenariocustomevents"
    assert second.path == "/scenariocustomevents/withsegments"
    assert first.body == event.to_json().encode()
    assert first.body == (
        b'{"customEventId":7,"customerEmail":"anna@example.com","dataFields":'
        b'[{"name":"total","type":"Money","value":"12.50"},'
        b'{"name":"vip","type":"Boolean","value":"true"}]}'
    )
    assert second.body == b'{"customEventId":8,"segments":[1,5,15]}'
    assert first.headers["x-api-key"] == api_key
    assert first.headers["content-type"] == "application/json"
    row = job(engine, job_id)
    assert row.attempts == 1 and row.delivered_at is not None and row.last_status_code == 201
    (attempt,) = attempt_rows(engine, job_id)
    assert attempt.status_code == 201 and attempt.outcome == "delivered"


def test_400_dead_after_one_request_with_errors_kept(
    deliverer: Deliverer, engine: sa.Engine, sandbox: Sandbox
) -> None:
    problem = {
        "type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
        "title": "One or more validation errors occurred.",
        "status": 400,
        "substatus": "CustomerInvalidModelState",
        "detail": "Customer not found",
        "instance": "/scenariocustomevents",
        "errors": ["customerEmail: no such customer"],
    }
    sandbox.script(11, Reply(400, problem))
    job_id = enqueue(CustomEvent(11, customer_email="ghost@example.com"))
    drain_until_settled(deliverer, engine)

    row = job(engine, job_id)
    assert row.status == "dead"
    assert sandbox.count(custom_event_id=11) == 1
    assert "customerEmail: no such customer" in row.last_error
    (attempt,) = attempt_rows(engine, job_id)
    assert attempt.status_code == 400
    assert "CustomerInvalidModelState" in attempt.response_body
    assert "customerEmail: no such customer" in attempt.error


def test_404_dead_after_one_request(
    deliverer: Deliverer, engine: sa.Engine, sandbox: Sandbox
) -> None:
    job_id = enqueue(CustomEvent(404404, customer_id=1))
    drain_until_settled(deliverer, engine)
    assert job(engine, job_id).status == "dead"
    assert job(engine, job_id).last_status_code == 404
    assert sandbox.count(custom_event_id=404404) == 1


def test_500_twice_then_201_with_backoff(
    deliverer: Deliverer, engine: sa.Engine, sandbox: Sandbox
) -> None:
    sandbox.script(12, Reply(500), Reply(500))
    job_id = enqueue(CustomEvent(12, customer_id=1))
    drain_until_settled(deliverer, engine)

    row = job(engine, job_id)
    assert row.status == "delivered"
    assert row.attempts == 3
    sent = [r for r in sandbox.requests if r.custom_event_id == 12]
    assert [r.status for r in sent] == [500, 500, 201]
    tries = attempt_rows(engine, job_id)
    assert [a.outcome for a in tries] == ["retry", "retry", "delivered"]
    # Backoff: each retry was scheduled after the previous attempt, not immediately.
    assert tries[1].started_at > tries[0].started_at
    assert sent[1].at > sent[0].at and sent[2].at > sent[1].at


def test_429_retry_after_is_honoured(
    deliverer: Deliverer, engine: sa.Engine, sandbox: Sandbox
) -> None:
    sandbox.script(13, Reply(429, headers={"Retry-After": "1"}))
    job_id = enqueue(CustomEvent(13, customer_id=1))
    deliverer.drain("default")
    row = job(engine, job_id)
    assert row.status == "retrying"
    # The schedule in the outbox says "not before one second after the attempt".
    (first,) = attempt_rows(engine, job_id)
    assert row.next_attempt_at >= first.started_at + timedelta(seconds=1)
    deliverer.drain("default")  # not due yet: nothing is sent
    assert sandbox.count(custom_event_id=13) == 1
    drain_until_settled(deliverer, engine)
    sent = [r for r in sandbox.requests if r.custom_event_id == 13]
    assert [r.status for r in sent] == [429, 201]
    assert sent[1].at - sent[0].at >= 1.0


def test_401_pauses_queue_until_resume(
    deliverer: Deliverer, engine: sa.Engine, sandbox: Sandbox, api_key: str
) -> None:
    enqueue_many([CustomEvent(20, customer_id=n) for n in range(1, 31)])
    sandbox.api_key = "revoked"
    deliverer.drain("default")

    with engine.connect() as conn:
        assert is_paused(conn, "default")
        statuses = conn.execute(sa.select(jobs.c.status, jobs.c.attempts)).all()
    assert {s.status for s in statuses} == {"pending"}, "nothing is dead or lost"
    assert {s.attempts for s in statuses} == {0}, "a 401 does not count toward the limit"
    sent_during_pause = sandbox.count()
    assert 1 <= sent_during_pause <= deliverer.settings.max_in_flight  # only what was in flight

    # While paused: new events wait, the sweeper does not signal, no request reaches the server.
    late = enqueue(CustomEvent(21, customer_id=99))
    signalled: list[str] = []
    assert sweep_once(engine, signalled.extend).signalled == ()
    for _ in range(3):
        deliverer.drain("default")
    assert sandbox.count() == sent_during_pause
    with engine.begin() as conn:
        assert claim(conn, "default", 10, utcnow(), 60) == []

    sandbox.api_key = api_key
    with engine.begin() as conn:
        assert resume(conn, "default", utcnow())
    drain_until_settled(deliverer, engine)
    with engine.connect() as conn:
        assert set(conn.execute(sa.select(jobs.c.status)).scalars()) == {"delivered"}
    assert job(engine, late).status == "delivered"
    assert sandbox.count(status=201) == 31


def test_missing_api_key_pauses_instead_of_sending(
    delivery_settings: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    d = Deliverer(dataclasses.replace(delivery_settings, api_keys={}))
    try:
        job_id = enqueue(CustomEvent(30, customer_id=1))
        d.drain("default")
    finally:
        d.close()
    assert sandbox.count() == 0
    assert job(engine, job_id).status == "pending"
    with engine.connect() as conn:
        assert is_paused(conn, "default")


def test_max_attempts_then_dead(deliverer: Deliverer, engine: sa.Engine, sandbox: Sandbox) -> None:
    sandbox.script(14, *[Reply(503)] * 10)
    job_id = enqueue(CustomEvent(14, customer_id=1))
    drain_until_settled(deliverer, engine)
    row = job(engine, job_id)
    assert row.status == "dead"
    assert row.attempts == 4  # delivery_settings: max_attempts=4
    assert row.exhausted and row.last_error.startswith("503 Service Unavailable")
    assert sandbox.count(custom_event_id=14) == 4


def test_timeout_is_retried(
    delivery_settings: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    d = Deliverer(dataclasses.replace(delivery_settings, http_timeout_seconds=0.3))
    try:
        sandbox.script(15, Reply(201, hang=True))
        job_id = enqueue(CustomEvent(15, customer_id=1))
        drain_until_settled(d, engine)
    finally:
        d.close()
    tries = attempt_rows(engine, job_id)
    assert tries[0].status_code is None and tries[0].error.startswith("timeout")
    assert job(engine, job_id).status == "delivered"


def test_expired_lease_is_delivered_by_another_worker(
    deliverer: Deliverer, engine: sa.Engine, sandbox: Sandbox
) -> None:
    job_id = enqueue(CustomEvent(16, customer_id=1))
    # A worker claims with a lease that has already run out, then vanishes.
    with engine.begin() as conn:
        (vanished,) = claim(conn, "default", 10, utcnow(), lease_seconds=-60)
    assert job(engine, job_id).status == "in_flight"
    deliverer.drain("default")
    assert sandbox.count() == 0, "a leased job is not sent by anyone else"

    result = sweep_once(engine, lambda queues: None)
    assert result.released == 1
    assert result.signalled == ("default",)
    deliverer.drain("default")
    assert job(engine, job_id).status == "delivered"
    assert sandbox.count(status=201) == 1
    # The vanished worker's late report cannot overwrite the new holder's outcome.
    from dispatcher.outbox import release

    with engine.begin() as conn:
        assert release(conn, [vanished], utcnow()) == 0
    assert job(engine, job_id).status == "delivered"


def test_two_workers_drain_2000_jobs_exactly_once(
    delivery_settings: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    ids = enqueue_many([CustomEvent(17, customer_id=n) for n in range(1, 2001)])
    workers = [Deliverer(delivery_settings) for _ in range(2)]
    errors: list[BaseException] = []

    def run(d: Deliverer) -> None:
        try:
            while d.drain("default").batches:
                pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    side_by_side(run, workers)
    assert not errors
    with engine.connect() as conn:
        assert set(conn.execute(sa.select(jobs.c.status)).scalars()) == {"delivered"}
    received = [json.loads(b)["customerId"] for b in sandbox.bodies()]
    assert len(received) == 2000
    assert sorted(received) == list(range(1, 2001)), "each job delivered exactly once"
    assert len(ids) == 2000


def test_a_slow_api_gets_many_requests_in_flight_each_delivered_once(
    delivery_settings: Settings, engine: sa.Engine, sandbox: Sandbox
) -> None:
    """Against an API 100 ms away one worker widens its window from a few requests in flight to
    its ceiling (64 here), and never beyond it."""
    enqueue_many([CustomEvent(17, customer_id=n) for n in range(1, 601)])
    sandbox.default_delay = 0.1
    d = Deliverer(dataclasses.replace(delivery_settings, max_in_flight=64))
    try:
        while d.drain("default").batches:
            pass
    finally:
        d.close()
    with engine.connect() as conn:
        assert set(conn.execute(sa.select(jobs.c.status)).scalars()) == {"delivered"}
    received = [json.loads(b)["customerId"] for b in sandbox.bodies()]
    assert sorted(received) == list(range(1, 601)), "each job delivered exactly once"
    assert sandbox.max_in_flight == 64


def three_then_broken() -> StubSender:
    """A client that answers three requests 201 at once, then raises as a broken client would."""

    def respond(endpoint: str, payload: bytes) -> int:
        if len(stub.sent) > 3:
            raise RuntimeError("the client broke")
        return 201

    stub = StubSender(respond)
    return stub


def test_a_failed_drain_records_what_was_answered_and_gives_back_the_rest(
    delivery_settings: Settings, engine: sa.Engine, deliverer: Deliverer
) -> None:
    enqueue_many([CustomEvent(17, customer_id=n) for n in range(1, 11)])
    broken = Deliverer(delivery_settings, client=three_then_broken())
    with pytest.raises(RuntimeError, match="the client broke"):
        broken.drain("default")
    with engine.connect() as conn:
        rows = conn.execute(sa.select(jobs.c.status, jobs.c.attempts)).all()
    assert sorted(rows) == [("delivered", 1)] * 3 + [("pending", 0)] * 7  # none left leased
    deliverer.drain("default")
    with engine.connect() as conn:
        assert set(conn.execute(sa.select(jobs.c.status)).scalars()) == {"delivered"}
