"""Break things mid-drain and check that every event is delivered or visibly dead.

Each scenario ends with an accounting (see ``tests.support.account``): every job is ``delivered``
or ``dead`` with a reason, the server saw every delivered job at least once, and duplicate sends
are printed and bounded by what was in flight when the fault hit.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import sqlalchemy as sa

from dispatcher import CustomEvent, OutboxUnavailable, enqueue, enqueue_many
from dispatcher.config import get_settings
from dispatcher.db import get_engine, utcnow
from dispatcher.outbox import is_paused, resume
from dispatcher.sandbox import Reply
from dispatcher.schema import attempts, jobs
from tests.faults.conftest import JOBS, Rig, delivered, drain_and_account, fill
from tests.support import statuses, stop, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.postgres, pytest.mark.redis]

BATCH = get_settings().batch_size
IN_FLIGHT_BOUND = 2 * BATCH  # a worker with --concurrency=2 holds at most two leased batches


def start_mid_drain(
    rig: Rig, name: str = "worker", *, delay: float = 0.005, under_way: int = 300
) -> subprocess.Popen[bytes]:
    """A full outbox, the sweeper and a worker running, and ``under_way`` jobs delivered; the
    sandbox's ``delay`` keeps the drain slow enough for a fault to land in the middle of it."""
    rig.sandbox.default_delay = delay
    fill()
    rig.start_sweeper()
    worker = rig.start_worker(name)
    wait_until(lambda: delivered(rig) >= under_way, "the drain to get going")
    return worker


def test_sigkill_worker_mid_drain(rig: Rig) -> None:
    first = start_mid_drain(rig, "first")
    stop(first, signal.SIGKILL)
    in_flight = statuses(rig.db_url).get("in_flight", 0)
    assert delivered(rig) < JOBS, "the kill came too late to test anything"
    rig.start_worker("second")
    result = drain_and_account(rig)
    assert result.delivered == JOBS
    assert result.duplicates <= max(in_flight, IN_FLIGHT_BOUND)


def test_redis_flushall_mid_drain(rig: Rig) -> None:
    start_mid_drain(rig)
    rig.redis.client().flushall()
    result = drain_and_account(rig)
    assert result.delivered == JOBS
    assert result.duplicates == 0


def test_redis_down_for_ten_seconds(rig: Rig) -> None:
    worker = start_mid_drain(rig, delay=0.01, under_way=200)
    rig.redis.stop()
    time.sleep(10)  # the fault's duration, not an assertion
    rig.redis.start()
    result = drain_and_account(rig)
    assert result.delivered == JOBS
    assert worker.poll() is None, "the worker needed a restart"
    assert rig.procs["sweeper"].poll() is None


def test_postgres_restart_mid_drain(rig: Rig) -> None:
    worker = start_mid_drain(rig)
    version = subprocess.run(["ls", "/etc/postgresql"], capture_output=True, text=True).stdout
    subprocess.run(
        [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            version.split()[0],
            "main",
            "restart",
            "-m",
            "fast",
        ],
        check=True,
        timeout=120,
    )
    get_engine(rig.db_url).dispose()  # this test process's own pooled connections died too
    result = drain_and_account(rig)
    assert result.delivered == JOBS
    assert worker.poll() is None, "the worker needed a restart"
    assert rig.procs["sweeper"].poll() is None
    assert result.duplicates <= IN_FLIGHT_BOUND


def test_flapping_endpoint_half_503(rig: Rig, monkeypatch) -> None:
    rig.env["DISPATCHER_MAX_ATTEMPTS"] = "20"  # 20 failures in a row: 1 in a million per job
    rig.sandbox.fail_ratio = 0.5
    fill(500)
    rig.start_sweeper()
    rig.start_worker()
    result = drain_and_account(rig)
    assert result.delivered == 500
    assert result.sends > 500  # the failures really happened
    with get_engine(rig.db_url).connect() as conn:
        most = conn.execute(sa.select(sa.func.max(jobs.c.attempts))).scalar_one()
    assert most <= 20


def test_hanging_endpoint_times_out_and_retries(rig: Rig) -> None:
    rig.env["DISPATCHER_HTTP_TIMEOUT_SECONDS"] = "1"
    for event_id in (7, 8, 9):
        rig.sandbox.script(event_id, Reply(201, hang=True))
    for event_id in (7, 8, 9):
        enqueue(CustomEvent(event_id, customer_id=1000 + event_id))
    fill(200)
    rig.start_sweeper()
    worker = rig.start_worker()
    result = drain_and_account(rig)
    assert result.delivered == 203
    with get_engine(rig.db_url).connect() as conn:
        timeouts = conn.execute(
            sa.select(sa.func.count()).where(attempts.c.error.like("timeout%"))
        ).scalar_one()
    assert timeouts == 3
    assert worker.poll() is None


def test_api_key_revoked_mid_drain(rig: Rig) -> None:
    start_mid_drain(rig)
    key = rig.sandbox.api_key
    rig.sandbox.api_key = "revoked"
    engine = get_engine(rig.db_url)

    def paused() -> bool:
        with engine.connect() as conn:
            return is_paused(conn, "default")

    wait_until(paused, "the queue to pause")
    wait_until(lambda: not statuses(rig.db_url).get("in_flight"), "in-flight batches to return")
    refused = rig.sandbox.count(status=401)
    time.sleep(2)  # the sweeper runs four times meanwhile: it must not wake the paused queue
    assert rig.sandbox.count(status=401) == refused, "requests were sent while paused"
    settings = get_settings()
    # Each worker process stops at its first 401; only requests already in flight can follow.
    assert refused <= 2 * settings.max_in_flight
    assert "dead" not in statuses(rig.db_url)
    print(f"401 answers before the pause took hold: {refused}")

    rig.sandbox.api_key = key
    with engine.begin() as conn:
        resume(conn, "default", utcnow())
    result = drain_and_account(rig)
    assert result.delivered == JOBS and result.dead == 0


def test_enqueue_with_database_unreachable(rig: Rig, monkeypatch) -> None:
    from dispatcher.db import dispose_engines
    from tests.support import free_port

    monkeypatch.setenv(
        "DISPATCHER_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    )
    get_settings.cache_clear()
    dispose_engines()
    with pytest.raises(OutboxUnavailable, match="nothing was written"):
        enqueue(CustomEvent(1, customer_id=1))
    with pytest.raises(OutboxUnavailable):
        enqueue_many([CustomEvent(1, customer_id=n) for n in range(1, 10)])
    assert statuses(rig.db_url) == {}
