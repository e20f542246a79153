"""End to end through real processes: Celery workers on Redis, the sweeper, PostgreSQL, HTTP.

This is the production shape (the Procfile's ``worker`` and ``sweeper`` lines) at small scale.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from dispatcher import CustomEvent, enqueue
from dispatcher.db import get_engine
from dispatcher.sandbox import Sandbox
from tests.support import start, statuses, stop, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


def test_celery_workers_deliver_each_job_exactly_once(
    system: dict[str, str], pg_test_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    workers = [
        start(system, "worker", "--concurrency=1", f"--hostname=w{i}@%h", log=tmp_path / f"w{i}")
        for i in range(2)
    ]
    sweeper = start(system, "sweeper", log=tmp_path / "sweeper")
    try:
        engine = get_engine(pg_test_url)
        for chunk in range(20):
            with Session(engine) as session, session.begin():
                for n in range(100):
                    enqueue(CustomEvent(5, customer_id=chunk * 100 + n + 1), session=session)
        wait_until(lambda: statuses(pg_test_url) == {"delivered": 2000}, "2,000 deliveries")
    finally:
        for proc in (*workers, sweeper):
            stop(proc)
    received = sorted(json.loads(b)["customerId"] for b in sandbox.bodies())
    assert received == list(range(1, 2001))
    logs = b"".join((tmp_path / name).read_bytes() for name in ("w0", "w1", "sweeper"))
    assert system["ECDP_API_KEY"].encode() not in logs
    assert b"dispatcher.deliver" in logs  # the task really ran in the Celery workers


def test_fresh_event_is_delivered_without_waiting_for_the_sweeper(
    system: dict[str, str], pg_test_url: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    """The after-commit signal alone delivers: no sweeper runs in this test."""
    worker = start(system, "worker", "--concurrency=1", log=tmp_path / "w")
    try:
        wait_until(lambda: b"ready" in (tmp_path / "w").read_bytes(), "the worker to start")
        with Session(get_engine(pg_test_url)) as session, session.begin():
            enqueue(CustomEvent(6, customer_email="new@example.com"), session=session)
        # Recorded, not only received: stopping the worker between the API's answer and its
        # record would leave the job in flight until its lease expires (a crash, not this test).
        wait_until(lambda: statuses(pg_test_url) == {"delivered": 1}, "the recorded delivery")
    finally:
        stop(worker)
    assert sandbox.count(status=201) == 1
