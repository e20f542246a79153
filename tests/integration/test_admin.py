"""The operator's commands (history, show, stats, replay, purge) over a realistically filled outbox.

Every test gets an outbox that has really been through delivery: events enqueued with the
producer API, sent by a :class:`Deliverer` to a loopback :class:`Sandbox` that answers 201, 400,
500 and 503, and a second queue that is paused. Commands are driven through click's CliRunner
and checked as text and as JSON; the Python API is checked against the same data.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from dispatcher import CustomEvent, DataField, SegmentEvent, admin, enqueue, enqueue_many
from dispatcher.breaker import BreakerPolicy
from dispatcher.cli import main
from dispatcher.db import utcnow
from dispatcher.delivery import Deliverer
from dispatcher.outbox import is_paused, pause
from dispatcher.sandbox import Reply, Sandbox
from dispatcher.schema import STATUSES, attempts, jobs, queues
from tests.support import settle as drain_until_settled

INJECTIONS = ("' OR 1=1 --", "x'; DROP TABLE dispatcher_jobs; --")
SUMMARY_KEYS = {
    "id",
    "queue",
    "endpoint",
    "custom_event_id",
    "status",
    "attempts",
    "last_status_code",
    "last_error",
    "created_at",
    "delivered_at",
}
ATTEMPT_KEYS = {
    "number",
    "started_at",
    "status_code",
    "duration_ms",
    "error",
    "response_body",
    "outcome",
    "sent",
}
PROBLEM_400 = {
    "type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
    "title": "One or more validation errors occurred.",
    "status": 400,
    "substatus": "CustomerInvalidModelState",
    "detail": "Customer not found",
    "instance": "/scenariocustomevents",
    "errors": ["customerEmail: no such customer"],
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def signalled(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """What was signalled to workers (instead of publishing to the broker): by `replay`, and by
    enqueue calls made after this fixture was set up."""
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(
        "dispatcher.producer.signal_workers", lambda qs: calls.append(tuple(sorted(qs)))
    )
    return calls


@pytest.fixture
def run(env: pytest.MonkeyPatch, signalled: list[tuple[str, ...]]) -> Callable[..., Result]:
    """Invoke `dispatcher ARGS...` in a 200-column terminal."""
    env.setenv("COLUMNS", "200")

    def invoke(*args: str, code: int = 0) -> Result:
        result = CliRunner().invoke(main, list(args))
        assert result.exit_code == code, (result.output, result.exception)
        return result

    return invoke


@dataclasses.dataclass
class Outbox:
    """Job ids of the populated outbox, by what happened to them."""

    anna: str  # event 101, delivered at once
    bob: str  # event 101, delivered at once
    ghost: str  # event 102, 400 -> dead after one attempt
    outage: str  # event 103, 503 twice -> dead (max_attempts=2)
    flaky: str  # event 104, 500 then 201 -> delivered after two attempts
    segment: str  # event 105 with segments, delivered
    eu: list[str]  # queue eu-shop, paused: pending
    events: dict[str, Any]

    @property
    def default(self) -> list[str]:
        return [self.anna, self.bob, self.ghost, self.outage, self.flaky, self.segment]


@pytest.fixture
def outbox(deliverer: Deliverer, engine: sa.Engine, sandbox: Sandbox) -> Outbox:
    anna_event = CustomEvent(
        101,
        customer_email="Anna@Example.com",
        data_fields=[DataField("total", "Money", "12.50"), DataField("vip", "Boolean", True)],
    )
    sandbox.script(102, Reply(400, PROBLEM_400))
    sandbox.script(103, Reply(503), Reply(503))
    sandbox.script(104, Reply(500))
    ids = [
        enqueue(anna_event),
        enqueue(CustomEvent(101, customer_email="bob@example.com")),
        enqueue(CustomEvent(102, customer_email="ghost@example.com")),
        enqueue(CustomEvent(103, customer_id=7)),
        enqueue(CustomEvent(104, customer_id=8)),
        enqueue(SegmentEvent(105, [1, 5, 15])),
    ]
    drain_until_settled(deliverer, engine)
    with engine.begin() as conn:
        pause(conn, "eu-shop", "paused by an operator: migrating the EU account", utcnow())
    eu = enqueue_many(
        [CustomEvent(201, customer_email=f"eu{n}@example.com") for n in range(3)], queue="eu-shop"
    )
    return Outbox(*ids, eu=eu, events={"anna": anna_event})


def set_times(engine: sa.Engine, ids: Iterable[str], **times: datetime) -> None:
    """Backdate jobs (created_at / updated_at), as if they were enqueued or finished long ago."""
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id.in_([int(i) for i in ids])).values(**times))


def snapshot(engine: sa.Engine) -> tuple[list[Any], list[Any], list[Any]]:
    with engine.connect() as conn:
        return (
            [tuple(r) for r in conn.execute(sa.select(jobs).order_by(jobs.c.id))],
            [tuple(r) for r in conn.execute(sa.select(attempts).order_by(attempts.c.id))],
            [tuple(r) for r in conn.execute(sa.select(queues).order_by(queues.c.name))],
        )


def row(engine: sa.Engine, job_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(jobs).where(jobs.c.id == int(job_id))).one()


def attempt_count(engine: sa.Engine, job_id: str | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(attempts)
    if job_id is not None:
        query = query.where(attempts.c.job_id == int(job_id))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def history_ids(run: Callable[..., Result], *args: str) -> list[str]:
    return [j["id"] for j in json.loads(run("history", "--json", *args).stdout)]


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- history


def test_history_table_newest_first(outbox: Outbox, run: Callable[..., Result]) -> None:
    lines = run("history").stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "QUEUE",
        "ENDPOINT",
        "EVENT",
        "STATUS",
        "ATT",
        "CODE",
        "CREATED",
        "DELIVERED",
        "LAST",
        "ERROR",
    ]
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == [*reversed(outbox.eu), *reversed(outbox.default)]
    by_id = {r[0]: r for r in rows}
    assert by_id[outbox.ghost][1:7] == [
        "default",
        "/scenariocustomevents",
        "102",
        "dead",
        "1",
        "400",
    ]
    assert "Customer not found" in lines[1 + [r[0] for r in rows].index(outbox.ghost)]
    assert by_id[outbox.segment][2] == "/scenariocustomevents/withsegments"
    assert by_id[outbox.flaky][4:7] == ["delivered", "2", "201"]
    assert by_id[outbox.eu[0]][4:7] == ["pending", "0", "-"]
    # Columns are aligned: every row starts its STATUS column at the same offset.
    offset = lines[0].index("STATUS")
    assert {line[offset:].split()[0] for line in lines[1:]} <= set(STATUSES)


def test_history_truncates_long_errors_to_fit_the_terminal(
    outbox: Outbox, run: Callable[..., Result], env: pytest.MonkeyPatch
) -> None:
    env.setenv("COLUMNS", "150")
    lines = run("history", "--status", "dead").stdout.splitlines()
    assert all(len(line) <= 150 for line in lines)
    assert any(line.endswith("…") for line in lines[1:])


def test_history_json_shape(outbox: Outbox, run: Callable[..., Result]) -> None:
    found = json.loads(run("history", "--json").stdout)
    assert len(found) == 9
    assert all(set(j) == SUMMARY_KEYS for j in found)
    ghost = next(j for j in found if j["id"] == outbox.ghost)
    assert ghost["status"] == "dead" and ghost["attempts"] == 1
    assert ghost["last_status_code"] == 400
    assert "customerEmail: no such customer" in ghost["last_error"]
    assert ghost["delivered_at"] is None
    assert ghost["custom_event_id"] == 102 and ghost["endpoint"] == "/scenariocustomevents"
    anna = next(j for j in found if j["id"] == outbox.anna)
    assert anna["created_at"].endswith("Z") and anna["delivered_at"].endswith("Z")
    created = datetime.fromisoformat(anna["created_at"])
    assert datetime.fromisoformat(anna["delivered_at"]) >= created
    assert abs(utcnow() - created) < timedelta(hours=1)


def test_history_filters(outbox: Outbox, run: Callable[..., Result]) -> None:
    assert set(history_ids(run, "--status", "dead")) == {outbox.ghost, outbox.outage}
    assert set(history_ids(run, "--queue", "eu-shop")) == set(outbox.eu)
    assert set(history_ids(run, "--event-id", "101")) == {outbox.anna, outbox.bob}
    assert history_ids(run, "--customer-email", "ANNA@example.COM") == [outbox.anna]
    assert history_ids(run, "--customer-email", "anna@example.com") == [outbox.anna]
    assert history_ids(run, "--customer-email", "nobody@example.com") == []
    assert history_ids(run, "--limit", "2") == [outbox.eu[2], outbox.eu[1]]
    assert history_ids(run, "--status", "delivered", "--event-id", "101", "--limit", "1") == [
        outbox.bob
    ]
    assert history_ids(run, "--queue", "default", "--status", "pending") == []
    assert run("history", "--queue", "nowhere").stdout == "no jobs match\n"


def test_history_time_filters_on_created_at(
    outbox: Outbox, run: Callable[..., Result], engine: sa.Engine
) -> None:
    ten_days_ago = utcnow() - timedelta(days=10)
    set_times(engine, [outbox.anna, outbox.bob], created_at=ten_days_ago)
    recent = set(outbox.default + outbox.eu) - {outbox.anna, outbox.bob}
    assert set(history_ids(run, "--since", "1d")) == recent
    assert set(history_ids(run, "--until", "2d")) == {outbox.anna, outbox.bob}
    assert set(history_ids(run, "--since", "11d", "--until", "9d")) == {outbox.anna, outbox.bob}
    day = ten_days_ago.date().isoformat()  # a date means its midnight, UTC
    assert set(history_ids(run, "--since", day, "--until", "1d")) == {outbox.anna, outbox.bob}
    assert set(history_ids(run, "--since", iso(ten_days_ago + timedelta(seconds=1)))) == recent
    # Newest first, also across the backdated rows.
    assert history_ids(run)[-2:] == [outbox.bob, outbox.anna]


def test_bad_times_and_limits_are_usage_errors_naming_the_option(
    outbox: Outbox, run: Callable[..., Result]
) -> None:
    out = run("history", "--since", "yesterday", code=2).output
    assert "--since" in out and "ISO 8601" in out
    assert "--until" in run("history", "--until", "30D", code=2).output
    out = run("history", "--since", "1d", "--until", "2d", code=2).output
    assert "--since" in out and "before until" in out
    assert "--limit" in run("history", "--limit", "0", code=2).output
    out = run("history", "--status", "lost", code=2).output
    assert "--status" in out and "pending, in_flight, retrying, delivered, dead" in out
    assert "--older-than" in run("purge", "--older-than", "a month", code=2).output


# --------------------------------------------------------------------------- show


def test_show_exact_payload_and_every_attempt(
    outbox: Outbox, run: Callable[..., Result], sandbox: Sandbox
) -> None:
    out = run("show", outbox.anna).stdout
    body = outbox.events["anna"].to_json()
    assert body in out.splitlines()
    assert body.encode() in sandbox.bodies()

    detail = json.loads(run("show", outbox.outage, "--json").stdout)
    assert set(detail) == SUMMARY_KEYS | {
        "payload",
        "replays",
        "replayed_at",
        "next_attempt_at",
        "attempt_log",
    }
    assert detail["payload"] == '{"customEventId":103,"customerId":7}'
    assert detail["status"] == "dead" and detail["attempts"] == 2
    assert detail["replays"] == 0 and detail["replayed_at"] is None
    log = detail["attempt_log"]
    assert [a["number"] for a in log] == [1, 2]
    assert all(set(a) == ATTEMPT_KEYS for a in log)
    assert [a["status_code"] for a in log] == [503, 503]
    assert [a["outcome"] for a in log] == ["retry", "dead"]
    assert log[0]["started_at"] < log[1]["started_at"]
    assert log[1]["error"].startswith("max attempts exceeded")
    assert '"status":503' in log[0]["response_body"].replace(" ", "")

    text = run("show", outbox.outage).stdout
    assert "attempts (2):" in text
    assert "#1" in text and "#2" in text and "HTTP 503" in text
    assert "max attempts exceeded" in text

    ghost = json.loads(run("show", outbox.ghost, "--json").stdout)
    assert "CustomerInvalidModelState" in ghost["attempt_log"][0]["response_body"]
    pending = json.loads(run("show", outbox.eu[0], "--json").stdout)
    assert pending["attempt_log"] == [] and pending["status"] == "pending"
    assert "no attempts yet" in run("show", outbox.eu[0]).stdout


def test_show_unknown_job(outbox: Outbox, run: Callable[..., Result]) -> None:
    assert run("show", "999999", code=1).stderr == "error: no job 999999\n"
    assert run("show", "99999999999999999999999", code=1).stderr.startswith("error: no job")
    assert "JOB_ID" in run("show", "abc", code=2).output


# --------------------------------------------------------------------------- stats


def test_stats_json(outbox: Outbox, run: Callable[..., Result], engine: sa.Engine) -> None:
    with engine.begin() as conn:
        pause(conn, "idle", "nothing here yet", utcnow())  # a queue with no jobs, only a switch
    body = json.loads(run("stats", "--json").stdout)
    assert list(body) == ["queues"]
    assert list(body["queues"]) == ["default", "eu-shop", "idle"]
    default, eu, idle = (body["queues"][q] for q in ("default", "eu-shop", "idle"))
    assert isinstance(default.pop("window"), int)  # the in-flight window its worker reported
    assert idle["window"] is None  # no worker has sent for it
    assert default.pop("maybe_twice") == 0 and default.pop("poison_kinds") == []
    assert default == {
        "paused": False,
        "pause_reason": None,
        "paused_at": None,
        "counts": {
            "pending": 0,
            "in_flight": 0,
            "retrying": 0,
            "delivered": 4,
            "dead": 2,
            "cancelled": 0,
            "scheduled": 0,
        },
        "oldest_due_age_seconds": None,
        "circuit": "closed",
        "circuit_since": None,
        "circuit_reason": None,
        "circuit_next_probe_at": None,
        "circuit_failed_probes": 0,
    }
    assert eu["paused"] is True
    assert eu["pause_reason"] == "paused by an operator: migrating the EU account"
    assert eu["paused_at"].endswith("Z")
    assert eu["counts"] == {
        "pending": 3,
        "in_flight": 0,
        "retrying": 0,
        "delivered": 0,
        "dead": 0,
        "cancelled": 0,
        "scheduled": 0,
    }
    assert isinstance(eu["oldest_due_age_seconds"], float)
    assert eu["oldest_due_age_seconds"] >= 0
    assert idle["counts"] == dict.fromkeys(STATUSES, 0)
    assert idle["paused"] is True and idle["oldest_due_age_seconds"] is None


def test_stats_age_is_how_long_the_most_overdue_job_waited(
    outbox: Outbox, engine: sa.Engine
) -> None:
    now = utcnow()
    set_times(engine, outbox.eu[:1], next_attempt_at=now - timedelta(minutes=5))
    set_times(engine, outbox.eu[1:2], next_attempt_at=now + timedelta(minutes=5))  # not yet due
    result = admin.stats(engine, now)
    assert result["eu-shop"].oldest_due_age_seconds == 300.0
    set_times(engine, outbox.eu, next_attempt_at=now + timedelta(minutes=5))
    assert admin.stats(engine, now)["eu-shop"].oldest_due_age_seconds is None


def test_stats_table(outbox: Outbox, run: Callable[..., Result]) -> None:
    lines = run("stats").stdout.splitlines()
    assert lines[0].split() == [
        "QUEUE",
        "PENDING",
        "IN_FLIGHT",
        "RETRYING",
        "DELIVERED",
        "DEAD",
        "CANCELLED",
        "SCHEDULED",
        "OLDEST",
        "DUE",
        "WINDOW",
        "CIRCUIT",
        "PAUSED",
    ]
    default, eu = (line.split() for line in lines[1:])
    assert default[9].isdigit(), "the in-flight window its worker reported"
    assert default[:9] + default[10:] == [
        "default",
        "0",
        "0",
        "0",
        "4",
        "2",
        "0",
        "0",
        "-",
        "closed",
        "no",
    ]
    assert eu[:8] == ["eu-shop", "3", "0", "0", "0", "0", "0", "0"] and eu[9:11] == ["-", "closed"]
    assert "yes, since" in lines[2] and "migrating the EU account" in lines[2]
    assert len(lines) == 3, "nothing below the table while every circuit is closed"


OUTAGE = "503 Service Unavailable: upstream down (17 of 20 recent answers were outages)"


def set_circuit(engine: sa.Engine, queue: str, circuit: str, **columns: Any) -> None:
    """Write a queue's circuit breaker columns as a worker would (the row is made if need be)."""
    values = {"circuit": circuit, "updated_at": utcnow(), **columns}
    with engine.begin() as conn:
        changed = conn.execute(sa.update(queues).where(queues.c.name == queue).values(values))
        if not changed.rowcount:
            conn.execute(sa.insert(queues).values(name=queue, **values))


def test_stats_show_the_circuit_breaker(
    outbox: Outbox, run: Callable[..., Result], engine: sa.Engine
) -> None:
    now = utcnow().replace(microsecond=0)
    opened, probe = now - timedelta(minutes=4), now + timedelta(seconds=15)
    set_circuit(
        engine,
        "default",
        "open",
        circuit_since=opened,
        circuit_reason=OUTAGE,
        circuit_retry_at=probe,
        circuit_probes=1,
    )
    set_circuit(engine, "eu-shop", "half_open", circuit_since=now, circuit_reason="Timeout\nx")
    set_circuit(engine, "api-down", "open", circuit_since=now, circuit_retry_at=now)  # no jobs

    found = admin.stats(engine, utcnow())
    assert list(found) == ["api-down", "default", "eu-shop"]
    default = found["default"]
    assert (default.circuit, default.circuit_open, default.paused) == ("open", True, False)
    assert default.circuit_since == opened and default.circuit_reason == OUTAGE
    assert default.circuit_next_probe_at == probe and default.circuit_failed_probes == 1
    eu = found["eu-shop"]
    assert (eu.circuit, eu.circuit_open, eu.paused) == ("half_open", True, True)
    assert eu.circuit_next_probe_at is None, "a probe is in flight"
    assert found["api-down"].counts == dict.fromkeys(STATUSES, 0)

    body = json.loads(run("stats", "--json").stdout)["queues"]
    assert {k: v for k, v in body["default"].items() if k.startswith("circuit")} == {
        "circuit": "open",
        "circuit_since": opened.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "circuit_reason": OUTAGE,
        "circuit_next_probe_at": probe.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "circuit_failed_probes": 1,
    }
    assert body["eu-shop"]["circuit"] == "half_open" and body["eu-shop"]["paused"] is True
    assert body["api-down"]["circuit"] == "open" and body["api-down"]["circuit_reason"] is None

    lines = run("stats").stdout.splitlines()
    table = {line.split()[0]: line.split() for line in lines[1:4]}
    assert table["default"][8:9] + table["default"][10:] == ["-", "open", "no"]  # [9]: window
    assert table["eu-shop"][10] == "half_open" and table["eu-shop"][11] == "yes,"
    assert table["api-down"][8:] == ["-", "-", "open", "no"]
    stamp = lambda t: t.strftime("%Y-%m-%d %H:%M:%S")  # noqa: E731
    assert lines[4:] == [
        "",
        f"circuit open for api-down since {stamp(now)}, next probe {stamp(now)}: -",
        f"circuit open for default since {stamp(opened)}, next probe {stamp(probe)} after 1 "
        f"failed probe: {OUTAGE}",
        f"circuit half_open for eu-shop since {stamp(now)} (a probe is in flight): Timeout x",
    ]

    # A good probe closes it: closed since then, no reason, nothing below the table.
    set_circuit(engine, "default", "closed", circuit_since=now, circuit_reason=None,
                circuit_retry_at=None, circuit_probes=0)  # fmt: skip
    closed = json.loads(run("stats", "--json").stdout)["queues"]["default"]
    assert closed["circuit"] == "closed" and closed["circuit_reason"] is None
    assert closed["circuit_since"] is not None and closed["circuit_next_probe_at"] is None
    after = run("stats").stdout.splitlines()
    assert after[2].split()[:1] + after[2].split()[10:] == ["default", "closed", "no"]
    assert len(after) == 1 + 3 + 1 + 2  # header, 3 queues, a blank line, api-down and eu-shop
    assert not any("for default" in line for line in after)


def test_stats_show_a_circuit_a_real_outage_opened(
    outbox: Outbox, run: Callable[..., Result], engine: sa.Engine, sandbox: Sandbox,
    deliverer: Deliverer,
) -> None:  # fmt: skip
    """Not set by hand: a worker sees mostly 503s and opens the circuit; stats show it, and
    show it closed again once a probe gets through."""
    sandbox.fail_ratio = 1.0
    ids = enqueue_many([CustomEvent(401, customer_id=n) for n in range(1, 31)])
    for _ in range(20):
        deliverer.drain("default")
        if admin.stats(engine, utcnow())["default"].circuit != "closed":
            break
    found = admin.stats(engine, utcnow())["default"]
    assert found.circuit == "open" and found.circuit_since is not None
    assert found.circuit_reason is not None and "503" in found.circuit_reason
    assert found.circuit_next_probe_at is not None
    assert not [i for i in ids if row(engine, i).status == "dead"], "the outage killed none"
    lines = run("stats").stdout.splitlines()
    assert lines[1].split()[0] == "default" and lines[1].split()[10] == "open"
    assert lines[-1].startswith("circuit open for default since ") and "503" in lines[-1]

    sandbox.fail_ratio = 0.0  # the API is back: the next probe closes the circuit
    drain_until_settled(deliverer, engine)
    body = json.loads(run("stats", "--json").stdout)["queues"]["default"]
    assert body["circuit"] == "closed" and body["circuit_reason"] is None
    assert {row(engine, i).status for i in ids} == {"delivered"}


def test_stats_counts_no_job(outbox: Outbox, engine: sa.Engine) -> None:
    """The counts come from dispatcher_counts (the triggers keep them); the jobs table is read
    for a queue's oldest due job only, one index probe per queue with due jobs."""
    with count_statements(engine) as seen:
        stats = admin.stats(engine, utcnow())
    assert sum(stats["default"].counts.values()) > 0
    on_jobs = [s for s in seen if "dispatcher_jobs" in s.replace("dispatcher_jobs_", "")]
    assert len(on_jobs) <= len(stats)
    assert all("min(dispatcher_jobs.next_attempt_at)" in s and "count(" not in s for s in on_jobs)
    assert any("dispatcher_counts" in s and "dispatcher_count_deltas" in s for s in seen)


# --------------------------------------------------------------------------- replay


class count_statements:
    """Collect the SQL statements ``engine`` runs inside the block."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.seen: list[str] = []

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen.append(statement)

    def __enter__(self) -> list[str]:
        sa.event.listen(self.engine, "before_cursor_execute", self._record)
        return self.seen

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._record)


def test_replay_by_id_keeps_history_and_counts_replays(
    outbox: Outbox,
    run: Callable[..., Result],
    engine: sa.Engine,
    deliverer: Deliverer,
    signalled: list[tuple[str, ...]],
) -> None:
    before = row(engine, outbox.outage)
    assert run("replay", outbox.outage).stdout == "replayed 1 job in default\n"
    assert signalled == [("default",)]

    after = row(engine, outbox.outage)
    assert after.status == "pending" and after.attempts == 0
    assert after.replays == 1 and after.replayed_at is not None
    assert after.next_attempt_at <= utcnow()
    assert after.lease_token is None and after.lease_expires_at is None
    assert after.last_status_code == 503 and after.last_error == before.last_error
    assert attempt_count(engine, outbox.outage) == 2, "attempt history is never deleted"

    drain_until_settled(deliverer, engine)  # the endpoint answers 201 now
    detail = json.loads(run("show", outbox.outage, "--json").stdout)
    assert detail["status"] == "delivered" and detail["attempts"] == 1
    assert detail["replays"] == 1 and detail["replayed_at"] is not None
    assert [(a["number"], a["status_code"], a["outcome"]) for a in detail["attempt_log"]] == [
        (1, 503, "retry"),
        (2, 503, "dead"),
        (3, 201, "delivered"),
    ]
    assert "replays           1" in run("show", outbox.outage).stdout


def test_replay_several_ids_and_json(
    outbox: Outbox, run: Callable[..., Result], engine: sa.Engine
) -> None:
    result = json.loads(run("replay", outbox.ghost, outbox.outage, "--json").stdout)
    assert result == {"count": 2, "queues": ["default"], "dry_run": False}
    assert {row(engine, i).status for i in (outbox.ghost, outbox.outage)} == {"pending"}


def test_replaying_a_delivered_job_needs_include_delivered(
    outbox: Outbox,
    run: Callable[..., Result],
    engine: sa.Engine,
    signalled: list[tuple[str, ...]],
) -> None:
    before = snapshot(engine)
    err = run("replay", outbox.anna, code=1).stderr
    assert f"job {outbox.anna} is delivered" in err and "--include-delivered" in err
    assert snapshot(engine) == before and signalled == []

    assert run("replay", outbox.anna, "--include-delivered").stdout.startswith("replayed 1 job")
    anna = row(engine, outbox.anna)
    assert anna.status == "pending" and anna.delivered_at is None and anna.replays == 1
    assert attempt_count(engine, outbox.anna) == 1


def test_replay_never_touches_live_jobs(
    outbox: Outbox, run: Callable[..., Result], engine: sa.Engine
) -> None:
    before = snapshot(engine)
    err = run("replay", outbox.eu[0], code=1).stderr
    assert f"job {outbox.eu[0]} is pending" in err
    # One bad id refuses the whole request: the dead job named with it is not replayed either.
    err = run("replay", outbox.ghost, outbox.eu[1], "424242", code=1).stderr
    assert "no job 424242" in err and "nothing replayed" in err
    for live in ("pending", "in_flight", "retrying"):
        out = run("replay", "--status", live, code=2).output
        assert "--status" in out and "only dead, cancelled or delivered" in out
    assert "--include-delivered" in run("replay", "--status", "delivered", code=2).output
    # Even with --include-delivered, a paused queue's pending jobs are left alone.
    run("replay", "--status", "dead", "--include-delivered", "--queue", "eu-shop")
    assert snapshot(engine) == before


def test_replay_needs_ids_or_a_status(
    outbox: Outbox, run: Callable[..., Result], engine: sa.Engine
) -> None:
    for args in ((), ("--queue", "default")):
        out = run("replay", *args, code=2).output
        assert "Invalid value for --status: give job ids, or status dead and filters" in out
    with pytest.raises(admin.AdminError, match="give job ids"):
        admin.replay(engine, admin.Filter(event_id=103), now=utcnow())


def test_replay_by_filter(
    outbox: Outbox,
    run: Callable[..., Result],
    engine: sa.Engine,
    signalled: list[tuple[str, ...]],
) -> None:
    assert run("replay", "--status", "dead", "--status-code", "400").stdout == (
        "replayed 1 job in default\n"
    )
    assert row(engine, outbox.ghost).status == "pending"
    assert row(engine, outbox.outage).status == "dead"
    assert run("replay", "--status", "dead", "--event-id", "999").stdout == "replayed 0 jobs\n"
    assert signalled == [("default",)], "nothing replayed, nobody signalled"
    out = run("replay", "--status", "dead", "--include-delivered").stdout
    assert out == "replayed 5 jobs in default\n"  # outage (dead) + 4 delivered
    statuses = {i: row(engine, i).status for i in outbox.default + outbox.eu}
    assert set(statuses.values()) == {"pending"}
    assert row(engine, outbox.ghost).replays == row(engine, outbox.outage).replays == 1


def test_replay_dry_run_changes_nothing(
    outbox: Outbox,
    run: Callable[..., Result],
    engine: sa.Engine,
    signalled: list[tuple[str, ...]],
) -> None:
    before = snapshot(engine)
    out = run("replay", "--status", "dead", "--dry-run").stdout
    assert out == "would replay 2 jobs in default (dry run: nothing changed)\n"
    body = json.loads(
        run("replay", "--status", "dead", "--include-delivered", "--dry-run", "--json").stdout
    )
    assert body == {"count": 6, "queues": ["default"], "dry_run": True}
    assert run("replay", outbox.ghost, "--dry-run").stdout.startswith("would replay 1 job")
    assert "is delivered" in run("replay", outbox.anna, "--dry-run", code=1).stderr
    assert snapshot(engine) == before and signalled == []


def test_replay_with_an_expected_count(
    outbox: Outbox,
    run: Callable[..., Result],
    engine: sa.Engine,
    signalled: list[tuple[str, ...]],
) -> None:
    """Replay only if the filter still matches the number of jobs the operator confirmed."""
    before = snapshot(engine)
    refused = run("replay", "--status", "dead", "--expected-count", "3", code=1)
    assert "the filter matches 2 jobs, not 3: nothing done" in refused.stderr
    with pytest.raises(admin.ExpectedCountMismatch) as caught:
        admin.replay(engine, admin.Filter(status="dead"), expected=1, now=utcnow())
    assert (caught.value.expected, caught.value.result.count) == (1, 2)
    assert snapshot(engine) == before and signalled == []
    with engine.connect() as conn, pytest.raises(TypeError, match="needs an Engine"):
        admin.replay(conn, admin.Filter(status="dead"), expected=2, now=utcnow())
    out = run("replay", "--status", "dead", "--expected-count", "2").stdout
    assert out == "replayed 2 jobs in default\n"
    assert signalled == [("default",)]


def test_resume_tells_the_workers_after_its_commit(
    outbox: Outbox, run: Callable[..., Result], engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[tuple[str, ...], bool]] = []

    def signal(queues: Iterable[str]) -> None:
        names = tuple(queues)
        with engine.connect() as other:  # what a worker woken now would read
            seen.append((names, is_paused(other, names[0])))

    monkeypatch.setattr("dispatcher.producer.signal_workers", signal)
    assert run("resume", "eu-shop").stdout == "queue eu-shop resumed\n"
    assert seen == [(("eu-shop",), False)]
    assert run("resume", "eu-shop").stdout == "queue eu-shop was not paused\n"
    assert admin.resume_queue(engine, "eu-shop") is False
    assert len(seen) == 1, "nothing to resume, nobody signalled"


def test_pause_and_resume_check_the_queue_name(
    outbox: Outbox, run: Callable[..., Result], engine: sa.Engine
) -> None:
    before = snapshot(engine)
    for command in ("pause", "resume"):
        out = run(command, "EU shop", code=2).output
        assert "QUEUE" in out and "must be 1-64 characters" in out
    assert "--reason" in run("pause", "default", "--reason", " ", code=2).output
    with pytest.raises(admin.AdminError) as caught:
        admin.pause_queue(engine, "default\n", "why")
    assert caught.value.field == "queue"
    assert snapshot(engine) == before


def test_replay_into_a_paused_queue_says_so(
    outbox: Outbox, run: Callable[..., Result], engine: sa.Engine
) -> None:
    set_times(engine, outbox.eu[:1], next_attempt_at=utcnow())
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == int(outbox.eu[0])).values(status="dead"))
    result = run("replay", outbox.eu[0])
    assert result.stdout == "replayed 1 job in eu-shop\n"
    assert "queue eu-shop is paused" in result.stderr


def test_replay_of_many_jobs_is_one_update(
    env: pytest.MonkeyPatch, engine: sa.Engine, run: Callable[..., Result]
) -> None:
    n = 20_000
    enqueue_many([CustomEvent(301, customer_id=i) for i in range(1, n + 1)])
    with engine.begin() as conn:
        conn.execute(sa.update(jobs).values(status="dead", attempts=2, last_status_code=503))
    with count_statements(engine) as seen:
        done = run("replay", "--status", "dead", "--yes")  # more than 1,000: --yes
        assert done.stdout == f"replayed {n} jobs in default\n"
    assert len([s for s in seen if s.lstrip().upper().startswith("UPDATE")]) == 1
    with engine.connect() as conn:
        assert conn.execute(
            sa.select(jobs.c.status, jobs.c.attempts, jobs.c.replays, sa.func.count()).group_by(
                jobs.c.status, jobs.c.attempts, jobs.c.replays
            )
        ).all() == [("pending", 0, 1, n)]


def test_replay_after_an_outage(
    outbox: Outbox,
    run: Callable[..., Result],
    engine: sa.Engine,
    deliverer: Deliverer,
    sandbox: Sandbox,
    signalled: list[tuple[str, ...]],
) -> None:
    """The endpoint is down long enough for a batch to exhaust its attempts; once it is back,
    one command sends exactly those jobs again, and they are delivered. (The circuit breaker
    exists to prevent exactly these dead letters, so it is off for the outage here.)"""
    before_outage = utcnow()
    sandbox.fail_ratio = 1.0  # every request: 503
    ids = enqueue_many([CustomEvent(400, customer_id=n) for n in range(1, 21)])
    no_breaker = Deliverer(
        dataclasses.replace(deliverer.settings, breaker=BreakerPolicy(enabled=False))
    )
    try:
        drain_until_settled(no_breaker, engine)
    finally:
        no_breaker.close()
    for job_id in ids:
        job = row(engine, job_id)
        assert (job.status, job.attempts, job.last_status_code) == ("dead", 2, 503)
    assert sandbox.count(custom_event_id=400, status=503) == 40

    sandbox.fail_ratio = 0.0  # the endpoint is healthy again
    signalled.clear()  # (enqueue_many signalled too)
    since = iso(before_outage)
    before = snapshot(engine)
    out = run("replay", "--status", "dead", "--since", since, "--dry-run").stdout
    assert out == "would replay 20 jobs in default (dry run: nothing changed)\n"
    assert snapshot(engine) == before and signalled == []

    out = run("replay", "--status", "dead", "--since", since).stdout
    assert out == "replayed 20 jobs in default\n"
    assert signalled == [("default",)]
    drain_until_settled(deliverer, engine)

    for job_id in ids:
        detail = admin.show(engine, job_id)
        assert detail is not None
        assert detail.status == "delivered" and detail.replays == 1
        assert [a.status_code for a in detail.attempt_log] == [503, 503, 201]
    assert sandbox.count(custom_event_id=400, status=201) == 20
    # Dead jobs from before the outage were not part of it and stay dead.
    assert row(engine, outbox.ghost).status == "dead"
    assert row(engine, outbox.outage).status == "dead"
    assert set(history_ids(run, "--status", "dead")) == {outbox.ghost, outbox.outage}


# --------------------------------------------------------------------------- purge


def test_purge_removes_only_old_finished_jobs(
    outbox: Outbox, run: Callable[..., Result], engine: sa.Engine
) -> None:
    old = utcnow() - timedelta(days=40)
    set_times(engine, [outbox.anna, outbox.flaky, outbox.ghost, outbox.eu[0]], updated_at=old)
    total_attempts = attempt_count(engine)

    before = snapshot(engine)
    out = run("purge", "--older-than", "30d", "--dry-run").stdout
    assert out == "would purge 3 jobs and 4 attempts (dry run: nothing deleted)\n"
    assert snapshot(engine) == before

    out = run("purge", "--older-than", "30d", "--status", "delivered").stdout
    assert out == "purged 2 jobs and 3 attempts\n"  # anna (1 attempt) + flaky (2 attempts)
    remaining = set(history_ids(run, "--limit", "100"))
    assert outbox.anna not in remaining and outbox.flaky not in remaining
    assert outbox.ghost in remaining, "--status delivered leaves dead jobs"
    assert attempt_count(engine, outbox.anna) == attempt_count(engine, outbox.flaky) == 0

    body = json.loads(run("purge", "--older-than", "30d", "--json").stdout)
    assert body == {"jobs": 1, "attempts": 1, "dry_run": False}
    remaining = set(history_ids(run, "--limit", "100"))
    assert remaining == set(outbox.default + outbox.eu) - {outbox.anna, outbox.flaky, outbox.ghost}
    assert outbox.eu[0] in remaining, "a pending job is never purged, however old"
    assert attempt_count(engine) == total_attempts - 4
    assert run("purge", "--older-than", "30d").stdout == "purged 0 jobs and 0 attempts\n"


def test_purge_in_batches(
    outbox: Outbox,
    run: Callable[..., Result],
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dispatcher.admin import actions

    monkeypatch.setattr(actions, "PURGE_VACUUM_EVERY", 20)
    vacuumed_before = vacuum_counts(engine)
    ids = enqueue_many([CustomEvent(500, customer_id=n) for n in range(25)])
    with engine.begin() as conn:
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.id.in_([int(i) for i in ids]))
            .values(status="delivered", updated_at=utcnow() - timedelta(days=2))
        )
        conn.execute(
            attempts.insert(),
            [
                {
                    "job_id": int(i),
                    "started_at": utcnow(),
                    "duration_ms": 5,
                    "status_code": 201,
                    "outcome": "delivered",
                    "counted": True,
                }
                for i in ids
            ],
        )
    with count_statements(engine) as seen:
        out = run("purge", "--older-than", "1d", "--batch-size", "10").stdout
    assert out == "purged 25 jobs and 25 attempts\n"
    deletes = [s for s in seen if s.lstrip().upper().startswith("DELETE FROM DISPATCHER_JOBS")]
    assert len(deletes) == 3  # 10 + 10 + 5
    assert set(history_ids(run, "--limit", "100")) == set(outbox.default + outbox.eu)
    # PostgreSQL: what it deleted is vacuumed as it goes (after 20 jobs) and at the end, with an
    # ANALYZE; not waiting for autovacuum (late, throttled, or off). SQLite needs none.
    vacuums = [s.strip() for s in seen if s.lstrip().upper().startswith("VACUUM")]
    if engine.dialect.name != "postgresql":
        assert vacuums == []
        return
    assert vacuums == [
        "VACUUM (SKIP_LOCKED) dispatcher_jobs, dispatcher_attempts",
        "VACUUM (SKIP_LOCKED, ANALYZE) dispatcher_jobs, dispatcher_attempts",
    ]
    # Both tables vacuumed twice and analyzed once, as the server counts it.
    after = vacuum_counts(engine)
    assert {
        t: (v - vacuumed_before[t][0], a - vacuumed_before[t][1]) for t, (v, a) in after.items()
    } == {
        "dispatcher_jobs": (2, 1),
        "dispatcher_attempts": (2, 1),
    }


def vacuum_counts(engine: sa.Engine) -> dict[str, tuple[int, int]]:
    """(VACUUMs, ANALYZEs) run by hand on the jobs and attempts tables (PostgreSQL)."""
    if engine.dialect.name != "postgresql":
        return {}
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        rows = conn.exec_driver_sql(
            "SELECT relname, vacuum_count, analyze_count FROM pg_stat_user_tables "
            "WHERE relname IN ('dispatcher_jobs', 'dispatcher_attempts')"
        ).all()
    return {r.relname: (int(r.vacuum_count), int(r.analyze_count)) for r in rows}


def test_purge_refuses_live_statuses(outbox: Outbox, run: Callable[..., Result]) -> None:
    for live in ("pending", "in_flight", "retrying"):
        out = run("purge", "--older-than", "0s", "--status", live, code=2).output
        assert "--status" in out and "delivered, dead" in out
    assert "--batch-size" in run("purge", "--older-than", "1d", "--batch-size", "0", code=2).output
    assert "--older-than" in run("purge", code=2).output


# --------------------------------------------------------------------------- safety and API


def test_injection_strings_in_every_text_filter(
    outbox: Outbox, run: Callable[..., Result], engine: sa.Engine
) -> None:
    before = snapshot(engine)
    for bad in INJECTIONS:
        # Free text is compared as a value: it simply matches nothing.
        assert history_ids(run, "--customer-email", bad) == []
        assert run("history", "--customer-email", bad).stdout == "no jobs match\n"
        assert admin.history(engine, admin.Filter(customer_email=bad)) == []
        # Values with a fixed form (a queue name is one, by enqueue's rule) are refused before
        # any SQL runs.
        assert "--queue" in run("history", "--queue", bad, code=2).output
        assert "--queue" in run("replay", "--status", "dead", "--queue", bad, code=2).output
        with pytest.raises(admin.AdminError):
            admin.history(engine, admin.Filter(queue=bad))
        run("history", "--status", bad, code=2)
        run("history", "--since", bad, code=2)
        run("history", "--until", bad, code=2)
        run("history", "--event-id", bad, code=2)
        run("show", bad, code=2)
        run("replay", bad, code=2)
        run("replay", "--status", bad, code=2)
        run("replay", "--status", "dead", "--since", bad, code=2)
        run("replay", "--status", "dead", "--status-code", bad, code=2)
        run("purge", "--older-than", bad, code=2)
        run("purge", "--older-than", "1d", "--status", bad, code=2)
        with pytest.raises(admin.AdminError):
            admin.history(engine, admin.Filter(status=bad))
        with pytest.raises(admin.AdminError):
            admin.show(engine, bad)
        with pytest.raises(admin.AdminError):
            admin.replay(engine, job_ids=[bad], now=utcnow())
    assert snapshot(engine) == before
    assert set(sa.inspect(engine).get_table_names()) >= {
        "dispatcher_jobs",
        "dispatcher_attempts",
        "dispatcher_queues",
    }


def test_python_api_matches_the_cli(
    outbox: Outbox, run: Callable[..., Result], engine: sa.Engine
) -> None:
    with engine.connect() as conn:
        found = admin.history(conn, admin.Filter(status="dead"))
        detail = admin.show(conn, int(outbox.outage))
        per_queue = admin.stats(conn, utcnow())
    assert all(isinstance(j, admin.JobSummary) for j in found)
    assert [j.as_dict() for j in found] == json.loads(
        run("history", "--status", "dead", "--json").stdout
    )
    assert detail is not None and detail.as_dict() == json.loads(
        run("show", outbox.outage, "--json").stdout
    )
    assert per_queue["default"].counts["dead"] == 2
    assert admin.show(engine, "424242") is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        detail.status = "pending"  # type: ignore[misc]


def test_python_api_replay_in_the_callers_transaction(outbox: Outbox, engine: sa.Engine) -> None:
    now = utcnow()
    with engine.connect() as conn:
        result = admin.replay(conn, admin.Filter(status="dead"), now=now)
        assert result == admin.ReplayResult(2, ("default",))
        conn.rollback()
    assert row(engine, outbox.ghost).status == "dead", "rolled back with the caller"
    # An empty selection replays nothing; it never widens to "every dead job".
    assert admin.replay(engine, admin.Filter(status="dead"), job_ids=[], now=now).count == 0
    assert row(engine, outbox.ghost).status == "dead"
    with engine.begin() as conn:
        assert admin.replay(conn, job_ids=[outbox.ghost], now=now).count == 1
    assert row(engine, outbox.ghost).status == "pending"


def test_python_api_validation(outbox: Outbox, engine: sa.Engine) -> None:
    now = utcnow()
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: admin.history(engine, admin.Filter(status="lost")), "status"),
        (lambda: admin.history(engine, limit=0), "limit"),
        (lambda: admin.history(engine, admin.Filter(event_id=True)), "event_id"),  # type: ignore[arg-type]
        (lambda: admin.history(engine, admin.Filter(event_id=2**40)), "event_id"),
        (lambda: admin.history(engine, admin.Filter(since=datetime(2026, 1, 1))), "since"),
        (lambda: admin.replay(engine, admin.Filter(status="pending"), now=now), "status"),
        (
            lambda: admin.replay(engine, admin.Filter(status="dead", status_code=1000), now=now),
            "status_code",
        ),
        (lambda: admin.replay(engine, job_ids=["-1"], now=now), "job_id"),
        (lambda: admin.purge(engine, older_than=timedelta(days=-1), now=now), "older_than"),
        (
            lambda: admin.purge(
                engine, older_than=timedelta(0), status="dead", batch_size=0, now=now
            ),
            "batch_size",
        ),
    ]
    for call, field in cases:
        with pytest.raises(admin.AdminError) as info:
            call()
        assert info.value.field == field
