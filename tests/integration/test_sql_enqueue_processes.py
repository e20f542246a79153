"""End to end with no Python producer: ``SELECT dispatcher_enqueue(...)`` on a plain psycopg
connection, the Procfile's ``worker`` (Celery on Redis) and ``sweeper``, the sandbox over HTTP."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dispatcher import listener
from dispatcher.db import get_engine
from dispatcher.sandbox import Sandbox
from tests.support import start, statuses, stop, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

SWEEP = 120.0  # seconds between the sweeper's passes: only its listener can be that quick


@pytest.fixture
def system(
    pg_test_url: str, redis_url: str, sandbox: Sandbox, api_key: str
) -> Iterator[dict[str, str]]:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    with get_engine(pg_test_url).begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE dispatcher_attempts, dispatcher_jobs, dispatcher_queues RESTART IDENTITY"
        )
    yield {
        **os.environ,
        "DISPATCHER_DATABASE_URL": pg_test_url,
        "DISPATCHER_BROKER_URL": redis_url,
        "ECDP_BASE_URL": sandbox.url,
        "ECDP_API_KEY": api_key,
        "DISPATCHER_SWEEP_INTERVAL_SECONDS": str(SWEEP),
    }


def test_a_job_enqueued_in_sql_is_delivered_by_the_workers_before_any_sweep(
    system: dict[str, str], pg_test_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    worker = start(system, "worker", "--concurrency=1", log=tmp_path / "w")
    sweeper = start(system, "sweeper", log=tmp_path / "s")
    try:
        wait_until(lambda: b"ready" in (tmp_path / "w").read_bytes(), "the worker to start")
        with psycopg.connect(listener.conninfo(pg_test_url), autocommit=True) as pg:
            wait_until(
                lambda: pg.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                    "'dispatcher-listener' AND query LIKE 'LISTEN%%'"
                ).fetchone()[0],  # type: ignore[index]
                "the sweeper's listener",
                30,
            )
            with pg.transaction():
                pg.execute(
                    "SELECT dispatcher_enqueue('default', %s::jsonb)",
                    ('{"customEventId": 24, "customerEmail": "sql@example.com"}',),
                )
        # Well before the sweeper's next pass (SWEEP seconds away): signalled by its listener.
        wait_until(lambda: statuses(pg_test_url) == {"delivered": 1}, "the delivery", SWEEP / 4)
    finally:
        for proc in (worker, sweeper):
            stop(proc)
    (body,) = [json.loads(b) for b in sandbox.bodies()]
    assert body == {"customEventId": 24, "customerEmail": "sql@example.com"}
