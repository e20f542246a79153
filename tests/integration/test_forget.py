"""Forget a customer (GDPR art. 17, issue 22): after ``dispatcher forget`` a dump of the whole
outbox database holds no trace of them, other customers' data stays, and the counts stay exact.

The outbox has really been through delivery (a loopback sandbox answers 201, and 400 with a body
that echoes the email), has a paused queue whose reason names the customer, a dedupe key that
carries their email and another customer's body that mentions it. On PostgreSQL the proof is a
``pg_dump`` of the test database; on SQLite, the database's own SQL dump.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from dispatcher import CustomEvent, DataField, enqueue, outbox
from dispatcher.admin.forget import ERASED_PAYLOAD
from dispatcher.cli import main
from dispatcher.db import utcnow
from dispatcher.delivery import Deliverer
from dispatcher.sandbox import Reply, Sandbox
from dispatcher.schema import attempts, erasures, jobs, queues
from tests.support import assert_counts_exact, settle, status_of

ANNA = "Anna.Smith@Example.com"
ANNA_MD5 = hashlib.md5(ANNA.lower().encode()).hexdigest()
ANNA_SHA = hashlib.sha256(ANNA.lower().encode()).hexdigest()
PHONE = "+48 600 700 800"
CUSTOMER_ID = 987654321
BOB = "bob.builder@example.com"
TRACES = (ANNA.lower(), ANNA_MD5, ANNA_SHA)


@pytest.fixture
def run(env: pytest.MonkeyPatch) -> Callable[..., Result]:
    env.setenv("COLUMNS", "200")
    env.setattr("dispatcher.producer.signal_workers", lambda qs: None)

    def invoke(*args: str, code: int = 0) -> Result:
        result = CliRunner().invoke(main, list(args))
        assert result.exit_code == code, (result.output, result.exception)
        return result

    return invoke


@dataclasses.dataclass
class Jobs:
    delivered: str  # Anna's, sent
    rejected: str  # Anna's, 400 with her email in the answer: dead
    by_md5: str  # Anna's by the hash only, waiting in the paused queue
    keyed: str  # Anna's by SHA-256, waiting, its dedupe key carries her email
    bob: str  # Bob's, delivered; a data field mentions Anna's email
    phone: str  # another customer, by phone, waiting
    numbered: str  # another customer, by customer id, waiting


@pytest.fixture
def outbox_jobs(
    env: pytest.MonkeyPatch, engine: sa.Engine, sandbox: Sandbox, deliverer: Deliverer
) -> Jobs:
    sandbox.script(102, Reply(400, {"title": "Bad Request", "detail": f"no customer {ANNA}"}))
    ids = [
        enqueue(CustomEvent(101, customer_email=ANNA, data_fields=[DataField("c", "Text", "x")])),
        enqueue(CustomEvent(102, customer_email=ANNA)),
        enqueue(
            CustomEvent(101, customer_email=BOB, data_fields=[DataField("referrer", "Text", ANNA)])
        ),
    ]
    settle(deliverer, engine)
    with engine.begin() as conn:
        outbox.pause(conn, "eu-shop", f"customer {ANNA} asked us to wait", utcnow())
    waiting = [
        enqueue(CustomEvent(103, customer_email_md5=ANNA_MD5.upper()), queue="eu-shop"),
        enqueue(
            CustomEvent(104, customer_email_sha256=ANNA_SHA),
            queue="eu-shop",
            dedupe_key=f"welcome-{ANNA}",
        ),
        enqueue(CustomEvent(105, customer_phone=PHONE), queue="eu-shop"),
        enqueue(CustomEvent(106, customer_id=CUSTOMER_ID), queue="eu-shop"),
    ]
    assert status_of(engine, ids[1]) == "dead"
    return Jobs(ids[0], ids[1], waiting[0], waiting[1], ids[2], waiting[2], waiting[3])


def dump(db_url: str) -> str:
    """The whole outbox database as text: pg_dump, or SQLite's own dump."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(sa.make_url(db_url).database or "")
        try:
            return "\n".join(conn.iterdump())
        finally:
            conn.close()
    pg_dump = shutil.which("pg_dump")
    assert pg_dump, "pg_dump is needed for this test"
    url = sa.make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    done = subprocess.run([pg_dump, url], capture_output=True, text=True, timeout=120, check=True)
    # Without the random \restrict key pg_dump adds, so that two dumps compare.
    return "\n".join(
        line
        for line in done.stdout.splitlines()
        if not line.startswith(("\\restrict", "\\unrestrict"))
    )


def row(engine: sa.Engine, job_id: str) -> sa.Row[tuple[object, ...]]:
    with engine.connect() as conn:
        return conn.execute(sa.select(jobs).where(jobs.c.id == int(job_id))).one()


def test_forget_by_email_leaves_no_trace_in_a_dump(
    run: Callable[..., Result], engine: sa.Engine, db_url: str, outbox_jobs: Jobs
) -> None:
    before = dump(db_url).lower()
    assert all(trace in before for trace in TRACES), "the test must start with every trace"
    planned = json.loads(run("forget", "--email", f"  {ANNA} ", "--dry-run", "--json").stdout)
    assert dump(db_url).lower() == before, "a dry run changes nothing"
    err = run("forget", "--email", ANNA, code=7).stderr  # not on a terminal: needs --yes
    assert "cannot be undone" in err and "nothing changed" in err
    done = json.loads(run("forget", "--email", ANNA, "--yes", "--json").stdout)
    assert done == {**planned, "dry_run": False}
    assert done == {
        "identifier_kind": "email",
        "jobs": 4,
        "cancelled": 2,
        "in_flight": 0,
        "attempts": 2,  # the delivered one's and the rejected one's
        "mentions": 2,  # Bob's body, the queue's pause reason
        "dry_run": False,
    }

    text = dump(db_url).lower()
    for trace in TRACES:
        assert trace not in text, trace
    # Other customers' data stays; so do the jobs themselves (history and counts).
    assert BOB in text and PHONE in dump(db_url) and str(CUSTOMER_ID) in text
    for name in ("delivered", "rejected", "by_md5", "keyed"):
        erased = row(engine, getattr(outbox_jobs, name))
        assert erased.payload == ERASED_PAYLOAD
        assert erased.customer_email is None and erased.dedupe_key is None
    assert status_of(engine, outbox_jobs.delivered) == "delivered"
    assert status_of(engine, outbox_jobs.rejected) == "dead"
    assert row(engine, outbox_jobs.rejected).last_error == "[erased]"
    assert status_of(engine, outbox_jobs.by_md5) == "cancelled"
    assert status_of(engine, outbox_jobs.keyed) == "cancelled"
    assert status_of(engine, outbox_jobs.phone) == "pending"
    bob = json.loads(row(engine, outbox_jobs.bob).payload)
    assert bob["customerEmail"] == BOB and bob["dataFields"][0]["value"] == "[erased]"
    with engine.connect() as conn:
        reason = conn.execute(
            sa.select(queues.c.pause_reason).where(queues.c.name == "eu-shop")
        ).scalar_one()
        answers = (
            conn.execute(
                sa.select(attempts.c.response_body).where(
                    attempts.c.job_id == int(outbox_jobs.rejected)
                )
            )
            .scalars()
            .all()
        )
        audit = conn.execute(sa.select(erasures)).one()
    assert reason == "customer [erased] asked us to wait"
    assert set(answers) == {"[erased]"}
    assert (audit.identifier_kind, audit.jobs, audit.cancelled) == ("email", 4, 2)
    assert_counts_exact(engine)
    again = json.loads(run("forget", "--email", ANNA, "--yes", "--json").stdout)
    assert again["jobs"] == again["mentions"] == again["attempts"] == 0  # nothing left


def test_forget_by_phone_and_by_customer_id(
    run: Callable[..., Result], engine: sa.Engine, db_url: str, outbox_jobs: Jobs
) -> None:
    said = run("forget", "--phone", "+48600700800", "--yes")  # spelled without the spaces
    assert said.stdout.startswith("erased 1 job of this customer (1 waiting, cancelled)")
    assert status_of(engine, outbox_jobs.phone) == "cancelled"
    run("forget", "--customer-id", str(CUSTOMER_ID), "--yes")
    assert status_of(engine, outbox_jobs.numbered) == "cancelled"
    text = dump(db_url)
    assert PHONE not in text and str(CUSTOMER_ID) not in text
    assert ANNA in text, "another customer's data stays"
    with engine.connect() as conn:
        kinds = conn.execute(sa.select(erasures.c.identifier_kind).order_by(erasures.c.id))
        assert kinds.scalars().all() == ["phone", "customer_id"]
    assert_counts_exact(engine)


def test_a_job_in_flight_keeps_its_status_and_loses_its_data(
    run: Callable[..., Result], engine: sa.Engine, outbox_jobs: Jobs
) -> None:
    with engine.begin() as conn:
        outbox.resume(conn, "eu-shop", utcnow())
        claimed = outbox.claim(conn, "eu-shop", 1, utcnow(), 60)
    assert [str(c.id) for c in claimed] == [outbox_jobs.by_md5]
    result = run("forget", "--email-md5", ANNA_MD5, "--yes")
    assert "1 of their jobs were in flight: a request may be on the wire" in result.stderr
    leased = row(engine, outbox_jobs.by_md5)
    assert leased.status == "in_flight" and ANNA_MD5 not in leased.payload.lower()


def test_forget_refuses_bad_identifiers_naming_the_option(
    run: Callable[..., Result], engine: sa.Engine
) -> None:
    assert "--email" in run("forget", "--email", "not-an-address", code=2).stderr
    assert "--email-md5" in run("forget", "--email-md5", "xyz", code=2).stderr
    assert "--customer-id" in run("forget", "--customer-id", "12a", code=2).stderr
    assert "--phone" in run("forget", "--phone", "call me", code=2).stderr
    assert (
        "one identifier at a time" in run("forget", "--phone", "1", "--crm-id", "x", code=1).stderr
    )
    assert "exactly one of" in run("forget", code=1).stderr
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(erasures)).scalar_one() == 0
