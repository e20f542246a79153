"""Queues are named, not typed into existence; waiting jobs can be cancelled (issue 22).

Driven through the CLI (click's CliRunner) and the Python API, on SQLite and PostgreSQL. The
counts ``stats`` shows are checked against a full recount of the jobs table after every change,
so ``dispatcher_counts`` stays exact with the new finished status.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from dispatcher import CustomEvent, admin, enqueue, enqueue_many, outbox
from dispatcher.cli import main
from dispatcher.db import utcnow
from dispatcher.policy import Decision, Outcome
from dispatcher.schema import counts, jobs, queues
from tests.support import assert_counts_exact, status_of


@pytest.fixture
def run(env: pytest.MonkeyPatch) -> Callable[..., Result]:
    env.setenv("COLUMNS", "200")
    env.setattr("dispatcher.admin.actions.outbox.PAUSE_SETTLE_SECONDS", 0)
    env.setattr("dispatcher.producer.signal_workers", lambda qs: None)

    def invoke(*args: str, code: int = 0) -> Result:
        result = CliRunner().invoke(main, list(args))
        assert result.exit_code == code, (result.output, result.exception)
        return result

    return invoke


def set_status(engine: sa.Engine, job_id: str, status: str, **values: object) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(jobs).where(jobs.c.id == int(job_id)).values(status=status, **values)
        )


# --------------------------------------------------------------------------- queue names


def test_a_typo_pauses_nothing_and_names_the_queue_meant(
    run: Callable[..., Result], engine: sa.Engine
) -> None:
    enqueue(CustomEvent(1, customer_id=1), queue="eu-shop")
    for args in (
        ("pause", "eu_shop"),
        ("resume", "eu_shop"),
        ("replay", "--queue", "eu_shop", "--status", "dead"),
        ("cancel", "--queue", "eu_shop"),
    ):
        err = run(*args, code=2).stderr
        assert "no queue eu_shop" in err and "did you mean eu-shop?" in err, args
    with engine.connect() as conn:
        assert conn.execute(sa.select(queues.c.name)).scalars().all() == []  # no phantom
    with pytest.raises(admin.UnknownQueue) as refused:
        admin.pause_queue(engine, "eu_shop", "typo")
    assert refused.value.field == "queue" and refused.value.suggestion == "eu-shop"
    # A queue in use, the default queue and --create all pass.
    assert run("pause", "eu-shop").stdout == "queue eu-shop paused\n"
    assert run("pause").stdout == "queue default paused\n"
    ahead = run("pause", "us-shop", "--create")
    assert ahead.stdout == "queue us-shop paused\n" and "ahead of use" in ahead.stderr
    assert run("resume", "us-shop").stdout == "queue us-shop resumed\n"  # it has a row now


def test_configured_queues_exist_before_their_first_job(
    run: Callable[..., Result], env: pytest.MonkeyPatch, engine: sa.Engine
) -> None:
    from dispatcher.config import get_settings

    env.setenv("DISPATCHER_DEDICATED_QUEUES", "bulk")
    env.setenv("ECDP_API_KEY_US_SHOP", "a-key-for-us")
    env.setenv("DISPATCHER_RATE_LIMIT_SLOW", "5")
    get_settings.cache_clear()
    for queue in ("bulk", "us-shop", "slow"):
        assert run("pause", queue).stdout == f"queue {queue} paused\n"
    # ECDP_API_KEY_US_SHOP names us-shop and us_shop alike: once us-shop is in use (it has a
    # row now), its other spelling is the typo.
    err = run("pause", "us_shop", code=2).stderr
    assert "did you mean us-shop?" in err


def test_queues_lists_and_deletes_only_empty_queues(
    run: Callable[..., Result], engine: sa.Engine
) -> None:
    enqueue_many([CustomEvent(1, customer_id=n) for n in range(3)], queue="eu-shop")
    run("pause", "ghost", "--create")
    listed = json.loads(run("queues", "--json").stdout)["queues"]
    assert listed == {
        "eu-shop": {"paused": False, "circuit": "closed", "live": 3, "finished": 0},
        "ghost": {"paused": True, "circuit": "closed", "live": 0, "finished": 0},
    }
    table = run("queues").stdout.splitlines()
    assert table[0].split() == ["QUEUE", "PAUSED", "CIRCUIT", "LIVE", "FINISHED"]
    assert table[2].split() == ["ghost", "yes", "closed", "0", "0"]
    err = run("queues", "--delete", "eu-shop", code=2).stderr
    assert "--delete" in err and "has jobs" in err
    assert run("queues", "--delete", "ghost").stdout == "queue ghost deleted\n"
    assert "ghost" not in json.loads(run("queues", "--json").stdout)["queues"]
    run("pause", "ghost", code=2)  # gone: a typo again
    # A queue whose jobs were all purged can go too (its counts rows are zero).
    run("cancel", "--queue", "eu-shop", "--yes")
    assert "has jobs (3 finished)" in run("queues", "--delete", "eu-shop", code=2).stderr
    admin.purge(engine, older_than=timedelta(0), now=utcnow() + timedelta(seconds=1))
    emptied = json.loads(run("queues", "--json").stdout)["queues"]["eu-shop"]
    assert emptied == {"paused": False, "circuit": "closed", "live": 0, "finished": 0}
    assert run("queues", "--delete", "eu-shop").stdout == "queue eu-shop deleted\n"
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(counts)).scalar_one() == 0


# --------------------------------------------------------------------------- cancel


@pytest.fixture
def waiting(env: pytest.MonkeyPatch, engine: sa.Engine) -> Iterator[dict[str, str]]:
    """Queue eu-shop: two pending jobs, one retrying, one in flight (leased), one delivered."""
    ids = enqueue_many([CustomEvent(1, customer_id=n) for n in range(5)], queue="eu-shop")
    named = dict(zip(("a", "b", "retrying", "leased", "delivered"), ids, strict=True))
    with engine.begin() as conn:
        claimed = outbox.claim(conn, "eu-shop", 10, utcnow(), 60)
        keep = [c for c in claimed if c.id != int(named["leased"])]
        outbox.release(conn, keep, utcnow())
    set_status(engine, named["retrying"], "retrying", attempts=1)
    set_status(engine, named["delivered"], "delivered")
    with engine.begin() as conn:
        outbox.recount(conn)
    named["token"] = next(c.lease_token for c in claimed if c.id == int(named["leased"]))
    yield named


def test_cancel_waiting_jobs_leaves_the_one_on_the_wire(
    run: Callable[..., Result], engine: sa.Engine, waiting: dict[str, str]
) -> None:
    dry = run("cancel", "--queue", "eu-shop", "--dry-run")
    assert dry.stdout == "would cancel 3 jobs in eu-shop (dry run: nothing changed)\n"
    assert "1 job in flight was not cancelled: a request may be on the wire" in dry.stderr
    assert status_of(engine, waiting["a"]) == "pending"
    done = run("cancel", "--queue", "eu-shop", "--yes", "--json")
    assert json.loads(done.stdout) == {
        "count": 3,
        "queues": ["eu-shop"],
        "dry_run": False,
        "in_flight": 1,
    }
    for name in ("a", "b", "retrying"):
        assert status_of(engine, waiting[name]) == "cancelled"
    assert status_of(engine, waiting["leased"]) == "in_flight"
    assert status_of(engine, waiting["delivered"]) == "delivered"
    assert_counts_exact(engine)
    assert admin.stats(engine, utcnow())["eu-shop"].counts["cancelled"] == 3
    # Never sent: the claim takes none of them.
    with engine.begin() as conn:
        assert outbox.claim(conn, "eu-shop", 10, utcnow(), 60) == []
    # The worker that holds the leased job records its answer as usual.
    with engine.begin() as conn:
        job = outbox.Claimed(int(waiting["leased"]), "eu-shop", "/x", "{}", 0, waiting["token"])
        result = outbox.AttemptResult(
            job, utcnow(), 5, 201, None, None, Decision(Outcome.DELIVERED, True, None, None)
        )
        outbox.record(conn, [result], utcnow())
    assert status_of(engine, waiting["leased"]) == "delivered"
    assert_counts_exact(engine)
    # history and stats show the new status.
    found = json.loads(run("history", "--status", "cancelled", "--json").stdout)
    assert sorted(j["id"] for j in found) == sorted(waiting[n] for n in ("a", "b", "retrying"))
    header = run("stats").stdout.splitlines()[0].split()
    assert "CANCELLED" in header


def test_cancel_by_id_status_and_expected_count(
    run: Callable[..., Result], engine: sa.Engine, waiting: dict[str, str]
) -> None:
    err = run("cancel", waiting["a"], waiting["delivered"], code=1).stderr
    assert f"job {waiting['delivered']} is delivered" in err and "nothing cancelled" in err
    assert status_of(engine, waiting["a"]) == "pending"
    err = run("cancel", "--status", "in_flight", "--queue", "eu-shop", code=2).stderr
    assert "--status" in err and "on the wire" in err
    assert "--status" in run("cancel", "--status", "dead", code=2).stderr
    assert "at least one filter" in run("cancel", code=1).stderr
    mismatch = run("cancel", "--queue", "eu-shop", "--expected-count", "5", code=1).stderr
    assert "matches 3 jobs, not 5: nothing done" in mismatch
    assert status_of(engine, waiting["a"]) == "pending"
    only = run("cancel", "--queue", "eu-shop", "--status", "retrying")
    assert only.stdout == "cancelled 1 job in eu-shop\n"
    by_id = run("cancel", waiting["a"], waiting["leased"])  # the leased one: skipped, said
    assert by_id.stdout == "cancelled 1 job in eu-shop\n" and "in flight" in by_id.stderr
    assert status_of(engine, waiting["b"]) == "pending"
    assert_counts_exact(engine)


def test_cancel_asks_above_the_threshold(
    run: Callable[..., Result], engine: sa.Engine, waiting: dict[str, str], env: pytest.MonkeyPatch
) -> None:
    env.setattr("dispatcher.cli.CONFIRM_ABOVE", 2)
    err = run("cancel", "--queue", "eu-shop", code=7).stderr
    assert "this would cancel 3 jobs in eu-shop" in err and "nothing changed" in err
    assert status_of(engine, waiting["a"]) == "pending"


def test_a_cancelled_job_can_be_replayed(
    run: Callable[..., Result], engine: sa.Engine, waiting: dict[str, str]
) -> None:
    run("cancel", waiting["a"], waiting["b"])
    assert run("replay", waiting["a"]).stdout == "replayed 1 job in eu-shop\n"
    assert status_of(engine, waiting["a"]) == "pending"
    assert run("replay", "--status", "cancelled").stdout == "replayed 1 job in eu-shop\n"
    assert status_of(engine, waiting["b"]) == "pending"
    assert_counts_exact(engine)


def test_cancel_in_the_callers_transaction(engine: sa.Engine, waiting: dict[str, str]) -> None:
    with engine.connect() as conn:
        result = admin.cancel(conn, job_ids=[waiting["a"]], now=utcnow())
        assert (result.count, result.in_flight) == (1, 0)
        conn.rollback()
    assert status_of(engine, waiting["a"]) == "pending"
    assert_counts_exact(engine)
