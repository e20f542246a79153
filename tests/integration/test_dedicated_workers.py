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
    assert worker_queues(["eu-shop"], DEDICATED) == ["dispatcher.eu-shop"]
    with pytest.raises(ConfigError, match="DISPATCHER_DEDICATED_QUEUES"):
        worker_queues(["us-shop"], DEDICATED)
    with pytest.raises(ConfigError, match="'EU shop' is not a queue name"):
        Settings.from_env({"DISPATCHER_DEDICATED_QUEUES": "EU shop"})


def test_a_worker_without_a_dedicated_queue_is_refused(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dispatcher.cli import main

    result = CliRunner().invoke(main, ["worker", "--queues", "eu-shop"])
    assert result.exit_code != 0
    assert "DISPATCHER_DEDICATED_QUEUES" in result.output


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
