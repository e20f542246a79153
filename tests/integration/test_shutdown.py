"""SIGTERM ends a worker within 10 s at default settings, whatever the API does.

``docker stop`` sends SIGTERM and, 10 s later by default, SIGKILL: a worker must be gone by then,
with every job it held given back. The API here answers in 20 s (longer than the request timeout
and the shutdown grace together), and nothing is configured but the URLs and the key.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from dispatcher import CustomEvent, enqueue
from dispatcher.db import get_engine
from dispatcher.sandbox import Sandbox
from dispatcher.schema import jobs
from tests.support import start, statuses, stop, wait_until, worker_ready

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

DOCKER_STOP = 10.0  # seconds between `docker stop`'s SIGTERM and its SIGKILL, by default
JOBS = 40


@pytest.fixture
def worker_env(
    pg_test_url: str, redis_url: str, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """Only what a worker cannot do without: every other setting is the default."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    with get_engine(pg_test_url).begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE dispatcher_attempts, dispatcher_jobs, dispatcher_queues RESTART IDENTITY"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "ECDP_"))}
    env.update(
        DISPATCHER_DATABASE_URL=pg_test_url,
        DISPATCHER_BROKER_URL=redis_url,
        ECDP_API_KEY=api_key,
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    yield env


def test_sigterm_ends_a_worker_within_10s_against_an_api_answering_in_20s(
    worker_env: dict[str, str],
    pg_test_url: str,
    slow_sandbox: Callable[..., Sandbox],
    tmp_path: Path,
) -> None:
    api = slow_sandbox(latency=20.0)
    env = dict(worker_env, ECDP_BASE_URL=api.url)
    engine = get_engine(pg_test_url)
    with Session(engine) as session, session.begin():
        for n in range(JOBS):
            enqueue(CustomEvent(9, customer_id=n), session=session)
    log = tmp_path / "worker.log"
    worker = start(env, "-v", "worker", log=log)
    try:
        wait_until(worker_ready(log), "the worker to be ready", limit=90)
        # No signal was published from here (no broker in this process): the worker's first
        # drain comes from the sweeper's job, done here by hand.
        from dispatcher.config import Settings
        from dispatcher.tasks import make_celery

        app = make_celery(Settings(broker_url=env["DISPATCHER_BROKER_URL"]))
        try:
            app.send_task("dispatcher.deliver", ("default",), queue="dispatcher")
        finally:
            app.close()
        wait_until(lambda: api.in_flight >= 2, "requests to be in flight")

        asked = time.monotonic()
        os.kill(worker.pid, signal.SIGTERM)  # the main process only, as `docker stop` does
        worker.wait(timeout=60)
        took = time.monotonic() - asked
        output = log.read_text()
        print(f"worker exited {took:.1f} s after SIGTERM with {api.in_flight} requests unanswered")
        assert took < DOCKER_STOP, f"exited {took:.1f} s after SIGTERM: {output}"
        assert "Traceback" not in output, output
    finally:
        stop(worker)

    # Nothing lost, nothing dead, nothing waiting for a lease: unanswered, so not counted.
    assert api.served == 0
    assert statuses(pg_test_url) == {"pending": JOBS}
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.max(jobs.c.attempts))).scalar_one() == 0
