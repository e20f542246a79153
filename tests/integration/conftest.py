"""Fixtures shared by the integration tests (a module's own fixture of the same name wins)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.config import Settings
from dispatcher.db import get_engine
from dispatcher.delivery import Deliverer
from dispatcher.policy import RetryPolicy
from dispatcher.sandbox import Sandbox
from tests.support import ROOT


@pytest.fixture
def deliverer(settings: Settings, sandbox: Sandbox) -> Iterator[Deliverer]:
    """A worker against this test's sandbox: quick retries (two attempts), four in flight."""
    d = Deliverer(
        dataclasses.replace(
            settings,
            base_url=sandbox.url,
            retry=RetryPolicy(base_seconds=0.01, max_seconds=0.05, max_attempts=2),
            http_timeout_seconds=2.0,
            max_in_flight=4,
        )
    )
    yield d
    d.close()


@pytest.fixture
def system(
    pg_test_url: str, redis_url: str, sandbox: Sandbox, api_key: str, tmp_path: Path, monkeypatch
) -> Iterator[dict[str, str]]:
    """Env for the processes, and a clean Redis db and outbox."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    with get_engine(pg_test_url).begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE dispatcher_attempts, dispatcher_jobs, dispatcher_queues RESTART IDENTITY"
        )
    env = {
        **os.environ,
        "DISPATCHER_DATABASE_URL": pg_test_url,
        "DISPATCHER_BROKER_URL": redis_url,
        "ECDP_BASE_URL": sandbox.url,
        "ECDP_API_KEY": api_key,
        "DISPATCHER_SWEEP_INTERVAL_SECONDS": "0.5",
    }
    for name in ("DISPATCHER_DATABASE_URL", "DISPATCHER_BROKER_URL", "ECDP_API_KEY"):
        monkeypatch.setenv(name, env[name])
    from dispatcher.config import get_settings
    from dispatcher.signals import signaller
    from dispatcher.tasks import TASK_NAME, make_celery

    get_settings.cache_clear()
    # This process's own Celery app may already be bound to the in-memory broker of other tests;
    # after-commit signals from here go to Redis through an app made for it.
    redis_app = make_celery(get_settings())
    monkeypatch.setattr(signaller, "_send", lambda queue: redis_app.send_task(TASK_NAME, (queue,)))
    yield env
    redis_app.close()
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout's files, so that building the metadata leaves nothing behind."""
    src = tmp_path_factory.mktemp("src")
    names = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in names)):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    return src
