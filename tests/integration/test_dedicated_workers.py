"""Per-queue workers: `dispatcher worker --queues eu-shop` serves only that outbox queue, so a
paused or failing queue never occupies another queue's worker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dispatcher import CustomEvent, enqueue_many
from dispatcher.config import ConfigError, Settings, get_settings
from dispatcher.sandbox import Reply, Sandbox
from dispatcher.signals import signaller
from dispatcher.tasks import CELERY_QUEUE, TASK_NAME, make_celery, worker_queues
from tests.support import start, statuses, stop, wait_until

DEDICATED = Settings.from_env({"DISPATCHER_DEDICATED_QUEUES": "eu-shop, default"})


def test_routing_and_consumption() -> None:
    plain = Settings.from_env({})
    assert worker_queues([], plain) == [CELERY_QUEUE]
    assert worker_queues([], DEDICATED) == [
        "dispatcher",
        "dispatcher.default",
        "dispatcher.eu-shop",
    ]
    assert worker_queues([], plain, frozenset({"us-shop"})) == ["dispatcher", "dispatcher.us-shop"]
    assert worker_queues(["eu-shop"], DEDICATED) == ["dispatcher.eu-shop"]
    # Not in the variable: its dedication is recorded in the outbox instead (dispatcher.routing).
    assert worker_queues(["us-shop"], plain) == ["dispatcher.us-shop"]
    with pytest.raises(ConfigError, match="--queues: 'EU shop' is not a queue name"):
        worker_queues(["EU shop"], plain)
    with pytest.raises(ConfigError, match="'EU shop' is not a queue name"):
        Settings.from_env({"DISPATCHER_DEDICATED_QUEUES": "EU shop"})


def test_the_dedicated_view_refreshes_and_survives_a_failed_read() -> None:
    from dispatcher.routing import Dedicated

    now = [0.0]
    answers: list[object] = [frozenset({"eu-shop"}), RuntimeError("down"), frozenset()]

    def read() -> frozenset[str] | None:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    view = Dedicated(read, refresh=5.0, clock=lambda: now[0])
    assert view() == {"eu-shop"}
    now[0] = 4.9
    assert view() == {"eu-shop"} and len(answers) == 2  # not read again yet
    now[0] = 5.0
    assert view() == {"eu-shop"}  # the read failed: what was known stays
    now[0] = 10.0
    assert view() == frozenset()


def test_a_worker_records_its_dedication_and_refuses_a_bad_name(
    env: pytest.MonkeyPatch, db_url: str
) -> None:
    import sqlalchemy as sa
    from click.testing import CliRunner

    from dispatcher.cli import main
    from dispatcher.db import get_engine
    from dispatcher.schema import queues

    started: list[list[str]] = []
    env.setattr("dispatcher.tasks.app.worker_main", started.append)
    env.setattr("dispatcher.cli._check_broker", lambda app: None)
    refused = CliRunner().invoke(main, ["worker", "--queues", "EU shop"])
    assert refused.exit_code == 2 and "--queues" in refused.stderr, refused.output
    done = CliRunner().invoke(main, ["worker", "--queues", "eu-shop"])
    assert done.exit_code == 0, done.output
    assert "--queues=dispatcher.eu-shop" in started[-1]
    with get_engine(db_url).connect() as conn:
        rows = conn.execute(sa.select(queues.c.name, queues.c.dedicated)).all()
    assert rows == [("eu-shop", True)]
    # A worker serving every queue consumes the dedicated one's Celery queue too.
    assert CliRunner().invoke(main, ["worker"]).exit_code == 0
    assert "--queues=dispatcher,dispatcher.eu-shop" in started[-1]
    # Undone by an operator: the shared Celery queue again.
    undone = CliRunner().invoke(main, ["queues", "--undedicate", "eu-shop"])
    assert undone.exit_code == 0 and "shared Celery queue again" in undone.stdout
    again = CliRunner().invoke(main, ["queues", "--undedicate", "eu-shop"])
    assert again.exit_code == 0 and "was not dedicated" in again.stdout
    assert CliRunner().invoke(main, ["queues", "--undedicate", "EU shop"]).exit_code == 2
    with get_engine(db_url).connect() as conn:
        assert conn.execute(sa.select(queues.c.dedicated)).scalars().all() == [False]
    assert CliRunner().invoke(main, ["worker"]).exit_code == 0
    assert "--queues=dispatcher" in started[-1]  # the shared Celery queue alone


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_a_hanging_queue_never_occupies_the_other_queues_worker(
    system: dict[str, str],
    pg_test_url: str,
    sandbox: Sandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = system | {
        "DISPATCHER_DEDICATED_QUEUES": "eu-shop,default",
        "ECDP_API_KEY_EU_SHOP": system["ECDP_API_KEY"],
        "DISPATCHER_HTTP_TIMEOUT_SECONDS": "3",
    }
    monkeypatch.setenv("DISPATCHER_DEDICATED_QUEUES", env["DISPATCHER_DEDICATED_QUEUES"])
    get_settings.cache_clear()
    app = make_celery(get_settings())  # this process's signals, routed as the workers expect
    monkeypatch.setattr(signaller, "_send", lambda queue: app.send_task(TASK_NAME, (queue,)))
    sandbox.script(1, *[Reply(201, hang=True)] * 40)  # eu-shop's events: the API never answers
    logs = {name: tmp_path / f"{name}.log" for name in ("eu", "default")}
    eu = start(env, "worker", "--queues", "eu-shop", "--concurrency=1", log=logs["eu"])
    default = start(env, "worker", "--queues=default", "--concurrency=1", log=logs["default"])
    try:
        for log in logs.values():
            wait_until(lambda log=log: b"ready" in log.read_bytes(), "the workers to start")
        enqueue_many([CustomEvent(1, customer_id=n) for n in range(1, 11)], queue="eu-shop")
        wait_until(lambda: sandbox.in_flight >= 2, "eu-shop's requests to hang")
        enqueue_many([CustomEvent(2, customer_id=n) for n in range(1, 201)])
        wait_until(lambda: statuses(pg_test_url).get("delivered") == 200, "default's 200 jobs")
    finally:
        stop(eu)
        stop(default)
        app.close()
        get_settings.cache_clear()
    served = {
        name: set(re.findall(rb"'queue': '([a-z-]+)'", path.read_bytes()))
        for name, path in logs.items()
    }
    assert served["default"] == {b"default"}, served
    assert served["eu"] <= {b"eu-shop"}, served
    assert b"dispatcher.eu-shop" in logs["eu"].read_bytes()  # its Celery queue, in the banner


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_a_dedicated_queue_is_delivered_when_only_its_worker_was_told(
    system: dict[str, str],
    pg_test_url: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Neither this producer nor the sweeper has DISPATCHER_DEDICATED_QUEUES; the worker started
    with --queues eu-shop records the dedication, and both route eu-shop's signals to it."""
    import redis

    assert "DISPATCHER_DEDICATED_QUEUES" not in system
    env = system | {"ECDP_API_KEY_EU_SHOP": system["ECDP_API_KEY"]}
    logs = {name: tmp_path / f"{name}.log" for name in ("eu", "sweeper")}
    eu = start(env, "worker", "--queues", "eu-shop", "--concurrency=1", log=logs["eu"])
    sweeper = None
    try:
        wait_until(lambda: b"ready" in logs["eu"].read_bytes(), "the worker to start")
        enqueue_many([CustomEvent(1, customer_id=n) for n in range(1, 6)], queue="eu-shop")
        signaller.flush()
        wait_until(lambda: statuses(pg_test_url).get("delivered") == 5, "the producer's signal")
        # The sweeper's signals go the same way (a retry's, or a lost one's).
        monkeypatch.setattr(signaller, "_send", lambda queue: None)  # this producer is silent
        enqueue_many([CustomEvent(1, customer_id=n) for n in range(6, 9)], queue="eu-shop")
        signaller.flush()
        sweeper = start(env, "sweeper", log=logs["sweeper"])
        wait_until(lambda: statuses(pg_test_url).get("delivered") == 8, "the sweeper's signal")
    finally:
        stop(eu)
        if sweeper is not None:
            stop(sweeper)
    # Nothing left on the shared Celery queue, which no worker here reads.
    assert redis.Redis.from_url(redis_url).llen(CELERY_QUEUE) == 0
