"""The producer API against a real outbox (SQLite always, PostgreSQL in CI)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from dispatcher import (
    CustomEvent,
    DataField,
    SegmentEvent,
    ValidationError,
    enqueue,
    enqueue_many,
    outbox,
)
from dispatcher.cli import main
from dispatcher.delivery import Deliverer
from dispatcher.sandbox import Sandbox
from dispatcher.schema import jobs
from dispatcher.sweeper import sweep_once

pytestmark = pytest.mark.usefixtures("env")


def count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one())


def event(n: int = 1) -> CustomEvent:
    return CustomEvent(
        42,
        customer_email=f"Customer{n}@Example.com",
        data_fields=[DataField("order", "Number", n)],
    )


def test_rolled_back_transaction_leaves_no_job(engine: sa.Engine) -> None:
    with Session(engine) as session:
        enqueue(event(), session=session)
        session.rollback()
    assert count(engine) == 0


def test_committed_transaction_leaves_exactly_one_job(engine: sa.Engine) -> None:
    with Session(engine) as session:
        job_id = enqueue(event(), session=session)
        session.commit()
    assert count(engine) == 1
    with engine.connect() as conn:
        row = conn.execute(sa.select(jobs).where(jobs.c.id == int(job_id))).one()
    assert row.status == "pending"
    assert row.endpoint == "/scenariocustomevents"
    assert row.customer_email == "customer1@example.com"
    assert json.loads(row.payload) == {
        "customEventId": 42,
        "customerEmail": "Customer1@Example.com",
        "dataFields": [{"name": "order", "type": "Number", "value": "1"}],
    }


def test_connection_transaction_is_atomic_too(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        with conn.begin() as tx:
            enqueue(event(), session=conn)
            tx.rollback()
        with conn.begin():
            enqueue(event(), session=conn)
    assert count(engine) == 1


def test_business_row_and_event_commit_together(engine: sa.Engine) -> None:
    meta = sa.MetaData()
    orders = sa.Table("orders_demo", meta, sa.Column("id", sa.Integer, primary_key=True))
    meta.create_all(engine)
    try:
        with pytest.raises(RuntimeError), Session(engine) as session, session.begin():
            session.execute(orders.insert().values(id=1))
            enqueue(event(), session=session)
            raise RuntimeError("the business logic fails after enqueue")
        assert count(engine) == 0
        with Session(engine) as session, session.begin():
            session.execute(orders.insert().values(id=1))
            enqueue(event(), session=session)
        assert count(engine) == 1
    finally:
        meta.drop_all(engine)


def test_own_transaction_without_session(engine: sa.Engine) -> None:
    ids = {enqueue(event(n)) for n in range(3)}
    assert len(ids) == 3
    assert count(engine) == 3


def test_dedupe_key_returns_existing_job_and_writes_nothing(engine: sa.Engine) -> None:
    first = enqueue(event(1), dedupe_key="order-1")
    again = enqueue(event(2), dedupe_key="order-1")
    other_queue = enqueue(event(1), dedupe_key="order-1", queue="eu")
    assert again == first
    assert other_queue != first
    assert count(engine) == 2


def test_enqueue_many_writes_batch_in_order(engine: sa.Engine) -> None:
    events = [event(n) for n in range(250)] + [SegmentEvent(7, [1, 5, 15])]
    ids = enqueue_many(events)
    assert len(ids) == 251
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(jobs.c.id, jobs.c.payload).order_by(jobs.c.id)).all()
    assert [str(r.id) for r in rows] == ids
    assert [r.payload for r in rows] == [e.to_json() for e in events]


def test_enqueue_many_with_dedupe_keys(engine: sa.Engine) -> None:
    first = enqueue(event(0), dedupe_key="k0")
    ids = enqueue_many([event(0), event(1), event(2)], dedupe_keys=["k0", "k1", "k1"])
    assert ids[0] == first
    assert ids[1] == ids[2]
    assert count(engine) == 2


def test_enqueue_many_is_all_or_nothing(engine: sa.Engine) -> None:
    with pytest.raises(ValidationError) as info:
        enqueue_many([event(1), "not an event", event(3)])  # type: ignore[list-item]
    assert "events[1]" in str(info.value)
    assert count(engine) == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"queue": "Bad Queue"}, "queue"),
        ({"queue": ""}, "queue"),
        ({"dedupe_key": ""}, "dedupe_key"),
        ({"dedupe_key": "x" * 256}, "dedupe_key"),
        # PostgreSQL's text holds neither: a driver error, not a ValidationError, before
        ({"dedupe_key": "order-\x00-1"}, "dedupe_key"),
        ({"dedupe_key": "order-\ud800-1"}, "dedupe_key"),
    ],
)
def test_bad_enqueue_arguments_write_nothing(engine: sa.Engine, kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        enqueue(event(), **kwargs)
    assert count(engine) == 0


def test_not_an_event(engine: sa.Engine) -> None:
    with pytest.raises(ValidationError, match="event"):
        enqueue({"customEventId": 1})  # type: ignore[arg-type]
    assert count(engine) == 0


INVALID = [
    (lambda: CustomEvent(1, customer_email="a" * 310 + "@example.com"), "customer_email"),
    (lambda: CustomEvent(1, customer_email_md5="a" * 33), "customer_email_md5"),
    (lambda: CustomEvent(1, customer_email_sha256="a" * 65), "customer_email_sha256"),
    (lambda: CustomEvent(1, customer_phone="1" * 21), "customer_phone"),
    (lambda: CustomEvent(1, customer_crm_id="c" * 129), "customer_crm_id"),
    (lambda: CustomEvent(2**31, customer_id=1), "custom_event_id"),
    (lambda: CustomEvent(1), "customer"),
    (lambda: SegmentEvent(1, []), "segments"),
    (lambda: SegmentEvent(1, [2**31]), "segments"),
    (lambda: CustomEvent(1, customer_id=1, data_fields=[DataField("x", "Float", "1")]), "type"),
    (lambda: CustomEvent(1, customer_id=1, data_fields=[DataField("x", "Date", "x")]), "value"),
]


@pytest.mark.parametrize(("make", "field"), INVALID)
def test_invalid_events_raise_and_write_nothing(engine: sa.Engine, make, field: str) -> None:
    with pytest.raises(ValidationError, match=field), Session(engine) as session:
        enqueue(make(), session=session)
        session.commit()
    assert count(engine) == 0


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    email=st.text(max_size=400),
    phone=st.one_of(st.none(), st.text(max_size=30)),
    event_id=st.integers(min_value=-(2**40), max_value=2**40),
)
def test_property_enqueue_writes_only_valid_events(
    engine: sa.Engine, email: str, phone: str | None, event_id: int
) -> None:
    before = count(engine)
    try:
        made = CustomEvent(event_id, customer_email=email, customer_phone=phone)
    except ValidationError:
        assert count(engine) == before
        return
    enqueue(made)
    assert count(engine) == before + 1


@pytest.mark.parametrize("key", ["a\x00b", "\udfff", "x\ud83d"])
def test_enqueue_many_refuses_an_unstorable_dedupe_key(engine: sa.Engine, key: str) -> None:
    with pytest.raises(ValidationError) as info:
        enqueue_many([event(0), event(1)], dedupe_keys=["fine", key])
    assert "dedupe_key" in str(info.value) and (
        "NUL" in str(info.value) or "Unicode" in str(info.value)
    )
    assert count(engine) == 0


# --------------------------------------------------------------------------- deliver_at


def aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def first_attempts(engine: sa.Engine) -> list[tuple[datetime, datetime]]:
    """(next_attempt_at, created_at) of every job, in id order."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(jobs.c.next_attempt_at, jobs.c.created_at).order_by(jobs.c.id)
        ).all()
    return [(aware(r.next_attempt_at), aware(r.created_at)) for r in rows]


def test_deliver_at_is_the_rows_first_attempt_and_a_past_time_means_now(
    engine: sa.Engine,
) -> None:
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    in_new_york = later.astimezone(timezone(timedelta(hours=-5)))  # the same moment
    enqueue(event(1), deliver_at=later)
    with Session(engine) as session:
        enqueue_many([event(2), event(3)], session=session, deliver_at=in_new_york)
        enqueue(event(4), session=session, deliver_at=datetime(2000, 1, 1, tzinfo=UTC))
        session.commit()
    enqueue(event(5))
    got = first_attempts(engine)
    assert [at for at, _ in got[:3]] == [later] * 3
    assert [at == created for at, created in got[3:]] == [True, True]


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (datetime(2030, 1, 1, 9, 0), "timezone-aware"),  # naive
        ("2030-01-01T09:00:00Z", "datetime"),
        (1893488400, "datetime"),
        (datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))), "out of range"),
    ],
)
def test_deliver_at_must_be_an_aware_datetime(engine: sa.Engine, value: object, said: str) -> None:
    with pytest.raises(ValidationError, match=f"deliver_at: .*{said}"):
        enqueue(event(), deliver_at=value)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=f"deliver_at: .*{said}"):
        enqueue_many([event(1), event(2)], deliver_at=value)  # type: ignore[arg-type]
    assert count(engine) == 0


def test_a_scheduled_job_goes_out_at_its_time_not_before(
    engine: sa.Engine, deliverer: Deliverer, sandbox: Sandbox
) -> None:
    """A real worker and the sweeper's pass: before its time the job is neither claimed nor
    announced; after it, the next sweep signals the queue and the worker sends it."""
    at = datetime.now(UTC) + timedelta(seconds=2)
    enqueue(CustomEvent(501, customer_id=1), deliver_at=at)
    enqueue(CustomEvent(502, customer_id=2))
    deliverer.drain("default")
    assert sandbox.count(custom_event_id=502) == 1
    assert sandbox.count(custom_event_id=501) == 0, "sent before its time"
    assert sweep_once(engine, lambda queues: None).signalled == ()
    deliverer.drain("default")
    assert sandbox.count(custom_event_id=501) == 0
    time.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()) + 0.05)
    signalled: list[str] = []
    assert sweep_once(engine, signalled.extend).signalled == ("default",)
    assert signalled == ["default"]
    deliverer.drain("default")
    assert sandbox.count(custom_event_id=501) == 1
    with engine.connect() as conn:
        statuses = conn.execute(sa.select(jobs.c.status).order_by(jobs.c.id)).scalars().all()
    assert statuses == ["delivered", "delivered"]


def test_cli_enqueue_at_and_in(engine: sa.Engine, tmp_path: Path) -> None:
    def cli(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(main, ["enqueue", *args])
        assert result.exit_code == code, result.output
        return result.output

    one = ("--event-id", "9", "--customer-id", "1")
    cli(*one, "--at", "2099-06-01T14:00:00+02:00")
    cli(*one, "--at", "2099-06-01T12:00:00")  # naive means UTC, as in every CLI option
    before = datetime.now(UTC)
    cli(*one, "--in", "2h")
    after = datetime.now(UTC)
    lines = tmp_path / "events.jsonl"
    lines.write_text('{"customEventId": 9, "customerId": 4}\n' * 2)
    cli("--file", str(lines), "--at", "2099-06-01T12:00:00Z")
    at = [at for at, _ in first_attempts(engine)]
    noon = datetime(2099, 6, 1, 12, 0, tzinfo=UTC)
    assert at[:2] == [noon, noon] and at[3:] == [noon, noon]
    assert before + timedelta(hours=2) <= at[2] <= after + timedelta(hours=2)

    assert "--at: expected an ISO 8601 time" in cli(*one, "--at", "soon", code=2)
    assert "--in: expected an age" in cli(*one, "--in", "2 hours", code=2)
    assert "--at: give --at or --in" in cli(*one, "--at", "2099-06-01", "--in", "2h", code=2)
    assert count(engine) == 5


def test_a_scheduled_job_can_be_cancelled_and_a_pause_holds_it(
    engine: sa.Engine, deliverer: Deliverer, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancel and pause treat a scheduled job as any waiting job."""
    from dispatcher import admin

    monkeypatch.setattr("dispatcher.producer.signal_workers", lambda queues: None)
    soon = datetime.now(UTC) + timedelta(seconds=0.5)
    cancelled = enqueue(CustomEvent(601, customer_id=1), deliver_at=soon)
    held = enqueue(CustomEvent(602, customer_id=2), deliver_at=soon)
    done = admin.cancel(engine, job_ids=[cancelled], now=datetime.now(UTC))
    assert done.count == 1
    admin.pause_queue(engine, "default")
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
    assert sweep_once(engine, lambda queues: None).signalled == ()
    deliverer.drain("default")
    assert sandbox.requests == []
    admin.resume_queue(engine, "default")
    deliverer.drain("default")
    assert sandbox.count(custom_event_id=602) == 1
    assert sandbox.count(custom_event_id=601) == 0
    with engine.connect() as conn:
        statuses = {r.id: r.status for r in conn.execute(sa.select(jobs.c.id, jobs.c.status))}
    assert statuses == {int(cancelled): "cancelled", int(held): "delivered"}


def test_a_scheduled_job_shows_as_scheduled_apart_from_the_due_backlog(
    engine: sa.Engine, deliverer: Deliverer, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24: a job for later is ``scheduled`` in history, stats and the counts, not
    pending, and no lag; at its time the sweeper makes it pending. A later job of its ordering
    key waits for it, as for any job."""
    from dispatcher import admin

    monkeypatch.setattr("dispatcher.producer.signal_workers", lambda queues: None)
    now = datetime.now(UTC)
    soon = now + timedelta(seconds=1)
    later = enqueue(CustomEvent(701, customer_id=1), deliver_at=soon, ordering_key="c-1")
    week = enqueue(CustomEvent(702, customer_id=2), deliver_at=now + timedelta(days=7))
    enqueue(CustomEvent(703, customer_id=1), ordering_key="c-1")  # due now, same key
    stats = admin.stats(engine, datetime.now(UTC))["default"]
    assert (stats.counts["scheduled"], stats.counts["pending"]) == (2, 1)
    scheduled = admin.history(engine, admin.Filter(status="scheduled"))
    assert {int(j.id) for j in scheduled} == {int(later), int(week)}
    deliverer.drain("default")
    assert sandbox.requests == [], "the key's later job went before its scheduled one"
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
    assert sweep_once(engine, lambda queues: None).signalled == ("default",)
    for _ in range(3):
        deliverer.drain("default")
    assert [json.loads(r.body)["customEventId"] for r in sandbox.requests] == [701, 703]
    stats = admin.stats(engine, datetime.now(UTC))["default"]
    assert (stats.counts["scheduled"], stats.counts["delivered"]) == (1, 2)
    with engine.connect() as conn:
        assert outbox.job_counts(conn)[("default", "scheduled")] == 1
